"""Reading --style values into mixing weights, without torch (the ONNX Runtime path uses it too);
what a strength does is the recipe's (recipe.py).

Trained styles: NAME, INDEX or NAME=W, normalised to sum to 1. Style images (adaptive models): PATH
or PATH=W, where a file whose own name contains "=" is taken whole.
"""
from __future__ import annotations

import math
from pathlib import Path

from stylize.errors import StylizeError


def style_index(name: str, styles: list[str], model: str) -> int:
    if name in styles:
        return styles.index(name)
    if name.isdigit() and int(name) < len(styles):
        return int(name)
    from stylize.models.modelfile import find_models

    hint = f"; for the model {name!r}, use --model {name}" if name in {m.stem for m in find_models()} else ""
    raise StylizeError(f"model {model} has no style {name!r}; its styles: "
                       + ", ".join(f"{i}={s}" for i, s in enumerate(styles)) + hint)


def style_weights(specs: list[str] | None, styles: list[str], model: str) -> list[float]:
    """["starry"], ["1"], ["starry=0.7", "wave=0.3"] -> weights over `styles`, summing to 1."""
    w = [0.0] * len(styles)
    if not specs:
        w[0] = 1.0
        return w
    for spec in specs:
        name, _, amount = spec.partition("=")
        index = style_index(name, styles, model)
        try:
            value = float(amount) if amount else 1.0
        except ValueError:
            raise StylizeError(f"--style {spec}: weight {amount!r} is not a number")
        w[index] += _weight(value, spec)
    return _normalised(w)


def style_image(spec: str) -> tuple[str, float]:
    """PATH or PATH=W -> (path, weight)."""
    path, sep, amount = spec.rpartition("=")
    if sep and not Path(spec).exists():
        try:
            return path, float(amount)
        except ValueError:
            pass
    return spec, 1.0


def painting_weights(specs: list[str]) -> tuple[list[str], list[float]]:
    """Paintings given as PATH or PATH=W -> their paths and weights normalised to sum 1."""
    parsed = [style_image(s) for s in specs]
    return [p for p, _ in parsed], _normalised([_weight(w, s) for (_, w), s in zip(parsed, specs)])


def _weight(value: float, spec: str) -> float:
    """A mixing weight: finite and non-negative (nan would make a black picture, not an error)."""
    if not (math.isfinite(value) and value >= 0):
        raise StylizeError(f"--style {spec}: a weight must be a finite number, 0 or more")
    return value


def _normalised(weights: list[float]) -> list[float]:
    total = sum(weights)
    if total <= 0:
        raise StylizeError("--style weights add up to zero; give at least one a positive weight")
    return [w / total for w in weights]

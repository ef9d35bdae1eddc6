"""The apply recipe, written once for every engine: what happens to a photo around the network.

A model file says how it applies (record["apply"], measured after training; the model card says
how): the network's strength for a --style-weight and the share of the styles' palette the output
then takes (`calibrated`), and the size its network works at (scale.py). So for one photo:
the work size down, padding to the network's multiple, the network (the engine's one job), the
crop, the work size back up with the photo's own detail, the palette step (palette.recolour) and,
with --preserve-color, the photo's colours (color.keep_luminance). The engines (engines/) only run
a network: PyTorch whole or in tiles, ONNX Runtime, the optimization. `Stylizer` says what an
engine offers; its condition() gives a `Look`, whatever the engine.

Torch-free (numpy and Pillow), so the ONNX Runtime path starts without torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stylize.apply import color, flatten, flow, palette, scale
from stylize.errors import StylizeError


def calibrated(strength: float, apply: dict | None) -> tuple[float, float]:
    """--style-weight s for a model whose file says how it applies: the network's strength
    condition at s, and the share of the painting's palette the output then takes
    (palette.recolour). Without it: (s, 0)."""
    apply = apply or {}
    return strength * apply.get("full_strength", 1.0), strength * apply.get("palette", 0.0)


def check_strength(strength: float, model: str | None = None, conditioned: bool = True) -> None:
    """--style-weight: a number in [0, 1], and other than 1 only for a model trained for every
    strength (`conditioned`; AdaIN models always are: it is their alpha)."""
    if not 0.0 <= strength <= 1.0:  # also refuses nan
        raise StylizeError(f"--style-weight {strength}: must be between 0 and 1")
    if strength != 1.0 and not conditioned:
        raise StylizeError(f"model {model} was trained at full strength only; --style-weight needs a model "
                           "trained with --all-strengths (the default)")


@dataclass(frozen=True, eq=False)
class Look:
    """What a request's styles come to for one engine (its condition()): the same kind of value
    from every engine. (norms.Condition is the network's own, inside the PyTorch engine.)"""
    weights: np.ndarray  # float32 mixing weights (N,), or per pixel (N, H, W) with a mask
    palettes: list | None = None  # colour statistics per style for the palette step; None: no palette step
    specs: tuple | None = None  # the --style values it was made from
    data: Any = None  # the engine's own: AdaIN statistics, a painting, a baked network, an optimizer


class Stylizer(Protocol):
    """An engine: it loads photos and runs a network; recipe.run does the rest."""
    name: str
    styles: list[str]  # a trained model's styles ([] for a model that takes paintings)
    has_strength: bool  # whether --style-weight other than 1 works
    apply: dict  # the model file's apply block ({} when it has none)
    budget: int  # pixels one pass may take (larger photos are read, stylized and written alone)
    multiple: int  # the network's sides are padded to a multiple of this
    least: int  # and to at least this

    def condition(self, specs: list[str] | None, mask: np.ndarray | None = None, photo: np.ndarray | None = None,
                  match_color: bool = False) -> Look:
        """The styles, mixes and paintings `specs` ask for (a StylizeError for a bad one); `mask`
        (H, W) in [0, 1]: white to the first style; `photo`: what --color-method match matches to.
        No side effects beyond caches keyed by content."""

    def network(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        """(3, H, W) uint8, H and W padded as `padding` says -> the network's (3, H, W) uint8 at
        this network strength."""

    def load(self, path, max_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """A photo as (3, H, W) uint8 and its (1, H, W) alpha or None."""

    def load_mask(self, path, size: tuple[int, int]) -> np.ndarray:
        """A mask of the photo's (H, W), float32 in [0, 1]."""


def padding(height: int, width: int, multiple: int, least: int = 0) -> tuple[int, int, str]:
    """Rows and columns to add below and to the right (strided convolutions need a multiple; a 9x9
    reflection pad at least 8 px), and how: reflected, or repeated where the image is too small."""
    ph, pw = max(least, height + (-height) % multiple) - height, max(least, width + (-width) % multiple) - width
    return ph, pw, "reflect" if min(height, width) > max(ph, pw) else "edge"


def resize_weights(weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) per-pixel weights at (h, w): bilinear on pixel centres, as torch's interpolate
    (align_corners=False, no antialiasing) did it for the PyTorch path."""
    def axis(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out)
                         - np.float32(0.5), np.float32(0))
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    (y0, y1, fy), (x0, x1, fx) = axis(weights.shape[1], shape[0]), axis(weights.shape[2], shape[1])
    rows = weights[:, y0] * (1 - fy)[:, None] + weights[:, y1] * fy[:, None]
    return (rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx).astype(np.float32)


def run(engine: Stylizer, x: np.ndarray, look: Look, strength: float, keep_colour: bool = False) -> np.ndarray:
    """A (3, H, W) uint8 photo stylized as the model file says it applies -> (3, H, W) uint8:
    at the work size, the network at its calibrated strength, smoothed along the photo's lines (flow),
    painted flat (flatten) and its colour blurred (colour_blur), the palette step (per pixel with a
    mask), and with `keep_colour` the photo's colours (--preserve-color, luminance)."""
    network_strength, amount = calibrated(strength, engine.apply)
    shape = scale.work_shape(x.shape[1], x.shape[2], engine.apply)
    if shape is None:
        y = _finish(engine, _network(engine, x, look, network_strength), x)
    else:  # at the scale the network was trained at (scale.py); a mask goes down with the photo
        small = scale.resize(x, shape)
        small_look = dataclasses.replace(look, weights=resize_weights(look.weights, shape)) \
            if look.weights.ndim == 3 else look
        y = scale.restore(_finish(engine, _network(engine, small, small_look, network_strength), small), small, x)
    if amount and look.palettes:
        y = palette.recolour(y, look.palettes, look.weights, amount)
    return color.keep_luminance(y, x) if keep_colour else y


def _finish(engine: Stylizer, y: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """The network's output at its own scale, smoothed along the photo's lines, painted flat and its
    colour blurred as the model file says: the same strokes, patches and stripes whatever the photo's size."""
    apply = engine.apply or {}
    y = flatten.flatten(flow.follow(y, photo, apply.get("flow", 0)), apply.get("flatten", 0))
    return color.blur_colour(y, apply.get("colour_blur", 0))


def _network(engine: Stylizer, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
    """The engine's network on x padded to its multiple, cropped back."""
    h, w = x.shape[1:]
    ph, pw, mode = padding(h, w, engine.multiple, engine.least)
    if not (ph or pw):
        return engine.network(x, look, strength)
    x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
    if look.weights.ndim == 3:
        look = dataclasses.replace(look, weights=np.pad(look.weights, ((0, 0), (0, ph), (0, pw)), mode="edge"))
    return np.ascontiguousarray(engine.network(x, look, strength)[:, :h, :w])


@dataclass(frozen=True)
class Request:
    """What to do to every photo of a run, checked once against the engine when it is made."""
    styles: list[str] | None = None
    strength: float = 1.0
    mask: str | None = None  # a mask file: white to the first style
    match_color: bool = False  # --color-method match: the painting takes the photo's colours first
    keep_colour: bool = False  # --preserve-color with luminance: the output takes the photo's colours after

    @classmethod
    def of(cls, config, engine: Stylizer) -> "Request":
        """From an ApplyConfig, refused (StylizeError) where the engine cannot do it."""
        check_strength(config.strength, engine.name, engine.has_strength)
        return cls(config.styles, config.strength, config.mask, config.match_color,
                   config.preserve_color and not config.match_color)

    def condition(self, engine: Stylizer, photo: np.ndarray | None = None, mask: np.ndarray | None = None) -> Look:
        return engine.condition(self.styles, mask, photo, self.match_color)

    def run(self, engine: Stylizer, x: np.ndarray, look: Look) -> np.ndarray:
        return run(engine, x, look, self.strength, self.keep_colour)


def content_key(a) -> tuple:
    """A key for an array's content (a torch tensor on the CPU too): two different photos never
    share it, as they could share an id()."""
    a = np.ascontiguousarray(np.asarray(a))
    return a.shape, a.dtype.str, hashlib.blake2b(a.data, digest_size=16).hexdigest()


def file_key(path: str | Path) -> tuple:
    """A key for a file's content: its path, modification time and size (a painting replaced under
    the same name is read again)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return str(p), None, None  # its reader says what is wrong with it
    return str(p.resolve()), st.st_mtime_ns, st.st_size

"""Applying a trained model: load it, choose and mix styles, set strength, stylize tensors and files.

Library only: progress goes through a callback and nothing is printed here.
"""
from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import modelfile
from .devices import pick_device
from .errors import StylizeError
from .images import IMAGE_EXTENSIONS, SAVE_FORMATS, find_images, load_image, save_image
from .networks import NetConfig, TransformerNet
from .norms import Condition

from .settings import DEFAULT_MODEL


class Stylizer:
    """A loaded model, ready to stylize (3, H, W) tensors in [0, 1]."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto"):
        self.record = modelfile.load(model)
        if self.record.get("kind") != "transformer":
            raise StylizeError(f"{model}: model kind {self.record.get('kind')!r} is not supported by this version")
        self.device = pick_device(device)
        self.name = Path(self.record["path"]).stem
        self.styles: list[str] = list(self.record["styles"])
        self.net = TransformerNet(NetConfig(**self.record["net"]))
        self.net.load_state_dict({k: v.float() for k, v in self.record["state_dict"].items()})
        self.net.eval().requires_grad_(False).to(self.device)

    def style_weights(self, specs: list[str] | None) -> torch.Tensor:
        """Parse ["starry"], ["1"], ["starry=0.7", "wave=0.3"] into normalised weights (N,)."""
        n = len(self.styles)
        w = torch.zeros(n)
        if not specs:
            w[0] = 1.0
            return w
        for spec in specs:
            name, _, amount = spec.partition("=")
            index = self.style_index(name)
            try:
                value = float(amount) if amount else 1.0
            except ValueError:
                raise StylizeError(f"--style {spec}: weight {amount!r} is not a number")
            if value < 0:
                raise StylizeError(f"--style {spec}: weights must not be negative")
            w[index] += value
        if w.sum() <= 0:
            raise StylizeError("--style weights add up to zero")
        return w / w.sum()

    def style_index(self, name: str) -> int:
        if name in self.styles:
            return self.styles.index(name)
        if name.isdigit() and int(name) < len(self.styles):
            return int(name)
        raise StylizeError(f"model {self.name} has no style {name!r}; its styles: "
                           + ", ".join(f"{i}={s}" for i, s in enumerate(self.styles)))

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, styles: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
        """x: (3, H, W); styles: (N,) weights or (N, H, W) spatial weights; strength in [0, 1]."""
        if not 0.0 <= strength <= 1.0:
            raise StylizeError(f"--style-weight {strength}: must be between 0 and 1")
        if strength != 1.0 and not self.record["net"].get("strength"):
            raise StylizeError(f"model {self.name} was trained at full strength only; --style-weight needs a "
                               "model trained with strength (the default)")
        _, h, w = x.shape
        # two stride-2 convolutions: sizes must be multiples of 4; and at least 8 for the 9x9 reflection pad
        ph, pw = max(8, h + (-h) % 4) - h, max(8, w + (-w) % 4) - w
        xb = x[None].to(self.device)
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
            xb = F.pad(xb, (0, pw, 0, ph), mode=mode)
        if styles is not None:
            styles = styles.to(self.device)[None]
            if styles.dim() == 4 and (ph or pw):
                styles = F.pad(styles, (0, pw, 0, ph), mode="replicate")
        s = torch.tensor([strength], device=self.device) if self.record["net"].get("strength") else None
        y = self.net(xb, Condition(styles, s))
        return y[0, :, :h, :w].clamp(0, 1).float().cpu()


def load_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """A greyscale mask (white = first style) of the photo's size: (H, W) in [0, 1]."""
    m, _ = load_image(path)
    if tuple(m.shape[1:]) != size:
        raise StylizeError(f"{path}: mask is {m.shape[2]}x{m.shape[1]}, the photo is {size[1]}x{size[0]}")
    return m.mean(0)


def expand_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """Files, folders (recursive) and globs -> (file, path relative to where it was found)."""
    out = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir():
            out += [(f, f.relative_to(p)) for f in find_images(p)]
        elif p.exists():
            out.append((p, Path(p.name)))
        elif any(c in spec for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            matches = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
            if not matches:
                raise StylizeError(f"{spec}: no images match")
            out += [(m, Path(m.name)) for m in matches]
        else:
            raise StylizeError(f"{spec}: no such file or folder")
    return out


def output_paths(items: list[tuple[Path, Path]], out: Path | None, out_dir: Path) -> list[Path]:
    """One distinct output per input; never an input's own path."""
    if out is not None:
        if len(items) != 1:
            raise StylizeError(f"--out names one file but there are {len(items)} inputs; use --out-dir")
        paths = [out]
    else:
        paths, taken = [], set()
        for _, rel in items:
            suffix = rel.suffix.lower() if rel.suffix.lower() in SAVE_FORMATS else ".png"
            p = out_dir / rel.with_suffix(suffix)
            k = 2
            while p in taken:  # same name from different places
                p = out_dir / rel.with_name(f"{rel.stem}_{k}{suffix}")
                k += 1
            taken.add(p)
            paths.append(p)
    inputs = {f.resolve() for f, _ in items}
    for p in paths:
        if p.resolve() in inputs:
            raise StylizeError(f"{p}: refusing to overwrite an input; choose another --out or --out-dir")
    return paths


@dataclass
class ApplyReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def apply_files(stylizer: Stylizer, inputs: list[str], out: Path | None = None, out_dir: Path = Path("stylized"),
                styles: list[str] | None = None, strength: float = 1.0, mask: str | None = None,
                max_size: int | None = None, quality: int = 95, skip_existing: bool = False,
                progress: Callable[[Path, Path], None] | None = None) -> ApplyReport:
    """Stylize every input; a file that fails is reported and the rest go on."""
    items = expand_inputs(inputs)
    paths = output_paths(items, out, out_dir)
    weights = stylizer.style_weights(styles)
    if mask is not None and (styles is None or len(styles) != 2):
        raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
    report, t0 = ApplyReport(), time.perf_counter()
    for (src, _), dst in zip(items, paths):
        if skip_existing and dst.exists():
            report.skipped.append(dst)
        else:
            try:
                x, alpha = load_image(src, max_size)
                w = weights
                if mask is not None:
                    m = load_mask(mask, tuple(x.shape[1:]))
                    a, b = (stylizer.style_index(s.partition("=")[0]) for s in styles)
                    w = torch.zeros(len(stylizer.styles), *m.shape)
                    w[a] += m
                    w[b] += 1 - m
                save_image(stylizer(x, w, strength), dst, alpha, quality)
                report.written.append(dst)
            except StylizeError as e:
                report.failed.append((src, str(e)))
        if progress:
            progress(src, dst)
    report.seconds = time.perf_counter() - t0
    return report

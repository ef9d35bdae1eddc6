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
from .color import keep_luminance
from .devices import pick_device
from .errors import StylizeError
from .images import IMAGE_EXTENSIONS, SAVE_FORMATS, find_images, load_image, save_image
from .networks import NetConfig, TransformerNet
from .norms import Condition

from .settings import DEFAULT_MODEL


class Stylizer:
    """A loaded model, ready to stylize (3, H, W) tensors in [0, 1]."""

    def __init__(self, model: str | Path | dict = DEFAULT_MODEL, device: str = "auto"):
        self.record = model if isinstance(model, dict) else modelfile.load(model)
        if self.record.get("kind") != "transformer":
            raise StylizeError(f"{model}: model kind {self.record.get('kind')!r} is not supported by this version")
        self.device = pick_device(device)
        self.name = Path(self.record["path"]).stem
        self.styles: list[str] = list(self.record["styles"])
        self.net = TransformerNet(NetConfig(**self.record["net"]))
        self.net.load_state_dict({k: v.float() for k, v in self.record["state_dict"].items()})
        self.net.eval().requires_grad_(False).to(self.device)

    def condition(self, specs: list[str] | None, mask: torch.Tensor | None = None, photo=None,
                  match_color: bool = False) -> torch.Tensor:
        """Style weights (N,), or with a mask (H, W) spatial weights (N, H, W): white -> first style."""
        if match_color:
            raise StylizeError("--color-method match needs a style image, so an adaptive model; use luminance")
        weights = self.style_weights(specs)
        if mask is None:
            return weights
        if not specs or len(specs) != 2:
            raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
        a, b = (self.style_index(s.partition("=")[0]) for s in specs)
        w = torch.zeros(len(self.styles), *mask.shape)
        w[a] += mask
        w[b] += 1 - mask
        return w

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


class AdaINStylizer:
    """An adaptive (AdaIN) model: any style image, given at apply time (see adain.py)."""

    def __init__(self, record: dict, device: str = "auto", style_size: int | None = 512):
        from .adain import AdaINConfig, AdaINNet

        self.record, self.device, self.style_size = record, pick_device(device), style_size
        self.name = Path(record["path"]).stem
        self.styles: list[str] = []
        self.net = AdaINNet(AdaINConfig(**record["net"]))
        self.net.load_state_dict({k: v.float() for k, v in record["state_dict"].items()})
        self.net.eval().requires_grad_(False).to(self.device)
        self._stats: dict = {}

    def _style(self, path: str, photo: torch.Tensor | None, match: bool):
        from .color import match_colors
        from .data import load_style
        from .losses import mean_std

        key = (path, id(photo) if match else None)
        if key not in self._stats:
            _, style = load_style(path, self.style_size)
            if match and photo is not None:
                style = match_colors(style, photo)
            with torch.inference_mode():
                self._stats[key] = mean_std(self.net.encoder(style[None].to(self.device)))
        return self._stats[key]

    @staticmethod
    def _parse(spec: str) -> tuple[str, float]:
        path, sep, amount = spec.rpartition("=")
        if sep and not Path(spec).exists():
            try:
                return path, float(amount)
            except ValueError:
                pass
        return spec, 1.0

    def condition(self, specs: list[str] | None, mask: torch.Tensor | None = None, photo=None,
                  match_color: bool = False):
        """Style images (PATH or PATH=W) -> (stats per style, weights, masks) for AdaINNet."""
        if not specs:
            raise StylizeError(f"model {self.name} is adaptive: give a style image with --style PAINTING.jpg")
        parsed = [self._parse(s) for s in specs]
        if any(w < 0 for _, w in parsed) or sum(w for _, w in parsed) <= 0:
            raise StylizeError("--style weights must be non-negative and not all zero")
        stats = [self._style(p, photo, match_color) for p, _ in parsed]
        total = sum(w for _, w in parsed)
        masks = None
        if mask is not None:
            if len(specs) != 2:
                raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
            m = mask[None, None].to(self.device)
            masks = [m, 1 - m]
        return stats, [w / total for _, w in parsed], masks

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, cond, strength: float = 1.0) -> torch.Tensor:
        """strength is the paper's alpha: 0 decodes the photo's own features."""
        if not 0.0 <= strength <= 1.0:
            raise StylizeError(f"--style-weight {strength}: must be between 0 and 1")
        stats, weights, masks = cond
        _, h, w = x.shape
        ph, pw = (-h) % 8, (-w) % 8  # three poolings in the encoder
        xb = x[None].to(self.device)
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        if masks is not None and (ph or pw):
            masks = [F.pad(m, (0, pw, 0, ph), mode="replicate") for m in masks]
        y = self.net(xb, stats, weights, masks, alpha=strength)
        return y[0, :, :h, :w].clamp(0, 1).float().cpu()


def load_stylizer(model: str | Path = DEFAULT_MODEL, device: str = "auto", style_size: int | None = 512):
    """A Stylizer for transformer models or an AdaINStylizer for adaptive ones."""
    record = modelfile.load(model)
    if record.get("kind") == "adain":
        return AdaINStylizer(record, device, style_size)
    return Stylizer(record, device)


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


def apply_files(stylizer: Stylizer | AdaINStylizer, inputs: list[str], out: Path | None = None, out_dir: Path = Path("stylized"),
                styles: list[str] | None = None, strength: float = 1.0, mask: str | None = None,
                max_size: int | None = None, quality: int = 95, skip_existing: bool = False,
                preserve_color: bool = False, match_color: bool = False,
                progress: Callable[[Path, Path], None] | None = None) -> ApplyReport:
    """Stylize every input; a file that fails is reported and the rest go on."""
    items = expand_inputs(inputs)
    paths = output_paths(items, out, out_dir)
    stylizer.condition(styles, match_color=match_color)  # bad styles fail before any file is read
    report, t0 = ApplyReport(), time.perf_counter()
    for (src, _), dst in zip(items, paths):
        if skip_existing and dst.exists():
            report.skipped.append(dst)
        else:
            try:
                x, alpha = load_image(src, max_size)
                m = load_mask(mask, tuple(x.shape[1:])) if mask is not None else None
                y = stylizer(x, stylizer.condition(styles, m, x, match_color), strength)
                if preserve_color and not match_color:
                    y = keep_luminance(y, x)
                save_image(y, dst, alpha, quality)
                report.written.append(dst)
            except StylizeError as e:
                report.failed.append((src, str(e)))
        if progress:
            progress(src, dst)
    report.seconds = time.perf_counter() - t0
    return report

"""Applying a trained model: load it, choose and mix styles, set strength, stylize tensors and files.

Library only: progress goes through a callback and nothing is printed here.
"""
from __future__ import annotations

import glob
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import modelfile, tiling
from .color import keep_luminance
from .devices import pick_device
from .errors import StylizeError
from .images import IMAGE_EXTENSIONS, SAVE_FORMATS, find_images, load_image, save_image
from .networks import NetConfig, TransformerNet
from .norms import Condition

from .settings import DEFAULT_MODEL, ApplyConfig


class Stylizer:
    """A loaded model, ready to stylize (3, H, W) tensors in [0, 1] (or uint8) of any size.

    An image over the memory budget (`memory_mb` of working memory for the network), or any image
    larger than `tile` when that is set, is stylized in tiles (tiling.py) with the untiled result. On
    a GPU, running out of memory falls back to tiles by itself and says so through `notice`.
    """

    def __init__(self, model: str | Path | dict = DEFAULT_MODEL, device: str = "auto", tile: int | None = None,
                 memory_mb: float = ApplyConfig.memory_mb, notice: Callable[[str], None] | None = None,
                 tile_progress: Callable[[int, int], None] | None = None):
        self.tile, self.memory_mb, self.notice, self.tile_progress = tile, memory_mb, notice, tile_progress
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

    def tile_size(self, memory_mb: float | None = None) -> int:
        """The tile side that keeps one window of the network within the memory budget."""
        pixels = tiling.budget_pixels(memory_mb or self.memory_mb, self.net.cfg.width)
        return tiling.tile_for_pixels(pixels)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, styles: torch.Tensor | None = None, strength: float = 1.0,
                 tile: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x: (3, H, W) float in [0, 1] or uint8; styles: (N,) weights or (N, H, W) spatial weights;
        strength in [0, 1]; tile: tile side in pixels (None: the Stylizer's; 0: only over the memory
        budget). Returns (3, H, W) on the CPU: float in [0, 1], or uint8 with dtype=torch.uint8."""
        if not 0.0 <= strength <= 1.0:
            raise StylizeError(f"--style-weight {strength}: must be between 0 and 1")
        if strength != 1.0 and not self.record["net"].get("strength"):
            raise StylizeError(f"model {self.name} was trained at full strength only; --style-weight needs a "
                               "model trained with strength (the default)")
        _, h, w = x.shape
        # two stride-2 convolutions: sizes must be multiples of 4; and at least 8 for the 9x9 reflection pad
        ph, pw = max(8, h + (-h) % 4) - h, max(8, w + (-w) % 4) - w
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        s = torch.tensor([strength], device=self.device) if self.record["net"].get("strength") else None
        tile = self.tile if tile is None else tile
        over_budget = (h + ph) * (w + pw) > tiling.budget_pixels(self.memory_mb, self.net.cfg.width)
        if (tile and max(h, w) > tile) or (not tile and over_budget):
            return self._tiled(x, styles, s, tile or self.tile_size(), mode, dtype)
        try:
            return self._whole(x, styles, s, ph, pw, mode, dtype)
        except torch.cuda.OutOfMemoryError:
            pass  # tile outside this block: its traceback still holds the failed attempt's tensors
        torch.cuda.empty_cache()
        budget = self.memory_mb
        if self.device.type == "cuda":  # another process may hold most of the card
            budget = min(budget, torch.cuda.mem_get_info(self.device)[0] / 2**20 / 2)
        tile = self.tile_size(budget)
        if self.notice:
            self.notice(f"out of GPU memory for {w}x{h} in one piece; stylizing it in tiles of {tile} px")
        return self._tiled(x, styles, s, tile, mode, dtype)

    def _whole(self, x, styles, s, ph: int, pw: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
        _, h, w = x.shape
        xb = x[None].to(self.device)
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode=mode)
        if styles is not None:
            styles = styles.to(self.device)[None]
            if styles.dim() == 4 and (ph or pw):
                styles = F.pad(styles, (0, pw, 0, ph), mode="replicate")
        y = self.net(xb, Condition(styles, s))[0, :, :h, :w].clamp_(0, 1)
        return (y.mul_(255).round_().to(dtype) if dtype == torch.uint8 else y.float().contiguous()).cpu()

    def _tiled(self, x, styles, s, tile: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
        if styles is not None:  # weights go to the device now; spatial maps stay here and go tile by tile
            styles = styles[None].to(self.device) if styles.dim() == 1 else styles[None].cpu()
        return tiling.run_tiles(self.net, x.cpu(), Condition(styles, s), tile, self.device, self.notice,
                                pad_mode=mode, dtype=dtype, memory_mb=self.memory_mb, progress=self.tile_progress)


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


def load_stylizer(model: str | Path = DEFAULT_MODEL, device: str = "auto", style_size: int | None = 512,
                  tile: int | None = None, memory_mb: float = ApplyConfig.memory_mb,
                  notice: Callable[[str], None] | None = None, tile_progress: Callable[[int, int], None] | None = None):
    """A Stylizer for transformer models or an AdaINStylizer for adaptive ones (which run untiled)."""
    record = modelfile.load(model)
    if record.get("kind") == "adain":
        return AdaINStylizer(record, device, style_size)
    return Stylizer(record, device, tile, memory_mb, notice, tile_progress)


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
            while str(p).casefold() in taken:  # same name from different places (or only in case)
                p = out_dir / rel.with_name(f"{rel.stem}_{k}{suffix}")
                k += 1
            taken.add(str(p).casefold())
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
    interrupted: bool = False


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a kill the CLI turns into one) during apply_files. Whatever was finished is in
    `report`; no output is half-written, so a run with skip_existing does only what is missing."""

    def __init__(self, report: ApplyReport):
        super().__init__("interrupted")
        self.report = report


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or isinstance(e, RuntimeError) and (
        "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower())


def _wait_all(futures) -> None:
    """Wait for writes in progress even through another Ctrl-C: each takes moments, and waiting is
    what guarantees that every output is whole or absent."""
    while True:
        try:
            wait(futures)
            return
        except KeyboardInterrupt:
            continue


def _remove_stale_parts(paths: list[Path]) -> None:
    """Temporary files of outputs that a killed run (SIGKILL, power cut) left in the middle of writing:
    images.save_pil names them .<stem>.<random><suffix>.part beside the output."""
    by_folder: dict[Path, list[Path]] = {}
    for p in paths:
        by_folder.setdefault(p.parent, []).append(p)
    for folder, outs in by_folder.items():
        if not folder.is_dir():
            continue
        names = {(f".{p.stem}.", f"{p.suffix}.part") for p in outs}
        for f in folder.glob(".*.part"):
            if any(f.name.startswith(a) and f.name.endswith(b) for a, b in names):
                f.unlink(missing_ok=True)


def apply_files(stylizer: Stylizer | AdaINStylizer, inputs: list[str], out: Path | None = None, out_dir: Path = Path("stylized"),
                styles: list[str] | None = None, strength: float = 1.0, mask: str | None = None,
                max_size: int | None = None, quality: int = 95, skip_existing: bool = False,
                preserve_color: bool = False, match_color: bool = False,
                progress: Callable[[Path, Path], None] | None = None, workers: int = 2) -> ApplyReport:
    """Stylize every input; a file that fails (unreadable, corrupt, unwritable) is reported and the
    rest go on. Failures are in input order.

    A small pipeline keeps the network busy: `workers` threads read and decode the next images
    while it runs, and as many encode and write finished ones (Pillow and torch release the GIL).
    Photos over the memory budget are read, stylized and written one at a time, so a batch of huge
    photos stays within about the memory of one. `progress(src, dst)` is called once per input,
    serialized, possibly from a writer thread. On KeyboardInterrupt the images already stylized are
    still written, then Interrupted is raised with the report.
    """
    items = expand_inputs(inputs)
    paths = output_paths(items, out, out_dir)
    stylizer.condition(styles, match_color=match_color)  # bad styles fail before any file is read
    report, t0, lock = ApplyReport(), time.perf_counter(), threading.Lock()
    order = {src: i for i, (src, _) in enumerate(items)}
    tiled_net = isinstance(stylizer, Stylizer)  # takes uint8 photos and gives uint8 results
    big = tiling.budget_pixels(stylizer.memory_mb, stylizer.net.cfg.width) if tiled_net else 1 << 62
    workers = max(1, workers)

    def done(src: Path, dst: Path, error: str | None = None):
        with lock:
            if error is None:
                report.written.append(dst)
            else:
                report.failed.append((src, error))
            if progress:
                progress(src, dst)

    _remove_stale_parts(paths)
    todo = []
    for (src, _), dst in zip(items, paths):
        if skip_existing and dst.exists():
            report.skipped.append(dst)
            if progress:
                progress(src, dst)
        else:
            todo.append((src, dst))

    def read(src: Path):
        x, alpha = load_image(src, max_size, torch.uint8 if tiled_net else torch.float32)
        return x, alpha, load_mask(mask, tuple(x.shape[1:])) if mask is not None else None

    def write(src: Path, dst: Path, y: torch.Tensor, alpha):
        try:
            save_image(y, dst, alpha, quality)
            done(src, dst)
        except StylizeError as e:
            done(src, dst, str(e))

    readers = ThreadPoolExecutor(workers, thread_name_prefix="stylize-read")
    writers = ThreadPoolExecutor(workers, thread_name_prefix="stylize-write")
    queue, reads, writes, ahead = iter(todo), deque(), deque(), workers + 1
    try:
        while True:
            while len(reads) < ahead and (job := next(queue, None)) is not None:
                reads.append((job, readers.submit(read, job[0])))
            if not reads:
                break
            (src, dst), loading = reads.popleft()
            try:
                x, alpha, m = loading.result()
            except StylizeError as e:
                done(src, dst, str(e))
                continue
            except Exception as e:  # Pillow raises more than it documents on broken files
                done(src, dst, f"{src}: cannot read ({type(e).__name__}: {e})")
                continue
            huge = x.shape[1] * x.shape[2] > big
            ahead = 1 if huge else workers + 1  # one huge photo in memory at a time, not a queue of them
            try:
                cond = stylizer.condition(styles, m, x, match_color)
                if tiled_net:
                    y = stylizer(x, cond, strength, dtype=torch.uint8)
                else:
                    y = stylizer(x, cond, strength)
                if preserve_color and not match_color:
                    y = keep_luminance(y.float() / 255 if y.dtype == torch.uint8 else y,
                                       x.float() / 255 if x.dtype == torch.uint8 else x)
            except StylizeError as e:
                done(src, dst, str(e))
                continue
            except (MemoryError, RuntimeError) as e:
                if not _out_of_memory(e):
                    raise
                done(src, dst, f"{src}: out of memory ({x.shape[2]}x{x.shape[1]}); try a smaller --memory or --max-size")
                continue
            del x
            writes.append(writers.submit(write, src, dst, y, alpha))
            del y, alpha
            while len(writes) > (0 if huge else workers):  # back-pressure: finished images are memory too
                writes[0].result()  # left in the queue until done, so an interrupt still waits for it
                writes.popleft()
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        for _, loading in reads:
            loading.cancel()
        readers.shutdown(wait=False, cancel_futures=True)
        _wait_all(writes)
        writers.shutdown()
    for f in writes:  # a write that raised more than a file's own failure (those are in the report)
        if isinstance(f.exception(), KeyboardInterrupt):
            report.interrupted = True
        elif f.exception() is not None:
            raise f.exception()
    report.failed.sort(key=lambda f: order.get(f[0], 0))
    position = {p: i for i, p in enumerate(paths)}
    report.written.sort(key=lambda p: position.get(p, 0))
    report.seconds = time.perf_counter() - t0
    if report.interrupted:
        raise Interrupted(report)
    return report

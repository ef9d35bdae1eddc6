"""Stylizing many files: inputs expanded, outputs named, and a read / stylize / write pipeline.

Torch-free, so that the ONNX Runtime path (onnx_runtime.py) starts without it. A stylizer here is
an engine (recipe.Stylizer); each photo goes through the recipe (recipe.Request.run).
"""
from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from stylize.apply.outputs import refuse_inputs
from stylize.apply.recipe import Request
from stylize.apply.video import VIDEO_EXTENSIONS, WRITABLE
from stylize.errors import StylizeError
from stylize.files import folder_lock, in_use
from stylize.settings import ApplyConfig
from stylize.images import HAS_ALPHA, IMAGE_EXTENSIONS, SAVE_FORMATS, UNREADABLE_EXTENSIONS, find_images, frame_count, metadata, pixel_count, save_image


# Photos read ahead together may have at most this many pixels by their headers (about 450 MB while
# they decode); a bigger photo is read alone. Whether a decoded photo is over the network's budget is
# known only once it is read: this keeps a batch of huge photos from being decoded side by side.
READ_AHEAD_PIXELS = 64_000_000


def expand_inputs(inputs: list[str], exclude: Path | None = None,
                  notice: Callable[[str], None] | None = None) -> list[tuple[Path, Path]]:
    """Files, folders (recursive) and globs -> (file, path relative to where it was found). A folder
    never yields files from `exclude` below it (the output folder: a second run must not take the
    first one's outputs as inputs); photos Pillow cannot read are named to `notice`, not passed over."""
    out = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir():
            skip = exclude.resolve() if exclude is not None else None
            if skip is not None and not (skip != p.resolve() and skip.is_relative_to(p.resolve())):
                skip = None  # not below this folder; its own folder as output is refused by output_paths

            def wanted(f: Path) -> bool:
                return skip is None or not f.resolve().is_relative_to(skip)

            found = [(f, f.relative_to(p)) for f in find_images(p) if wanted(f)]
            unreadable = sorted(f for f in p.rglob("*") if f.suffix.lower() in UNREADABLE_EXTENSIONS and wanted(f))
            if unreadable and notice:
                kinds = ", ".join(sorted({f.suffix.lower() for f in unreadable}))
                notice(f"{spec}: skipping {len(unreadable)} file(s) Pillow cannot read ({kinds}); convert them to "
                       "JPEG or PNG first")
            if not found:
                raise StylizeError(f"{spec}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
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
            suffix = _output_suffix(rel.suffix.lower())
            p = out_dir / rel.with_suffix(suffix)
            k = 2
            while str(p).casefold() in taken:  # same name from different places (or only in case)
                p = out_dir / rel.with_name(f"{rel.stem}_{k}{suffix}")
                k += 1
            taken.add(str(p).casefold())
            paths.append(p)
    refuse_inputs(paths, [f for f, _ in items])
    return paths


def _output_suffix(suffix: str) -> str:
    """An input's own format where it can be written, else PNG (photos) or MP4 (video)."""
    if suffix in SAVE_FORMATS or suffix in WRITABLE:
        return suffix
    return ".mp4" if suffix in VIDEO_EXTENSIONS else ".png"


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
            if any(f.name.startswith(a) and f.name.endswith(b) for a, b in names) and not in_use(f):
                f.unlink(missing_ok=True)


def written(path: Path) -> bool:
    """Whether --skip-existing may skip this output: there, and not empty (a 0-byte file is not a picture)."""
    return path.is_file() and path.stat().st_size > 0


def _one_run_per_folder(paths: list[Path], share: tuple[int, int], notice: Callable[[str], None]):
    """The batch's output folder (where every output goes, sub-folders and all) held for this run:
    a second batch into it waits, rather than both stylizing the same photos or one deleting the
    other's temporaries. Processes sharing one batch (share) divide it between them instead."""
    if share[1] > 1 or not paths:
        return contextlib.nullcontext()
    folder = Path(os.path.commonpath([str(p.parent.absolute()) for p in paths]))
    return folder_lock(folder, lambda: notice(f"waiting for another stylize run writing to {folder}"))


def plan(inputs: list[str], out: Path | None = None, out_dir: Path = Path("stylized"),
         notice: Callable[[str], None] | None = None) -> list[tuple[Path, Path]]:
    """Inputs expanded (expand_inputs) and each given its output (output_paths): (photo, output)
    pairs, or a StylizeError before any work."""
    items = expand_inputs(inputs, exclude=out_dir if out is None else None, notice=notice)
    return list(zip((f for f, _ in items), output_paths(items, out, out_dir)))


def apply_files(stylizer, inputs: list[str] | list[tuple[Path, Path]], config: ApplyConfig | None = None,
                out: Path | None = None, progress: Callable[[Path, Path], None] | None = None, workers: int = 2,
                share: tuple[int, int] = (0, 1), notice: Callable[[str], None] | None = None) -> ApplyReport:
    """Stylize every input (files, folders, globs; or the (photo, output) pairs of plan(), which
    `out` and `config.out_dir` then do not change) as `config` asks (styles, strength, mask, colour,
    max_size, quality, skip_existing); a file that fails (unreadable, corrupt, unwritable) is reported and the
    rest go on. Failures are in input order. Outputs keep the photo's colour profile, EXIF and DPI;
    what cannot be kept (the frames after the first, an alpha channel in a JPEG) is said to `notice`. `share` (k, n): only every n-th input from the k-th, for
    one of n processes sharing a batch; outputs are named from the whole list, so they do not depend
    on the sharing.

    A small pipeline keeps the network busy: `workers` threads read and decode the next images
    while it runs, and as many encode and write finished ones (Pillow and torch release the GIL).
    Photos over the memory budget are read, stylized and written one at a time, so a batch of huge
    photos stays within about the memory of one. `progress(src, dst)` is called once per input,
    serialized, possibly from a writer thread. On KeyboardInterrupt the images already stylized are
    still written, then Interrupted is raised with the report.
    """
    c = config or ApplyConfig()
    mask, max_size = c.mask, c.max_size
    pairs = inputs if inputs and isinstance(inputs[0], tuple) else plan(inputs, out, Path(c.out_dir))
    pairs = pairs[share[0]::share[1]]  # before stale .part files go: not others'
    items, paths = [(src, None) for src, _ in pairs], [dst for _, dst in pairs]
    request = Request.of(c, stylizer)  # bad requests fail before any file is read
    request.condition(stylizer)
    report, t0, lock = ApplyReport(), time.perf_counter(), threading.Lock()
    order = {src: i for i, (src, _) in enumerate(items)}
    big = stylizer.budget
    workers = max(1, workers)

    def done(src: Path, dst: Path, error: str | None = None):
        with lock:
            if error is None:
                report.written.append(dst)
            else:
                report.failed.append((src, error))
            if progress:
                progress(src, dst)

    notice = notice or (lambda message: None)
    with _one_run_per_folder(paths, share, notice):
        _remove_stale_parts(paths)
        todo = []
        for (src, _), dst in zip(items, paths):
            if c.skip_existing and written(dst):
                report.skipped.append(dst)
                if progress:
                    progress(src, dst)
            else:
                todo.append((src, dst))


        def read(src: Path):
            x, alpha = stylizer.load(src, max_size)
            if (frames := frame_count(src)) > 1:
                notice(f"{src}: animated, {frames} frames; stylized the first only")
            return x, alpha, stylizer.load_mask(mask, tuple(x.shape[1:])) if mask is not None else None, metadata(src)

        def write(src: Path, dst: Path, y, alpha, meta):
            try:
                if alpha is not None and SAVE_FORMATS.get(dst.suffix.lower()) not in HAS_ALPHA:
                    notice(f"{dst}: {dst.suffix} has no transparency, so the photo's alpha channel is dropped "
                           "(write .png or .webp to keep it)")
                save_image(y, dst, alpha, c.quality, meta)
                done(src, dst)
            except StylizeError as e:
                done(src, dst, str(e))

        readers = ThreadPoolExecutor(workers, thread_name_prefix="stylize-read")
        writers = ThreadPoolExecutor(workers, thread_name_prefix="stylize-write")
        queue, reads, writes, ahead = deque(todo), deque(), deque(), workers + 1
        try:
            while True:
                while len(reads) < ahead and queue:
                    pixels = pixel_count(queue[0][0])
                    if reads and sum(r[2] for r in reads) + pixels > READ_AHEAD_PIXELS:
                        break
                    job = queue.popleft()
                    reads.append((job, readers.submit(read, job[0]), pixels))
                if not reads:
                    break
                (src, dst), loading, _ = reads.popleft()
                try:
                    x, alpha, m, meta = loading.result()
                except StylizeError as e:
                    done(src, dst, str(e))
                    continue
                except Exception as e:  # Pillow raises more than it documents on broken files
                    done(src, dst, f"{src}: cannot read ({type(e).__name__}: {e})")
                    continue
                finally:
                    del loading  # the future holds the photo: without this, `del x` below would free nothing
                huge = x.shape[1] * x.shape[2] > big
                ahead = 1 if huge else workers + 1  # one huge photo in memory at a time, not a queue of them
                try:
                    y = request.run(stylizer, x, request.condition(stylizer, x, m))
                except StylizeError as e:
                    done(src, dst, str(e))
                    continue
                except (MemoryError, RuntimeError) as e:
                    if not _out_of_memory(e):
                        raise
                    done(src, dst, f"{src}: out of memory ({x.shape[2]}x{x.shape[1]}); try a smaller --memory or --max-size")
                    continue
                del x
                writes.append(writers.submit(write, src, dst, y, alpha, meta))
                del y, alpha
                while len(writes) > (0 if huge else workers):  # back-pressure: finished images are memory too
                    writes[0].result()  # left in the queue until done, so an interrupt still waits for it
                    writes.popleft()
        except KeyboardInterrupt:
            report.interrupted = True
        finally:
            for _, loading, _ in reads:
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

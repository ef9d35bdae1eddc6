"""`stylize apply`: photos, folders, globs, a pipe or a video through a model (stylize/apply/)."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from stylize.cli.common import (check_writable, choice, choices, command, complete_models, config_from, fail, from_env,
                                given, kill_as_interrupt, notice, progress_bar, steps_bar)
from stylize.errors import StylizeError
from stylize.settings import DEFAULT_ADAPTIVE_MODEL, DEVICES, RUNTIMES, ApplyConfig

A = ApplyConfig()
COLOR_METHODS = ("luminance", "match")  # color.COLOR_METHODS, without torch


@command()
def apply(
    ctx: typer.Context,
    inputs: List[str] = typer.Argument(..., metavar="PHOTO", help="Photos, folders (recursive) or globs."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", autocompletion=complete_models, help=f"Model name (see `stylize models`) or file [default: {A.model}, or {DEFAULT_ADAPTIVE_MODEL} when --style is an image]."),
    styles: Optional[List[str]] = typer.Option(None, "--style", "-s", metavar="STYLE", help="A style of the model (name or index), or a style image for adaptive models; NAME=W mixes."),
    strength: float = typer.Option(A.strength, "--style-weight", "--strength", help="Style strength in [0, 1]; 0 gives back the photo (adaptive: the paper's alpha)."),
    style_size: Optional[int] = typer.Option(A.style_size, min=16, help="Adaptive models: longest side the style image is "
                                             "encoded at (scales the strokes) [default: the model's; AdaIN: 512]."),
    preserve_color: bool = typer.Option(False, help="Keep the photo's colours."),
    color_method: str = typer.Option("luminance", metavar="METHOD", autocompletion=choices(*COLOR_METHODS), help="With --preserve-color: luminance (any model) or match (recolour the style image; adaptive)."),
    mask: Optional[Path] = typer.Option(None, help="Greyscale mask: white gets the first --style, black the second."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (one input only)."),
    out_dir: Path = typer.Option(A.out_dir, help="Output folder for several inputs; keeps sub-folders."),
    max_size: Optional[int] = typer.Option(A.max_size, min=16, help="Downscale inputs whose longest side is larger (default: keep the resolution)."),
    tile: int = typer.Option(A.tile, min=0, help="Stylize in tiles of this side, px (0: only images over --memory); the result is the untiled one."),
    memory_mb: int = typer.Option(A.memory_mb, "--memory", min=64, help="Working memory for the network, MB; larger images are tiled."),
    quality: int = typer.Option(A.quality, min=1, max=100, help="JPEG/WebP quality."),
    skip_existing: bool = typer.Option(False, help="Skip inputs whose output already exists (to resume an interrupted batch)."),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}.", autocompletion=choices(*DEVICES)),
    runtime: str = typer.Option(A.runtime, envvar="STYLIZE_RUNTIME", autocompletion=choices(*RUNTIMES), help="On the CPU: onnx (ONNX Runtime, faster), torch, or auto (onnx where it covers the request)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print errors only: no progress, notices or summary."),
    smooth: float = typer.Option(A.smooth, min=0.0, max=0.99, help="Video: steady the strokes along the motion, where it explains the change (0: every frame on its own)."),
    optimize: int = typer.Option(A.optimize, min=0, metavar="STEPS", help="No network: optimize the photo itself toward one --style painting for STEPS steps (Gatys et al.; 200: about 45 s on 2 CPU cores). Each painting's own marks."),
):
    """Stylize photos with a trained model. Folders are searched recursively; a file that fails is
    reported and the rest go on (exit 1 if any failed). Ctrl-C or kill stops cleanly; run again with
    --skip-existing to finish. For pipes, `-` as the photo reads it from standard input, and the
    result goes to standard output as a PNG (so does `--out -`). A video (MP4, MOV, MKV, WebM, AVI) is
    stylized frame by frame with its sound kept, one video per command."""
    model, videos = _check_request(ctx)
    to_stdout = str(out) == "-" or (inputs == ["-"] and out is None)
    piped = None
    if "-" in inputs or to_stdout:
        inputs, out = _pipe_files(ctx, inputs, out, to_stdout)
        piped = inputs[0] if "-" in ctx.params["inputs"] else None  # errors say "standard input", not a temp path
        quiet = quiet or to_stdout  # standard output carries the image alone
    from stylize.distributed import Shard
    from stylize.apply.batch import plan
    from stylize.apply.choose import open_stylizer

    say = (lambda message: None) if quiet else notice
    pairs = plan(inputs, out, out_dir, say)  # --out with several inputs fails here, before any work
    _check_outputs([dst for _, dst in pairs], out, out_dir, videos)
    shard = Shard.from_env()  # under torchrun: every N-th input, on this process's own GPU
    shard.use_gpu()
    config = config_from(ApplyConfig, ctx.params, model=model)
    if videos:
        from stylize.apply import video

        video.check(*pairs[0])
    stylizer = open_stylizer(config, say, steps_bar("tiles", "tile", len(pairs), quiet),
                             steps_bar("optimizing", "step", len(pairs), quiet))
    if videos:
        return _apply_video(stylizer, *pairs[0], config, quiet, say)
    _apply_files(stylizer, pairs, config, shard, say, quiet, to_stdout, piped)


def _check_request(ctx: typer.Context) -> tuple[str, list[str]]:
    """Every refusal that needs no model, before any work; the model to use, and the inputs that are
    videos."""
    p = ctx.params  # as click parsed them: strings for paths, tuples for lists
    out = Path(p["out"]) if p["out"] is not None else None
    styles, mask, optimize = p["styles"], p["mask"], p["optimize"]
    choice(p["device"], DEVICES, "--device")
    choice(p["runtime"], RUNTIMES, "STYLIZE_RUNTIME" if from_env(ctx, "runtime") else "--runtime")
    if out is not None and given(ctx, "out_dir"):
        raise StylizeError("--out names one output file and --out-dir a folder for several: give one of them")
    if out is not None and str(out) != "-" and (out.is_dir() or not out.suffix):  # "folder/" arrives as "folder"
        raise StylizeError(f"--out {out}: {'a folder' if out.is_dir() else 'no file type'}; name one output file "
                           f"(photo.png), or use --out-dir {out} for a folder")
    from stylize.images import IMAGE_EXTENSIONS
    from stylize.apply.mixing import style_image
    from stylize.apply.budget import MIN_TILE

    model = p["model"]
    if optimize and (model is not None or mask is not None):
        raise StylizeError("--optimize paints without a model, with one --style painting: leave out "
                           + ("--model" if model is not None else "--mask"))
    if model is None:  # a painting as --style means an adaptive model
        paintings = styles and any(Path(style_image(s)[0]).suffix.lower() in IMAGE_EXTENSIONS for s in styles)
        model = DEFAULT_ADAPTIVE_MODEL if paintings else A.model
    choice(p["color_method"], COLOR_METHODS, "--color-method")
    if 0 < p["tile"] < MIN_TILE:
        raise StylizeError(f"--tile {p['tile']}: give 0 (tiles only where they are needed) or at least {MIN_TILE} px")
    from stylize.apply.video import is_video

    inputs = p["inputs"]
    videos = [i for i in inputs if is_video(i)]
    if videos and optimize:
        raise StylizeError(f"{videos[0]}: --optimize takes photos, not videos (minutes a frame)")
    if videos and (len(inputs) > 1 or mask is not None or str(out) == "-"):
        raise StylizeError(f"{videos[0]}: a video is stylized alone, without --mask or pipes: one video per command")
    return model, videos


def _check_outputs(paths: list[Path], out: Path | None, out_dir: Path, videos: list[str]) -> None:
    """The output's file type and folder, before any work rather than after it."""
    if not videos:
        from stylize.images import check_output_format

        for dst in paths[:1] if out is not None else []:
            check_output_format(dst)
    check_writable(out.parent if out is not None else out_dir)


def _apply_files(stylizer, pairs: list[tuple[Path, Path]], config: ApplyConfig, shard, say, quiet: bool,
                 to_stdout: bool, piped: str | None) -> None:
    """The photos (under torchrun, this process's share), a bar, the failures and a summary."""
    from stylize.apply.batch import Interrupted, apply_files, written

    total = len(pairs)
    mine = len(range(shard.rank, total, shard.world))
    # the bar counts the work to do, so its img/s is the real rate on a resumed run
    paths = [dst for _, dst in pairs]
    existing = {p for p in paths[shard.rank::shard.world] if written(p)} if config.skip_existing else set()
    with progress_bar(total=mine - len(existing), unit="img", disable=total < 2 or not shard.lead or quiet) as bar, \
            kill_as_interrupt() as killed:
        try:
            report = apply_files(stylizer, pairs, config, progress=lambda src, dst: dst in existing or bar.update(1),
                                 share=(shard.rank, shard.world), notice=say)
        except Interrupted as e:
            report = e.report
    for src, why in report.failed:
        typer.echo(f"error: {why.replace(piped, 'standard input') if piped else why}", err=True)
    if to_stdout and report.written:
        sys.stdout.buffer.write(report.written[0].read_bytes())
        sys.stdout.buffer.flush()
    elif not quiet:
        _summary(report, total, shard)
    shard.wait_for_all()  # under torchrun: no process ends (and has torchrun end the others) before all are done
    if report.interrupted:
        left = mine - len(report.written) - len(report.failed) - len(report.skipped)
        fail(f"interrupted with {left} left; nothing is half-written: run the same command with --skip-existing "
             "to finish", 128 + killed.get("signum", signal.SIGINT))
    if report.failed:
        raise typer.Exit(1)


def _summary(report, total: int, shard) -> None:
    if total == 1 and report.written:
        typer.echo(f"wrote {report.written[0]}")
    elif total == 1 and report.skipped:
        typer.echo(f"skipped {report.skipped[0]}: it exists (--skip-existing)")
    elif total > 1:
        rate = f", {len(report.written) / report.seconds:.2f} img/s" if report.written and report.seconds else ""
        who = f"process {shard.rank + 1} of {shard.world}: " if shard.world > 1 else ""
        typer.echo(f"{who}{len(report.written)} written, {len(report.skipped)} skipped, {len(report.failed)} failed "
                   f"in {report.seconds:.1f} s{rate}")


def _apply_video(stylizer, src: Path, dst: Path, config: ApplyConfig, quiet: bool, say) -> None:
    from tqdm import tqdm

    from stylize.apply.batch import written
    from stylize.apply.video import frame_count, stylize_video

    if config.skip_existing and written(dst):
        typer.echo(f"skipped {dst}: it exists (--skip-existing)")
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=frame_count(src) or None, unit="frame", disable=quiet, dynamic_ncols=True) as bar, \
            kill_as_interrupt() as killed:
        try:
            report = stylize_video(stylizer, src, dst, config, progress=lambda n: bar.update(n - bar.n), notice=say)
        except KeyboardInterrupt:
            bar.close()
            fail(f"interrupted; nothing written to {dst}", 128 + killed.get("signum", signal.SIGINT))
    if not quiet:
        sound = {"copied": ", sound copied", "re-encoded": ", sound re-encoded", "none": ""}[report.audio]
        typer.echo(f"wrote {dst} ({report.frames} frames in {report.seconds:.1f} s{sound})")


def _pipe_files(ctx: typer.Context, inputs: list[str], out: Path | None, to_stdout: bool) -> tuple[list[str], Path | None]:
    """`-` for standard input or output: through files in a private temporary folder, since the
    pipeline reads and writes files (atomically); the folder goes when the command ends."""
    import shutil
    import tempfile

    if len(inputs) != 1:
        raise StylizeError("'-' (standard input or output) works with exactly one photo")
    tmp = Path(tempfile.mkdtemp(prefix="stylize-"))
    ctx.call_on_close(lambda: shutil.rmtree(tmp, ignore_errors=True))
    if inputs == ["-"]:
        data = sys.stdin.buffer.read()
        if not data:
            raise StylizeError("standard input: empty; pipe a photo in, e.g. stylize apply - < photo.jpg > out.png")
        (tmp / "stdin").write_bytes(data)
        inputs = [str(tmp / "stdin")]
    return inputs, tmp / "stdout.png" if to_stdout else out

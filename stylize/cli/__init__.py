"""The `stylize` command. Options take their defaults from settings.py; torch loads only inside a
command, so `stylize --help` starts fast. Every StylizeError becomes one line on stderr, exit 1."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from stylize.errors import StylizeError
from stylize.settings import AUTO_STYLE_LOSS, DEFAULT_ADAPTIVE_MODEL, DEVICES, LOSS_NETS, LR_SCHEDULES, NETWORKS, NORMS, RUNTIMES, STYLE_LOSSES, ApplyConfig, ServeConfig, TrainConfig

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Fast neural style transfer: train style networks and apply them to photos.")
T, A, S = TrainConfig(), ApplyConfig(), ServeConfig()
COLOR_METHODS = ("luminance", "match")  # color.COLOR_METHODS, without torch
STYLE_LOSS_CHOICES = ("auto",) + STYLE_LOSSES


class Command(TyperCommand):
    """Every command's help in one style. An option's value is named by what it takes, where the
    option does not name it itself: N a whole number, X a number, PATH a file or folder, and a word by
    the option's own name (--device DEVICE); click would print <int range>, <float>, <path>, <str>.
    Arguments read PHOTO... in the usage line (typer's own: {PHOTO})."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if p.metavar is None and not getattr(p, "is_flag", False):
                p.metavar = _METAVARS.get(p.type.name, p.name.upper()) if p.param_type_name == "option" else p.name.upper()

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces


# by the name of the option's type (typer carries its own copy of click's types)
_METAVARS = {"int": "N", "int range": "N", "integer": "N", "float": "X", "float range": "X", "path": "PATH"}


def _choices(*choices: str):
    """Shell completion for an option that takes one of `choices` (typer's autocompletion=)."""
    return lambda incomplete: [c for c in choices if c.startswith(incomplete)]


def _models(incomplete: str) -> list[str]:
    """Shell completion for --model: the names `stylize models` lists (torch-free: the files found,
    not read), or, for what looks like a path, its model files and folders."""
    import glob
    import os

    if incomplete.startswith((".", "~", os.sep)) or os.sep in incomplete:
        found = glob.glob(os.path.expanduser(incomplete) + "*")
        return sorted(f + os.sep if os.path.isdir(f) else f for f in found if os.path.isdir(f) or f.endswith(".pt"))
    from stylize.models.modelfile import find_models

    return [p.stem for p in find_models() if p.stem.startswith(incomplete)]


def _print_version(value: bool):
    if value:
        from stylize import __version__

        typer.echo(f"stylize {__version__}")
        raise typer.Exit()


@app.callback()
def options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                         help="Print the version and exit.")):
    """Fast neural style transfer: train style networks and apply them to photos."""


def fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def clean_errors(command):
    """Turn user errors into one line and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        for name, value in kwargs.items():  # before any work: a NaN would train or stylize to nothing
            if isinstance(value, float) and not math.isfinite(value):
                fail(f"--{name.replace('_', '-')} {value}: must be a finite number")
        try:
            return command(*args, **kwargs)
        except StylizeError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except MemoryError:
            fail("out of memory; try --max-size or a smaller image")
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                fail("out of memory on the device; try --max-size, --device cpu, or a smaller image")
            raise

    return run


_AUTO = ", ".join(f"{v} for {k}" for k, v in AUTO_STYLE_LOSS.items())


def _from_env(ctx: typer.Context, name: str) -> bool:
    """Whether an option's value came from its environment variable."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "ENVIRONMENT"


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set an option (on the command line or through its environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _choice(value: str, choices, flag: str) -> str:
    if value not in choices:
        raise StylizeError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    return value


@app.command(cls=Command)
@clean_errors
def train(
    ctx: typer.Context,
    style: Optional[List[str]] = typer.Option(None, "--style", "-s", metavar="IMAGE", help="Style image (repeat, or a folder, for several styles)."),
    content: Optional[Path] = typer.Option(T.content, help="Folder of training photos [default: $STYLIZE_CONTENT or ~/.stylize/content]."),
    out: Path = typer.Option(T.out, "--out", "-o", help="Model file to write; run files go to <out>_run/."),
    norm: str = typer.Option(T.norm, help=f"Normalization: {', '.join(NORMS)}.", autocompletion=_choices(*NORMS)),
    network: str = typer.Option(T.network, autocompletion=_choices(*NETWORKS), help=f"Architecture: {', '.join(NETWORKS)} (light: separable residual blocks, fast on CPUs)."),
    width: int = typer.Option(T.width, min=1, help="Channels of the first layer (32 as in Johnson et al.)."),
    strength: bool = typer.Option(T.strength, help="Train for every style strength (enables apply --style-weight)."),
    iterations: int = typer.Option(T.iterations, min=1, help="Training steps (batches) in all."),
    batch_size: int = typer.Option(T.batch_size, min=1, help="Photos per iteration; under torchrun, per process."),
    image_size: int = typer.Option(T.image_size, min=16, help="Side of the square training crops."),
    content_size: int = typer.Option(T.content_size, min=0, help="Shorter side training photos are resized to "
                                     "before cropping (0: the crop size); larger: crops show details, strokes come out larger."),
    style_size: Optional[int] = typer.Option(T.style_size, min=16, help="Longest side of the style image for its "
                                             "statistics [default: 1024; 384 for --norm adaptive, a painting per step]."),
    content_weight: float = typer.Option(T.content_weight, min=0, help="Weight of the content loss (the photo's features kept)."),
    style_weight: float = typer.Option(T.style_weight, min=0, help="Weight of the style loss."),
    tv_weight: float = typer.Option(T.tv_weight, min=0, help="Weight of the total-variation loss."),
    color_weight: float = typer.Option(T.color_weight, min=0, help="Weight of the palette term (output colours distributed as the style's)."),
    pixel_weight: float = typer.Option(T.pixel_weight, min=0, help="Pull of low-strength outputs toward the photo."),
    jitter: int = typer.Option(T.jitter, min=0, help="Translate output and photo by up to this many pixels before "
                               "the loss network, anew each step (takes away the fine hatching that meets the loss cheaply)."),
    lr: float = typer.Option(T.lr, min=0, help="Learning rate (Adam)."),
    style_lr_scale: Optional[float] = typer.Option(T.style_lr_scale, min=0, help="Learning-rate multiple of what "
                                                   "depends on the style: several styles' tables; for --norm adaptive, "
                                                   "the style predictor [default: 10; 4 for --norm adaptive]."),
    lr_schedule: str = typer.Option(T.lr_schedule, help="cosine (down to lr/10 at the end) or constant.",
                                    autocompletion=_choices(*LR_SCHEDULES)),
    loss_net: str = typer.Option(T.loss_net, autocompletion=_choices(*LOSS_NETS), help=f"Perceptual network: {', '.join(LOSS_NETS)} (auto: vgg16 "
                                 "where its ImageNet weights are at hand, else efficientnet-lite0)."),
    vgg_weights: Optional[Path] = typer.Option(T.vgg_weights, help="torchvision VGG state-dict file, for offline machines."),
    style_loss: str = typer.Option(T.style_loss, help=f"Style statistic: auto, {', '.join(STYLE_LOSSES)} (auto: {_AUTO}).",
                                   autocompletion=_choices(*STYLE_LOSS_CHOICES)),
    device: str = typer.Option(T.device, help=f"{', '.join(DEVICES)}.", autocompletion=_choices(*DEVICES)),
    seed: int = typer.Option(T.seed, help="Random seed: weights, crops and the order of photos."),
    checkpoint_every: int = typer.Option(T.checkpoint_every, min=0, help="Iterations between checkpoints (0: only at the end)."),
    sample_every: int = typer.Option(T.sample_every, min=0, help="Iterations between sample grids (0: only at the end)."),
    workers: int = typer.Option(T.workers, min=-1, help="Data loader processes (-1: 4 on CUDA, 0 on CPU)."),
    levers: str = typer.Option(T.levers, help="Speed levers: auto (every one but compile on CUDA, none "
                               "elsewhere), none, all, or names such as bf16,channels_last (see stylize/train/speed.py)."),
    init: Optional[Path] = typer.Option(None, metavar="MODEL", autocompletion=_models, help="Model file (or shipped model name) to fine-tune: its network "
                                        "and weights instead of random ones, a fresh optimizer and schedule."),
    resume: Optional[Path] = typer.Option(None, help="Checkpoint to continue to its run's end, with its settings "
                                          "(flags given override: --iterations extends it, --lr, loss weights)."),
):
    """Train a style network on photos with a perceptual loss."""
    _choice(norm, NORMS, "--norm")
    _choice(network, NETWORKS, "--network")
    _choice(lr_schedule, LR_SCHEDULES, "--lr-schedule")
    _choice(loss_net, LOSS_NETS, "--loss-net")
    _choice(style_loss, STYLE_LOSS_CHOICES, "--style-loss")
    _choice(device, DEVICES, "--device")
    from tqdm import tqdm

    from stylize.distributed import Shard
    from stylize.train.training import Interrupted, train as run

    cfg = TrainConfig(style=[str(s) for s in style or []], content=str(content) if content else None, out=str(out),
                      norm=norm, network=network, width=width, strength=strength, iterations=iterations, batch_size=batch_size,
                      image_size=image_size, content_size=content_size, style_size=style_size, content_weight=content_weight,
                      style_weight=style_weight, tv_weight=tv_weight, color_weight=color_weight, pixel_weight=pixel_weight, jitter=jitter, lr=lr,
                      style_lr_scale=style_lr_scale,
                      lr_schedule=lr_schedule, loss_net=loss_net, vgg_weights=str(vgg_weights) if vgg_weights else None,
                      style_loss=style_loss, device=device, seed=seed, checkpoint_every=checkpoint_every,
                      sample_every=sample_every, workers=workers, levers=levers, init=str(init) if init else None)
    bar = None

    def progress(p):
        nonlocal bar
        if p.event == "loss_net":
            typer.echo(p.note)
            return
        if bar is None:
            bar = tqdm(total=p.iterations, initial=p.iteration - 1, unit="it", dynamic_ncols=True)
        if p.event == "step":
            bar.update(1)
            shown = {k: f"{p.losses[k]:.3g}" for k in ("total", "content", "style", "tv") if k in p.losses}  # a
            # batch of only unreadable photos has a total (nan) alone
            if p.skipped:
                shown["skipped"] = p.skipped
            bar.set_postfix(shown, refresh=False)
        else:
            bar.write(f"{p.event} {p.path}")

    lead = Shard.from_env().lead  # under torchrun the first process speaks for the run
    try:
        given = [k for k in ctx.params if k != "resume" and _given(ctx, k)]
        path = run(cfg, progress, resume=resume, overrides=given)
    except Interrupted as e:
        if bar:
            bar.close()
        if not lead:
            raise typer.Exit(128 + e.signum)
        fail(f"{e}; continue with: stylize train --resume {e.checkpoint}", 128 + e.signum)
    if bar:
        bar.close()
    if lead:
        typer.echo(f"wrote {path} (run files in {Path(path).with_name(Path(path).stem + '_run')})")
        from importlib.util import find_spec

        if find_spec("matplotlib") is None:
            typer.echo("note: no losses.png, only losses.csv: plotting needs pip install 'stylize[plots]'", err=True)
        _graph_ahead(path)


def _graph_ahead(model: Path) -> None:
    """Export a new model's graph for CPU apply now, while its user expects to wait, rather than at
    its first `stylize apply` (graphs.py); where apply would not use ONNX Runtime, nothing."""
    import os

    from stylize.apply.engines import graphs, onnx_runtime
    from stylize.models import modelfile

    if os.environ.get("STYLIZE_RUNTIME", A.runtime) == "torch" or not onnx_runtime.installed() or \
            onnx_runtime.accelerator_present() or graphs.cache_problem():
        return
    adaptive = modelfile.describe(modelfile.read_record(model))["norm"] == "adaptive"  # these always take a painting
    try:
        graphs.cached_graph(model, typer.echo, default=not adaptive)
    except StylizeError as e:  # the model is written; apply will say this again, or use PyTorch
        typer.echo(f"note: {e}", err=True)


@app.command(cls=Command)
@clean_errors
def apply(
    ctx: typer.Context,
    inputs: List[str] = typer.Argument(..., metavar="PHOTO", help="Photos, folders (recursive) or globs."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="MODEL", autocompletion=_models, help=f"Model name (see `stylize models`) or file [default: {A.model}, or {DEFAULT_ADAPTIVE_MODEL} when --style is an image]."),
    style: Optional[List[str]] = typer.Option(None, "--style", "-s", metavar="STYLE", help="A style of the model (name or index), or a style image for adaptive models; NAME=W mixes."),
    strength: float = typer.Option(A.strength, "--style-weight", "--strength", help="Style strength in [0, 1]; 0 gives back the photo (adaptive: the paper's alpha)."),
    style_size: Optional[int] = typer.Option(A.style_size, min=16, help="Adaptive models: longest side the style image is "
                                             "encoded at (scales the strokes) [default: the model's; AdaIN: 512]."),
    preserve_color: bool = typer.Option(False, help="Keep the photo's colours."),
    color_method: str = typer.Option("luminance", metavar="METHOD", autocompletion=_choices(*COLOR_METHODS), help="With --preserve-color: luminance (any model) or match (recolour the style image; adaptive)."),
    mask: Optional[Path] = typer.Option(None, help="Greyscale mask: white gets the first --style, black the second."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (one input only)."),
    out_dir: Path = typer.Option(A.out_dir, help="Output folder for several inputs; keeps sub-folders."),
    max_size: Optional[int] = typer.Option(A.max_size, min=16, help="Downscale inputs whose longest side is larger (default: keep the resolution)."),
    tile: int = typer.Option(A.tile, min=0, help="Stylize in tiles of this side, px (0: only images over --memory); the result is the untiled one."),
    memory: int = typer.Option(A.memory_mb, min=64, help="Working memory for the network, MB; larger images are tiled."),
    quality: int = typer.Option(A.quality, min=1, max=100, help="JPEG/WebP quality."),
    skip_existing: bool = typer.Option(False, help="Skip inputs whose output already exists (to resume an interrupted batch)."),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}.", autocompletion=_choices(*DEVICES)),
    runtime: str = typer.Option(A.runtime, envvar="STYLIZE_RUNTIME", autocompletion=_choices(*RUNTIMES), help="On the CPU: onnx (ONNX Runtime, faster), torch, or auto (onnx where it covers the request)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print errors only: no progress, notices or summary."),
    smooth: float = typer.Option(A.smooth, min=0.0, max=0.99, help="Video: steady the strokes along the motion, where it explains the change (0: every frame on its own)."),
    optimize: int = typer.Option(A.optimize, min=0, metavar="STEPS", help="No network: optimize the photo itself toward one --style painting for STEPS steps (Gatys et al.; 200: about 45 s on 2 CPU cores). Each painting's own marks."),
):
    """Stylize photos with a trained model. Folders are searched recursively; a file that fails is
    reported and the rest go on (exit 1 if any failed). Ctrl-C or kill stops cleanly; run again with
    --skip-existing to finish. For pipes, `-` as the photo reads it from standard input, and the
    result goes to standard output as a PNG (so does `--out -`). A video (MP4, MOV, MKV, WebM, AVI) is
    stylized frame by frame with its sound kept, one video per command."""
    _choice(device, DEVICES, "--device")
    _choice(runtime, RUNTIMES, "STYLIZE_RUNTIME" if _from_env(ctx, "runtime") else "--runtime")
    if out is not None and _given(ctx, "out_dir"):
        raise StylizeError("--out names one output file and --out-dir a folder for several: give one of them")
    if out is not None and str(out) != "-" and (out.is_dir() or not out.suffix):  # "folder/" arrives as "folder"
        raise StylizeError(f"--out {out}: {'a folder' if out.is_dir() else 'no file type'}; name one output file "
                           f"(photo.png), or use --out-dir {out} for a folder")
    from stylize.images import IMAGE_EXTENSIONS
    from stylize.apply.mixing import check_strength, style_image
    from stylize.apply.batch import MIN_TILE

    if optimize and (model is not None or mask is not None):
        raise StylizeError("--optimize paints without a model, with one --style painting: leave out "
                           + ("--model" if model is not None else "--mask"))
    if model is None:  # a painting as --style means an adaptive model
        paintings = style and any(Path(style_image(s)[0]).suffix.lower() in IMAGE_EXTENSIONS for s in style)
        model = DEFAULT_ADAPTIVE_MODEL if paintings else A.model
    _choice(color_method, COLOR_METHODS, "--color-method")
    check_strength(strength)
    if 0 < tile < MIN_TILE:
        raise StylizeError(f"--tile {tile}: give 0 (tiles only where they are needed) or at least {MIN_TILE} px")
    from stylize.apply.video import is_video

    videos = [i for i in inputs if is_video(i)]
    if videos and optimize:
        raise StylizeError(f"{videos[0]}: --optimize takes photos, not videos (minutes a frame)")
    if videos and (len(inputs) > 1 or mask is not None or str(out) == "-"):
        raise StylizeError(f"{videos[0]}: a video is stylized alone, without --mask or pipes: one video per command")
    to_stdout = str(out) == "-" or (inputs == ["-"] and out is None)
    piped = None
    if "-" in inputs or to_stdout:
        inputs, out = _pipe_files(ctx, inputs, out, to_stdout)
        piped = inputs[0] if "-" in ctx.params["inputs"] else None  # errors say "standard input", not a temp path
        quiet = quiet or to_stdout  # standard output carries the image alone
    from stylize.distributed import Shard
    from stylize.apply.batch import Interrupted, apply_files, open_stylizer, plan, written

    notice = (lambda message: None) if quiet else _notice
    pairs = plan(inputs, out, out_dir, notice)  # --out with several inputs fails here, before any work
    paths = [dst for _, dst in pairs]
    if not videos:
        from stylize.images import check_output_format

        for dst in paths[:1] if out is not None else []:  # before any work, not after it
            check_output_format(dst)
    _check_writable(out.parent if out is not None else out_dir)
    shard = Shard.from_env()  # under torchrun: every N-th input, on this process's own GPU
    shard.use_gpu()
    total = len(pairs)
    mine = len(range(shard.rank, total, shard.world))
    tile_progress = _steps_bar("tiles", "tile", total, quiet)
    step_progress = _steps_bar("optimizing", "step", total, quiet)

    config = ApplyConfig(model=model, styles=style, strength=strength, mask=str(mask) if mask else None,
                         preserve_color=preserve_color, color_method=color_method, skip_existing=skip_existing,
                         style_size=style_size, max_size=max_size, tile=tile, memory_mb=memory,
                         out_dir=str(out_dir), quality=quality, device=device, runtime=runtime, smooth=smooth,
                         optimize=optimize)
    if videos:
        from stylize.apply import video

        video.check(*pairs[0])
    stylizer = open_stylizer(config, notice, tile_progress, step_progress)
    if videos:
        return _apply_video(stylizer, *pairs[0], config, quiet, notice)
    # the bar counts the work to do, so its img/s is the real rate on a resumed run
    existing = {p for p in paths[shard.rank::shard.world] if written(p)} if skip_existing else set()
    with _bar(total=mine - len(existing), unit="img", disable=total < 2 or not shard.lead or quiet) as bar, \
            _kill_as_interrupt() as killed:
        try:
            report = apply_files(stylizer, pairs, config, progress=lambda src, dst: dst in existing or bar.update(1),
                                 share=(shard.rank, shard.world), notice=notice)
        except Interrupted as e:
            report = e.report
    for src, why in report.failed:
        typer.echo(f"error: {why.replace(piped, 'standard input') if piped else why}", err=True)
    done = len(report.written) + len(report.failed)
    if to_stdout and report.written:
        sys.stdout.buffer.write(report.written[0].read_bytes())
        sys.stdout.buffer.flush()
    elif quiet:
        pass
    elif total == 1 and report.written:
        typer.echo(f"wrote {report.written[0]}")
    elif total == 1 and report.skipped:
        typer.echo(f"skipped {report.skipped[0]}: it exists (--skip-existing)")
    elif total > 1:
        rate = f", {len(report.written) / report.seconds:.2f} img/s" if report.written and report.seconds else ""
        who = f"process {shard.rank + 1} of {shard.world}: " if shard.world > 1 else ""
        typer.echo(f"{who}{len(report.written)} written, {len(report.skipped)} skipped, {len(report.failed)} failed "
                   f"in {report.seconds:.1f} s{rate}")
    shard.wait_for_all()  # under torchrun: no process ends (and has torchrun end the others) before all are done
    if report.interrupted:
        left = mine - done - len(report.skipped)
        fail(f"interrupted with {left} left; nothing is half-written: run the same command with --skip-existing "
             "to finish", 128 + killed.get("signum", signal.SIGINT))
    if report.failed:
        raise typer.Exit(1)


def _steps_bar(desc: str, unit: str, photos: int, quiet: bool):
    """progress(done, steps) for the work on one photo (its tiles, its optimization steps: minutes on a
    CPU, so they are shown); nothing for a batch, whose bar counts photos."""
    bar = None

    def progress(done: int, steps: int):
        nonlocal bar
        if photos > 1 or quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done == steps:
            bar.close()
            bar = None

    return progress


def _notice(message: str) -> None:
    """A line on standard error that leaves a progress bar intact."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _bar(total: int, unit: str, disable: bool):
    """A progress bar, or for one photo (no bar to show) a stand-in that skips importing tqdm."""
    if disable:
        class _Quiet(contextlib.nullcontext):
            def __enter__(self):
                return self

            def update(self, n: int = 1) -> None:
                pass

        return _Quiet()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, dynamic_ncols=True)


def _apply_video(stylizer, src: Path, dst: Path, config, quiet, notice) -> None:
    from tqdm import tqdm

    from stylize.apply.batch import written
    from stylize.apply.video import frame_count, stylize_video

    if config.skip_existing and written(dst):
        typer.echo(f"skipped {dst}: it exists (--skip-existing)")
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=frame_count(src) or None, unit="frame", disable=quiet, dynamic_ncols=True) as bar, \
            _kill_as_interrupt() as killed:
        try:
            report = stylize_video(stylizer, src, dst, config, progress=lambda n: bar.update(n - bar.n), notice=notice)
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


def _check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written before any work, not after the first photo;
    nothing is created here (a failed run leaves no empty folders)."""
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StylizeError(f"{folder}: cannot create output folder ({existing} is a file)")
    try:  # a real file, not os.access: that says yes to root on read-only mounts and /proc
        with tempfile.TemporaryFile(dir=existing, prefix=".stylize-probe-"):
            pass
    except OSError as e:
        raise StylizeError(f"{folder}: cannot write there ({e.strerror})")


@contextlib.contextmanager
def _kill_as_interrupt():
    """A kill (SIGTERM) stops a batch the way Ctrl-C does: cleanly, finishing the file being written.
    Yields a dict that gets "signum" when that happens (the exit code is then 128 + SIGTERM)."""
    killed = {}

    def interrupt(signum, frame):
        killed["signum"] = signum
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield killed
        return
    try:
        yield killed
    finally:
        signal.signal(signal.SIGTERM, old)


@app.command(cls=Command)
@clean_errors
def sheet(
    photo: Path = typer.Argument(..., help="The photo to show through the styles."),
    model: str = typer.Option(A.model, "--model", "-m", metavar="MODEL", autocompletion=_models, help="Model name or file."),
    style: Optional[List[str]] = typer.Option(None, "--style", "-s", metavar="STYLE", help="Styles to show (default: all); a,b=0.3 mixes."),
    strengths: str = typer.Option("1", help="Comma-separated strengths, e.g. 0,0.25,0.5,0.75,1."),
    size: int = typer.Option(384, min=32, help="Longest side of each tile."),
    columns: Optional[int] = typer.Option(None, min=1, help="Wrap a single row after this many tiles."),
    out: Path = typer.Option(Path("sheet.jpg"), "--out", "-o", help="Image file to write."),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}.", autocompletion=_choices(*DEVICES)),
):
    """Write a labelled contact sheet: every style of a model, or styles at a row of strengths."""
    _choice(device, DEVICES, "--device")
    try:
        values = [float(v) for v in strengths.split(",") if v.strip()]
    except ValueError:
        raise StylizeError(f"--strengths {strengths!r}: give numbers separated by commas")
    if not values or any(not 0 <= v <= 1 for v in values):
        raise StylizeError(f"--strengths {strengths!r}: each must be between 0 and 1")
    from stylize.images import load_image, save_pil
    from stylize.apply.engines.pytorch import load_stylizer
    from stylize.apply.sheet import contact_sheet

    if out.exists() and out.resolve() == photo.resolve():
        raise StylizeError(f"{out}: refusing to overwrite the input photo")
    stylizer = load_stylizer(model, device)
    x, _ = load_image(photo, max_size=size)
    typer.echo(f"wrote {save_pil(contact_sheet(stylizer, x, style, values, columns), out)}")


@app.command(cls=Command)
@clean_errors
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """List the models stylize can find, with their styles."""
    from stylize.models import modelfile

    rows = []
    for path in modelfile.find_models():
        try:
            rows.append(modelfile.describe(modelfile.read_record(path)))  # torch-free
        except StylizeError as e:
            typer.echo(f"warning: {e}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no models found in " + ", ".join(map(str, modelfile.model_dirs())))
    for r in rows:
        typer.echo(f"{r['name']:<20} {r['norm']:<12} {', '.join(r['styles'])}  ({r['path']})")


@app.command(cls=Command, help="A local web page: drop a photo, pick a style or drop a painting, move the strength, download."
             f"\n\nOne picture is made at a time. Connections that send no request within {S.header_timeout:g} s are "
             f"closed; past {S.max_connections} at once, requests are answered 503. Uploads live in a temporary folder, "
             "removed when the server stops (Ctrl-C, SIGTERM or SIGHUP).")
@clean_errors
def serve(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", metavar="MODEL", autocompletion=_models, help="Models to offer [default: every shipped one]."),
    host: str = typer.Option(S.host, help="Address to listen on; 127.0.0.1 is this machine only (0.0.0.0: anyone who can reach it)."),
    port: int = typer.Option(S.port, min=0, max=65535, help="Port to listen on (0: any free one)."),
    allow_host: Optional[List[str]] = typer.Option(None, "--allow-host", metavar="NAME", help="Another name the page is reached by (repeat); requests naming any other Host, or sent by another page (Origin), are refused."),
    max_size: int = typer.Option(S.max_size, min=16, help="Longest side photos are stylized at; larger ones are scaled down (the page says so)."),
    max_upload: float = typer.Option(S.max_upload_mb, min=0.01, help="Largest request (photo and painting) accepted, MB; counted as it streams."),
    max_megapixels: float = typer.Option(S.max_megapixels, min=0.01, help="Most pixels a photo or painting may have, read from its header before decoding (decoding takes ~4 bytes a pixel)."),
    queue: int = typer.Option(S.max_queue, min=1, help="Pictures that may wait for the worker; past it, requests are refused (503) until some are done."),
    model_memory: float = typer.Option(S.model_memory_mb, min=0, help="Memory for the models kept open, MB (~150 each at --max-size 1024); the least recently used are closed first."),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}.", autocompletion=_choices(*DEVICES)),
    runtime: str = typer.Option(A.runtime, envvar="STYLIZE_RUNTIME", help="On the CPU: onnx, torch, or auto.",
                                autocompletion=_choices(*RUNTIMES)),
):
    """A local web page (server.py); its help, with the fixed limits, is the decorator's."""
    _choice(device, DEVICES, "--device")
    _choice(runtime, RUNTIMES, "--runtime")
    from importlib.util import find_spec

    if not all(find_spec(m) for m in ("starlette", "uvicorn", "multipart")):  # multipart: Starlette's forms
        raise StylizeError("stylize serve needs Starlette and uvicorn: pip install 'stylize[serve]'")
    from stylize.serve.server import Studio, default_models, listen, make_server, run, url

    sock = listen(host, port)  # before saying the address: a taken port is one line
    try:
        studio = Studio(model or default_models(), max_size, max_upload, device, runtime, max_megapixels, queue,
                        model_memory)
    except BaseException:
        sock.close()
        raise
    server = make_server(studio, sock, allow_host or ())
    typer.echo(f"stylize: open {url(sock)} in a browser (Ctrl-C stops)")
    try:
        stopped = run(server, sock, studio)
    except KeyboardInterrupt:
        stopped = signal.SIGINT
    if stopped:
        typer.echo(f"stylize: stopped ({signal.Signals(stopped).name})", err=True)
        raise typer.Exit(128 + stopped)


@app.command(cls=Command)
@clean_errors
def info(model: str = typer.Argument(..., help="Model name or file.", autocompletion=_models),
         as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """Print what a model file says about itself."""
    from stylize.models import modelfile

    rec = modelfile.read_record(model)  # torch-free
    d = modelfile.describe(rec)
    d["train"] = rec.get("train", {})
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    for k, v in d.items():
        if k == "train":
            typer.echo("train:")
            for tk, tv in v.items():
                typer.echo(f"  {tk}: {tv}")
        else:
            typer.echo(f"{k}: {v}")


@app.command(cls=Command)
@clean_errors
def export(model: str = typer.Argument(..., help="Model name or file.", autocompletion=_models),
           format: str = typer.Option("onnx", "--format", help="onnx (the only one so far).", autocompletion=_choices("onnx")),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write [default: MODEL.onnx here].")):
    """Write a model for other runtimes, with any input size; its largest difference from the PyTorch
    output is checked before success is reported. Inputs and outputs are described in the graph."""
    _choice(format, ("onnx",), "--format")
    from stylize.apply.engines.export import export_onnx
    from stylize.models.modelfile import resolve

    path = out or Path(resolve(model).stem + ".onnx")
    if path.exists() and path.resolve() == resolve(model).resolve():
        raise StylizeError(f"{path}: refusing to overwrite the model; choose another --out")
    _check_writable(path.parent if str(path.parent) else Path("."))  # before the seconds of exporting
    report = export_onnx(model, path)
    typer.echo(f"wrote {report.path} (largest difference from PyTorch {report.max_difference:.1e} on [0, 1] "
               f"pixels; {report.seconds:.1f} s)")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())

"""The `stylize` command. Options take their defaults from settings.py; torch loads only inside a
command, so `stylize --help` starts fast. Every StylizeError becomes one line on stderr, exit 1."""
from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import StylizeError
from .settings import AUTO_STYLE_LOSS, DEFAULT_ADAPTIVE_MODEL, DEVICES, LOSS_NETS, LR_SCHEDULES, NETWORKS, NORMS, RUNTIMES, STYLE_LOSSES, ApplyConfig, TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fast neural style transfer: train style networks and apply them to photos.")
T, A = TrainConfig(), ApplyConfig()


def fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def clean_errors(command):
    """Turn user errors into one line and a non-zero exit, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
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


def _choice(value: str, choices, flag: str) -> str:
    if value not in choices:
        raise StylizeError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    return value


@app.command()
@clean_errors
def train(
    style: List[str] = typer.Option(..., "--style", "-s", help="Style image (repeat, or a folder, for several styles)."),
    content: Optional[Path] = typer.Option(T.content, help="Folder of training photos [default: $STYLIZE_CONTENT or ~/.stylize/content]."),
    out: Path = typer.Option(T.out, "--out", "-o", help="Model file to write; run files go to <out>_run/."),
    norm: str = typer.Option(T.norm, help=f"Normalization: {', '.join(NORMS)}."),
    network: str = typer.Option(T.network, help=f"Architecture: {', '.join(NETWORKS)} (light: separable residual blocks, fast on CPUs)."),
    width: int = typer.Option(T.width, min=1, help="Channels of the first layer (32 as in Johnson et al.)."),
    strength: bool = typer.Option(T.strength, help="Train for every style strength (enables apply --style-weight)."),
    iterations: int = typer.Option(T.iterations, min=1),
    batch_size: int = typer.Option(T.batch_size, min=1, help="Photos per iteration; under torchrun, per process."),
    image_size: int = typer.Option(T.image_size, min=16, help="Side of the square training crops."),
    content_size: int = typer.Option(T.content_size, min=0, help="Shorter side training photos are resized to "
                                     "before cropping (0: the crop size); larger: crops show details, strokes come out larger."),
    style_size: Optional[int] = typer.Option(T.style_size, min=16, help="Longest side of the style image for its "
                                             "statistics [default: 1024; 384 for --norm adaptive, a painting per step]."),
    content_weight: float = typer.Option(T.content_weight, min=0),
    style_weight: float = typer.Option(T.style_weight, min=0, help="Weight of the style loss."),
    tv_weight: float = typer.Option(T.tv_weight, min=0, help="Weight of the total-variation loss."),
    color_weight: float = typer.Option(T.color_weight, min=0, help="Weight of the palette term (output colours distributed as the style's)."),
    pixel_weight: float = typer.Option(T.pixel_weight, min=0, help="Pull of low-strength outputs toward the photo."),
    lr: float = typer.Option(T.lr, min=0),
    lr_schedule: str = typer.Option(T.lr_schedule, help="cosine (down to lr/10 at the end) or constant."),
    loss_net: str = typer.Option(T.loss_net, help=f"Perceptual network: {', '.join(LOSS_NETS)} (auto: vgg16 "
                                 "where its ImageNet weights are at hand, else efficientnet-lite0)."),
    vgg_weights: Optional[Path] = typer.Option(T.vgg_weights, help="torchvision VGG state-dict file, for offline machines."),
    style_loss: str = typer.Option(T.style_loss, help=f"Style statistic: auto, {', '.join(STYLE_LOSSES)} (auto: {_AUTO})."),
    device: str = typer.Option(T.device, help=f"{', '.join(DEVICES)}."),
    seed: int = typer.Option(T.seed),
    checkpoint_every: int = typer.Option(T.checkpoint_every, min=0, help="Iterations between checkpoints (0: only at the end)."),
    sample_every: int = typer.Option(T.sample_every, min=1, help="Iterations between sample grids."),
    workers: int = typer.Option(T.workers, help="Data loader processes (-1: 4 on CUDA, 0 on CPU)."),
    levers: str = typer.Option(T.levers, help="Speed levers: auto (every one but compile on CUDA, none "
                               "elsewhere), none, all, or names such as bf16,channels_last (see stylize/speed.py)."),
    resume: Optional[Path] = typer.Option(None, help="Checkpoint to continue (its settings are used; --iterations may extend it)."),
):
    """Train a style network on photos with a perceptual loss."""
    _choice(norm, NORMS, "--norm")
    _choice(network, NETWORKS, "--network")
    _choice(lr_schedule, LR_SCHEDULES, "--lr-schedule")
    _choice(loss_net, LOSS_NETS, "--loss-net")
    _choice(style_loss, ("auto",) + STYLE_LOSSES, "--style-loss")
    _choice(device, DEVICES, "--device")
    from tqdm import tqdm

    from .distributed import Shard
    from .training import Interrupted, train as run

    cfg = TrainConfig(style=[str(s) for s in style], content=str(content) if content else None, out=str(out),
                      norm=norm, network=network, width=width, strength=strength, iterations=iterations, batch_size=batch_size,
                      image_size=image_size, content_size=content_size, style_size=style_size, content_weight=content_weight,
                      style_weight=style_weight, tv_weight=tv_weight, color_weight=color_weight, pixel_weight=pixel_weight, lr=lr,
                      lr_schedule=lr_schedule, loss_net=loss_net, vgg_weights=str(vgg_weights) if vgg_weights else None,
                      style_loss=style_loss, device=device, seed=seed, checkpoint_every=checkpoint_every,
                      sample_every=sample_every, workers=workers, levers=levers)
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
        path = run(cfg, progress, resume=resume)
    except Interrupted as e:
        if bar:
            bar.close()
        if not lead:
            raise typer.Exit(130)
        fail(f"{e}; continue with: stylize train --style {style[0]} --resume {e.checkpoint}", 130)
    if bar:
        bar.close()
    if lead:
        typer.echo(f"wrote {path} (run files in {Path(path).with_name(Path(path).stem + '_run')})")


@app.command()
@clean_errors
def apply(
    inputs: List[str] = typer.Argument(..., help="Photos, folders (recursive) or globs."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Model name (see `stylize models`) or file [default: {A.model}, or {DEFAULT_ADAPTIVE_MODEL} when --style is an image]."),
    style: Optional[List[str]] = typer.Option(None, "--style", "-s", help="A style of the model (name or index), or a style image for adaptive models; NAME=W mixes."),
    style_weight: float = typer.Option(A.style_weight, help="Style strength in [0, 1]; 0 gives back the photo (adaptive: the paper's alpha)."),
    style_size: Optional[int] = typer.Option(A.style_size, min=16, help="Adaptive models: longest side the style image is "
                                             "encoded at (scales the strokes) [default: the model's; AdaIN: 512]."),
    preserve_color: bool = typer.Option(False, help="Keep the photo's colours."),
    color_method: str = typer.Option("luminance", help="With --preserve-color: luminance (any model) or match (recolour the style image; adaptive)."),
    mask: Optional[Path] = typer.Option(None, help="Greyscale mask: white gets the first --style, black the second."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (one input only)."),
    out_dir: Path = typer.Option(A.out_dir, help="Output folder for several inputs; keeps sub-folders."),
    max_size: Optional[int] = typer.Option(A.max_size, min=16, help="Downscale inputs whose longest side is larger (default: keep the resolution)."),
    tile: int = typer.Option(A.tile, min=0, help="Stylize in tiles of this side, px (0: only images over --memory); the result is the untiled one."),
    memory: int = typer.Option(A.memory_mb, min=64, help="Working memory for the network, MB; larger images are tiled."),
    quality: int = typer.Option(A.quality, min=1, max=100, help="JPEG/WebP quality."),
    skip_existing: bool = typer.Option(False, help="Skip inputs whose output already exists (to resume an interrupted batch)."),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}."),
    runtime: str = typer.Option(A.runtime, envvar="STYLIZE_RUNTIME", help="On the CPU: onnx (ONNX Runtime, faster), torch, or auto (onnx where it covers the request)."),
):
    """Stylize photos with a trained model. Folders are searched recursively; a file that fails is
    reported and the rest go on (exit 1 if any failed). Ctrl-C or kill stops cleanly; run again with
    --skip-existing to finish."""
    _choice(device, DEVICES, "--device")
    _choice(runtime, RUNTIMES, "--runtime")
    if model is None:  # a painting as --style means an adaptive model
        from .images import IMAGE_EXTENSIONS
        from .mixing import style_image

        paintings = style and any(Path(style_image(s)[0]).suffix.lower() in IMAGE_EXTENSIONS for s in style)
        model = DEFAULT_ADAPTIVE_MODEL if paintings else A.model
    _choice(color_method, ("luminance", "match"), "--color-method")  # color.COLOR_METHODS, without torch
    if not 0.0 <= style_weight <= 1.0:
        raise StylizeError(f"--style-weight {style_weight}: must be between 0 and 1")
    from tqdm import tqdm

    from .distributed import Shard
    from .pipeline import Interrupted, apply_files, expand_inputs, output_paths

    shard = Shard.from_env()  # under torchrun: every N-th input, on this process's own GPU
    shard.use_gpu()
    items = expand_inputs(inputs)
    total = len(items)
    mine = len(range(shard.rank, total, shard.world))
    tile_bar = None

    def tile_progress(done: int, steps: int):  # one big photo in tiles: minutes on a CPU, so show them
        nonlocal tile_bar
        if total > 1:
            return
        if tile_bar is None:
            tile_bar = tqdm(total=steps, desc="tiles", unit="tile", leave=False, dynamic_ncols=True)
        tile_bar.update(done - tile_bar.n)
        if done == steps:
            tile_bar.close()
            tile_bar = None

    notice = functools.partial(tqdm.write, file=sys.stderr)

    def torch_stylizer():
        from .inference import load_stylizer

        return load_stylizer(model, device, style_size, tile, memory, notice=notice, tile_progress=tile_progress)

    stylizer = _onnx_stylizer(runtime, device, model, style, mask, tile, preserve_color, style_size, memory,
                              notice, torch_stylizer, default=not style and style_weight == 1.0) or torch_stylizer()
    # the bar counts the work to do, so its img/s is the real rate on a resumed run
    existing = ({p for p in output_paths(items, out, out_dir)[shard.rank::shard.world] if p.exists()}
                if skip_existing else set())
    with tqdm(total=mine - len(existing), unit="img", disable=total < 2 or not shard.lead, dynamic_ncols=True) as bar, \
            _kill_as_interrupt():
        try:
            report = apply_files(stylizer, inputs, out, out_dir, style, style_weight, str(mask) if mask else None,
                                 max_size, quality, skip_existing, preserve_color,
                                 preserve_color and color_method == "match",
                                 progress=lambda src, dst: dst in existing or bar.update(1),
                                 share=(shard.rank, shard.world))
        except Interrupted as e:
            report = e.report
    for src, why in report.failed:
        typer.echo(f"error: {why}", err=True)
    done = len(report.written) + len(report.failed)
    if total == 1 and report.written:
        typer.echo(f"wrote {report.written[0]}")
    elif total > 1:
        rate = f", {len(report.written) / report.seconds:.2f} img/s" if report.written and report.seconds else ""
        who = f"process {shard.rank + 1} of {shard.world}: " if shard.world > 1 else ""
        typer.echo(f"{who}{len(report.written)} written, {len(report.skipped)} skipped, {len(report.failed)} failed "
                   f"in {report.seconds:.1f} s{rate}")
    shard.wait_for_all()  # under torchrun: no process ends (and has torchrun end the others) before all are done
    if report.interrupted:
        left = mine - done - len(report.skipped)
        fail(f"interrupted with {left} left; nothing is half-written: run the same command with --skip-existing "
             "to finish", 130)
    if report.failed:
        raise typer.Exit(1)


def _onnx_stylizer(runtime, device, model, style, mask, tile, preserve_color, style_size, memory, notice, fallback,
                   default=False):
    """The ONNX Runtime stylizer where it covers the request (onnx_runtime.py), else None."""
    from . import onnx_runtime

    if runtime == "torch" or device not in ("auto", "cpu") or (device == "auto" and onnx_runtime.accelerator_present()):
        return None
    why = ("onnxruntime is not installed" if not onnx_runtime.installed() else "--mask" if mask else
           "--tile" if tile else "--preserve-color" if preserve_color else None)
    if why is None:
        fast = onnx_runtime.load(model, style_size, memory, notice, fallback, default)
        if not (fast.adaptive and style and len(style) > 1):
            return fast
        why = "style interpolation"
    if runtime == "onnx":
        raise StylizeError(f"--runtime onnx does not cover {why}; use --runtime torch or auto")
    return None


@contextlib.contextmanager
def _kill_as_interrupt():
    """A kill (SIGTERM) stops a batch the way Ctrl-C does: cleanly, finishing the file being written."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@app.command()
@clean_errors
def sheet(
    photo: Path = typer.Argument(..., help="The photo to show through the styles."),
    model: str = typer.Option(A.model, "--model", "-m", help="Model name or file."),
    style: Optional[List[str]] = typer.Option(None, "--style", "-s", help="Styles to show (default: all); a,b=0.3 mixes."),
    strengths: str = typer.Option("1", help="Comma-separated strengths, e.g. 0,0.25,0.5,0.75,1."),
    size: int = typer.Option(384, min=32, help="Longest side of each tile."),
    columns: Optional[int] = typer.Option(None, min=1, help="Wrap a single row after this many tiles."),
    out: Path = typer.Option(Path("sheet.jpg"), "--out", "-o"),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}."),
):
    """Write a labelled contact sheet: every style of a model, or styles at a row of strengths."""
    _choice(device, DEVICES, "--device")
    try:
        values = [float(v) for v in strengths.split(",") if v.strip()]
    except ValueError:
        raise StylizeError(f"--strengths {strengths!r}: give numbers separated by commas")
    if not values or any(not 0 <= v <= 1 for v in values):
        raise StylizeError(f"--strengths {strengths!r}: each must be between 0 and 1")
    from .images import load_image, save_pil
    from .inference import load_stylizer
    from .sheet import contact_sheet

    if out.exists() and out.resolve() == photo.resolve():
        raise StylizeError(f"{out}: refusing to overwrite the input photo")
    stylizer = load_stylizer(model, device)
    x, _ = load_image(photo, max_size=size)
    typer.echo(f"wrote {save_pil(contact_sheet(stylizer, x, style, values, columns), out)}")


@app.command()
@clean_errors
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """List the models stylize can find, with their styles."""
    from . import modelfile

    rows = []
    for path in modelfile.find_models():
        try:
            rows.append(modelfile.describe(modelfile.load(path)))
        except StylizeError as e:
            typer.echo(f"warning: {e}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no models found in " + ", ".join(map(str, modelfile.model_dirs())))
    for r in rows:
        typer.echo(f"{r['name']:<20} {r['norm']:<12} {', '.join(r['styles'])}  ({r['path']})")


@app.command()
@clean_errors
def info(model: str = typer.Argument(..., help="Model name or file."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """Print what a model file says about itself."""
    from . import modelfile

    rec = modelfile.load(model)
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


@app.command()
@clean_errors
def export(model: str = typer.Argument(..., help="Model name or file."),
           format: str = typer.Option("onnx", "--format", help="onnx (the only one so far)."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write [default: MODEL.onnx here].")):
    """Write a model for other runtimes, with any input size; its largest difference from the PyTorch
    output is checked before success is reported. Inputs and outputs are described in the graph."""
    _choice(format, ("onnx",), "--format")
    from .export import export_onnx
    from .modelfile import resolve

    path = out or Path(resolve(model).stem + ".onnx")
    if path.exists() and path.resolve() == resolve(model).resolve():
        raise StylizeError(f"{path}: refusing to overwrite the model; choose another --out")
    report = export_onnx(model, path)
    typer.echo(f"wrote {report.path} (largest difference from PyTorch {report.max_difference:.1e} on [0, 1] "
               f"pixels; {report.seconds:.1f} s)")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())

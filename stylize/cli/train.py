"""`stylize train`: a style network from photos and style images (stylize/train/training.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from stylize.cli.common import choice, choices, command, complete_models, config_from, fail, given
from stylize.errors import StylizeError
from stylize.settings import AUTO_STYLE_LOSS, DEVICES, LOSS_NETS, LR_SCHEDULES, NETWORKS, NORMS, STYLE_LOSSES, ApplyConfig, TrainConfig

T = TrainConfig()
STYLE_LOSS_CHOICES = ("auto",) + STYLE_LOSSES
_AUTO = ", ".join(f"{v} for {k}" for k, v in AUTO_STYLE_LOSS.items())
# Former spellings: the loss weights were --style-weight and so on, which apply's --style-weight (the
# strength in [0, 1]) was mistaken for; --strength was the switch, mistaken for apply's number.
RENAMED = {"--content-weight": "--content-loss-weight", "--style-weight": "--style-loss-weight",
           "--tv-weight": "--tv-loss-weight", "--color-weight": "--color-loss-weight",
           "--pixel-weight": "--pixel-loss-weight", "--strength": "--all-strengths",
           "--no-strength": "--full-strength-only"}


@command(renamed=RENAMED)
def train(
    ctx: typer.Context,
    style: Optional[List[str]] = typer.Option(None, "--style", "-s", metavar="IMAGE", help="Style image (repeat, or a folder, for several styles)."),
    content: Optional[Path] = typer.Option(T.content, help="Folder of training photos [default: $STYLIZE_CONTENT or ~/.stylize/content]."),
    out: Path = typer.Option(T.out, "--out", "-o", help="Model file to write; run files go to <out>_run/."),
    norm: str = typer.Option(T.norm, help=f"Normalization: {', '.join(NORMS)}.", autocompletion=choices(*NORMS)),
    network: str = typer.Option(T.network, autocompletion=choices(*NETWORKS), help=f"Architecture: {', '.join(NETWORKS)} (light: separable residual blocks, fast on CPUs)."),
    width: int = typer.Option(T.width, min=1, help="Channels of the first layer (32 as in Johnson et al.)."),
    all_strengths: bool = typer.Option(T.all_strengths, "--all-strengths/--full-strength-only", help="Train for every style strength (enables apply --style-weight), or for full strength only."),
    iterations: int = typer.Option(T.iterations, min=1, help="Training steps (batches) in all."),
    batch_size: int = typer.Option(T.batch_size, min=1, help="Photos per iteration; under torchrun, per process."),
    image_size: int = typer.Option(T.image_size, min=16, help="Side of the square training crops."),
    content_size: int = typer.Option(T.content_size, min=0, help="Shorter side training photos are resized to "
                                     "before cropping (0: the crop size); larger: crops show details, strokes come out larger."),
    style_size: Optional[int] = typer.Option(T.style_size, min=16, help="Longest side of the style image for its "
                                             "statistics [default: 1024; 384 for --norm adaptive, a painting per step]."),
    content_loss_weight: float = typer.Option(T.content_loss_weight, min=0, help="Weight of the content loss (the photo's features kept)."),
    style_loss_weight: float = typer.Option(T.style_loss_weight, min=0, help="Weight of the style loss."),
    tv_loss_weight: float = typer.Option(T.tv_loss_weight, min=0, help="Weight of the total-variation loss."),
    color_loss_weight: float = typer.Option(T.color_loss_weight, min=0, help="Weight of the palette term (output colours distributed as the style's)."),
    pixel_loss_weight: float = typer.Option(T.pixel_loss_weight, min=0, help="Pull of low-strength outputs toward the photo."),
    jitter: int = typer.Option(T.jitter, min=0, help="Translate output and photo by up to this many pixels before "
                               "the loss network, anew each step (takes away the fine hatching that meets the loss cheaply)."),
    teacher: Optional[str] = typer.Option(T.teacher, metavar="MODEL", autocompletion=complete_models,
                                          help="Distil, instead of the perceptual loss: learn to paint what this WCT model "
                                          "(e.g. wct) paints from each crop with the style, or 'optimize': what "
                                          "apply --optimize paints (slow: --teacher-targets crops painted first)."),
    teacher_targets: int = typer.Option(T.teacher_targets, min=1, help="--teacher optimize: crops a style it paints before the first step."),
    teacher_steps: int = typer.Option(T.teacher_steps, min=1, help="--teacher optimize: optimizer steps a crop (as apply --optimize STEPS)."),
    teacher_smooth: int = typer.Option(T.teacher_smooth, min=0, help="--teacher optimize: passes of the 3x3 filter over "
                                       "each optimizer step's gradient (takes out a pixel grain the student would meet with a hatching)."),
    teacher_tv: float = typer.Option(T.teacher_tv, min=0, help="--teacher optimize: the optimizer's total-variation weight "
                                     "(20 pales colourful paintings; with more --teacher-smooth passes, 2 keeps their colour)."),
    teacher_median: int = typer.Option(T.teacher_median, min=0, help="--teacher optimize: passes of a 3x3 median over each "
                                       "painted picture (takes out its pixel grain and keeps the marks' edges; the crops are kept unfiltered)."),
    teacher_edge: float = typer.Option(T.teacher_edge, min=0, help="--teacher: the statistics term weighs each pixel by the "
                                       "photo's gradient over this, clamped at 1, so flat areas stay calm (0: unweighted)."),
    teacher_grain: float = typer.Option(T.teacher_grain, min=0, help="--teacher: weight of the output's distance from "
                                        "its own 3x3 median (takes out a fine hatching and keeps the marks' edges; 0: none)."),
    teacher_context: float = typer.Option(T.teacher_context, min=0, help="--teacher: weight of the contextual loss, which "
                                          "asks for the teacher's own features wherever they are, instead of the features' "
                                          "statistics (takes out a small mark stamped over textured ground; 0: none)."),
    teacher_critic: float = typer.Option(T.teacher_critic, min=0, help="--teacher: weight of a patch critic that learns to "
                                         "tell the teacher's pictures from the network's (crisp marks of the teacher's sizes, "
                                         "placed where the network likes, instead of the average of the teacher's places; 0: none)."),
    lr: float = typer.Option(T.lr, min=0, help="Learning rate (Adam)."),
    style_lr_scale: Optional[float] = typer.Option(T.style_lr_scale, min=0, help="Learning-rate multiple of what "
                                                   "depends on the style: several styles' tables; for --norm adaptive, "
                                                   "the style predictor [default: 10; 4 for --norm adaptive]."),
    lr_schedule: str = typer.Option(T.lr_schedule, help="cosine (down to lr/10 at the end) or constant.",
                                    autocompletion=choices(*LR_SCHEDULES)),
    loss_net: str = typer.Option(T.loss_net, autocompletion=choices(*LOSS_NETS), help=f"Perceptual network: {', '.join(LOSS_NETS)} (auto: vgg16 "
                                 "where its ImageNet weights are at hand, else efficientnet-lite0)."),
    vgg_weights: Optional[Path] = typer.Option(T.vgg_weights, help="torchvision VGG state-dict file, for offline machines."),
    style_loss: str = typer.Option(T.style_loss, help=f"Style statistic: auto, {', '.join(STYLE_LOSSES)} (auto: {_AUTO}).",
                                   autocompletion=choices(*STYLE_LOSS_CHOICES)),
    device: str = typer.Option(T.device, help=f"{', '.join(DEVICES)}.", autocompletion=choices(*DEVICES)),
    seed: int = typer.Option(T.seed, help="Random seed: weights, crops and the order of photos."),
    checkpoint_every: int = typer.Option(T.checkpoint_every, min=0, help="Iterations between checkpoints (0: only at the end)."),
    sample_every: int = typer.Option(T.sample_every, min=0, help="Iterations between sample grids (0: only at the end)."),
    workers: int = typer.Option(T.workers, min=-1, help="Data loader processes (-1: 4 on CUDA, 0 on CPU)."),
    levers: str = typer.Option(T.levers, help="Speed levers: auto (every one but compile on CUDA, none "
                               "elsewhere), none, all, or names such as bf16,channels_last (see stylize/train/speed.py)."),
    init: Optional[Path] = typer.Option(None, metavar="MODEL", autocompletion=complete_models, help="Model file (or shipped model name) to fine-tune: its network "
                                        "and weights instead of random ones, a fresh optimizer and schedule."),
    resume: Optional[Path] = typer.Option(None, help="Checkpoint to continue to its run's end, with its settings "
                                          "(flags given override: --iterations extends it, --lr, loss weights)."),
):
    """Train a style network on photos with a perceptual loss."""
    choice(norm, NORMS, "--norm")
    choice(network, NETWORKS, "--network")
    choice(lr_schedule, LR_SCHEDULES, "--lr-schedule")
    choice(loss_net, LOSS_NETS, "--loss-net")
    choice(style_loss, STYLE_LOSS_CHOICES, "--style-loss")
    choice(device, DEVICES, "--device")
    from stylize.distributed import Shard
    from stylize.train.training import Interrupted, train as run

    show = _Progress()
    lead = Shard.from_env().lead  # under torchrun the first process speaks for the run
    try:
        given_flags = [k for k in ctx.params if k != "resume" and given(ctx, k)]
        path = run(config_from(TrainConfig, ctx.params), show, resume=resume, overrides=given_flags)
    except Interrupted as e:
        show.close()
        if not lead:
            raise typer.Exit(128 + e.signum)
        fail(f"{e}; continue with: stylize train --resume {e.checkpoint}", 128 + e.signum)
    show.close()
    if lead:
        typer.echo(f"wrote {path} (run files in {Path(path).with_name(Path(path).stem + '_run')})")
        from importlib.util import find_spec

        if find_spec("matplotlib") is None:
            typer.echo("note: no losses.png, only losses.csv: plotting needs pip install 'stylize[plots]'", err=True)
        _graph_ahead(path)


class _Progress:
    """The run's progress (training.Progress) as a bar with the losses, and lines for its files."""

    def __init__(self):
        self.bar = self.painting = None

    def __call__(self, p) -> None:
        if p.event == "loss_net":
            typer.echo(p.note)
            return
        if p.event == "teacher":  # before the first step: --teacher optimize paints its crops
            from tqdm import tqdm

            if self.painting is None:
                self.painting = tqdm(total=p.iterations, desc="teacher", unit="crop", dynamic_ncols=True)
            self.painting.set_postfix_str(p.note, refresh=False)
            self.painting.update(p.iteration - self.painting.n)
            if p.iteration == p.iterations:
                self.painting.close()
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.iterations, initial=p.iteration - 1, unit="it", dynamic_ncols=True)
        if p.event == "step":
            self.bar.update(1)
            shown = {k: f"{p.losses[k]:.3g}" for k in ("total", "content", "style", "tv") if k in p.losses}  # a
            # batch of only unreadable photos has a total (nan) alone
            if p.skipped:
                shown["skipped"] = p.skipped
            self.bar.set_postfix(shown, refresh=False)
        else:
            self.bar.write(f"{p.event} {p.path}")

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _graph_ahead(model: Path) -> None:
    """Export a new model's graph for CPU apply now, while its user expects to wait, rather than at
    its first `stylize apply` (graphs.py); where apply would not use ONNX Runtime, nothing."""
    import os

    from stylize.apply.engines import graphs, onnx_runtime
    from stylize.models import modelfile

    if os.environ.get("STYLIZE_RUNTIME", ApplyConfig.runtime) == "torch" or not onnx_runtime.installed() or \
            onnx_runtime.accelerator_present() or graphs.cache_problem():
        return
    adaptive = modelfile.describe(modelfile.read_record(model))["norm"] == "adaptive"  # these always take a painting
    try:
        graphs.cached_graph(model, typer.echo, default=not adaptive)
    except StylizeError as e:  # the model is written; apply will say this again, or use PyTorch
        typer.echo(f"note: {e}", err=True)

"""Training a transformer network with the perceptual loss: settings, loop, checkpoints, resume.

`train(TrainConfig(...), progress=callback)` is the whole API; it prints nothing. A run writes the
model file at `out` and, beside it in `<out>_run/`, checkpoint.pt, samples/, losses.csv, losses.png.
Checkpoints are model files plus optimizer, iteration, RNG state and loss history, so `resume`
continues the very same run: same batches, same style and strength draws, same loss sequence.
"""
from __future__ import annotations

import csv
import importlib.util
import math
import signal
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch

from stylize import __version__, distributed
from stylize.models import modelfile
from stylize.train import speed
from stylize.devices import pick_device
from stylize.images import load_style, style_files
from stylize.train.data import batches, content_files, pick_loader
from stylize.errors import StylizeError
from stylize.images import load_image, save_image
from stylize.features.losses import Critic, PerceptualLoss, TeacherLoss, draw_shift
from stylize.models.networks import NetConfig, TransformerNet
from stylize.models.norms import Condition
from stylize.settings import (LOSS_NET_LAYERS, TEACHER_LAYERS, NETWORKS, NORMS, STYLE_LOSSES, STYLE_LR_SCALE, STYLE_SIZE, TrainConfig,
                       style_loss_for)
from stylize.features.vgg import loss_network, resolve_loss_net


@dataclass
class Progress:
    iteration: int
    iterations: int
    losses: dict[str, float]
    skipped: int  # unreadable training photos met so far
    # step, sample, checkpoint, loss_net (before the first step: which network, why), teacher (before
    # it: --teacher optimize's pictures painted, iteration of iterations)
    event: str = "step"
    path: Path | None = None
    note: str = ""


class Interrupted(Exception):
    def __init__(self, checkpoint: Path, iteration: int, signum: int = signal.SIGINT):
        super().__init__(f"interrupted at iteration {iteration}; checkpoint saved to {checkpoint}")
        self.checkpoint, self.iteration, self.signum = checkpoint, iteration, signum


def run_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + "_run")


def writable(out: Path) -> None:
    """Refuse, before any set-up, a model path whose folder cannot be written (or made); nothing is
    created here, so a refused run leaves no empty folder."""
    import tempfile

    existing = out.parent.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        raise StylizeError(f"--out {out}: cannot write in {out.parent} ({e.strerror or type(e).__name__})") from None


def sample_strengths(batch: int, g: torch.Generator) -> torch.Tensor:
    """Half the examples at full strength, the rest uniform in [0, 1]: full strength is what most
    users apply, so it gets the most training, while the rest teaches the whole range."""
    s = torch.rand(batch, generator=g)
    return torch.where(torch.rand(batch, generator=g) < 0.5, torch.ones_like(s), s)


def jitter(cfg: TrainConfig, draws: torch.Generator) -> tuple[int, int, int] | None:
    """This step's translation before the loss network (losses.PerceptualLoss), or None; drawn only
    when the run jitters, so runs without it draw as they always did and resume in step."""
    return (*draw_shift(cfg.jitter, draws), cfg.jitter) if cfg.jitter else None


def loss_weights(cfg: TrainConfig) -> dict[str, float]:
    """The perceptual loss's term weights (losses.PerceptualLoss); the pixel term only with all_strengths."""
    return {"content": cfg.content_loss_weight, "style": cfg.style_loss_weight, "tv": cfg.tv_loss_weight,
            "pixel": cfg.pixel_loss_weight if cfg.all_strengths else 0.0, "color": cfg.color_loss_weight}


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """The step size at an iteration: constant, or a cosine from lr down to a tenth of it at the end
    of the run (a departure from Johnson et al.'s constant rate: the last steps average out the
    noise of small CPU batches instead of adding to it)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    t = min(iteration / max(cfg.iterations, 1), 1.0)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def model_record(net: TransformerNet, cfg: TrainConfig, styles: list[str], half: bool) -> dict:
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in net.state_dict().items()}
    return {
        "format": modelfile.FORMAT, "version": modelfile.VERSION, "kind": "transformer",
        "net": net.cfg.to_dict(), "styles": styles,
        "train": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "versions": {"stylize": __version__, "torch": str(torch.__version__)},
        "state_dict": state,
    }


def _sample_photos(files: list[Path], size: int, count: int = 4) -> torch.Tensor:
    photos = []
    for f in files:
        try:
            x, _ = load_image(f, max_size=size * 2)
        except StylizeError:
            continue
        x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0]
        photos.append(x)
        if len(photos) == count:
            break
    if not photos:
        raise StylizeError(f"none of the {len(files)} training photos could be read; check the --content folder")
    return torch.stack(photos)


@torch.no_grad()
def save_samples(recipe: Recipe, photos: torch.Tensor, path: Path) -> Path:
    """A grid: one row per fixed photo; the photo, then each style (up to 6) at full strength."""
    from torchvision.utils import make_grid

    was_training = recipe.net.training
    recipe.net.eval()
    cols = [photos] + recipe.samples(photos)
    grid = make_grid(torch.stack([c.float().clamp(0, 1).cpu() for c in cols], 1).flatten(0, 1),
                     nrow=len(cols), padding=2, pad_value=1.0)
    recipe.net.train(was_training)
    return save_image(grid, path)


def write_log(history: list[dict], folder: Path) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for h in history for k in h))  # a skipped batch's row has no terms but total
    with open(folder / "losses.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    if importlib.util.find_spec("matplotlib") is not None:  # an extra: without it, losses.csv alone
        plot_losses(history, folder / "losses.png")


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [k for k in dict.fromkeys(k for h in history for k in h) if k not in ("iteration", "seconds")]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    it = [h["iteration"] for h in history]
    k = max(1, len(history) // 50)  # moving average over ~2% of the run
    for ax, term in zip(axes[0], terms):
        v = torch.tensor([h.get(term, float("nan")) for h in history], dtype=torch.float64)
        smooth = torch.nn.functional.avg_pool1d(v[None, None], k, 1, 0, count_include_pad=False)[0, 0]
        ax.plot(it, v.tolist(), alpha=0.3, lw=0.8)
        ax.plot(it[k - 1:], smooth.tolist(), lw=1.5)
        ax.set_title(term)
        ax.set_xlabel("iteration")
        ax.set_yscale("log" if v.nan_to_num(1.0).min() > 0 else "linear")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _StopFlag:
    """Ctrl-C or kill ends the run at the next iteration boundary, with a checkpoint."""

    def __init__(self):
        self.stop, self.since, self.signum = False, 0.0, signal.SIGINT
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        # a second Ctrl-C stops at once; one within a second of the first is the same request (torchrun
        # passes on to its processes the Ctrl-C that the terminal has already sent them)
        if self.stop and time.monotonic() - self.since > 1.0:
            raise KeyboardInterrupt
        if not self.stop:
            self.stop, self.since, self.signum = True, time.monotonic(), signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Recipe(Protocol):
    """What the loop needs of a way of training (TransformerRecipe, AdaINRecipe, PredictionRecipe)."""
    net: torch.nn.Module  # what the model file holds
    model: torch.nn.Module  # what step() runs, the trained part: train() wraps it for several processes (DDP)
    names: list[str]  # the model's styles; none for a model of any painting

    def step(self, x: torch.Tensor | None, draws: torch.Generator) -> tuple[dict | None, int]:
        """The loss terms of this process's share of the batch (None for a batch none of which could be
        read), and how many examples they average. Draws from `draws` whether or not `x` is None, so
        that a resumed run stays in step."""

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups; a group's "lr_scale" multiplies the learning rate."""

    def samples(self, photos: torch.Tensor) -> list[torch.Tensor]:
        """The sample grid's columns: the photos in up to 6 styles."""

    def record(self, half: bool) -> dict:
        """The model file's record (modelfile.py), its weights in half precision if `half`."""

    def load(self, ckpt: dict) -> None:
        """The weights of a record (a checkpoint or, with --init, a model file)."""


def trainable(net: torch.nn.Module) -> list[dict]:
    """One parameter group: every parameter that trains, at the run's rate."""
    return [{"params": [p for p in net.parameters() if p.requires_grad]}]


def recipe_for(cfg: TrainConfig) -> Callable[..., Recipe]:
    return TransformerRecipe if cfg.norm != "adaptive" else AdaINRecipe if cfg.network == "adain" else PredictionRecipe


class TransformerRecipe:
    """Johnson et al.: a transformer network for a fixed set of styles (IN, CIN and the other norms)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, start: int, levers: frozenset = frozenset(),
                 shard: distributed.Shard = distributed.Shard()):
        names, images = zip(*[load_style(p, cfg.style_size) for p in style_files(cfg.style)])
        self.names, self.cfg, self.device, self.shard = list(names), cfg, device, shard
        norm = "conditional" if cfg.norm == "instance" and len(names) > 1 else cfg.norm
        self.net = TransformerNet(NetConfig(norm, len(names), cfg.all_strengths, cfg.width, cfg.network,
                                            output=cfg.output)).to(device)
        self.model = self.net  # what the step calls: train() wraps it for several processes (DDP)
        self.teacher = self.critic = None
        if cfg.teacher:  # distillation (teacher.py)
            from stylize.train.teacher import Teacher, teacher_for

            self.teacher = teacher_for(cfg, style_files(cfg.style), device)
            if isinstance(self.teacher, Teacher) and (cfg.image_size % self.teacher.net.multiple
                                                      or cfg.image_size < 2 * self.teacher.net.multiple):
                raise StylizeError(f"--image-size {cfg.image_size}: --teacher {cfg.teacher} needs a multiple of "
                                   f"{self.teacher.net.multiple} of at least {2 * self.teacher.net.multiple}")
            self.loss = TeacherLoss(loss_network(cfg.loss_net, cfg.content_layers + cfg.style_layers, cfg.vgg_weights),
                                    cfg.content_layers, cfg.style_layers, cfg.teacher_edge, cfg.teacher_grain,
                                    cfg.teacher_context).to(device)
            self.critic = Critic().to(device) if cfg.teacher_critic else None
            return
        self.loss = PerceptualLoss(loss_network(cfg.loss_net, cfg.content_layers + cfg.style_layers, cfg.vgg_weights),
                                   cfg.content_layers, cfg.style_layers,
                                   style_loss_for(cfg.loss_net, cfg.style_loss)).to(device)
        self.loss.set_styles([im.to(device) for im in images])  # style targets in fp32, before any lever
        if "bf16" in levers:
            self.loss.net.features.to(torch.bfloat16)
        if "channels_last" in levers:
            self.loss.net.to(memory_format=torch.channels_last)
        if "compile" in levers:
            self.net.compile()
            self.loss.compile()
        self.weights = loss_weights(cfg)

    def step(self, x: torch.Tensor | None, draws: torch.Generator) -> tuple[dict | None, int]:
        """The loss terms of this process's share of the batch, and how many examples they average."""
        b, n_styles = self.cfg.batch_size, len(self.names)  # the whole batch, over every process
        style_index = torch.randint(n_styles, (b,), generator=draws)  # drawn even for a skipped batch,
        strength = sample_strengths(b, draws) if self.cfg.all_strengths else torch.ones(b)  # so resume stays in step
        directions = None if self.teacher else self.loss.draw_directions(draws)  # sliced style loss only, else None
        picks = self.teacher.draw(b, draws) if self.teacher else None  # which painted crops (teacher.Painted)
        shift = jitter(self.cfg, draws)
        seed = int(torch.randint(2 ** 31, (1,), generator=draws)) if self.cfg.teacher_context else 0  # its positions
        if x is None:
            return None, 0
        style_index, strength = self.shard.part(style_index), self.shard.part(strength)
        si, st = speed.to_device(style_index[:len(x)], self.device), speed.to_device(strength[:len(x)], self.device)
        cond = Condition(torch.nn.functional.one_hot(si, n_styles).float(), st if self.cfg.all_strengths else None)
        if self.teacher is not None:
            picks = self.shard.part(picks)[:len(x)] if picks is not None else None
            x, target = self.teacher.pair(x, si, cond.strength, picks)
            y = self.model(x, cond)
            terms = self.loss(y, target, self.cfg.content_loss_weight, x, seed)
            if self.critic is not None:  # the critic's step first, on this batch (Critic)
                terms["critic_loss"] = self.critic.learn(y, target)
                terms["critic"] = self.critic(y)
                terms["total"] = terms["total"] + self.cfg.teacher_critic * terms["critic"]
            return terms, len(x)
        y = self.model(x, cond)
        return self.loss(y, x, si, st, self.weights, directions, shift=shift), len(x)

    def param_groups(self) -> list[dict]:
        """Departure from Dumoulin et al. (who train 40,000 steps): with several styles, the per-style
        scale and shift tables learn at cfg.style_lr_scale times the rate. Under Adam every weight
        moves about lr per step, but a convolution's output sums its fan-in of moved weights while a
        table entry moves one channel by one step; and a style's row only moves on the examples
        drawn for it. At one rate the shared layers learn one average style before the rows can tell
        the styles apart (issue 13: two styles of a short run differed by 0.0096 on average)."""
        tables = [p for m in self.net.norms() for p in (m.affine.weight, m.affine.bias)
                  if p is not None and p.requires_grad]
        if len(self.names) < 2 or self.cfg.style_lr_scale == 1.0 or not tables:
            return trainable(self.net)
        ids = {id(p) for p in tables}
        return [{"params": [p for p in self.net.parameters() if p.requires_grad and id(p) not in ids]},
                {"params": tables, "lr_scale": self.cfg.style_lr_scale}]

    @torch.no_grad()
    def samples(self, photos: torch.Tensor) -> list[torch.Tensor]:
        n = len(self.names)
        return [self.net(photos, Condition(torch.nn.functional.one_hot(
            torch.full((len(photos),), i, device=photos.device), n).float())) for i in range(min(n, 6))]

    def record(self, half: bool) -> dict:
        return model_record(self.net, self.cfg, self.names, half)

    def load(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["state_dict"])
        if self.critic is not None and "critic" in ckpt:  # a checkpoint's; --init's model file has none
            self.critic.load(ckpt["critic"])


class AdaINRecipe:
    """Huang & Belongie: train only the decoder, on random photo and painting crops (see adain.py)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, start: int, levers: frozenset = frozenset(),
                 shard: distributed.Shard = distributed.Shard()):
        from stylize.models.adain import ENCODER_TAPS, AdaINConfig, AdaINNet

        self.cfg, self.device, self.shard = cfg, device, shard
        if cfg.loss_net == "efficientnet-lite0":
            raise StylizeError("--norm adaptive has a VGG-19 encoder: give its ImageNet weights with --vgg-weights "
                               "FILE (torchvision's vgg19 file) or train with --loss-net random")
        arch = "random" if cfg.loss_net == "random" else "vgg19"  # the paper's encoder is VGG-19
        vgg = loss_network(arch, ENCODER_TAPS, cfg.vgg_weights)
        self.net = AdaINNet(AdaINConfig(encoder=vgg.description, width=cfg.width)).to(device)
        self.net.encoder.features.load_state_dict(vgg.features.state_dict())
        self.files = style_files(cfg.style)
        workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
        self.styles = iter(batches(self.files, cfg.image_size, cfg.batch_size, cfg.seed + 7, start,
                                   cfg.iterations, workers, device=device if "gpu_data" in levers else None,
                                   rank=shard.rank, world=shard.world))
        self.names = []  # any style image; the training paintings are in the settings
        self.fixed_styles = torch.stack([
            torch.nn.functional.interpolate(load_style(f, cfg.image_size)[1][None], size=(cfg.image_size,) * 2,
                                            mode="bilinear", antialias=True)[0] for f in self.files[:4]]).to(device)
        if "compile" in levers:
            self.net.compile()
        self.model = self.net.decoder  # the trained part: train() wraps it for several processes (DDP)

    def step(self, x: torch.Tensor | None, draws: torch.Generator) -> tuple[dict | None, int]:
        from stylize.models.adain import adain
        from stylize.features.losses import mean_std, relative_error, style_stats, total_variation

        s, _ = next(self.styles)
        stand_in = s is None and x is not None and self.shard.world > 1  # every process takes part in a step
        if stand_in:  # (DDP): with a painting weighted 0 when none of its share could be read
            s = self.fixed_styles[:1]
        if x is None or s is None:
            return None, 0
        n = min(len(x), len(s))
        x, s = x[:n], s[:n].to(self.device, non_blocking=True)
        enc = self.net.encoder
        fs = enc(s, all_taps=True)
        t = adain(enc(x), *mean_std(fs["relu4_1"]))
        y = self.model(t)
        fy = enc(y, all_taps=True)
        terms = {
            "content": relative_error(fy["relu4_1"], t.detach()).mean(),  # against the AdaIN target, as in the paper
            "style": sum(relative_error(style_stats(fy[k], "meanstd"), style_stats(fs[k], "meanstd")).mean()
                         for k in fs) / len(fs),
            "tv": total_variation(y).mean(),
        }
        terms["total"] = (self.cfg.content_loss_weight * terms["content"] + self.cfg.style_loss_weight * terms["style"]
                          + self.cfg.tv_loss_weight * terms["tv"])
        return terms, 0 if stand_in else n

    @torch.no_grad()
    def samples(self, photos: torch.Tensor) -> list[torch.Tensor]:
        from stylize.features.losses import mean_std

        cols = []
        for style in self.fixed_styles:
            stats = mean_std(self.net.encoder(style[None]))
            cols.append(self.net(photos, [(stats[0].expand(len(photos), -1), stats[1].expand(len(photos), -1))]))
        return cols

    def record(self, half: bool) -> dict:
        rec = model_record(self.net, self.cfg, self.names, half)
        rec.update(kind="adain", net=self.net.cfg.to_dict())
        return rec

    def param_groups(self) -> list[dict]:
        return trainable(self.net)  # the decoder: the encoder is VGG's, fixed

    def load(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["state_dict"])


class PredictionRecipe:
    """Ghiasi et al.: one transformer network for any painting, its norm parameters predicted from the
    painting (style_prediction.py). Each step draws one painting from the style folder, augmented; the
    batch's photos are all stylized toward it."""

    def __init__(self, cfg: TrainConfig, device: torch.device, start: int, levers: frozenset = frozenset(),
                 shard: distributed.Shard = distributed.Shard()):
        from stylize.models.style_prediction import ArbitraryNet, PredictorConfig, StylePredictor

        self.cfg, self.device, self.shard = cfg, device, shard
        self.files = style_files(cfg.style)
        # paintings kept at twice the size of a view, so that a crop is rarely enlarged
        self.paintings = [load_style(f, 2 * cfg.style_size)[1] for f in self.files]
        self.names = []  # any painting; the training paintings are in the settings
        self.loss = PerceptualLoss(loss_network(cfg.loss_net, cfg.content_layers + cfg.style_layers, cfg.vgg_weights),
                                   cfg.content_layers, cfg.style_layers,
                                   style_loss_for(cfg.loss_net, cfg.style_loss)).to(device)
        with torch.no_grad():
            probe = self.loss.net(torch.zeros(1, 3, 64, 64, device=device))
        pcfg = PredictorConfig(cfg.loss_net, tuple(cfg.style_layers), tuple(probe[l].shape[1] for l in cfg.style_layers),
                               cfg.style_dim, cfg.style_size)
        transformer = TransformerNet(NetConfig("adaptive", 1, cfg.all_strengths, cfg.width, cfg.network, cfg.style_dim,
                                               cfg.output))
        self.net = ArbitraryNet(transformer, StylePredictor(pcfg)).to(device)
        self.model = self.net  # what the step calls: train() wraps it for several processes (DDP)
        self.fixed_styles = [load_style(f, cfg.style_size)[1].to(device) for f in self.files[:4]]
        self.weights = loss_weights(cfg)

    def features(self, painting: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), speed.fixed_algorithms():  # a view's shape changes every step
            return self.loss.net(speed.to_device(painting[None], self.device))

    def step(self, x: torch.Tensor | None, draws: torch.Generator) -> tuple[dict | None, int]:
        from stylize.models.style_prediction import augment

        b = self.cfg.batch_size
        index = int(torch.randint(len(self.paintings), (1,), generator=draws))
        painting = augment(self.paintings[index], self.cfg.style_size, draws)  # drawn even for a skipped
        strength = sample_strengths(b, draws) if self.cfg.all_strengths else torch.ones(b)  # batch: resume stays in step
        features = self.features(painting)
        self.loss.set_style_features([features])
        if self.cfg.color_loss_weight:
            self.loss.set_colors([painting.to(self.device)])
        directions = self.loss.draw_directions(draws)  # sliced style loss only, else None
        shift = jitter(self.cfg, draws)
        if x is None:
            return None, 0
        strength = speed.to_device(self.shard.part(strength)[:len(x)], self.device)
        y = self.model(x, features, strength if self.cfg.all_strengths else None)
        return self.loss(y, x, None, strength, self.weights, directions, shift=shift), len(x)

    @torch.no_grad()
    def samples(self, photos: torch.Tensor) -> list[torch.Tensor]:
        return [self.net(photos, self.features(p)) for p in self.fixed_styles]

    def record(self, half: bool) -> dict:
        rec = model_record(self.net.transformer, self.cfg, self.names, half)
        rec["predictor"] = {**self.net.predictor.cfg.to_dict(), "state_dict": {
            k: (v.half() if half else v).cpu() for k, v in self.net.predictor.state_dict().items()}}
        return rec

    def param_groups(self) -> list[dict]:
        """Departure from Ghiasi et al.: the predicted scales and shifts are sums over the embedding
        (100 terms) of sums over the statistics (1984 terms), so at one learning rate for all, Adam's
        equal steps per weight add up and move them a hundred times faster than a trained table's;
        within 200 steps the unnormalized layers of the light network amplified them into overflow.
        Each of those layers learns at the rate divided by the square root of its inputs (as
        StyleGAN's equalized learning rate): stable, and still following the paintings. On top of
        that, cfg.style_lr_scale multiplies both, as it does the tables of several styles."""
        project = [p for n, p in self.net.transformer.named_parameters() if ".project." in n]
        rest = [p for n, p in self.net.transformer.named_parameters() if ".project." not in n]
        bottleneck = self.net.predictor.bottleneck
        k = self.cfg.style_lr_scale
        return [{"params": rest},
                {"params": project, "lr_scale": k * self.cfg.style_dim ** -0.5},
                {"params": list(bottleneck.parameters()), "lr_scale": k * bottleneck.in_features ** -0.5}]

    def load(self, ckpt: dict) -> None:
        self.net.transformer.load_state_dict(ckpt["state_dict"])
        self.net.predictor.load_state_dict(ckpt["predictor"]["state_dict"])


def _network_of(rec: dict) -> tuple:
    """What a record's weights fit: its kind, network and, for any painting, its style predictor."""
    net = NetConfig(**rec["net"]).to_dict() if rec.get("kind") == "transformer" else rec.get("net")
    predictor = {k: v for k, v in rec.get("predictor", {}).items() if k != "state_dict"}
    return rec.get("kind"), net, predictor


def init_settings(cfg: TrainConfig) -> TrainConfig:
    """--init: the run builds the network that model file holds (its norm, architecture, width, ...;
    for any painting, the predictor's loss network, layers and painting size), whatever the flags say."""
    rec = modelfile.load(cfg.init)
    if rec.get("kind") == "wct":
        raise StylizeError(f"{cfg.init}: a WCT model's decoders are trained by studies/wct_decoders.py, "
                           "not stylize train")
    if rec.get("kind") == "adain":
        return replace(cfg, norm="adaptive", network="adain", width=rec["net"]["width"])
    net = NetConfig(**rec["net"])
    cfg = replace(cfg, norm=net.norm, network=net.network, width=net.width, all_strengths=net.strength,
                  output=net.output, style_dim=net.style_dim or cfg.style_dim)
    if "predictor" in rec:
        p = rec["predictor"]
        cfg = replace(cfg, loss_net=p["loss_net"], style_layers=list(p["layers"]), style_size=p["style_size"])
    return cfg


def start_from(recipe: Recipe, path: str) -> None:
    """--init: begin with the weights of a model file (fine-tuning) instead of random ones."""
    rec = modelfile.load(path)
    if _network_of(rec) != _network_of(recipe.record(half=False)):  # e.g. another number of styles
        raise StylizeError(f"{path}: its network does not fit this run's (for several styles, give as many)")
    recipe.load(rec)


# What a resumed run may change (--lr, the loss weights, --iterations to extend it, where it writes);
# the rest (network, styles, photos, loss network...) would make it another run. A model for any
# painting may also go on with more paintings (train()).
RESUMABLE = ("iterations", "out", "content", "lr", "lr_schedule", "style_lr_scale", "content_loss_weight",
             "style_loss_weight", "tv_loss_weight", "color_loss_weight", "pixel_loss_weight", "device",
             "checkpoint_every", "sample_every", "workers", "levers")


def train(cfg: TrainConfig, progress: Callable[[Progress], None] | None = None,
          resume: str | Path | None = None, levers: Iterable[str] | None = None,
          overrides: Iterable[str] | None = None) -> Path:
    """Train and write cfg.out; returns its path. With `resume`, continue that checkpoint's run to its
    own end, with its own settings, except those named in `overrides` (settings of cfg to use instead:
    the flags a user gave; None: only `iterations`, so a run can be extended), which must be among
    RESUMABLE. `levers` overrides cfg.levers, the speed levers to use (speed.py).

    Under torchrun each process runs this with the same settings: cfg.batch_size is then each
    process's share, the run (its files and checkpoints) records the whole batch, and only the first
    process reports progress and writes files (distributed.py)."""
    progress = progress or (lambda p: None)
    ckpt = None
    if resume is not None:
        cfg, ckpt = _resumed(cfg, resume, overrides)
    elif cfg.init:
        cfg = init_settings(cfg)
    if cfg.norm not in NORMS:
        raise StylizeError(f"unknown norm {cfg.norm!r}; choose one of {', '.join(NORMS)}")
    if cfg.image_size % 4:  # the network halves the crops twice and doubles them back
        raise StylizeError(f"--image-size {cfg.image_size}: must be a multiple of 4 (e.g. {cfg.image_size // 4 * 4 or 4})")
    writable(Path(cfg.out))
    if not cfg.style:
        raise StylizeError("no style image; pass --style IMAGE (several, or a folder, for --norm conditional)")
    if cfg.network not in NETWORKS:
        raise StylizeError(f"unknown network {cfg.network!r}; choose one of {', '.join(NETWORKS)}")
    if cfg.teacher and cfg.norm == "adaptive":
        raise StylizeError("--teacher trains a network of fixed styles; --norm adaptive paints any painting already")
    if cfg.teacher_critic and not cfg.teacher:
        raise StylizeError("--teacher-critic learns to tell the teacher's pictures from the network's: use it with --teacher")
    if cfg.network == "adain" and cfg.norm != "adaptive":
        raise StylizeError("--network adain is the AdaIN encoder-decoder: use it with --norm adaptive")
    # every "auto" and unset layer list resolved here, so the model file records what it was trained with
    loss_net, why = resolve_loss_net(cfg.loss_net, cfg.vgg_weights)
    if ckpt is None:
        progress(Progress(0, cfg.iterations, {}, 0, "loss_net", note=f"loss network: {loss_net} ({why})"))
    content_layers, style_layers = LOSS_NET_LAYERS[loss_net]
    if cfg.teacher:
        content_layers, style_layers = TEACHER_LAYERS[loss_net]
    cfg = replace(cfg, loss_net=loss_net, style_loss=style_loss_for(loss_net, cfg.style_loss),
                  content_layers=cfg.content_layers or content_layers, style_layers=cfg.style_layers or style_layers,
                  style_size=cfg.style_size or STYLE_SIZE["adaptive" if cfg.norm == "adaptive" else "fixed"],
                  style_lr_scale=(STYLE_LR_SCALE["adaptive" if cfg.norm == "adaptive" else "fixed"]
                                  if cfg.style_lr_scale is None else cfg.style_lr_scale))
    if cfg.style_loss not in STYLE_LOSSES:
        raise StylizeError(f"unknown style loss {cfg.style_loss!r}; choose one of auto, {', '.join(STYLE_LOSSES)}")
    device = pick_device(cfg.device)
    with distributed.session(device) as shard:  # one of several processes under torchrun, else alone
        return _train(cfg, progress, ckpt, levers, shard)


def _resumed(cfg: TrainConfig, resume: str | Path, overrides: Iterable[str] | None) -> tuple[TrainConfig, dict]:
    """A checkpoint's settings, with those of cfg named in `overrides`, and the checkpoint."""
    ckpt = modelfile.load(resume)
    if "optimizer" not in ckpt:
        raise StylizeError(f"{resume}: a finished model, not a checkpoint; resume from "
                           f"{run_dir(Path(resume))}/checkpoint.pt")
    run = TrainConfig.from_dict(ckpt["train"])
    given = {"iterations"} if overrides is None else set(overrides)
    # a model for any painting has no per-painting weights: it may go on with more paintings
    resumable = set(RESUMABLE) | ({"style"} if run.norm == "adaptive" else set())
    fixed = sorted(k for k in given - resumable if getattr(cfg, k) != getattr(run, k))
    if fixed:
        flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise StylizeError(f"{resume}: a resumed run keeps its {flags}; start a new run to change that")
    cfg = replace(run, **{k: getattr(cfg, k) for k in given & resumable})
    folder = Path(resume).resolve().parent
    if "out" not in given and folder.name == run_dir(run.out).name:
        cfg = replace(cfg, out=str(folder.with_name(Path(run.out).name)))  # beside its run folder, from any cwd
    if cfg.iterations <= ckpt["iteration"]:
        raise StylizeError(f"{resume}: the run is already at iteration {ckpt['iteration']} of {cfg.iterations}; "
                           f"pass --iterations N (over {ckpt['iteration']}) to train it further")
    return cfg, ckpt


def _train(cfg: TrainConfig, progress: Callable[[Progress], None], ckpt: dict | None, levers: Iterable[str] | None,
           shard: distributed.Shard) -> Path:
    run = _Run(cfg, progress, ckpt, levers, shard)
    return run.finish(run.loop())


class _Run:
    """One process's part of a run, in its steps: set-up (fresh, from --init, or from a checkpoint),
    the loop, its iterations, checkpoints, the finish. train() has checked the settings."""

    def __init__(self, cfg: TrainConfig, progress: Callable[[Progress], None], ckpt: dict | None,
                 levers: Iterable[str] | None, shard: distributed.Shard):
        device = self.device = shard.device
        if ckpt is None and shard.world > 1:  # --batch-size is per process; the run records its whole batch
            cfg = replace(cfg, batch_size=cfg.batch_size * shard.world)
        if cfg.teacher_critic and shard.world > 1:  # each process would train a critic of its own
            raise StylizeError("--teacher-critic trains in one process; run it without torchrun")
        if cfg.batch_size % shard.world:
            raise StylizeError(f"this run's batch of {cfg.batch_size} does not split evenly over {shard.world} "
                               "processes; resume it with a number of processes that divides it")
        self.cfg, self.shard = cfg, shard
        self.progress = progress if shard.lead else (lambda p: None)  # the lead reports for all
        self.files = content_files(cfg.content)
        self.start = self.it = ckpt["iteration"] if ckpt is not None else 0
        self.levers = speed.parse_levers(cfg.levers, device) if levers is None else speed.check_levers(levers)
        speed.apply_global(self.levers)

        torch.manual_seed(cfg.seed)
        self.recipe: Recipe = recipe_for(cfg)(cfg, device, self.start, self.levers, shard)
        groups = self.recipe.param_groups()
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, fused=True if "fused_adam" in self.levers else None)
        self.draws = torch.Generator().manual_seed(cfg.seed + 1)  # style and strength per example
        self.history: list[dict] = []
        if getattr(self.recipe, "teacher", None) is not None and hasattr(self.recipe.teacher, "prepare"):
            self.recipe.teacher.prepare(self.files, run_dir(cfg.out), self.teacher_progress, shard)
        if ckpt is None and cfg.init:
            start_from(self.recipe, cfg.init)
        if ckpt is not None:
            self.restore(ckpt, groups)
        self.recipe.model = shard.wrap(self.recipe.model)  # several processes: DDP averages their gradients

        self.folder = run_dir(cfg.out)
        (self.folder / "samples").mkdir(parents=True, exist_ok=True)
        self.photos = _sample_photos(self.files, max(cfg.image_size, cfg.content_size))  # at the scale the crops see
        self.skipped = 0  # unreadable photos met
        self.t0 = time.perf_counter() - (self.history[-1]["seconds"] if self.history else 0.0)
        # the run's photo loader (data.batches), which its checkpoints record; a checkpoint from before
        # they did resumes on the stream it began with: gpu_data's crops were the cache's, others decoded
        self.loader = ckpt.get("loader") if ckpt is not None else None
        if self.loader is None:
            self.loader = pick_loader(self.files, max(cfg.image_size, cfg.content_size), self.notice) \
                if ckpt is None else "cache" if "gpu_data" in self.levers else "decode"

    def restore(self, ckpt: dict, groups: list[dict]) -> None:
        """Resume: the weights, optimizer, draws and loss history as the checkpoint left them."""
        self.recipe.load(ckpt)
        try:
            self.opt.load_state_dict(ckpt["optimizer"])
        except ValueError:  # the parameter groups differ: a CIN run's style_lr_scale went to or from 1
            raise StylizeError("this run's parameter groups differ from its checkpoint's; resume it with its "
                               f"own style_lr_scale ({ckpt['train'].get('style_lr_scale', 1.0)})") from None
        for group, setting in zip(self.opt.param_groups, groups):  # the state brings back its own rates' scales
            group["lr_scale"] = setting.get("lr_scale", 1.0)
        self.draws.set_state(ckpt["rng"]["draws"])
        self.history = list(ckpt["history"])

    def teacher_progress(self, done: int, total: int, note: str) -> None:
        """--teacher optimize's pictures, painted before the first step (teacher.Painted)."""
        self.progress(Progress(done, total, {}, 0, "teacher", note=note))

    def notice(self, line: str) -> None:
        self.progress(Progress(self.start, self.cfg.iterations, {}, 0, "loss_net", note=line))

    def loop(self) -> _StopFlag:
        """Iterations to the run's end, or to the one after a Ctrl-C or kill; the flag says which."""
        cfg, device, shard = self.cfg, self.device, self.shard
        workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
        self.recipe.net.train()
        with _StopFlag() as flag:
            loader = batches(self.files, cfg.image_size, cfg.batch_size, cfg.seed, self.start, cfg.iterations, workers,
                             pin=device.type == "cuda", device=device, rank=shard.rank, world=shard.world,
                             content_size=cfg.content_size, loader=self.loader, host_crops="gpu_data" not in self.levers,
                             notice=self.notice)
            for x, bad in loader:
                self.report(self.iteration(x, bad))
                if shard.any(flag.stop):  # all processes stop after the same iteration
                    break
        return flag

    def iteration(self, x: torch.Tensor | None, bad: int) -> dict:
        """One step of the optimizer on a batch (none for a batch of only unreadable photos); its log row."""
        cfg, shard = self.cfg, self.shard
        stand_in = x is None and shard.world > 1  # every process takes part in a step (DDP): when none
        if stand_in:  # of its share could be read, with a sample photo weighted 0
            x = self.photos[:1]
        if x is not None:
            x = x.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled="bf16" in self.levers):
            terms, used = self.recipe.step(x, self.draws)
        used = 0 if stand_in else used
        if shard.world == 1:  # no need to wait for the losses to know the step's examples
            n = used
        else:
            n, bad, means = shard.average(terms or {}, used, bad)  # over every process's examples
        self.skipped += bad
        if n:
            for group in self.opt.param_groups:
                group["lr"] = learning_rate(cfg, self.it) * group.get("lr_scale", 1.0)
            self.opt.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients; weighting each by its examples makes that the
            # mean over all the batch's examples, as one process would have it (the weight is 1 then)
            (terms["total"] * (used * shard.world / n)).backward()
            self.opt.step()
            if shard.world == 1:  # the log line's numbers: one copy, once the whole step is queued
                means = speed.host_values(terms)
        else:  # a batch of only unreadable files is skipped
            means = {"total": float("nan")}
        self.it += 1
        row = {"iteration": self.it, **means, "seconds": round(time.perf_counter() - self.t0, 3)}
        self.history.append(row)
        return row

    def report(self, row: dict) -> None:
        """The iteration's progress, and its sample grid and checkpoint when they are due."""
        cfg, it, lead = self.cfg, self.it, self.shard.lead
        self.progress(Progress(it, cfg.iterations, row, self.skipped))
        if lead and ((cfg.sample_every and it % cfg.sample_every == 0) or it == cfg.iterations):
            path = save_samples(self.recipe, self.photos.to(self.device), self.folder / "samples" / f"iter_{it:06d}.jpg")
            self.progress(Progress(it, cfg.iterations, row, self.skipped, "sample", path))
        if lead and cfg.checkpoint_every and it % cfg.checkpoint_every == 0:
            self.progress(Progress(it, cfg.iterations, row, self.skipped, "checkpoint", self.checkpoint()))

    def checkpoint(self) -> Path:
        rec = self.recipe.record(half=False)
        rec.update(optimizer=self.opt.state_dict(), iteration=self.it, history=self.history,
                   rng={"draws": self.draws.get_state()}, loader=self.loader)
        if getattr(self.recipe, "critic", None) is not None:  # --teacher-critic: the critic and its Adam
            rec["critic"] = self.recipe.critic.state()
        path = modelfile.save(rec, self.folder / "checkpoint.pt")
        write_log(self.history, self.folder)
        return path

    def finish(self, flag: _StopFlag) -> Path:
        """The model file (the lead writes it; the others wait for it), or, stopped early, Interrupted
        with the checkpoint to resume from."""
        cfg, shard, it, history = self.cfg, self.shard, self.it, self.history
        if it < cfg.iterations:
            path = self.checkpoint() if shard.lead else self.folder / "checkpoint.pt"
            shard.barrier()  # no process reports the checkpoint before it is written
            raise Interrupted(path, it, flag.signum)
        if not shard.lead:
            shard.barrier()  # returns once the lead has written the model
            return Path(cfg.out)
        if not all(torch.isfinite(p).all() for p in self.recipe.net.parameters()):
            raise StylizeError(f"training diverged: the network's weights are no longer finite numbers; {cfg.out} "
                               f"not written (the last checkpoint is in {self.folder}); try a smaller --lr")
        self.checkpoint()
        rec = self.recipe.record(half=True)
        last = [h for h in history[-max(1, len(history) // 20):] if h["total"] == h["total"]] or history[-1:]
        rec["metrics"] = {k: sum(h.get(k, float("nan")) for h in last) / len(last)
                          for k in last[0] if k not in ("iteration", "seconds")}
        rec["metrics"]["skipped_photos"] = self.skipped
        rec["iteration"] = it
        if cfg.content_size:  # it applies at the scale it learnt its marks at (scale.py; calibrate may change it)
            rec["apply"] = {"version": modelfile.APPLY_VERSION, "work_size": cfg.content_size}
        path = modelfile.save(rec, cfg.out)
        shard.barrier()
        return path

"""Training a transformer network with the perceptual loss: settings, loop, checkpoints, resume.

`train(TrainConfig(...), progress=callback)` is the whole API; it prints nothing. A run writes the
model file at `out` and, beside it in `<out>_run/`, checkpoint.pt, samples/, losses.csv, losses.png.
Checkpoints are model files plus optimizer, iteration, RNG state and loss history, so `resume`
continues the very same run: same batches, same style and strength draws, same loss sequence.
"""
from __future__ import annotations

import csv
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from . import __version__, modelfile
from .devices import pick_device
from .data import batches, content_files, load_style, style_files
from .errors import StylizeError
from .images import load_image, save_image
from .losses import PerceptualLoss
from .networks import NetConfig, TransformerNet
from .norms import Condition
from .settings import NORMS, TrainConfig
from .vgg import loss_network


@dataclass
class Progress:
    iteration: int
    iterations: int
    losses: dict[str, float]
    skipped: int  # unreadable training photos met so far
    event: str = "step"  # step, sample, checkpoint
    path: Path | None = None


class Interrupted(Exception):
    def __init__(self, checkpoint: Path, iteration: int):
        super().__init__(f"interrupted at iteration {iteration}; checkpoint saved to {checkpoint}")
        self.checkpoint, self.iteration = checkpoint, iteration


def run_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + "_run")


def sample_strengths(batch: int, g: torch.Generator) -> torch.Tensor:
    """Half the examples at full strength, the rest uniform in [0, 1]: full strength is what most
    users apply, so it gets the most training, while the rest teaches the whole range."""
    s = torch.rand(batch, generator=g)
    return torch.where(torch.rand(batch, generator=g) < 0.5, torch.ones_like(s), s)


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
def save_samples(recipe, photos: torch.Tensor, path: Path) -> Path:
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
    keys = list(history[0])
    with open(folder / "losses.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    plot_losses(history, folder / "losses.png")


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [k for k in history[0] if k not in ("iteration", "seconds")]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    it = [h["iteration"] for h in history]
    k = max(1, len(history) // 50)  # moving average over ~2% of the run
    for ax, term in zip(axes[0], terms):
        v = torch.tensor([h[term] for h in history], dtype=torch.float64)
        smooth = torch.nn.functional.avg_pool1d(v[None, None], k, 1, 0, count_include_pad=False)[0, 0]
        ax.plot(it, v.tolist(), alpha=0.3, lw=0.8)
        ax.plot(it[k - 1:], smooth.tolist(), lw=1.5)
        ax.set_title(term)
        ax.set_xlabel("iteration")
        ax.set_yscale("log" if v.min() > 0 else "linear")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class _StopFlag:
    """Ctrl-C or kill ends the run at the next iteration boundary, with a checkpoint."""

    def __init__(self):
        self.stop = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.stop:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class TransformerRecipe:
    """Johnson et al.: a transformer network for a fixed set of styles (IN, CIN and the other norms)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, start: int):
        names, images = zip(*[load_style(p, cfg.style_size) for p in style_files(cfg.style)])
        self.names, self.cfg, self.device = list(names), cfg, device
        norm = "conditional" if cfg.norm == "instance" and len(names) > 1 else cfg.norm
        self.net = TransformerNet(NetConfig(norm, len(names), cfg.strength, cfg.width)).to(device)
        self.loss = PerceptualLoss(loss_network(cfg.loss_net, cfg.content_layers + cfg.style_layers, cfg.vgg_weights),
                                   cfg.content_layers, cfg.style_layers, cfg.style_loss).to(device)
        self.loss.set_styles([im.to(device) for im in images])
        self.weights = {"content": cfg.content_weight, "style": cfg.style_weight, "tv": cfg.tv_weight,
                        "pixel": cfg.pixel_weight if cfg.strength else 0.0}

    def step(self, x: torch.Tensor | None, draws: torch.Generator) -> dict | None:
        b, n_styles = self.cfg.batch_size, len(self.names)
        style_index = torch.randint(n_styles, (b,), generator=draws)  # drawn even for a skipped batch,
        strength = sample_strengths(b, draws) if self.cfg.strength else torch.ones(b)  # so resume stays in step
        if x is None:
            return None
        si, st = style_index[:len(x)].to(self.device), strength[:len(x)].to(self.device)
        cond = Condition(torch.nn.functional.one_hot(si, n_styles).float(), st if self.cfg.strength else None)
        y = self.net(x, cond)
        return self.loss(y, x, si, st, self.weights)

    @torch.no_grad()
    def samples(self, photos: torch.Tensor) -> list[torch.Tensor]:
        n = len(self.names)
        return [self.net(photos, Condition(torch.nn.functional.one_hot(
            torch.full((len(photos),), i, device=photos.device), n).float())) for i in range(min(n, 6))]

    def record(self, half: bool) -> dict:
        return model_record(self.net, self.cfg, self.names, half)


class AdaINRecipe:
    """Huang & Belongie: train only the decoder, on random photo and painting crops (see adain.py)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, start: int):
        from .adain import ENCODER_TAPS, AdaINConfig, AdaINNet

        self.cfg, self.device = cfg, device
        arch = "random" if cfg.loss_net == "random" else "vgg19"  # the paper's encoder is VGG-19
        vgg = loss_network(arch, ENCODER_TAPS, cfg.vgg_weights)
        self.net = AdaINNet(AdaINConfig(encoder=vgg.description, width=cfg.width)).to(device)
        self.net.encoder.features.load_state_dict(vgg.features.state_dict())
        self.files = style_files(cfg.style)
        workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
        self.styles = iter(batches(self.files, cfg.image_size, cfg.batch_size, cfg.seed + 7, start,
                                   cfg.iterations, workers))
        self.names = []  # any style image; the training paintings are in the settings
        self.fixed_styles = torch.stack([
            torch.nn.functional.interpolate(load_style(f, cfg.image_size)[1][None], size=(cfg.image_size,) * 2,
                                            mode="bilinear", antialias=True)[0] for f in self.files[:4]]).to(device)

    def step(self, x: torch.Tensor | None, draws: torch.Generator) -> dict | None:
        from .adain import adain
        from .losses import mean_std, relative_error, style_stats, total_variation

        s, _ = next(self.styles)
        if x is None or s is None:
            return None
        n = min(len(x), len(s))
        x, s = x[:n], s[:n].to(self.device, non_blocking=True)
        enc = self.net.encoder
        fs = enc(s, all_taps=True)
        t = adain(enc(x), *mean_std(fs["relu4_1"]))
        y = self.net.decoder(t)
        fy = enc(y, all_taps=True)
        terms = {
            "content": relative_error(fy["relu4_1"], t.detach()).mean(),  # against the AdaIN target, as in the paper
            "style": sum(relative_error(style_stats(fy[k], "meanstd"), style_stats(fs[k], "meanstd")).mean()
                         for k in fs) / len(fs),
            "tv": total_variation(y).mean(),
        }
        terms["total"] = (self.cfg.content_weight * terms["content"] + self.cfg.style_weight * terms["style"]
                          + self.cfg.tv_weight * terms["tv"])
        return terms

    @torch.no_grad()
    def samples(self, photos: torch.Tensor) -> list[torch.Tensor]:
        from .losses import mean_std

        cols = []
        for style in self.fixed_styles:
            stats = mean_std(self.net.encoder(style[None]))
            cols.append(self.net(photos, [(stats[0].expand(len(photos), -1), stats[1].expand(len(photos), -1))]))
        return cols

    def record(self, half: bool) -> dict:
        rec = model_record(self.net, self.cfg, self.names, half)
        rec.update(kind="adain", net=self.net.cfg.to_dict())
        return rec


def train(cfg: TrainConfig, progress: Callable[[Progress], None] | None = None,
          resume: str | Path | None = None) -> Path:
    """Train and write cfg.out; returns its path. With `resume`, continue that checkpoint's run
    (its settings win, except `iterations`, so a finished run can be extended)."""
    progress = progress or (lambda p: None)
    ckpt = None
    if resume is not None:
        ckpt = modelfile.load(resume)
        if "optimizer" not in ckpt:
            raise StylizeError(f"{resume}: a finished model, not a checkpoint; resume from {run_dir(cfg.out)}/checkpoint.pt")
        iterations = cfg.iterations
        cfg = TrainConfig.from_dict(ckpt["train"])
        cfg.iterations = max(iterations, ckpt["iteration"])
    if cfg.norm not in NORMS:
        raise StylizeError(f"unknown norm {cfg.norm!r}; choose one of {', '.join(NORMS)}")
    if not cfg.style:
        raise StylizeError("no style image; pass --style IMAGE (several, or a folder, for --norm conditional)")
    device = pick_device(cfg.device)
    files = content_files(cfg.content)
    start = ckpt["iteration"] if ckpt is not None else 0

    torch.manual_seed(cfg.seed)
    recipe = (AdaINRecipe if cfg.norm == "adaptive" else TransformerRecipe)(cfg, device, start)
    net = recipe.net
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    draws = torch.Generator().manual_seed(cfg.seed + 1)  # style and strength per example
    history = []
    if ckpt is not None:
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        draws.set_state(ckpt["rng"]["draws"])
        history = list(ckpt["history"])

    folder = run_dir(cfg.out)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    photos = _sample_photos(files, cfg.image_size)
    amp = device.type == "cuda"
    workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
    skipped, it = 0, start
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)

    def checkpoint() -> Path:
        rec = recipe.record(half=False)
        rec.update(optimizer=opt.state_dict(), iteration=it, history=history,
                   rng={"draws": draws.get_state()})
        path = modelfile.save(rec, folder / "checkpoint.pt")
        write_log(history, folder)
        return path

    net.train()
    with _StopFlag() as flag:
        loader = batches(files, cfg.image_size, cfg.batch_size, cfg.seed, start, cfg.iterations, workers,
                         pin=device.type == "cuda")
        for x, bad in loader:
            skipped += bad
            if x is not None:
                x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                terms = recipe.step(x, draws)
            if terms is not None:
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                opt.step()
            else:  # a batch of only unreadable files is skipped
                terms = {"total": torch.tensor(float("nan"))}
            it += 1
            row = {"iteration": it, **{k: float(v.detach()) for k, v in terms.items()},
                   "seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            progress(Progress(it, cfg.iterations, row, skipped))
            if it % cfg.sample_every == 0 or it == cfg.iterations:
                path = save_samples(recipe, photos.to(device), folder / "samples" / f"iter_{it:06d}.jpg")
                progress(Progress(it, cfg.iterations, row, skipped, "sample", path))
            if cfg.checkpoint_every and it % cfg.checkpoint_every == 0:
                progress(Progress(it, cfg.iterations, row, skipped, "checkpoint", checkpoint()))
            if flag.stop:
                break
    if it < cfg.iterations:
        raise Interrupted(checkpoint(), it)
    checkpoint()
    rec = recipe.record(half=True)
    last = [h for h in history[-max(1, len(history) // 20):] if h["total"] == h["total"]] or history[-1:]
    rec["metrics"] = {k: sum(h.get(k, float("nan")) for h in last) / len(last)
                      for k in last[0] if k not in ("iteration", "seconds")}
    rec["metrics"]["skipped_photos"] = skipped
    rec["iteration"] = it
    return modelfile.save(rec, cfg.out)

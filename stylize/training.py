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
def save_samples(net, photos, num_styles, path: Path) -> Path:
    """A grid: one row per fixed photo; the photo, then each style (up to 6) at full strength."""
    from torchvision.utils import make_grid

    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    cols = [photos]
    for i in range(min(num_styles, 6)):
        onehot = torch.nn.functional.one_hot(torch.full((len(photos),), i), num_styles).float()
        cols.append(net(photos.to(device), Condition(onehot.to(device))).float().clamp(0, 1).cpu())
    grid = make_grid(torch.stack(cols, 1).flatten(0, 1), nrow=len(cols), padding=2, pad_value=1.0)
    net.train(was_training)
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
    names, images = zip(*[load_style(p, cfg.style_size) for p in style_files(cfg.style)])
    norm = "conditional" if cfg.norm == "instance" and len(names) > 1 else cfg.norm

    torch.manual_seed(cfg.seed)
    net = TransformerNet(NetConfig(norm, len(names), cfg.strength, cfg.width)).to(device)
    loss = PerceptualLoss(loss_network(cfg.loss_net, cfg.content_layers + cfg.style_layers, cfg.vgg_weights),
                          cfg.content_layers, cfg.style_layers, cfg.style_loss).to(device)
    loss.set_styles([im.to(device) for im in images])
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    draws = torch.Generator().manual_seed(cfg.seed + 1)  # style and strength per example
    start, history = 0, []
    if ckpt is not None:
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        draws.set_state(ckpt["rng"]["draws"])
        start, history = ckpt["iteration"], list(ckpt["history"])

    folder = run_dir(cfg.out)
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    photos = _sample_photos(files, cfg.image_size)
    weights = {"content": cfg.content_weight, "style": cfg.style_weight, "tv": cfg.tv_weight,
               "pixel": cfg.pixel_weight if cfg.strength else 0.0}
    amp = device.type == "cuda"
    workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
    skipped, it = 0, start
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)

    def checkpoint() -> Path:
        rec = model_record(net, cfg, list(names), half=False)
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
            b = cfg.batch_size
            style_index = torch.randint(len(names), (b,), generator=draws)
            strength = sample_strengths(b, draws) if cfg.strength else torch.ones(b)
            if x is not None:  # a batch of only unreadable files is skipped (the draws still advance)
                n = len(x)
                x = x.to(device, non_blocking=True)
                si, st = style_index[:n].to(device), strength[:n].to(device)
                cond = Condition(torch.nn.functional.one_hot(si, len(names)).float(), st if cfg.strength else None)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    y = net(x, cond)
                    terms = loss(y, x, si, st, weights)
                opt.zero_grad(set_to_none=True)
                terms["total"].backward()
                opt.step()
            else:
                terms = {k: torch.tensor(float("nan")) for k in (*weights, "total")}
            it += 1
            row = {"iteration": it, **{k: float(v) for k, v in terms.items()},
                   "seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            progress(Progress(it, cfg.iterations, row, skipped))
            if it % cfg.sample_every == 0 or it == cfg.iterations:
                path = save_samples(net, photos, len(names), folder / "samples" / f"iter_{it:06d}.jpg")
                progress(Progress(it, cfg.iterations, row, skipped, "sample", path))
            if cfg.checkpoint_every and it % cfg.checkpoint_every == 0:
                progress(Progress(it, cfg.iterations, row, skipped, "checkpoint", checkpoint()))
            if flag.stop:
                break
    if it < cfg.iterations:
        raise Interrupted(checkpoint(), it)
    checkpoint()
    rec = model_record(net, cfg, list(names), half=True)
    last = history[-max(1, len(history) // 20):]
    rec["metrics"] = {k: sum(h[k] for h in last) / len(last) for k in last[0] if k not in ("iteration",)}
    rec["metrics"]["skipped_photos"] = skipped
    rec["iteration"] = it
    return modelfile.save(rec, cfg.out)

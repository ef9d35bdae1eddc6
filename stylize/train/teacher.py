"""Distillation: train the feed-forward network to paint what a teacher paints (issue 29).

Johnson et al. train the network against a loss network's Gram statistics of the painting. Ours
learned to meet those statistics with a uniform fine hatching (a blind panel preferred the peer 30
of 30 times), and translating the images before the loss network did not take it away. WCT on
reconstruction-only decoders (models/wct.py) paints the painting's own marks over a clear subject
(preferred to the peer's built-in Starry Night 73 of 90 times), but runs two to three times slower
than the network. So the network's target for each training crop is what the WCT model paints from
that crop with the painting, at the example's strength (models/wct.picture, exactly what
`stylize apply --style PAINTING` does), and the loss is TeacherLoss: L1 on the pixels and on the
loss network's features (losses.py). The network then runs at its own speed.

The second teacher, `--teacher optimize` (Painted), is `stylize apply --style PAINTING --optimize`:
Gatys on the pixels, which paints each painting's own marks (preferred to the peer's and to WCT's)
but takes half a minute a crop on a CPU core, far too slow to paint every step's crops. So it paints
a fixed set of crops once, before the first step (TrainConfig.teacher_targets a style), keeps them
in the run folder (a stopped run picks up where it was), and each step draws its examples from them:
a training crop from each painted crop at a random offset, mirrored at random.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stylize.errors import StylizeError
from stylize.features.losses import median3
from stylize.files import atomic_write, file_sha256
from stylize.images import load_style
from stylize.models import modelfile

OPTIMIZE = "optimize"  # --teacher's name for the optimizer


def teacher_for(cfg, styles: list[str], device: torch.device):
    """The run's teacher: Painted for --teacher optimize, else the WCT model cfg.teacher names."""
    if cfg.teacher == OPTIMIZE:
        return Painted(styles, cfg, device)
    return Teacher(cfg.teacher, styles, device)


class Teacher:
    """A WCT model and each style's statistics: crops -> the pictures it paints from them."""

    def __init__(self, model: str, styles: list[str], device: torch.device):
        from stylize.models.wct import WCTNet, colouring
        from stylize.models.whitening import WCTConfig

        record = modelfile.load(modelfile.resolve(model))
        if record.get("kind") != "wct":
            raise StylizeError(f"--teacher {model}: not a WCT model (its kind is {record.get('kind')!r})")
        self.net = modelfile.build(record, lambda: WCTNet(WCTConfig(**record["net"])), record["state_dict"])
        self.net.eval().requires_grad_(False).to(device)
        self.name = record.get("path", model)
        # as the WCT engine reads a painting: at the model's style size
        self.targets = []
        for path in styles:
            _, image = load_style(path, self.net.cfg.style_size)
            stats = self.net.style_stats(image[None].to(device))
            self.targets.append({t: colouring(*stats[t]) for t in self.net.taps})

    def __call__(self, x: torch.Tensor, style_index: torch.Tensor, strength: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, H, W) crops in [0, 1], H and W multiples of the model's; per example its style and
        strength -> (B, 3, H, W) the pictures, in [0, 1]."""
        from stylize.models.wct import picture

        out = []
        for i in range(len(x)):
            crop = x[i].detach().mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
            s = 1.0 if strength is None else float(strength[i])
            out.append(torch.from_numpy(np.ascontiguousarray(picture(self.net, crop, [self.targets[int(style_index[i])]], s))))
        return torch.stack(out).to(x.device).float().div_(255)

    def draw(self, batch: int, draws: torch.Generator) -> None:
        """Nothing to draw: it paints the loader's crops."""
        return None

    def pair(self, x: torch.Tensor, style_index: torch.Tensor, strength: torch.Tensor | None,
             picks: None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's (crops, targets): the loader's crops and the pictures painted from them."""
        return x, self(x, style_index, strength)


class Painted:
    """--teacher optimize: --optimize's pictures of a fixed set of crops, painted once (prepare())."""

    def __init__(self, styles: list[str], cfg, device: torch.device):
        self.styles, self.cfg, self.device = list(styles), cfg, device
        # a painted crop is a seventh larger than a training crop, so that each step sees it shifted
        self.size = cfg.image_size + max(4, cfg.image_size // 7)
        self.photos: list[torch.Tensor] = []  # per style: (N, 3, size, size) uint8 crops and their pictures
        self.pictures: list[torch.Tensor] = []

    def prepare(self, files: list[Path], folder: Path, report: Callable[[int, int, str], None], shard) -> None:
        """Paint (or read back from `folder`) teacher_targets crops a style, each process its share;
        report(done, total, note) after each."""
        from stylize.apply.engines.optimize import Optimizer, painting_for
        from stylize.train.data import CropDataset

        cfg, folder = self.cfg, Path(folder) / "teacher"
        folder.mkdir(parents=True, exist_ok=True)
        crops = CropDataset(files, self.size, cfg.seed, cfg.content_size)  # the loader's scale and draws
        photos, n = [], 0
        while len(photos) < cfg.teacher_targets and n < cfg.teacher_targets + len(files):
            x = crops[n]  # None: an unreadable photo, passed over
            n += 1
            if x is not None:
                photos.append(x.mul(255).round().clamp(0, 255).to(torch.uint8))
        if not photos:
            raise StylizeError("--teacher optimize: none of the training photos could be read")
        total, done = len(photos) * len(self.styles), 0
        for s, style in enumerate(self.styles):
            # the painting, and how it is painted
            key = f"{file_sha256(Path(style))}-{cfg.teacher_steps}-{cfg.teacher_smooth}-{cfg.teacher_tv:g}"
            optimizer, pictures = None, {}
            for k, x in enumerate(photos):
                path = folder / f"{s:02d}_{k:03d}.pt"
                if (s * len(photos) + k) % shard.world == shard.rank:  # this process's share
                    pictures[k] = _painted(path, key, x)
                    if pictures[k] is None:
                        if optimizer is None:
                            optimizer = Optimizer(painting_for(style), self.device, cfg.teacher_smooth, cfg.teacher_tv)
                        pictures[k] = torch.from_numpy(optimizer.optimize(x, cfg.teacher_steps, None))
                        record = {"key": key, "photo": x, "picture": pictures[k]}
                        # whole pictures only: a stopped run paints the one it was on again
                        atomic_write(path, lambda f: torch.save(record, f), prefix=".painting-", suffix=".pt")
                done += 1
                report(done, total, f"{Path(style).name}: crop {k + 1} of {len(photos)}")
            shard.barrier()  # the other processes' shares, once written
            others = {k: torch.load(folder / f"{s:02d}_{k:03d}.pt")["picture"] for k in range(len(photos)) if k not in pictures}
            self.photos.append(torch.stack(photos))
            painted = torch.stack([pictures.get(k, others.get(k)) for k in range(len(photos))])
            self.pictures.append(median_filtered(painted, cfg.teacher_median))

    def draw(self, batch: int, draws: torch.Generator) -> torch.Tensor:
        """Per example: which painted crop, the training crop's offset in it, mirrored or not."""
        n, room = len(self.photos[0]), self.size - self.cfg.image_size
        return torch.stack([torch.randint(n, (batch,), generator=draws),
                            torch.randint(room + 1, (batch,), generator=draws),
                            torch.randint(room + 1, (batch,), generator=draws),
                            torch.randint(2, (batch,), generator=draws)], 1)

    def pair(self, x: torch.Tensor, style_index: torch.Tensor, strength: torch.Tensor | None,
             picks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's (crops, targets) from the painted crops (x, the loader's crops, gives only the
        count); at strength s < 1 the target is the photo blended with the picture by s, as --optimize
        gives it."""
        size, photos, pictures = self.cfg.image_size, [], []
        for i in range(len(x)):
            k, top, left, flip = picks[i].tolist()
            s = int(style_index[i])
            for source, out in ((self.photos[s], photos), (self.pictures[s], pictures)):
                crop = source[k, :, top:top + size, left:left + size]
                out.append(crop.flip(-1) if flip else crop)
        photo = torch.stack(photos).to(x.device).float().div_(255)
        picture = torch.stack(pictures).to(x.device).float().div_(255)
        if strength is not None:
            picture = torch.lerp(photo, picture, strength.view(-1, 1, 1, 1).to(x.device))  # exact at 0 and 1
        return photo, picture


def median_filtered(pictures: torch.Tensor, passes: int) -> torch.Tensor:
    """`passes` of losses.median3 over (N, C, H, W) uint8 pictures. --optimize's pictures carry a
    pixel-by-pixel grain that the loss network cannot see and a student meets with a fine hatching; the
    gradient filter (--teacher-smooth) takes it out but softens the marks with it (the_scream and
    woman_with_hat lost their panels as "softer"); a median keeps a mark's edge."""
    for _ in range(passes):
        pictures = torch.cat([median3(p[None].float()).to(torch.uint8) for p in pictures])
    return pictures


def _painted(path: Path, key: str, photo: torch.Tensor) -> torch.Tensor | None:
    """The picture `path` holds of this crop, painted with these settings; None: paint it (anew)."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path)
    except Exception:  # a damaged file: paint it again
        return None
    return saved["picture"] if saved.get("key") == key and torch.equal(saved.get("photo"), photo) else None

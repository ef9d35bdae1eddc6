"""Training photos: random square crops from a folder tree, reproducible from (seed, sample number).

Each sample's file and crop are a pure function of the seed and the sample's global number, so a
resumed run sees exactly the batches a straight run would, with any number of loader workers, and
no loader state needs saving. Unreadable files are skipped and counted, never fatal.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import StylizeError
from .images import find_images, load_image

CONTENT_ENV = "STYLIZE_CONTENT"
DEFAULT_CONTENT = Path("~/.stylize/content")


def default_content_dir() -> Path:
    return Path(os.environ.get(CONTENT_ENV, DEFAULT_CONTENT)).expanduser()


def content_files(folder: str | Path | None) -> list[Path]:
    folder = Path(folder).expanduser() if folder else default_content_dir()
    files = find_images(folder) if folder.is_dir() else []
    if not files:
        raise StylizeError(f"no training photos in {folder}; pass --content DIR or set {CONTENT_ENV} "
                           "to a folder of photos (for example the COCO or BSDS500 images)")
    return files


class CropDataset(Dataset):
    def __init__(self, files: list[Path], image_size: int, seed: int):
        self.files, self.size, self.seed = files, image_size, seed
        self._epoch, self._perm = -1, None

    def __len__(self):
        return 1 << 62  # indexed by global sample number; the sampler bounds it

    def _file(self, n: int) -> Path:
        epoch, i = divmod(n, len(self.files))
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(len(self.files), generator=g), epoch
        return self.files[self._perm[i]]

    def __getitem__(self, n: int):
        try:
            x, _ = load_image(self._file(n))
        except StylizeError:
            return None
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (n << 20) + 7)
        _, h, w = x.shape
        scale = self.size / min(h, w)  # shorter side to the crop size, then a random square crop
        if scale != 1:
            size = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
            x = torch.nn.functional.interpolate(x[None], size=size, mode="bilinear", antialias=scale < 1,
                                                align_corners=False)[0]
        _, h, w = x.shape
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
        x = x[:, top:top + self.size, left:left + self.size]
        if torch.rand(1, generator=g) < 0.5:
            x = x.flip(-1)
        return x.contiguous()


class SampleRange(Sampler):
    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def collate(samples):
    good = [s for s in samples if s is not None]
    batch = torch.stack(good) if good else None
    return batch, len(samples) - len(good)


def batches(files, image_size, batch_size, seed, start_iteration, iterations, workers=0, pin=False):
    """Yields (batch or None, skipped count) for iterations start_iteration..iterations-1."""
    ds = CropDataset(files, image_size, seed)
    sampler = SampleRange(start_iteration * batch_size, iterations * batch_size)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin, persistent_workers=False)


def load_style(path, size: int | None) -> tuple[str, torch.Tensor]:
    x, _ = load_image(path, max_size=size)
    if min(x.shape[1:]) < 16:
        raise StylizeError(f"{path}: style image too small ({x.shape[2]}x{x.shape[1]}); need at least 16 px")
    return Path(path).stem, x


def style_files(paths: list[str | Path]) -> list[Path]:
    """Style images given as files or folders (a folder means every image in it)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise StylizeError(f"{p}: folder holds no images")
            out.extend(found)
        else:
            out.append(p)
    return out

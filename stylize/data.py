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
    if not folder.exists():
        raise StylizeError(f"{folder}: no such folder; pass --content DIR (a folder of photos) or set {CONTENT_ENV}")
    if not folder.is_dir():
        raise StylizeError(f"{folder}: not a folder; --content takes a folder of photos")
    files = find_images(folder)
    if not files:
        raise StylizeError(f"no training photos in {folder}; pass --content DIR or set {CONTENT_ENV} "
                           "to a folder of photos (for example the COCO or BSDS500 images)")
    return files


class CropDataset(Dataset):
    """Square crops of `image_size` from photos resized so their shorter side is `content_size`
    (0: the crop size, so a crop spans the photo's shorter side)."""

    def __init__(self, files: list[Path], image_size: int, seed: int, content_size: int = 0):
        self.files, self.size, self.seed = files, image_size, seed
        self.scale = max(content_size, image_size)
        self._epoch, self._perm = -1, None

    def __len__(self):
        return 1 << 62  # indexed by global sample number; the sampler bounds it

    def _file(self, n: int) -> Path:
        epoch, i = divmod(n, len(self.files))
        if epoch != self._epoch:
            self._perm, self._epoch = epoch_order(self.seed, epoch, len(self.files)), epoch
        return self.files[self._perm[i]]

    def __getitem__(self, n: int):
        try:
            x, _ = load_image(self._file(n))
        except StylizeError:
            return None
        x = fit_shorter_side(x, self.scale)
        top, left, flip = crop_draw(self.seed, n, x.shape[1], x.shape[2], self.size)
        x = x[:, top:top + self.size, left:left + self.size]
        if flip:
            x = x.flip(-1)
        return x.contiguous()


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The order of the files in an epoch: sample n is file order[n % count] of epoch n // count."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=g)


def fit_shorter_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (3, H, W) in [0, 1] resized so its shorter side is `size` (on whatever device x is)."""
    _, h, w = x.shape
    scale = size / min(h, w)
    if scale == 1:
        return x
    out = (max(size, round(h * scale)), max(size, round(w * scale)))
    return torch.nn.functional.interpolate(x[None], size=out, mode="bilinear", antialias=scale < 1,
                                           align_corners=False)[0]


def crop_draw(seed: int, n: int, h: int, w: int, size: int) -> tuple[int, int, bool]:
    """Sample n's square crop (top, left) of a resized h x w photo, and whether it is mirrored."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + (n << 20) + 7)
    top = int(torch.randint(0, h - size + 1, (1,), generator=g))
    left = int(torch.randint(0, w - size + 1, (1,), generator=g))
    return top, left, bool(torch.rand(1, generator=g) < 0.5)


class SampleRange(Sampler):
    """Sample numbers of iterations start..stop-1, `batch` an iteration. With `world` processes, process
    `rank` gets the rank-th equal slice of each iteration's numbers, so the batches as a whole are
    the same however many processes share them."""

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.batch, self.share = start, stop, batch, batch // world
        self.offset = rank * self.share

    def __iter__(self):
        for i in range(self.start, self.stop):
            first = i * self.batch + self.offset
            yield from range(first, first + self.share)

    def __len__(self):
        return (self.stop - self.start) * self.share


def collate(samples):
    good = [s for s in samples if s is not None]
    batch = torch.stack(good) if good else None
    return batch, len(samples) - len(good)


def batches(files, image_size, batch_size, seed, start_iteration, iterations, workers=0, pin=False, device=None,
            rank=0, world=1, content_size=0):
    """Yields (batch or None, skipped count) for iterations start_iteration..iterations-1. With a
    device, the crops are cut there from a cache of decoded photos (DeviceCrops, a CUDA speed lever).
    batch_size is the whole batch: with `world` processes, process `rank` gets its slice of each."""
    if device is not None:
        return DeviceCrops(files, image_size, batch_size, seed, start_iteration, iterations, device, workers,
                           rank=rank, world=world, content_size=content_size)
    ds = CropDataset(files, image_size, seed, content_size)
    sampler = SampleRange(start_iteration, iterations, batch_size, rank, world)
    return DataLoader(ds, batch_size=batch_size // world, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin, persistent_workers=False)


class _Decode(Dataset):
    """(sample number, path) jobs -> (sample number, uint8 photo at full size, or None if unreadable)."""

    def __init__(self, jobs: list[tuple[int, Path]]):
        self.jobs = jobs

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, i: int):
        n, path = self.jobs[i]
        try:
            return n, load_image(path, dtype=torch.uint8)[0]
        except StylizeError:
            return n, None


class DeviceCrops:
    """CropDataset's batches, cut on the device from photos decoded once.

    Loader workers only decode (uint8, a quarter of float's bytes to pin and copy); the device resizes
    each photo as CropDataset does and keeps it, as uint8, while `cache_bytes` has room, so later
    epochs decode nothing and the GPU is never left waiting on JPEG decoding. The file, crop and
    mirror of each sample come from the same (seed, sample number) draws as CropDataset, so a resumed
    run sees the same batches; pixels differ from CropDataset's only by the uint8 rounding of the
    resized photo (at most half a level), whether a photo came from the cache or not.
    """

    def __init__(self, files, image_size: int, batch_size: int, seed: int, start_iteration: int,
                 iterations: int, device, workers: int = 0, cache_bytes: int | None = None,
                 rank: int = 0, world: int = 1, content_size: int = 0):
        self.files, self.size, self.batch_size, self.seed = list(files), image_size, batch_size, seed
        self.scale = max(content_size, image_size)
        share = batch_size // world  # this process's slice of each batch, as in SampleRange
        self.first, self.last = rank * share, (rank + 1) * share - 1
        self.start, self.stop = start_iteration * batch_size, iterations * batch_size
        self.device, self.workers = torch.device(device), workers
        if cache_bytes is None:  # a quarter of what the device has free; 1 GiB elsewhere
            cache_bytes = (torch.cuda.mem_get_info(self.device)[0] // 4 if self.device.type == "cuda"
                           else 1 << 30)
        self.cache_bytes, self.cached_bytes = cache_bytes, 0
        self.cache: dict[int, torch.Tensor] = {}  # file index -> resized uint8 photo on the device
        self.decoded = 0  # photos decoded so far (a cached photo is decoded once)

    def __len__(self):
        return -(-(self.stop - self.start) // self.batch_size)

    def _decoder(self, jobs: list[tuple[int, Path]]):
        if not jobs:
            return iter(())
        return iter(DataLoader(_Decode(jobs), batch_size=None, num_workers=min(self.workers, len(jobs)),
                               pin_memory=self.device.type == "cuda"))

    def _fit(self, index: int, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(self.device, non_blocking=True)
        if min(x.shape[1:]) != self.scale:
            x = fit_shorter_side(x.float() / 255, self.scale).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        if self.cached_bytes + x.numel() <= self.cache_bytes:
            self.cache[index] = x
            self.cached_bytes += x.numel()
        return x

    def __iter__(self):
        count, crops, bad = len(self.files), [], 0
        n = self.start
        while n < self.stop:  # one epoch (or the part of it in range) at a time
            epoch = n // count
            end = min(self.stop, (epoch + 1) * count)
            order = epoch_order(self.seed, epoch, count)
            index = {m: int(order[m - epoch * count]) for m in range(n, end)
                     if self.first <= m % self.batch_size <= self.last}
            # each file comes once per epoch, so what the cache lacks now is exactly what to decode
            decoded = self._decoder([(m, self.files[i]) for m, i in index.items() if i not in self.cache])
            for m in index:
                x = self.cache.get(index[m])
                if x is None:
                    m2, raw = next(decoded)
                    assert m2 == m
                    self.decoded += 1
                    x = None if raw is None else self._fit(index[m], raw)
                if x is None:
                    bad += 1
                else:
                    top, left, flip = crop_draw(self.seed, m, x.shape[1], x.shape[2], self.size)
                    x = x[:, top:top + self.size, left:left + self.size]
                    crops.append(x.flip(-1) if flip else x)
                if m % self.batch_size == self.last or m + 1 == self.stop:
                    yield (torch.stack(crops).float().div_(255) if crops else None), bad
                    crops, bad = [], 0
            n = end


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

"""Training photos: random square crops from a folder tree, reproducible from (seed, sample number).

Each sample's file and crop are a pure function of the seed and the sample's global number, so a
resumed run sees exactly the batches a straight run would, with any number of loader workers, and
no loader state needs saving. Unreadable files are skipped and counted, never fatal.

Two loaders give those batches (a run records which, so it resumes on its own stream): "cache", the
photos decoded once into a memory-mapped uint8 file and each batch cut from it by one gather, on the
GPU when there is one (PhotoCache, CachedCrops); and "decode", every photo decoded and resized again
at each use (CropDataset), the loader of runs begun before the cache. bench/pipeline.py times both.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stylize.errors import StylizeError
from stylize.files import CACHE_ENV, atomic_write, cache_root, folder_lock
from stylize.images import find_images, load_image

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


LOADER_ENV = "STYLIZE_LOADER"
LOADERS = ("cache", "decode")  # the names a run records (training.py): the stream of batches it sees
CACHE_VERSION = 1
CACHE_DAYS = 30  # a cache not opened for this long goes when another is made


def cache_dir() -> Path:
    return cache_root() / "photos"


def batches(files, image_size, batch_size, seed, start_iteration, iterations, workers=0, pin=False, device=None,
            rank=0, world=1, content_size=0, loader=None, host_crops=False, notice=None):
    """Yields (batch or None, skipped count) for iterations start_iteration..iterations-1; batch_size is
    the whole batch: with `world` processes, process `rank` gets its slice of each.

    loader "cache" (the default when a device is given): the photos decoded once into a memory-mapped
    uint8 file (PhotoCache), each batch cut from it and delivered on `device` (the CPU if None): on a
    GPU by one gather from a copy of the cache in its memory where that fits (not with `host_crops`),
    else cut on the host and sent from pinned memory without blocking (CachedCrops). "decode" (the
    default without a device): every photo decoded and resized at each use, float crops on the host
    (CropDataset in a DataLoader of `workers` processes, pinned with `pin`). Both draw each sample's
    file, crop and mirror alike; their pixels differ by the cache's uint8 rounding of the resized
    photo (at most half a level). `notice` gets a line on the cache: its file and size."""
    loader = loader or ("cache" if device is not None else "decode")
    if loader == "cache":
        cache = PhotoCache.open(files, max(content_size, image_size), workers, notice)
        return CachedCrops(cache, image_size, batch_size, seed, start_iteration, iterations, device or "cpu",
                           rank=rank, world=world, host_crops=host_crops, notice=notice)
    if loader != "decode":
        raise StylizeError(f"unknown photo loader {loader!r}; choose {' or '.join(LOADERS)}")
    ds = CropDataset(files, image_size, seed, content_size)
    sampler = SampleRange(start_iteration, iterations, batch_size, rank, world)
    return DataLoader(ds, batch_size=batch_size // world, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=pin, persistent_workers=False)


def pick_loader(files, scale: int, notice=None) -> str:
    """The loader of a new run: $STYLIZE_LOADER if set, else "cache" where the cache is there or
    would take at most half the free space of its disk, else "decode" (said in a `notice`)."""
    asked = os.environ.get(LOADER_ENV, "").strip()
    if asked:
        if asked not in LOADERS:
            raise StylizeError(f"{LOADER_ENV}={asked}: unknown photo loader; choose {' or '.join(LOADERS)}")
        return asked
    if PhotoCache.find(files, scale) is not None:
        return "cache"
    folder = cache_dir()
    need = estimated_bytes(files, scale)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError:
        free = 0
    if need <= free // 2:
        return "cache"
    if notice:
        notice(f"training photos: decoded at every use; a cache of them would take {need / 2**30:.1f} GB, "
               f"over half of the {free / 2**30:.1f} GB free in {folder} (set {CACHE_ENV} to a bigger disk)")
    return "decode"


def _scaled(h: int, w: int, size: int) -> tuple[int, int]:
    """fit_shorter_side's output size."""
    scale = size / min(h, w)
    return (h, w) if scale == 1 else (max(size, round(h * scale)), max(size, round(w * scale)))


def estimated_bytes(files, scale: int) -> int:
    """What the cache of these photos would take, from their headers alone (orientation does not
    change the area); unreadable ones count nothing."""
    from PIL import Image

    total = 0
    for f in files:
        try:
            with Image.open(f) as im:
                h, w = _scaled(im.height, im.width, scale)
            total += 3 * h * w
        except Exception:  # noqa: BLE001 - read, and counted as unreadable, when the cache is made
            pass
    return total


def _decode_scaled(path: Path, scale: int) -> np.ndarray | None:
    """A photo as the cache keeps it: uint8 (3, H, W), its shorter side `scale`, or None if unreadable."""
    try:
        x = load_image(path, dtype=torch.uint8)[0]
    except StylizeError:
        return None
    if min(x.shape[1:]) != scale:
        x = fit_shorter_side(x.float() / 255, scale).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.numpy())


class PhotoCache:
    """Training photos decoded once, each resized so its shorter side is `scale` (as CropDataset
    resizes them) and rounded to uint8, laid one after another as (3, H, W) in one file that training
    reads as a numpy memory map: later runs and epochs decode nothing.

    The cache (in $STYLIZE_CACHE/photos, else ~/.cache/stylize/photos) is named by the photos' paths
    and the scale; its index holds their sizes and modification times, so a photo changed, added or
    removed makes another cache or rebuilds this one. Two runs making the same cache take turns; a
    cache not opened for CACHE_DAYS goes when another is made."""

    def __init__(self, files: list[Path], scale: int, index: dict, data: Path, built: bool):
        self.files, self.scale, self.built, self.path = files, scale, built, data
        self.offsets = index["offsets"]
        self.heights = [h for h, _ in index["shapes"]]  # 0 for an unreadable photo
        self.widths = [w for _, w in index["shapes"]]
        self.nbytes = index["bytes"]
        # copy-on-write mapping: writable as torch wants, though nothing writes to it
        self.array = np.memmap(data, np.uint8, "c", shape=(self.nbytes,)) if self.nbytes else np.zeros(0, np.uint8)
        self.pixels = torch.from_numpy(self.array)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def unreadable(self) -> int:
        return self.heights.count(0)

    @staticmethod
    def _names(files, scale: int) -> tuple[Path, str]:
        """(index file, signature of the photos' sizes and modification times)."""
        paths = [str(Path(f).resolve()) for f in files]
        key = hashlib.sha256(json.dumps([CACHE_VERSION, scale, paths]).encode()).hexdigest()[:20]
        stamps = []
        for p in paths:
            try:
                st = os.stat(p)
                stamps.append((st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((-1, 0))
        return cache_dir() / f"{key}.json", hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:20]

    @classmethod
    def find(cls, files, scale: int) -> "PhotoCache | None":
        """The cache of these photos at this scale, if it is there and up to date."""
        index_path, signature = cls._names(files, scale)
        try:
            index = json.loads(index_path.read_text())
            data = index_path.with_name(index["data"])
            if (index["version"], index["signature"], len(index["offsets"])) != (CACHE_VERSION, signature, len(files)) \
                    or data.stat().st_size != index["bytes"]:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            os.utime(index_path)  # opened now: kept CACHE_DAYS more
        except OSError:
            pass
        return cls([Path(f) for f in files], scale, index, data, built=False)

    @classmethod
    def open(cls, files, scale: int, workers: int = 0, notice=None) -> "PhotoCache":
        """The cache of these photos, made first if it is not there or out of date (decoding in
        as many threads as there are CPUs, up to 8, or `workers` if more)."""
        cache = cls.find(files, scale)
        if cache is None:
            folder = cache_dir()
            try:
                with folder_lock(folder):
                    cache = cls.find(files, scale) or cls._build(list(files), scale, workers, notice)
            except OSError as e:
                raise StylizeError(f"cannot write the training photos' cache in {folder} ({e.strerror or e}); "
                                   f"set {CACHE_ENV} to a folder with room, or {LOADER_ENV}=decode for a new run "
                                   "to decode photos at every use") from None
        if notice and not cache.built:
            notice(f"training photos: {len(cache)} read from the cache {cache.path} ({cache.nbytes / 2**20:.0f} MB)")
        return cache

    @classmethod
    def _build(cls, files: list[Path], scale: int, workers: int, notice) -> "PhotoCache":
        from concurrent.futures import ThreadPoolExecutor

        index_path, signature = cls._names(files, scale)
        data = index_path.with_name(f"{index_path.stem}-{signature}.u8")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, workers, min(8, cpus))
        t0 = time.perf_counter()
        offsets, shapes = [], []

        def write(f):
            pos = 0
            with ThreadPoolExecutor(threads) as pool:
                for first in range(0, len(files), 16 * threads):  # a bounded number of photos in memory
                    for x in pool.map(lambda p: _decode_scaled(p, scale), files[first:first + 16 * threads]):
                        offsets.append(pos)
                        shapes.append((0, 0) if x is None else x.shape[1:])
                        if x is not None:
                            f.write(memoryview(x).cast("B"))
                            pos += x.size

        for stale in index_path.parent.glob("*.part"):  # a killed build's (builds hold the folder's lock)
            stale.unlink(missing_ok=True)
        if notice:
            notice(f"training photos: decoding {len(files)} once into {data} (about "
                   f"{estimated_bytes(files, scale) / 2**20:.0f} MB)")
        atomic_write(data, write, prefix=data.stem + ".", suffix=".part")
        index = {"version": CACHE_VERSION, "scale": scale, "signature": signature, "data": data.name,
                 "bytes": (offsets[-1] + 3 * shapes[-1][0] * shapes[-1][1]) if files else 0,
                 "offsets": offsets, "shapes": [list(s) for s in shapes]}
        atomic_write(index_path, lambda f: f.write(json.dumps(index).encode()), prefix=index_path.stem + ".",
                     suffix=".part")
        for old in index_path.parent.glob(f"{index_path.stem}-*.u8"):  # the photos' earlier versions
            if old != data:
                old.unlink(missing_ok=True)  # a run reading it keeps its mapping
        stale = time.time() - CACHE_DAYS * 86400
        for other in index_path.parent.glob("*.json"):  # caches of other photos, not opened for a month
            try:
                if other != index_path and other.stat().st_mtime < stale:
                    for f in [*other.parent.glob(f"{other.stem}-*.u8"), other]:
                        f.unlink(missing_ok=True)
            except OSError:
                pass
        cache = cls(files, scale, index, data, built=True)
        if notice:
            notice(f"training photos: {len(files)} decoded in {time.perf_counter() - t0:.1f} s, "
                   f"{cache.nbytes / 2**20:.0f} MB" + (f", {cache.unreadable} unreadable" if cache.unreadable else ""))
        return cache


def cut_crops(pixels: torch.Tensor, offsets: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor,
              picks: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops of a batch, mirrored where asked, by one gather from the cache's flat uint8 pixels
    (one kernel on a GPU): picks is (B, 4) int64: photo, top, left, mirrored. All on one device;
    -> uint8 (B, 3, size, size)."""
    photo, top, left, flip = picks.unbind(1)
    r = torch.arange(size, device=pixels.device)
    cols = torch.where(flip[:, None] != 0, left[:, None] + (size - 1) - r, left[:, None] + r)  # (B, size)
    w = widths[photo]
    rows = offsets[photo][:, None] + (top[:, None] + r) * w[:, None]  # (B, size): row starts, channel 0
    planes = torch.arange(3, device=pixels.device) * (heights[photo] * w)[:, None]  # (B, 3)
    return pixels[planes[:, :, None, None] + rows[:, None, :, None] + cols[:, None, None, :]]


def slice_crops(array: np.ndarray, offsets: list[int], heights: list[int], widths: list[int],
                picks: list[tuple[int, int, int, bool]], size: int) -> np.ndarray:
    """cut_crops on the host: a copy of each crop's window of the memory map, in numpy. On a CPU it is
    the faster way (a tenth of the gather's time) and runs no parallel region: with the cores shared,
    each of torch's costs a wait for a descheduled thread (the gather and the conversion to float
    took 40 ms a batch of 4 x 160 px with 2 threads on 2 busy cores, 2 ms with one; this, 0.3 ms)."""
    out = np.empty((len(picks), 3, size, size), np.uint8)
    for k, (i, top, left, flip) in enumerate(picks):
        h, w = heights[i], widths[i]
        x = array[offsets[i]:offsets[i] + 3 * h * w].reshape(3, h, w)[:, top:top + size, left:left + size]
        out[k] = x[:, :, ::-1] if flip else x
    return out


class CachedCrops:
    """CropDataset's batches cut from a PhotoCache: each sample's file, crop and mirror come from the
    same (seed, sample number) draws, so a resumed run, or one split over processes, sees the same
    batches; the pixels are those of the cache (CropDataset's up to its uint8 rounding).

    On a GPU, the crops of a batch are cut by one gather (cut_crops) from a copy of the cache in its
    memory, when that fits in a quarter of the free memory (and not `host_crops`); else they are cut
    on the host (slice_crops) and sent from pinned memory without blocking, as uint8, and made float
    on the device. Either way the host never waits for the device, and its only work per sample is
    drawing the crop. On a CPU, slice_crops and numpy's float division (torch's, bit for bit)."""

    def __init__(self, cache: PhotoCache, image_size: int, batch_size: int, seed: int, start_iteration: int,
                 iterations: int, device="cpu", rank: int = 0, world: int = 1, host_crops: bool = False, notice=None):
        self.cache, self.size, self.batch_size, self.seed = cache, image_size, batch_size, seed
        share = batch_size // world  # this process's slice of each batch, as in SampleRange
        self.first, self.last = rank * share, (rank + 1) * share - 1
        self.start, self.stop = start_iteration * batch_size, iterations * batch_size
        self.device = torch.device(device)
        where = torch.device("cpu")
        if self.device.type == "cuda" and not host_crops:
            if cache.nbytes <= torch.cuda.mem_get_info(self.device)[0] // 4:
                where = self.device
            elif notice:
                notice(f"training photos: the cache ({cache.nbytes / 2**20:.0f} MB) is over a quarter of the GPU's "
                       "free memory; crops are cut on the host")
        self.where = where
        if where.type != "cpu":
            self.pixels = cache.pixels.to(where)
            self.offsets, self.heights, self.widths = (torch.tensor(v, dtype=torch.int64, device=where)
                                                       for v in (cache.offsets, cache.heights, cache.widths))

    def __len__(self):
        return (self.stop - self.start) // self.batch_size

    def _batch(self, picks: list[tuple[int, int, int, bool]]) -> torch.Tensor | None:
        if not picks:
            return None
        if self.where.type != "cpu":  # one gather on the device
            picks = torch.tensor(picks, dtype=torch.int64).pin_memory().to(self.where, non_blocking=True)
            return cut_crops(self.pixels, self.offsets, self.heights, self.widths, picks, self.size).float().div_(255)
        c = self.cache
        x = slice_crops(c.array, c.offsets, c.heights, c.widths, picks, self.size)
        if self.device.type == "cpu":
            return torch.from_numpy(np.divide(x, np.float32(255), dtype=np.float32))
        x = torch.from_numpy(x)
        x = x.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x.to(self.device)
        return x.float().div_(255)

    def __iter__(self):
        count, heights, widths = len(self.cache), self.cache.heights, self.cache.widths
        epoch, order, picks, bad = -1, None, [], 0
        for m in range(self.start, self.stop):
            k = m % self.batch_size
            if self.first <= k <= self.last:
                e, j = divmod(m, count)
                if e != epoch:
                    epoch, order = e, epoch_order(self.seed, e, count).tolist()
                i = order[j]
                if heights[i]:
                    picks.append((i, *crop_draw(self.seed, m, heights[i], widths[i], self.size)))
                else:
                    bad += 1
            if k == self.last:
                yield self._batch(picks), bad
                picks, bad = [], 0

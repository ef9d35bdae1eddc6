"""The training photos' cache and the batches cut from it (data.PhotoCache, data.CachedCrops): the
crops are CropDataset's, a pure function of (seed, iteration); the cache is made once, reused, and
made again when the photos change; a run records its loader and resumes on it."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from stylize.train import data
from stylize.models import modelfile
from stylize.errors import StylizeError
from stylize.train.data import CachedCrops, CropDataset, PhotoCache, batches, content_files, cut_crops, slice_crops
from stylize.train.training import run_dir, train

from conftest import make_photo, tiny_config


@pytest.fixture
def content(tmp_path, photos_dir):
    """The six 48x40 photos, one whose shorter side already is 32 px (not resized), one broken file."""
    d = tmp_path / "content"
    shutil.copytree(photos_dir, d)
    make_photo(7, width=50, height=32).save(d / "exact.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 10)
    return content_files(d)


def as_list(loader):
    return [(None if x is None else x.clone(), bad) for x, bad in loader]


def test_cached_crops_are_the_crop_dataset_crops(content):
    size, b, iterations = 32, 3, 7  # 21 samples of 8 files: more than two epochs
    ref = as_list(batches(content, size, b, 0, 0, iterations, loader="decode"))
    loader = batches(content, size, b, 0, 0, iterations, loader="cache")
    assert isinstance(loader, CachedCrops) and len(loader) == iterations
    got = as_list(loader)
    assert len(got) == len(ref) == iterations
    assert [bad for _, bad in got] == [bad for _, bad in ref] and sum(bad for _, bad in got) >= 2
    for (x, _), (y, _) in zip(ref, got):
        assert y.shape == x.shape and y.dtype == torch.float32
        assert (x - y).abs().max() <= 0.5 / 255 + 1e-6  # only the uint8 rounding of the resized photo
    cache, names = loader.cache, [f.name for f in content]
    assert cache.unreadable == 1 and cache.heights[names.index("broken.jpg")] == 0
    assert (cache.heights[names.index("exact.png")], cache.widths[names.index("exact.png")]) == (32, 50)  # as it was

    # resumed, split over processes, or a device given (the CPU: cut where the cache is): the same batches
    for start, kwargs in ((4, {}), (0, {"device": "cpu"}), (2, {"host_crops": True})):
        other = as_list(batches(content, size, b, 0, start, iterations, loader="cache", **kwargs))
        for (x, bad), (y, bad2) in zip(got[start:], other, strict=True):
            assert bad == bad2 and torch.equal(x, y)
    halves = [as_list(batches(content, size, 4, 0, 1, 5, loader="cache", rank=r, world=2)) for r in (0, 1)]
    for i, (x, _) in enumerate(as_list(batches(content, size, 4, 0, 1, 5, loader="cache"))):
        parts = [h[i][0] for h in halves if h[i][0] is not None]
        assert torch.equal(torch.cat(parts), x)
    # another seed, other crops
    assert any(not torch.equal(x, y) for (x, _), (y, _) in zip(got, as_list(batches(content, size, b, 1, 0, 7,
                                                                                      loader="cache")))
               if x is not None and y is not None and x.shape == y.shape)
    # photos resized to a larger content size first: the same crops both ways
    ref = as_list(batches(content, size, b, 0, 0, iterations, content_size=56))
    for (x, _), (y, _) in zip(ref, as_list(batches(content, size, b, 0, 0, iterations, content_size=56,
                                                    loader="cache"))):
        assert (x - y).abs().max() <= 0.5 / 255 + 1e-6


def test_the_gather_cuts_windows_and_mirrors():
    photos = [torch.randint(0, 256, (3, 7, 9), dtype=torch.uint8), torch.randint(0, 256, (3, 10, 6), dtype=torch.uint8)]
    pixels = torch.cat([p.flatten() for p in photos])
    offsets, heights, widths = torch.tensor([0, photos[0].numel()]), torch.tensor([7, 10]), torch.tensor([9, 6])
    picks = [(0, 2, 4, 0), (1, 5, 1, 1), (0, 0, 0, 1), (0, 2, 4, 1)]
    got = cut_crops(pixels, offsets, heights, widths, torch.tensor(picks), 5)  # the GPU's way
    for crop, (i, top, left, flip) in zip(got, picks):
        want = photos[i][:, top:top + 5, left:left + 5]
        assert torch.equal(crop, want.flip(-1) if flip else want)
    host = slice_crops(pixels.numpy(), offsets.tolist(), heights.tolist(), widths.tolist(), picks, 5)  # the host's
    assert torch.equal(torch.from_numpy(host), got)


def test_the_cache_is_made_once_then_reused(content):
    lines = []
    first = PhotoCache.open(content, 40, notice=lines.append)
    assert first.built and first.path.is_file() and first.path.parent == data.cache_dir()
    assert first.nbytes == first.path.stat().st_size == data.estimated_bytes(content, 40) > 0
    assert any(f"{first.nbytes / 2**20:.0f} MB" in line for line in lines)  # the notice says its size
    stamp = first.path.stat().st_mtime_ns
    lines.clear()
    again = PhotoCache.open(content, 40, notice=lines.append)
    assert not again.built and again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert torch.equal(again.pixels, first.pixels) and lines == [
        f"training photos: 8 read from the cache {first.path} ({first.nbytes / 2**20:.0f} MB)"]
    assert data.pick_loader(content, 40) == "cache"
    other = PhotoCache.open(content, 48)  # another scale, another cache
    assert other.built and other.path != first.path and first.path.is_file()
    index = first.path.with_name(first.path.name.split("-")[0] + ".json")
    month = time.time() - (data.CACHE_DAYS + 1) * 86400
    os.utime(index, (month, month))  # not opened for a month: it goes when another cache is made
    assert PhotoCache.open(content, 56).built and not index.exists() and not first.path.exists()
    assert other.path.is_file()


def test_a_changed_photo_makes_the_cache_again(content):
    size, b = 32, 2
    before = PhotoCache.open(content, size)
    crops = as_list(batches(content, size, b, 0, 0, 4, loader="cache"))
    target = next(f for f in content if f.name == "photo1.jpg")
    make_photo(99).save(target, format="JPEG")  # new pixels under the same name
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # whatever the file system's clock
    after = PhotoCache.open(content, size)
    assert after.built and after.path != before.path and not before.path.exists()  # the old one went
    changed = as_list(batches(content, size, b, 0, 0, 4, loader="cache"))
    ref = as_list(batches(content, size, b, 0, 0, 4, loader="decode"))  # the new photo, decoded
    for (x, _), (y, _) in zip(ref, changed):
        assert (x - y).abs().max() <= 0.5 / 255 + 1e-6
    assert any(not torch.equal(x, y) for (x, _), (y, _) in zip(crops, changed))
    (target.parent / "added.png").write_bytes(target.read_bytes())  # another photo: another list, another cache
    assert PhotoCache.open(content_files(target.parent), size).built


def test_loader_choice(content, monkeypatch):
    monkeypatch.setenv(data.LOADER_ENV, "decode")
    assert data.pick_loader(content, 32) == "decode"
    monkeypatch.setenv(data.LOADER_ENV, "mmap")
    with pytest.raises(StylizeError, match="STYLIZE_LOADER=mmap"):
        data.pick_loader(content, 32)
    with pytest.raises(StylizeError, match="unknown photo loader"):
        batches(content, 32, 2, 0, 0, 1, loader="mmap")
    monkeypatch.delenv(data.LOADER_ENV)
    monkeypatch.setenv(data.CACHE_ENV, str(content[0].parent / "cache"))
    assert data.pick_loader(content, 32) == "cache" and data.cache_dir() == content[0].parent / "cache" / "photos"


def test_the_step_reads_its_losses_back_as_float_does():
    from stylize.train import speed

    terms = {"a": torch.tensor(1 / 3), "b": torch.tensor(2 / 3, dtype=torch.bfloat16),
             "c": torch.tensor(0.1, dtype=torch.float16), "total": torch.tensor(7.0, requires_grad=True) * 1.1}
    assert speed.host_values(terms) == {k: float(v) for k, v in terms.items()}
    wide = {"a": torch.tensor(1 / 3, dtype=torch.float64), "b": torch.tensor(0.1)}
    assert speed.host_values(wide) == {k: float(v) for k, v in wide.items()}
    assert speed.host_values({}) == {}
    x = torch.arange(3)
    assert torch.equal(speed.to_device(x, torch.device("cpu")), x)


def history(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in modelfile.load(run_dir(out) / "checkpoint.pt")["history"]]


@pytest.mark.usefixtures("fast_random_vgg")
def test_a_run_records_its_loader_and_resumes_on_it(tmp_path, photos_dir, style_path, monkeypatch):
    """A checkpoint from before the cache (no loader recorded, no gpu_data) resumes decoding, as it began."""
    cfg = tiny_config(tmp_path / "new", photos_dir, [style_path], iterations=2, width=4)
    train(cfg)
    assert modelfile.load(run_dir(cfg.out) / "checkpoint.pt")["loader"] == "cache"

    monkeypatch.setenv(data.LOADER_ENV, "decode")  # the stream of runs begun before the cache
    straight = tiny_config(tmp_path / "straight", photos_dir, [style_path], iterations=4, width=4)
    train(straight)
    old = tiny_config(tmp_path / "old", photos_dir, [style_path], iterations=2, width=4)
    train(old)
    monkeypatch.delenv(data.LOADER_ENV)  # the new default from here on ...
    ckpt = run_dir(old.out) / "checkpoint.pt"
    rec = modelfile.load(ckpt)
    assert rec.pop("loader") == "decode"
    modelfile.save(rec, ckpt)  # ... and a checkpoint that records no loader
    old.iterations = 4
    train(old, resume=ckpt)
    assert history(Path(old.out)) == history(Path(straight.out))
    assert history(Path(cfg.out)) != history(Path(straight.out))[:2]  # the cache's stream is another (rounding)

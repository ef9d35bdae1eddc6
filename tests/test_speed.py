"""Training speed levers (speed.py): which a device gets, and that each one, run on the CPU here, keeps
training correct: the device-side crops are CropDataset's crops, a run with the CUDA levers resumes
exactly, and channels_last or bf16 loss networks give the loss they stand in for."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stylize import modelfile, speed
from stylize.data import CropDataset, DeviceCrops, batches, content_files
from stylize.errors import StylizeError
from stylize.losses import PerceptualLoss, gram
from stylize.training import run_dir, train
from stylize.vgg import loss_network

from conftest import make_photo, tiny_config

pytestmark = pytest.mark.usefixtures("fast_random_vgg")

CUDA_LEVERS = {"bf16", "channels_last", "fused_adam", "gpu_data"}  # the CUDA defaults that also run on a CPU


def test_levers_by_device_and_by_name():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert speed.default_levers(cpu) == frozenset()  # CPU runs keep their arithmetic
    assert speed.default_levers(cuda) == frozenset(speed.LEVERS) - {"compile"}
    assert speed.parse_levers("auto", cpu) == frozenset()
    assert speed.parse_levers("none", cuda) == frozenset()
    assert speed.parse_levers("all", cpu) == frozenset(speed.LEVERS)
    assert speed.parse_levers("bf16, gpu_data", cpu) == {"bf16", "gpu_data"}
    assert speed.parse_levers("-gpu_data,+compile", cuda) == frozenset(speed.LEVERS) - {"gpu_data"}
    with pytest.raises(StylizeError, match="unknown speed lever.*warp"):
        speed.parse_levers("bf16,warp", cpu)


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


def test_device_crops_are_the_crop_dataset_crops(content):
    size, b, iterations = 32, 3, 7  # 21 samples of 8 files: more than two epochs
    ref = as_list(batches(content, size, b, 0, 0, iterations))
    crops = DeviceCrops(content, size, b, 0, 0, iterations, "cpu")
    got = as_list(crops)
    assert len(got) == len(ref) == len(crops) == iterations
    assert [bad for _, bad in got] == [bad for _, bad in ref] and sum(bad for _, bad in got) >= 2
    for (x, _), (y, _) in zip(ref, got):
        assert y.shape == x.shape and y.dtype == torch.float32
        assert (x - y).abs().max() <= 0.5 / 255 + 1e-6  # only the uint8 rounding of the resized photo
    ds = CropDataset(content, size, 0)
    broken = sum(ds._file(n).name == "broken.jpg" for n in range(b * iterations))
    assert crops.decoded == len(content) - 1 + broken  # each good photo decoded once, then cached

    # a resumed loader, one without a cache and one decoding in a worker give the very same batches
    for other, start in ((DeviceCrops(content, size, b, 0, 4, iterations, "cpu"), 4),
                         (DeviceCrops(content, size, b, 0, 0, iterations, "cpu", cache_bytes=0), 0),
                         (DeviceCrops(content, size, b, 0, 2, 5, "cpu", workers=1), 2)):
        for (x, bad), (y, bad2) in zip(got[start:], as_list(other), strict=False):
            assert bad == bad2 and torch.equal(x, y)
    assert DeviceCrops(content, size, b, 0, 0, iterations, "cpu", cache_bytes=0).cache == {}
    # photos resized to a larger content size first: the same crops both ways
    ref = as_list(batches(content, size, b, 0, 0, iterations, content_size=56))
    for (x, _), (y, _) in zip(ref, as_list(DeviceCrops(content, size, b, 0, 0, iterations, "cpu", content_size=56))):
        assert (x - y).abs().max() <= 0.5 / 255 + 1e-6


def test_channels_last_and_bf16_loss_network_give_the_same_loss():
    torch.manual_seed(0)
    f = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(gram(f.contiguous(memory_format=torch.channels_last)), gram(f))

    layers = ["relu1_2", "relu2_1"]
    ref = PerceptualLoss(loss_network("random", layers), ["relu1_2"], layers)
    fast = PerceptualLoss(loss_network("random", layers), ["relu1_2"], layers)
    styles = [torch.rand(3, 40, 36)]
    ref.set_styles(styles)
    fast.set_styles(styles)
    fast.net.to(memory_format=torch.channels_last)
    y, x = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    want = ref(y, x)
    for k, v in fast(y, x).items():
        torch.testing.assert_close(v, want[k], rtol=1e-4, atol=1e-6)
    fast.net.features.to(torch.bfloat16)
    for k, v in fast(y, x).items():  # bf16 weights, fp32 input: the input follows the weights
        torch.testing.assert_close(v, want[k], rtol=0.05, atol=1e-4)


def history(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in modelfile.load(run_dir(out) / "checkpoint.pt")["history"]]


@pytest.mark.slow
def test_cuda_levers_train_on_the_cpu_and_resume_exactly(tmp_path, photos_dir, style_path):
    plain = tiny_config(tmp_path / "plain", photos_dir, [style_path], iterations=4, width=4)
    train(plain)
    straight = tiny_config(tmp_path / "straight", photos_dir, [style_path], iterations=4, width=4)
    train(straight, levers=CUDA_LEVERS)
    resumed = tiny_config(tmp_path / "resumed", photos_dir, [style_path], iterations=2, width=4)
    train(resumed, levers=CUDA_LEVERS)
    resumed.iterations = 4
    train(resumed, resume=run_dir(resumed.out) / "checkpoint.pt", levers=CUDA_LEVERS)
    fast = history(Path(straight.out))
    assert history(Path(resumed.out)) == fast  # the same loss sequence, bf16, device crops and all
    ref = history(Path(plain.out))
    assert fast != ref  # the levers were on ...
    assert fast[0]["total"] == pytest.approx(ref[0]["total"], rel=0.05)  # ... and compute the same loss
    with pytest.raises(StylizeError, match="unknown speed lever"):
        train(plain, levers=["warp"])

"""Training speed levers (speed.py): which a device gets, and that each one, run on the CPU here, keeps
training correct: a run with the CUDA levers resumes exactly, and channels_last or bf16 loss networks
give the loss they stand in for (the crops cut where the cache is, gpu_data: tests/test_data.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stylize.models import modelfile
from stylize.train import speed
from stylize.errors import StylizeError
from stylize.features.losses import PerceptualLoss, gram
from stylize.train.training import run_dir, train
from stylize.features.vgg import loss_network

from conftest import tiny_config

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
    assert history(Path(resumed.out)) == fast  # the same loss sequence, bf16, cached crops and all
    ref = history(Path(plain.out))
    assert fast != ref  # the levers were on ...
    assert fast[0]["total"] == pytest.approx(ref[0]["total"], rel=0.05)  # ... and compute the same loss
    with pytest.raises(StylizeError, match="unknown speed lever"):
        train(plain, levers=["warp"])


@pytest.mark.slow
def test_bench_pipeline_measures_both_loaders_and_the_step(tmp_path, capsys):
    """bench/pipeline.py end to end on the CPU with tiny settings: every figure it reports is there."""
    import json

    from conftest import load_script

    out = tmp_path / "pipeline.json"
    res = load_script("bench/pipeline.py").main([
        "--photos", "3", "--batches", "5", "--old-batches", "2", "--steps", "1", "--warmup", "1", "--repeats", "1",
        "--profile-steps", "2", "--threads", "1", "--image-size", "32", "--batch-size", "2", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["cache"]["built"] and res["cache"]["photos"] == 3 and res["cache"]["mb"] > 0
    assert set(res["loaders"]) == {"decode", "cache"} and all(v > 0 for v in res["loaders"].values())
    assert set(res["recipe"]) == {"decode", "cache"} and res["ratio"] > 0
    assert res["host"]["wall_ms"] > res["host"]["ops_ms"] > 0 and res["host"]["top_ops"] > 100
    assert "crop_draw" in " ".join(res["host"]["item_callers"])  # the crops' draws, read on the host
    assert "batches/s" in capsys.readouterr().out

"""bench/train.py runs end to end on the CPU with tiny settings and writes the rows the issue asks for."""
from __future__ import annotations

import json
import math

import pytest

from conftest import load_script

REQUIRED = {"device", "model", "size", "batch", "path", "per_second", "peak_memory_mb"}


@pytest.fixture(scope="module")
def bench():
    return load_script("bench/train.py")


@pytest.mark.usefixtures("fast_random_vgg")
@pytest.mark.slow
def test_bench_train_writes_plain_and_stylize_rows(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    bench.main(["--device", "cpu", "--size", "32", "--batch", "2", "--iterations", "3", "--warmup", "1",
                "--width", "4", "--photos", "4", "--photo-size", "64x48", "--style-size", "48",
                "--levers", "auto", "--levers", "gpu_data", "--in-process", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["path"], r["levers"]) for r in rows] == [("plain", []), ("stylize", []), ("stylize", ["gpu_data"])]
    for r in rows:
        assert REQUIRED <= set(r)
        assert (r["device"], r["size"], r["batch"], r["model"]) == ("cpu", 32, 2, "TransformerNet instance w4")
        assert r["per_second"] > 0 and r["peak_memory_mb"] > 0 and math.isfinite(r["final_loss"])
        assert r["loss_net"].startswith("random VGG-16")  # no ImageNet weights in the test's TORCH_HOME
    for r in rows[1:]:
        assert r["ratio"] == pytest.approx(r["per_second"] / rows[0]["per_second"], rel=1e-2)
    table = capsys.readouterr().out
    assert "plain" in table and "stylize" in table and "random VGG-16" in table


def test_bench_train_refuses_bad_settings(bench):
    with pytest.raises(SystemExit, match="warmup"):
        bench.main(["--iterations", "3", "--warmup", "3"])
    with pytest.raises(SystemExit, match="unknown speed lever"):
        bench.main(["--device", "cpu", "--levers", "turbo"])

"""studies/adain_eval.py: the untrained decoder is the one training started from; the report is complete."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import load_script, tiny_config
from stylize.models import modelfile
from stylize.train import training
from stylize.train.training import run_dir, train



@pytest.fixture(scope="module")
def bench():
    return load_script("studies/adain_eval.py")


def test_untrained_decoder_is_trainings_start_and_report_has_every_row(bench, tmp_path, photos_dir, style_path,
                                                                       style_path2, monkeypatch):
    monkeypatch.setattr(training, "plot_losses", lambda history, path: None)  # seconds of matplotlib, not tested here
    # lr 0: the final checkpoint holds the decoder exactly as training initialised it (no fast_random_vgg
    # fixture: its cache would skip the RNG draws that training makes and the replay repeats)
    cfg = tiny_config(tmp_path, photos_dir, [style_path], norm="adaptive", network="adain", width=4, iterations=1, lr=0.0,
                      seed=3)
    train(cfg)
    ckpt = modelfile.load(run_dir(cfg.out) / "checkpoint.pt")
    fresh = bench.untrained_decoder(ckpt).state_dict()
    start = {k.removeprefix("decoder."): v for k, v in ckpt["state_dict"].items() if k.startswith("decoder.")}
    assert fresh.keys() == start.keys() and all(torch.equal(fresh[k], start[k]) for k in start)

    styles = tmp_path / "styles"
    styles.mkdir()
    for p in (style_path, style_path2):
        (styles / Path(p).name).write_bytes(Path(p).read_bytes())
    out = tmp_path / "eval"
    report = bench.main(["--model", cfg.out, "--content", str(photos_dir), "--styles", str(styles),
                         "--out-dir", str(out), "--count", "2", "--size", "48", "--quality-pairs", "0"])
    assert json.loads((out / "report.json").read_text())["means"] == report["means"]
    assert len(report["pairs"]) == 4 and (out / "grid.jpg").is_file()
    for row in ("trained", "untrained", "content"):
        assert set(report["means"][row]) == {"content", "style"}
    assert report["means"]["content"]["style"] > 0  # the photo is not the painting

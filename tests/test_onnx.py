"""Export to ONNX and the ONNX Runtime CPU path: same pictures as PyTorch, no torch at start-up."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_photo, random_cin_record
from stylize.apply.engines import graphs, onnx_runtime
from stylize.models import modelfile
from stylize.cli import app
from stylize.errors import StylizeError
from stylize.apply.engines.export import export_onnx
from stylize.apply.engines.pytorch import Stylizer
from stylize.settings import TrainConfig
from stylize.train.training import model_record

pytestmark = pytest.mark.slow  # every test here takes seconds (processes, ONNX exports): CI runs them


@pytest.fixture(scope="module")
def cin(tmp_path_factory):
    """An untrained 3-style strength model with distinct per-style norm parameters."""
    return modelfile.save(random_cin_record(["a", "b", "c"]), tmp_path_factory.mktemp("onnx") / "trio.pt")


@pytest.fixture(scope="module")
def exported(cin):
    return export_onnx(cin, cin.with_suffix(".onnx"))


def test_export_checks_itself_against_pytorch_and_describes_the_model(exported):
    assert exported.path.is_file() and exported.max_difference < 1e-4
    fast = onnx_runtime.OnnxStylizer(exported.path)
    assert fast.styles == ["a", "b", "c"] and fast.meta["strength"] and fast.meta["kind"] == "transformer"


@pytest.mark.parametrize("specs,strength", [(None, 1.0), (["b"], 0.4), (["a=0.3", "c=0.7"], 1.0), (["c"], 0.0)])
def test_onnx_runtime_gives_the_pytorch_picture_for_styles_mixes_and_strengths(cin, exported, specs, strength):
    torch_path, fast = Stylizer(cin, "cpu"), onnx_runtime.OnnxStylizer(exported.path)
    photo = np.asarray(make_photo(3, 53, 37), dtype=np.uint8).transpose(2, 0, 1).copy()  # odd size: padding
    want = torch_path.run(torch.from_numpy(photo), torch_path.condition(specs), strength).numpy()
    got = fast.run(photo, fast.condition(specs), strength)
    assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    if strength == 0.0:
        assert np.array_equal(got, photo)


def test_the_default_graph_is_the_first_style_at_full_strength(cin, exported, tmp_path):
    graph = export_onnx(cin, tmp_path / "default.onnx", default=True)
    assert graph.max_difference < 1e-4
    fast, general = onnx_runtime.OnnxStylizer(graph.path), onnx_runtime.OnnxStylizer(exported.path)
    assert fast.meta["default"] and fast.inputs == {"image"}
    photo = np.asarray(make_photo(4, 53, 37), dtype=np.uint8).transpose(2, 0, 1).copy()
    got, want = fast.run(photo, fast.condition(None), 1.0), general.run(photo, general.condition(None), 1.0)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    for specs, strength in ((["b"], 1.0), (None, 0.5)):  # anything else is not this graph's to do
        with pytest.raises(StylizeError, match="first style at full strength"):
            fast.run(photo, fast.condition(specs), strength)


def test_cli_apply_runs_the_default_graph_only_for_the_default_request(cin, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STYLIZE_RUNTIME", "auto")
    make_photo(1, 61, 45).save(tmp_path / "p.png")
    for args in ([], ["--style", "b"]):
        r = CliRunner().invoke(app, ["apply", str(tmp_path / "p.png"), "--model", str(cin), *args, "--out",
                                     str(tmp_path / f"o{len(args)}.png"), "--device", "cpu"])
        assert r.exit_code == 0, r.output
    graphs = sorted(p.name.endswith("-default.onnx") for p in (tmp_path / "cache" / "onnx").iterdir())
    assert graphs == [False, True]


def test_cli_apply_uses_the_cached_graph_without_importing_torch(cin, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    graphs.cached_graph(cin)  # what a first apply does
    make_photo(1, 61, 45).save(tmp_path / "p.png")
    code = ("import sys; from stylize.cli import main; sys.argv = sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    env = dict(os.environ, STYLIZE_RUNTIME="auto")
    out = subprocess.run([sys.executable, "-c", code, "stylize", "apply", str(tmp_path / "p.png"), "--model", str(cin),
                          "--style", "b", "--style-weight", "0.6", "--out", str(tmp_path / "fast.png"), "--device", "cpu"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no torch" in out.stdout
    r = CliRunner().invoke(app, ["apply", str(tmp_path / "p.png"), "--model", str(cin), "--style", "b", "--style-weight",
                                 "0.6", "--out", str(tmp_path / "slow.png"), "--runtime", "torch"])
    assert r.exit_code == 0, r.output
    a, b = (np.asarray(Image.open(tmp_path / f), dtype=int) for f in ("fast.png", "slow.png"))
    assert np.abs(a - b).max() <= 1


def test_requests_the_onnx_path_does_not_cover_fail_clearly(cin, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "cache"))
    make_photo(1).save(tmp_path / "p.png")
    Image.new("L", (48, 40), 255).save(tmp_path / "m.png")
    r = CliRunner().invoke(app, ["apply", str(tmp_path / "p.png"), "--model", str(cin), "--style", "a", "--style", "b",
                                 "--mask", str(tmp_path / "m.png"), "--runtime", "onnx", "--out", str(tmp_path / "o.png")])
    assert r.exit_code == 1 and "does not cover --mask" in r.output and not (tmp_path / "o.png").exists()
    r = CliRunner().invoke(app, ["apply", str(tmp_path / "p.png"), "--model", str(cin), "--runtime", "gpu"])
    assert r.exit_code == 1 and "--runtime 'gpu'" in r.output


def test_export_command_reports_the_difference_and_refuses_unknown_formats(cin, tmp_path):
    r = CliRunner().invoke(app, ["export", str(cin), "--format", "tflite"])
    assert r.exit_code == 1 and "choose one of onnx" in r.output
    r = CliRunner().invoke(app, ["export", str(cin), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "largest difference from PyTorch" in r.output and (tmp_path / "m.onnx").is_file()


def test_adaptive_models_export_too(tmp_path):
    from stylize.models.adain import AdaINConfig, AdaINNet
    from stylize.features.vgg import random_features

    torch.manual_seed(0)
    net = AdaINNet(AdaINConfig(encoder="random vgg19", width=4)).eval()
    net.encoder.features.load_state_dict(random_features("vgg19")[0][:21].state_dict())
    rec = model_record(net, TrainConfig(norm="adaptive", network="adain", width=4), [], half=False)
    rec.update(kind="adain", net=net.cfg.to_dict())
    report = export_onnx(modelfile.save(rec, tmp_path / "adain.pt"), tmp_path / "adain.onnx")
    assert report.max_difference < 1e-3
    meta = json.loads(__import__("onnx").load(str(report.path)).metadata_props[0].value)
    assert meta["kind"] == "adain" and meta["multiple"] == 8


def test_a_calibrated_model_applies_alike_in_pytorch_and_both_onnx_graphs(cin, tmp_path):
    """A model file whose "apply" says full_strength 0.8 and palette 0.5 with each style's colours:
    --style-weight s runs the network at 0.8 s, then moves the output 0.5 s of the way to the styles'
    palette; PyTorch, the general graph and the default graph (with 0.8 built in) agree."""
    from stylize.models import modelfile
    from stylize.apply import palette

    rng = np.random.default_rng(0)
    colours = [(rng.uniform(0.2, 0.8, 3), np.diag(rng.uniform(0.01, 0.05, 3))) for _ in range(3)]
    rec = modelfile.load(cin)
    rec["apply"] = {"full_strength": 0.8, "palette": 0.5, "colours": [palette.as_record(c) for c in colours]}
    calibrated = modelfile.save(rec, tmp_path / "calibrated.pt")
    torch_path, plain = Stylizer(calibrated, "cpu"), Stylizer(cin, "cpu")
    general = onnx_runtime.OnnxStylizer(export_onnx(calibrated, tmp_path / "c.onnx").path)
    default = onnx_runtime.OnnxStylizer(export_onnx(calibrated, tmp_path / "d.onnx", default=True).path)
    photo = np.asarray(make_photo(5, 53, 37), dtype=np.uint8).transpose(2, 0, 1).copy()
    x = torch.from_numpy(photo)
    for specs, strength in ((None, 1.0), (["a=0.3", "c=0.7"], 0.6)):
        look = torch_path.condition(specs)
        want = palette.recolour(plain.run(x, look, 0.8 * strength).numpy(), colours, look.weights, 0.5 * strength)
        got = torch_path.run(x, look, strength).numpy()
        assert np.array_equal(got, want)
        onnx = general.run(photo, general.condition(specs), strength)
        assert np.abs(onnx.astype(int) - got.astype(int)).max() <= 1
    got = default.run(photo, default.condition(None), 1.0)
    assert np.abs(got.astype(int) - torch_path.run(x, torch_path.condition(None), 1.0).numpy().astype(int)).max() <= 1
    assert np.array_equal(torch_path.run(x, torch_path.condition(None), 0.0).numpy(), photo)  # 0: the photo


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_sessions_run_as_many_threads_as_cpus_the_process_may_use():
    import onnxruntime as ort

    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # as under `taskset -c 0` or a one-CPU container cpuset
        assert onnx_runtime.session_options(ort).intra_op_num_threads == 1
    finally:
        os.sched_setaffinity(0, allowed)
    unrestricted = 0 if len(allowed) == os.cpu_count() else len(allowed)  # 0: ONNX Runtime's own choice
    assert onnx_runtime.session_options(ort).intra_op_num_threads == unrestricted

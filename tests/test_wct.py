"""WCT models (models/wct.py, engines/wct.py, engines/onnx_wct.py): the transform, the model file
kind, apply end to end on PyTorch and on ONNX Runtime, with a tiny randomly initialised model made
here (never the shipped one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_photo, make_style
from stylize.apply.choose import open_stylizer
from stylize.apply.engines import graphs
from stylize.apply.engines.onnx_wct import OnnxWCT
from stylize.apply.engines.wct import WCTStylizer
from stylize.cli import app
from stylize.errors import StylizeError
from stylize.models import modelfile, whitening
from stylize.models.wct import WCTNet, colouring, covariance, inverse_sqrt, wct
from stylize.models.whitening import WCTConfig, mix
from stylize.settings import ApplyConfig


def wct_record(levels: str = "block3_expand:1,block1_expand:0.5", seed: int = 0) -> dict:
    """An untrained WCT model's record: random encoder and decoders of width 2, paintings at 64 px."""
    torch.manual_seed(seed)
    cfg = WCTConfig(levels=levels, width=2, style_size=64)
    net = WCTNet(cfg)
    with torch.no_grad():  # signal-preserving weights, the output near mid-grey: PyTorch's default
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]  # init fades it to nothing
        for m in convs:
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
        for d in net.decoders.values():
            d[-1].weight.mul_(0.2)
            d[-1].bias.fill_(0.5)
    return {"format": modelfile.FORMAT, "version": modelfile.VERSION, "kind": "wct", "net": cfg.to_dict(),
            "styles": [], "train": {"iterations": 0}, "state_dict": net.state_dict()}


@pytest.fixture
def wct_model(tmp_path):
    return modelfile.save(wct_record(), tmp_path / "tiny_wct.safetensors")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model and its ONNX graphs, exported once into a cache of this module's."""
    folder = tmp_path_factory.mktemp("wct_onnx")
    model = modelfile.save(wct_record(), folder / "tiny_wct.safetensors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STYLIZE_CACHE", str(folder / "cache"))
        found = graphs.cached_graphs(model)
    return SimpleNamespace(model=model, cache=folder / "cache", graphs=found)


@pytest.fixture
def onnx_model(exported, monkeypatch):
    """The exported tiny model, its cache this test's."""
    monkeypatch.setenv("STYLIZE_CACHE", str(exported.cache))
    return exported.model


@pytest.fixture
def files(tmp_path):
    """An odd-sized photo (padding to the network's multiple and back) and two different paintings."""
    photo, a, b = tmp_path / "photo.png", tmp_path / "painting_a.png", tmp_path / "painting_b.png"
    make_photo(3, 50, 38).save(photo)
    make_style(1).save(a)
    Image.fromarray(255 - np.asarray(make_style(7))[:, ::-1]).save(b)
    return photo, a, b


def apply(model, photo, out, *args) -> np.ndarray:
    r = CliRunner().invoke(app, ["apply", str(photo), "--model", str(model), "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    return np.asarray(Image.open(out).convert("RGB"), np.float32)


def test_wct_gives_the_features_the_target_mean_and_covariance():
    torch.manual_seed(0)
    content = torch.randn(1, 6, 12, 10) @ torch.randn(10, 10)
    target = torch.randn(6, 300).T @ torch.randn(6, 6) + 3 * torch.randn(6)
    mean, cov = covariance(target.T.reshape(1, 6, 300, 1))
    out = wct(content, [colouring(mean, cov)], 1.0)
    got_mean, got_cov = covariance(out)
    assert torch.allclose(got_mean, mean, atol=1e-3)
    assert torch.allclose(got_cov, cov, atol=1e-2 * float(cov.abs().max()))
    assert torch.equal(wct(content, [colouring(mean, cov)], 0.0), content)  # alpha 0: the photo's own features


def test_inverse_sqrt_matches_the_eigendecomposition():
    """Newton-Schulz (float32, what the paint graph runs) against the eigendecomposition (float64) on an
    ill-conditioned covariance, eigenvalues 1e-5 to 10 as a photo's features give."""
    torch.manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(96, 96, dtype=torch.float64))
    cov = (q * torch.logspace(-5, 1, 96, dtype=torch.float64)) @ q.T
    e, v = torch.linalg.eigh(cov + whitening.EPS * torch.eye(96, dtype=torch.float64))
    want = (v * e.rsqrt()) @ v.T
    got = inverse_sqrt(cov.float()).double()
    # measured 3.3e-3 to 3.8e-3 over five seeds (float32 products; in float64 it is 1e-11), and 1.7e-2
    # at 20 steps: too few steps fail here
    assert float((got - want).norm() / want.norm()) < 1e-2
    flat = inverse_sqrt(torch.zeros(4, 4))  # a flat photo's features: EPS keeps it finite
    assert torch.allclose(flat, torch.eye(4) / whitening.EPS ** 0.5, rtol=1e-4)


def test_the_numpy_statistics_are_the_pytorch_ones():
    """models/whitening.py (the ONNX Runtime engine's, from the encoder graph's mean and Gram matrix)
    against models/wct.py (the PyTorch engine's)."""
    torch.manual_seed(2)
    content = torch.randn(1, 6, 12, 10) @ torch.randn(10, 10)
    f = content[0].reshape(6, -1)
    mean = f.mean(1, keepdim=True)
    assert all(np.allclose(a, b.numpy()) for a, b in zip(
        whitening.statistics(mean.numpy(), ((f - mean) @ (f - mean).T).numpy(), 120), covariance(content)))
    target = covariance(torch.randn(1, 6, 30, 10) * 2 + 1)
    assert all(np.allclose(a, b.numpy()) for a, b in zip(whitening.colouring(*(a.numpy() for a in target)),
                                                          colouring(*target)))


def test_mixing_pools_the_paintings_statistics():
    torch.manual_seed(1)
    a, b = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8) + 2
    pooled = covariance(torch.cat([a, b], dim=3))
    mean, cov = mix([covariance(a), covariance(b)], [0.5, 0.5])
    assert torch.allclose(mean, pooled[0], atol=1e-6)
    assert torch.allclose(cov, pooled[1], atol=0.05 * float(cov.abs().max()))  # n - 1 against 2n - 1


def test_apply_runs_end_to_end_and_paintings_matter(wct_model, files, tmp_path):
    photo, a, b = files
    with_a = apply(wct_model, photo, tmp_path / "a.png", "--style", str(a))
    assert with_a.shape == (38, 50, 3)  # the photo's size
    with_b = apply(wct_model, photo, tmp_path / "b.png", "--style", str(b))
    assert np.abs(with_a - with_b).mean() > 1.0
    mixed = apply(wct_model, photo, tmp_path / "m.png", "--style", f"{a}=0.5", "--style", f"{b}=0.5")
    assert min(np.abs(mixed - with_a).mean(), np.abs(mixed - with_b).mean()) > 0.2
    weaker = apply(wct_model, photo, tmp_path / "w.png", "--style", str(a), "--style-weight", "0.5")
    assert np.abs(weaker - with_a).mean() > 0.2


def test_style_weight_zero_gives_back_the_photo_exactly(wct_model, files, tmp_path):
    photo, a, _ = files
    out = apply(wct_model, photo, tmp_path / "zero.png", "--style", str(a), "--style-weight", "0")
    assert np.array_equal(out, np.asarray(Image.open(photo).convert("RGB"), np.float32))


def test_a_white_mask_gives_the_first_painting_alone(wct_model, files, tmp_path):
    photo, a, b = files
    Image.new("L", (50, 38), 255).save(tmp_path / "white.png")
    alone = apply(wct_model, photo, tmp_path / "a.png", "--style", str(a))
    masked = apply(wct_model, photo, tmp_path / "m.png", "--style", str(a), "--style", str(b),
                   "--mask", str(tmp_path / "white.png"))
    assert np.abs(masked - alone).max() <= 1


def test_wct_runs_on_pytorch_where_asked_and_masks_stay_there(wct_model):
    cfg = ApplyConfig(model=str(wct_model), styles=["x.png"], device="cpu", runtime="torch")
    assert isinstance(open_stylizer(cfg), WCTStylizer)
    with pytest.raises(StylizeError, match="--runtime onnx does not cover --mask"):
        open_stylizer(ApplyConfig(model=str(wct_model), styles=["a.png", "b.png"], mask="m.png", device="cpu",
                                  runtime="onnx"))
    with pytest.raises(StylizeError, match="one graph per part"):
        from stylize.apply.engines.export import export_onnx

        export_onnx(wct_model, wct_model.with_suffix(".onnx"))


@pytest.mark.slow  # an ONNX export
def test_onnx_runtime_gives_the_pytorch_picture(onnx_model, files, tmp_path):
    photo, a, b = files
    assert graphs.parts(onnx_model) == ["enc-block3_expand", "enc-block1_expand", "paint"]
    cfg = ApplyConfig(model=str(onnx_model), styles=[str(a)], device="cpu", runtime="auto")
    assert isinstance(open_stylizer(cfg), OnnxWCT)
    for i, args in enumerate([("--style", str(a)), ("--style", f"{a}=0.3", "--style", f"{b}=0.7", "--style-weight", "0.6")]):
        fast = apply(onnx_model, photo, tmp_path / f"fast{i}.png", "--runtime", "onnx", *args)
        slow = apply(onnx_model, photo, tmp_path / f"slow{i}.png", "--runtime", "torch", *args)
        assert np.abs(fast - slow).max() <= 2 and np.abs(fast - slow).mean() < 0.05
    zero = apply(onnx_model, photo, tmp_path / "zero.png", "--runtime", "onnx", "--style", str(a), "--style-weight", "0")
    assert np.array_equal(zero, np.asarray(Image.open(photo).convert("RGB"), np.float32))


@pytest.mark.slow  # a process, an ONNX export
def test_the_onnx_runtime_path_does_not_import_torch(onnx_model, files, tmp_path):
    photo, a, _ = files
    code = ("import sys; from stylize.cli import main; sys.argv = sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    out = subprocess.run([sys.executable, "-c", code, "stylize", "apply", str(photo), "--model", str(onnx_model),
                          "--style", str(a), "--out", str(tmp_path / "fast.png"), "--device", "cpu"],
                         env=dict(os.environ, STYLIZE_RUNTIME="auto"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no torch" in out.stdout and (tmp_path / "fast.png").exists()


def test_a_painting_is_required(wct_model, files):
    r = CliRunner().invoke(app, ["apply", str(files[0]), "--model", str(wct_model)])
    assert r.exit_code == 1 and "give a style image with --style" in r.output


def test_info_describes_it(wct_model):
    r = CliRunner().invoke(app, ["info", str(wct_model), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["kind"], d["norm"], d["encoder"], d["strength"]) == ("wct", "wct", "efficientnet-lite0", True)
    assert d["levels"] == "block3_expand:1,block1_expand:0.5" and d["styles"] == []
    assert d["use"].startswith("any painting") and "twice the time" in d["use"]  # what the mode is, what it costs
    assert "use: any painting, given at apply time" in CliRunner().invoke(app, ["info", str(wct_model)]).output
    r = CliRunner().invoke(app, ["models"], env={"STYLIZE_MODELS": str(wct_model.parent)})
    assert r.exit_code == 0 and "tiny_wct" in r.output and "any painting (--style PAINTING.jpg)" in r.output


@pytest.mark.parametrize("damage, runtime", [("levels", "torch"), ("weights", "torch"), ("cut", "torch"),
                                             ("levels", "onnx")])
def test_a_damaged_wct_file_is_refused_in_one_line(tmp_path, files, damage, runtime):
    rec = wct_record()
    if damage == "levels":
        rec["net"]["levels"] = "block9_expand:1"
    elif damage == "weights":
        rec["state_dict"] = {k: v for k, v in rec["state_dict"].items() if not k.startswith("decoders.block1_expand")}
    path = modelfile.save(rec, tmp_path / "bad.safetensors")
    if damage == "cut":
        path.write_bytes(path.read_bytes()[:-100])
    r = CliRunner().invoke(app, ["apply", str(files[0]), "--model", str(path), "--style", str(files[1]),
                                 "-o", str(tmp_path / "out.png"), "--runtime", runtime])
    why = {"levels": "settings do not build", "weights": "weights lack decoders.block1_expand", "cut": "cut short"}
    assert r.exit_code == 1 and "bad.safetensors" in r.output and why[damage] in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "out.png").exists()


def test_the_page_takes_paintings_through_a_wct_model_and_offers_the_default_one(wct_model):
    """`stylize serve --model wct` puts paintings through it; by default the page offers the styles and
    the default painting model, not every model that takes paintings."""
    from stylize.serve.server import Studio, default_models
    from stylize.settings import DEFAULT_ADAPTIVE_MODEL

    studio = Studio([str(wct_model)], max_size=64, runtime="torch")
    assert studio.adaptive == str(wct_model) and studio.choices() == [studio.choices()[-1]] and not studio.styles
    assert studio.painting_use == modelfile.describe(modelfile.read_record(wct_model))["use"]  # the page says it
    offered = default_models()  # the styles, then one painting model: the default one
    assert offered[-1] == DEFAULT_ADAPTIVE_MODEL and not {"wct", "arbitrary"} & set(offered[:-1])

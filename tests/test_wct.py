"""WCT models (models/wct.py, engines/wct.py): the transform, the model file kind, and apply end to
end, with a tiny randomly initialised model made here (never the shipped one)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_photo, make_style
from stylize.apply.choose import open_stylizer
from stylize.apply.engines.wct import WCTStylizer
from stylize.cli import app
from stylize.errors import StylizeError
from stylize.models import modelfile
from stylize.models.wct import WCTConfig, WCTNet, colouring, covariance, mix, wct
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


def test_wct_runs_on_pytorch_and_onnx_runtime_refuses_it(wct_model):
    cfg = ApplyConfig(model=str(wct_model), styles=["x.png"], device="cpu", runtime="auto")
    assert isinstance(open_stylizer(cfg), WCTStylizer)
    with pytest.raises(StylizeError, match="--runtime onnx does not cover WCT"):
        open_stylizer(ApplyConfig(model=str(wct_model), device="cpu", runtime="onnx"))
    with pytest.raises(StylizeError, match="no ONNX graph"):
        from stylize.apply.engines.export import export_onnx

        export_onnx(wct_model, wct_model.with_suffix(".onnx"))


def test_a_painting_is_required(wct_model, files):
    r = CliRunner().invoke(app, ["apply", str(files[0]), "--model", str(wct_model)])
    assert r.exit_code == 1 and "give a style image with --style" in r.output


def test_info_describes_it(wct_model):
    r = CliRunner().invoke(app, ["info", str(wct_model), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (d["kind"], d["norm"], d["encoder"], d["strength"]) == ("wct", "wct", "efficientnet-lite0", True)
    assert d["levels"] == "block3_expand:1,block1_expand:0.5" and d["styles"] == []
    r = CliRunner().invoke(app, ["models"], env={"STYLIZE_MODELS": str(wct_model.parent)})
    assert r.exit_code == 0 and "tiny_wct" in r.output


@pytest.mark.parametrize("damage", ["levels", "weights", "cut"])
def test_a_damaged_wct_file_is_refused_in_one_line(tmp_path, files, damage):
    rec = wct_record()
    if damage == "levels":
        rec["net"]["levels"] = "block9_expand:1"
    elif damage == "weights":
        rec["state_dict"] = {k: v for k, v in rec["state_dict"].items() if not k.startswith("decoders.block1_expand")}
    path = modelfile.save(rec, tmp_path / "bad.safetensors")
    if damage == "cut":
        path.write_bytes(path.read_bytes()[:-100])
    r = CliRunner().invoke(app, ["apply", str(files[0]), "--model", str(path), "--style", str(files[1]),
                                 "-o", str(tmp_path / "out.png")])
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
    offered = default_models()
    assert "wct" not in offered and offered[-1] == DEFAULT_ADAPTIVE_MODEL

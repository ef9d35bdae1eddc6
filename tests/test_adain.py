"""Arbitrary style transfer (AdaIN) and colour preservation, on CPU with tiny decoders."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_photo, make_style, tiny_config
from stylize.models.adain import AdaINConfig, AdaINNet, adain
from stylize.cli import app
from stylize.apply.color import keep_luminance, match_colors, to_ycbcr
from stylize.errors import StylizeError
from stylize.apply.engines.pytorch import AdaINStylizer, load_stylizer
from stylize.features.losses import mean_std


@pytest.fixture(scope="module")
def adain_model(tmp_path_factory, photos_dir, style_path, style_path2):
    from stylize.train.training import train

    tmp = tmp_path_factory.mktemp("adain")
    cfg = tiny_config(tmp, photos_dir, [style_path, style_path2], norm="adaptive", network="adain", width=4, iterations=3,
                      style_loss_weight=10.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp / "torch"))
        mp.setenv("STYLIZE_OFFLINE", "1")
        return train(cfg)


def tensor(im: Image.Image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.asarray(im, dtype="float32") / 255).permute(2, 0, 1)


def test_adain_gives_the_target_mean_and_std_per_channel():
    torch.manual_seed(0)
    content = torch.randn(2, 8, 10, 12) * 3 + 1
    target_mean, target_std = torch.randn(2, 8), torch.rand(2, 8) + 0.5
    mean, std = mean_std(adain(content, target_mean, target_std))
    assert torch.allclose(mean, target_mean, atol=1e-4)
    assert torch.allclose(std, target_std, atol=1e-3)


def random_adain(width=4) -> AdaINNet:
    """An untrained AdaIN network with the well-scaled random VGG-19 encoder stylize uses offline."""
    from stylize.features.vgg import random_features

    torch.manual_seed(0)
    net = AdaINNet(AdaINConfig(width=width)).eval()
    net.encoder.features.load_state_dict(random_features("vgg19")[0][:21].state_dict())
    return net


def test_alpha_zero_decodes_the_photo_features_and_identical_styles_interpolate_to_one():
    net = random_adain()
    x, s = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    stats = net.style_stats(s)
    with torch.no_grad():
        assert torch.allclose(net(x, [stats], alpha=0.0), net.decoder(net.encoder(x)), atol=1e-6)
        one = net(x, [stats])
        assert torch.allclose(net(x, [stats, stats], [0.5, 0.5]), one, atol=1e-5)
        other = net(x, [net.style_stats(torch.rand(1, 3, 32, 32) ** 3)])
        assert float((one - other).abs().mean()) > 1e-4  # the style image matters


def test_masks_confine_each_style():
    net = random_adain()
    x = torch.rand(1, 3, 32, 32)
    a, b = net.style_stats(torch.rand(1, 3, 32, 32)), net.style_stats(torch.rand(1, 3, 32, 32) ** 4)
    with torch.no_grad():
        fc = net.encoder(x)
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., :16] = 1
        t = net.target(fc, [a, b], masks=[mask, 1 - mask])
        ta, tb = net.target(fc, [a]), net.target(fc, [b])
    # relu4_1 is 4x4: the left two columns are style a's target, the right two style b's
    assert torch.allclose(t[..., :2], ta[..., :2], atol=1e-5)
    assert torch.allclose(t[..., 2:], tb[..., 2:], atol=1e-5)


def test_preserve_color_keeps_the_photo_chroma():
    import numpy as np

    photo, out = (np.asarray(im).transpose(2, 0, 1).copy() for im in (make_photo(3), make_style(2, 48).crop((0, 0, 48, 40))))
    kept = keep_luminance(out, photo)  # uint8, so within a level of rounding
    y_kept, y_out, y_photo = (to_ycbcr(a / 255) for a in (kept, out, photo))
    inside = (kept > 5).all(0) & (kept < 250).all(0)  # clamping moves clipped pixels
    assert np.allclose(y_kept[1:][:, inside], y_photo[1:][:, inside], atol=1.5 / 255)
    assert np.allclose(y_kept[0][inside], y_out[0][inside], atol=1.5 / 255)


def test_match_colors_gives_the_style_the_photo_palette():
    photo, style = tensor(make_photo(3)), tensor(make_style(2, 48))
    matched = match_colors(style, photo)
    f, g = matched.reshape(3, -1), photo.reshape(3, -1)
    assert torch.allclose(f.mean(1), g.mean(1), atol=0.03)
    assert torch.allclose(torch.cov(f), torch.cov(g), atol=0.01)


@pytest.mark.slow
def test_trained_adaptive_model_is_self_describing_and_applies_any_style(adain_model, tmp_path):
    s = load_stylizer(adain_model, "cpu")
    assert isinstance(s, AdaINStylizer)
    r = CliRunner().invoke(app, ["info", str(adain_model), "--json"])
    d = json.loads(r.output)
    assert d["norm"] == "adaptive" and d["styles"] == [] and "random vgg19" in d["encoder"]
    assert d["use"].startswith("any painting") and "norm layers" in d["use"]
    photo, st1, st2 = tmp_path / "p.png", tmp_path / "a.png", tmp_path / "b.png"
    make_photo(5).save(photo)
    make_style(3).save(st1)
    make_style(4).save(st2)
    outs = []
    for extra in ([], ["--style-weight", "0.5"], ["--preserve-color"], ["--preserve-color", "--color-method", "match"]):
        out = tmp_path / f"o{len(outs)}.png"
        r = CliRunner().invoke(app, ["apply", str(photo), "--model", str(adain_model), "--style", str(st1),
                                     "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        outs.append(tensor(Image.open(out).convert("RGB")))
    assert all(float((outs[0] - o).abs().mean()) > 1e-3 for o in outs[1:])
    r = CliRunner().invoke(app, ["apply", str(photo), "--model", str(adain_model), "--style", f"{st1}=0.5",
                                 "--style", f"{st2}=0.5", "--out", str(tmp_path / "mix.png")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("case", ["unreadable", "tiny", "missing-style", "mask-size"])
def test_bad_style_inputs_are_clear_errors(adain_model, tmp_path, case):
    photo, out = tmp_path / "p.png", tmp_path / "out.png"
    make_photo(5).save(photo)
    args = ["apply", str(photo), "--model", str(adain_model), "--out", str(out)]
    style = tmp_path / "s.png"
    make_style(3).save(style)
    if case == "unreadable":
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"not an image at all")
        args += ["--style", str(bad)]
        expected = "not an image"
    elif case == "tiny":
        Image.new("RGB", (8, 8), "red").save(tmp_path / "tiny.png")
        args += ["--style", str(tmp_path / "tiny.png")]
        expected = "too small"
    elif case == "missing-style":
        expected = "give a style image"
    else:
        Image.new("L", (7, 9), 255).save(tmp_path / "m.png")
        args += ["--style", str(style), "--style", str(style), "--mask", str(tmp_path / "m.png")]
        expected = "mask is 7x9"
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1
    assert expected in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_luminance_preservation_works_for_transformer_models_too(make_model, tmp_path):
    photo = tmp_path / "p.png"
    make_photo(5).save(photo)
    model = make_model()
    for extra, name in (([], "a.png"), (["--preserve-color"], "b.png")):
        r = CliRunner().invoke(app, ["apply", str(photo), "--model", str(model), "--out", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
    a, b, p = (to_ycbcr(tensor(Image.open(tmp_path / n).convert("RGB")).numpy()) for n in ("a.png", "b.png", "p.png"))
    assert float(abs(b[1:] - p[1:]).mean()) < 0.5 * float(abs(a[1:] - p[1:]).mean())
    r = CliRunner().invoke(app, ["apply", str(photo), "--model", str(model), "--preserve-color",
                                 "--color-method", "match"])
    assert r.exit_code == 1 and "adaptive" in r.output


def test_style_weight_is_checked(adain_model):
    from stylize.apply.recipe import Request
    from stylize.settings import ApplyConfig

    s = load_stylizer(adain_model, "cpu")
    with pytest.raises(StylizeError):
        Request.of(ApplyConfig(strength=1.5), s)


def test_adaptive_training_with_the_efficientnet_loss_says_what_to_do(tmp_path, photos_dir, style_path):
    from stylize.errors import StylizeError
    from stylize.train.training import train

    cfg = tiny_config(tmp_path, photos_dir, [style_path], norm="adaptive", network="adain", width=4, iterations=1,
                      loss_net="efficientnet-lite0")
    with pytest.raises(StylizeError, match="--vgg-weights .* or train with --loss-net random"):
        train(cfg)

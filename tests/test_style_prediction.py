"""The arbitrary-style transformer (style_prediction.py): mixing, baking, training, resume, apply,
tiling and the ONNX path, on CPU with tiny networks and synthetic paintings."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_photo, make_style, tiny_config
from stylize.models import modelfile
from stylize.cli import app
from stylize.errors import StylizeError
from stylize.apply.engines.pytorch import ArbitraryStylizer, load_stylizer
from stylize.apply.recipe import Request
from stylize.settings import ApplyConfig
from stylize.models.networks import NetConfig, TransformerNet
from stylize.models.norms import Condition
from stylize.models.style_prediction import MULTIPLE, augment, bake, crop_to_multiple


def random_arbitrary(style_dim: int = 6, width: int = 8) -> TransformerNet:
    """An arbitrary-style network whose projections are far from the identity, as after training."""
    torch.manual_seed(0)
    net = TransformerNet(NetConfig("adaptive", 1, True, width, "light", style_dim)).eval()
    for m in net.modules():
        if getattr(m, "project", None) is not None:
            torch.nn.init.normal_(m.project.weight, std=0.3)
    return net


def test_mixing_embeddings_is_mixing_the_baked_styles():
    net = random_arbitrary()
    e = torch.randn(2, 6)
    x, s = torch.rand(1, 3, 32, 36), torch.tensor([0.7])
    w = torch.tensor([[0.3, 0.7]])
    with torch.no_grad():
        a = net(x, Condition(w, s, e))
        b = bake(net, e)(x, Condition(w, s))
        c = net(x, Condition(torch.ones(1, 1), s, w @ e))  # one painting whose embedding is the mix
        d = net(x, Condition(torch.ones(1, 1), s, e[:1]))
    assert (a - b).abs().max() < 1e-4 and (a - c).abs().max() < 1e-4
    assert (a - d).abs().max() > 1e-2  # and the mix is not the first painting alone


def test_an_arbitrary_network_needs_embeddings():
    with pytest.raises(ValueError, match="embeddings"):
        random_arbitrary()(torch.rand(1, 3, 16, 16), Condition(torch.ones(1, 1)))


def test_augmented_paintings_are_reproducible_and_sized():
    painting = torch.rand(3, 90, 120)
    a = augment(painting, 48, torch.Generator().manual_seed(3))
    b = augment(painting, 48, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and max(a.shape[1:]) == 48 and a.min() >= 0 and a.max() <= 1
    assert crop_to_multiple(torch.rand(3, 50, 37)).shape[1:] == (50 - 50 % MULTIPLE, 37 - 37 % MULTIPLE)


@pytest.fixture(scope="module")
def paintings(tmp_path_factory):
    d = tmp_path_factory.mktemp("paintings")
    for i in range(3):
        make_style(20 + i, 96).save(d / f"p{i}.png")
    return d


def arbitrary_config(tmp, photos_dir, paintings, **kw):
    return tiny_config(tmp, photos_dir, [paintings], norm="adaptive", style_size=48, style_dim=8, **kw)


@pytest.fixture(scope="module")
def arbitrary_model(tmp_path_factory, photos_dir, paintings):
    from stylize.train.training import train

    tmp = tmp_path_factory.mktemp("arbitrary")
    return train(arbitrary_config(tmp, photos_dir, paintings, iterations=4))


def test_training_writes_a_self_describing_arbitrary_model(arbitrary_model):
    rec = modelfile.load(arbitrary_model)
    assert rec["kind"] == "transformer" and rec["net"]["style_dim"] == 8 and rec["styles"] == []
    assert rec["predictor"]["layers"] == ["relu1_2", "relu2_1"] and rec["predictor"]["style_size"] == 48
    r = CliRunner().invoke(app, ["info", str(arbitrary_model), "--json"])
    d = json.loads(r.output)
    assert r.exit_code == 0 and d["norm"] == "adaptive" and d["encoder"] == "random"
    assert isinstance(load_stylizer(arbitrary_model, "cpu"), ArbitraryStylizer)


@pytest.mark.slow
def test_an_arbitrary_run_resumes_exactly(tmp_path, photos_dir, paintings):
    from stylize.train.training import run_dir, train

    straight = train(arbitrary_config(tmp_path / "a", photos_dir, paintings, iterations=4))
    cfg = arbitrary_config(tmp_path / "b", photos_dir, paintings, iterations=2)
    train(cfg)
    cfg.iterations = 4
    resumed = train(cfg, resume=run_dir(cfg.out) / "checkpoint.pt")
    a, b = (modelfile.load(run_dir(m) / "checkpoint.pt") for m in (straight, resumed))
    assert [h["total"] for h in a["history"]] == [h["total"] for h in b["history"]]
    for part in (lambda r: r["state_dict"], lambda r: r["predictor"]["state_dict"]):
        assert all(torch.equal(v, part(b)[k]) for k, v in part(a).items())


def test_an_arbitrary_run_goes_on_with_more_paintings_and_another_predictor_rate(tmp_path, photos_dir, paintings):
    """An arbitrary-style model has no per-painting weights, so a resumed run may take more paintings;
    --style-lr-scale given on resume is the rate the optimizer then uses (its saved state brings back
    the old one: a bug once, the flag then did nothing)."""
    import shutil

    from stylize.train.training import run_dir, train

    cfg = arbitrary_config(tmp_path / "a", photos_dir, paintings, iterations=2, checkpoint_every=1, sample_every=0)
    train(cfg)
    assert [p.name for p in (run_dir(cfg.out) / "samples").iterdir()] == ["iter_000002.jpg"]  # 0: at the end only
    ckpt = run_dir(cfg.out) / "checkpoint.pt"
    first = modelfile.load(ckpt)
    assert first["train"]["style_lr_scale"] == 4.0  # settings.STYLE_LR_SCALE for --norm adaptive
    assert first["optimizer"]["param_groups"][1]["lr_scale"] == pytest.approx(4.0 * 8 ** -0.5)  # the projections
    more = tmp_path / "more"
    shutil.copytree(paintings, more)
    make_style(40, 96).save(more / "p3.png")
    cfg2 = arbitrary_config(tmp_path / "b", photos_dir, more, iterations=4, checkpoint_every=1, style_lr_scale=2.0)
    train(cfg2, resume=ckpt, overrides=["style", "style_lr_scale", "iterations", "out"])
    second = modelfile.load(run_dir(cfg2.out) / "checkpoint.pt")
    assert second["iteration"] == 4 and second["train"]["style"] == [str(more)]
    assert second["train"]["style_lr_scale"] == 2.0
    assert second["optimizer"]["param_groups"][1]["lr_scale"] == pytest.approx(2.0 * 8 ** -0.5)


def test_painting_views_skip_cudnn_autotuning(tmp_path, photos_dir, paintings, monkeypatch):
    """A painting's random view has a new shape every step: timing cuDNN's algorithms again for each
    would cost more than it saves (speed.fixed_algorithms). The run's own setting stays for the rest."""
    from stylize.train.training import PredictionRecipe

    recipe = PredictionRecipe(arbitrary_config(tmp_path, photos_dir, paintings), torch.device("cpu"), 0)
    seen = []
    recipe.loss.net.register_forward_pre_hook(lambda module, args: seen.append(torch.backends.cudnn.benchmark))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # the cudnn_benchmark lever, on
    recipe.features(augment(recipe.paintings[0], 48, torch.Generator().manual_seed(0)))
    assert seen == [False] and torch.backends.cudnn.benchmark


def test_init_starts_from_a_model_and_builds_its_network(arbitrary_model, tmp_path, photos_dir, paintings):
    """--init (fine-tuning): the run starts from the file's weights (at lr 0 they stay), with the network
    that file holds whatever the flags say, and records where it started; without it, random weights."""
    from stylize.train.training import train

    base = modelfile.load(arbitrary_model)

    def weights(rec):
        return {**rec["state_dict"], **{"p." + k: v for k, v in rec["predictor"]["state_dict"].items()}}

    cfg = tiny_config(tmp_path / "a", photos_dir, [paintings], iterations=1, lr=0.0, width=4, style_dim=3,
                      style_size=32, init=str(arbitrary_model))  # norm, width, embedding, painting size: the file's
    tuned = modelfile.load(train(cfg))
    assert tuned["net"] == base["net"] and tuned["train"]["init"] == str(arbitrary_model)
    assert tuned["train"]["width"] == 8 and tuned["predictor"]["style_dim"] == 8
    assert tuned["predictor"]["style_size"] == 48
    assert all(torch.equal(v, weights(tuned)[k]) for k, v in weights(base).items())
    cold = modelfile.load(train(arbitrary_config(tmp_path / "b", photos_dir, paintings, iterations=1, lr=0.0)))
    assert not all(torch.equal(v, weights(cold)[k]) for k, v in weights(base).items())


def test_init_refuses_a_model_of_other_styles(tmp_path, photos_dir, paintings):
    from stylize.train.training import train

    two = train(tiny_config(tmp_path / "a", photos_dir, [paintings / "p0.png", paintings / "p1.png"],
                            norm="conditional", iterations=1))
    three = tiny_config(tmp_path / "b", photos_dir, [paintings / f"p{i}.png" for i in range(3)], iterations=1,
                        init=str(two))
    with pytest.raises(StylizeError, match="does not fit this run"):
        train(three)


def test_a_fixed_style_run_keeps_its_styles_on_resume(tmp_path, photos_dir, paintings):
    from stylize.train.training import run_dir, train

    cfg = tiny_config(tmp_path, photos_dir, [paintings / "p0.png"], iterations=2)
    train(cfg)
    cfg.style, cfg.iterations = [str(paintings / "p1.png")], 3
    with pytest.raises(StylizeError, match="keeps its --style"):
        train(cfg, resume=run_dir(cfg.out) / "checkpoint.pt", overrides=["style", "iterations"])


def test_apply_follows_each_painting_mixes_masks_and_strength(arbitrary_model, paintings, tmp_path):
    s = load_stylizer(arbitrary_model, "cpu")
    torch.manual_seed(0)  # projections far from the identity, as after a long training (4 steps move them little)
    for m in s.base.modules():
        if getattr(m, "project", None) is not None:
            torch.nn.init.normal_(m.project.weight, std=0.3)
    x = torch.from_numpy(np.array(make_photo(4, 40, 32))).permute(2, 0, 1).contiguous()
    p0, p1 = str(paintings / "p0.png"), str(paintings / "p1.png")
    e0, e1 = s.embedding(p0), s.embedding(p1)
    assert not torch.allclose(e0, e1)
    y0 = s(x, s.condition([p0]), 1.0, dtype=torch.uint8)
    mix = s(x, s.condition([f"{p0}=0.5", f"{p1}=0.5"]), 1.0, dtype=torch.uint8)
    s.base.eval()
    with torch.no_grad():  # the mix is the painting with the mean embedding, as Ghiasi et al. interpolate
        ref = s.base(x[None].float() / 255, Condition(torch.ones(1, 1), torch.ones(1), (e0 + e1)[None] / 2))[0]
    assert (mix.float() / 255 - ref.clamp(0, 1)).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(s(x, s.condition([p0]), 0.0, dtype=torch.uint8), x)  # strength 0: the photo
    mask = torch.zeros(32, 40)
    mask[:, :20] = 1
    masked = s(x, s.condition([p0, p1], mask), 1.0, dtype=torch.uint8)
    y1 = s(x, s.condition([p1]), 1.0, dtype=torch.uint8)
    # away from the seam, each side is its own painting's stylization, far from the other's (measured:
    # 1.0 and 1.2 levels on average from its own, 11.5 and 8.4 between the paintings' there: the
    # encoder's statistics are the whole image's, so the other side still shifts them a little)
    def gap(a, b, cols):
        return float((a[:, :, cols].float() - b[:, :, cols].float()).abs().mean())

    left, right = slice(0, 12), slice(28, 40)
    assert gap(masked, y0, left) < 0.35 * gap(y1, y0, left)
    assert gap(masked, y1, right) < 0.35 * gap(y0, y1, right)


def test_tiled_equals_untiled(arbitrary_model, paintings):
    s = load_stylizer(arbitrary_model, "cpu")
    x = torch.from_numpy(np.array(make_photo(6, 96, 80))).permute(2, 0, 1).float() / 255
    w = s.condition([str(paintings / "p2.png")])
    tiled, whole = s(x, w, 1.0, tile=32), s(x, w, 1.0, tile=0)
    mse = float((tiled - whole).pow(2).mean())  # measured: identical (the statistics are the whole image's)
    assert 10 * np.log10(1 / max(mse, 1e-12)) > 50


@pytest.mark.slow
def test_cli_any_painting_and_clear_errors(arbitrary_model, paintings, tmp_path):
    photo = tmp_path / "photo.png"
    make_photo(2).save(photo)
    out = tmp_path / "out.png"
    base = ["apply", str(photo), "--model", str(arbitrary_model), "--runtime", "torch"]
    r = CliRunner().invoke(app, base + ["--style", str(paintings / "p0.png"), "--out", str(out), "--preserve-color",
                                        "--color-method", "match"])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == Image.open(photo).size
    r = CliRunner().invoke(app, base + ["--out", str(tmp_path / "none.png")])
    assert r.exit_code == 1 and "--style PAINTING" in r.output and not (tmp_path / "none.png").exists()
    for bad in ("-1", "nan", "inf"):
        r = CliRunner().invoke(app, base + ["--style", f"{paintings / 'p0.png'}={bad}", "--out", str(tmp_path / "bad.png")])
        assert r.exit_code == 1 and "finite number, 0 or more" in r.output and not (tmp_path / "bad.png").exists()


def test_network_adain_is_only_for_adaptive(tmp_path, photos_dir, style_path):
    from stylize.train.training import train

    with pytest.raises(StylizeError, match="--network adain"):
        train(tiny_config(tmp_path, photos_dir, [style_path], network="adain"))


@pytest.mark.slow
def test_efficientnet_model_exports_to_onnx_and_matches_pytorch(tmp_path, photos_dir, paintings):
    """The painting's features, embedding and network in one graph; the export checks itself against
    PyTorch (export.py), and a photo through ONNX Runtime matches the PyTorch path within a level."""
    pytest.importorskip("onnxruntime")
    from stylize.apply.engines.export import export_onnx
    from stylize.apply.engines.onnx_runtime import OnnxStylizer
    from stylize.train.training import train

    cfg = arbitrary_config(tmp_path, photos_dir, paintings, iterations=2, loss_net="efficientnet-lite0",
                           content_layers=["block1_expand"], style_layers=["stem", "block1_expand", "block8_expand"])
    model = train(cfg)
    report = export_onnx(model, tmp_path / "a.onnx")
    assert report.max_difference <= 1e-3
    fast = OnnxStylizer(report.path)
    assert fast.arbitrary and fast.meta["style_multiple"] == MULTIPLE
    photo = tmp_path / "photo.png"
    make_photo(9, 52, 44).save(photo)
    x, _ = fast.load(photo)
    painting = str(paintings / "p1.png")
    got = fast.run(x, fast.condition([painting]), 0.8)
    s = load_stylizer(model, "cpu")
    ref = s(torch.from_numpy(x), s.condition([painting]), 0.8, dtype=torch.uint8)
    assert np.abs(got.astype(int) - ref.numpy().astype(int)).max() <= 1  # measured: 0, with 1 and 2 threads


def test_a_calibrated_model_applies_its_strength_and_the_paintings_palette(arbitrary_model, paintings, tmp_path):
    """A model file whose "apply" says full_strength 0.5 and palette 1: --style-weight s runs the
    network at 0.5 s, then moves the output s of the way to the painting's palette; 0 is the photo."""
    from stylize.apply import palette

    rec = modelfile.load(arbitrary_model)
    rec["apply"] = {"full_strength": 0.5, "palette": 1.0}
    calibrated = modelfile.save(rec, tmp_path / "calibrated.pt")
    s, plain = load_stylizer(calibrated, "cpu"), load_stylizer(arbitrary_model, "cpu")
    for net in (s.base, plain.base):
        torch.manual_seed(0)  # the same projections far from the identity in both (as after training)
        for m in net.modules():
            if getattr(m, "project", None) is not None:
                torch.nn.init.normal_(m.project.weight, std=0.3)
    x = torch.from_numpy(np.array(make_photo(4, 40, 32))).permute(2, 0, 1).contiguous()
    p0 = str(paintings / "p0.png")
    target = palette.stats(s.painting(p0).numpy())
    for strength in (1.0, 0.6):
        got = s.run(x, s.condition([p0]), strength)
        network = plain.run(x, plain.condition([p0]), 0.5 * strength)
        want = palette.recolour(network.numpy(), [target], [1.0], strength)
        assert np.array_equal(got.numpy(), want)
    assert torch.equal(s.run(x, s.condition([p0]), 0.0), x)  # strength 0: the photo
    # the palette step moves the output's colours to the painting's: measured, the network alone is
    # 64 levels from the painting's mean colour, and after the step 5% of that is left
    before = palette.stats(plain.run(x, plain.condition([p0]), 0.5).numpy())[0]
    after = palette.stats(s.run(x, s.condition([p0]), 1.0).numpy())[0]
    assert np.abs(after - target[0]).max() < 0.25 * np.abs(before - target[0]).max()
    # colours given the photo's (--color-method match): no palette step
    matched = s.run(x, s.condition([p0], photo=x, match_color=True), 1.0)
    assert np.array_equal(matched.numpy(), plain.run(x, plain.condition([p0], photo=x, match_color=True), 0.5).numpy())
    with pytest.raises(StylizeError, match="between 0 and 1"):
        Request.of(ApplyConfig(strength=1.5), s)

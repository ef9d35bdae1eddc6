"""The `stylize` command through typer's CliRunner: outputs, JSON, and clean one-line failures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stylize.models import modelfile
from stylize.cli import app
from stylize.settings import LOSS_NET_LAYERS

from conftest import make_photo

pytestmark = pytest.mark.usefixtures("fast_random_vgg")


def invoke(*args):
    # typer 0.29's CliRunner keeps stderr apart: result.stdout, result.stderr, result.output (both)
    return CliRunner().invoke(app, [str(a) for a in args])


def files_under(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def assert_clean_failure(result, *fragments):
    """Non-zero exit, exactly one `error:` line on stderr, no traceback, no escaped exception."""
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# ---------------------------------------------------------------- train

@pytest.mark.slow
def test_train_writes_a_model_and_run_folder(tmp_path, photos_dir, style_path, style_path2):
    out = tmp_path / "models" / "duo.pt"
    result = invoke("train", "--style", style_path, "--style", style_path2, "--content", photos_dir,
                    "--out", out, "--width", 4, "--iterations", 4, "--batch-size", 2, "--image-size", 32,
                    "--style-size", 32, "--loss-net", "random", "--device", "cpu",
                    "--checkpoint-every", 0, "--sample-every", 2)  # 0: one checkpoint, at the end
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    run = tmp_path / "models" / "duo_run"
    assert files_under(run) == ["checkpoint.pt", "losses.csv", "losses.png",
                                "samples/iter_000002.jpg", "samples/iter_000004.jpg"]
    assert len((run / "losses.csv").read_text().splitlines()) == 1 + 4
    info = json.loads(invoke("info", "--json", out).stdout)
    assert info["norm"] == "conditional"  # two styles turn instance norm into conditional instance norm
    assert info["styles"] == ["stripes", "checks"] and info["iterations"] == 4
    assert not [f for f in files_under(tmp_path) if f.endswith(".part")]


def test_train_offline_without_imagenet_weights_says_what_to_do(tmp_path, photos_dir, style_path):
    result = invoke("train", "--style", style_path, "--content", photos_dir, "--out", tmp_path / "m.pt",
                    "--loss-net", "vgg16", "--device", "cpu", "--iterations", 1)
    assert_clean_failure(result, "--vgg-weights", "--loss-net efficientnet-lite0")
    assert not (tmp_path / "m.pt").exists()


def test_train_by_default_uses_imagenet_features_offline_and_the_light_network(tmp_path, photos_dir, style_path, photo):
    out = tmp_path / "m.pt"
    result = invoke("train", "--style", style_path, "--content", photos_dir, "--out", out, "--width", 4,
                    "--iterations", 2, "--batch-size", 2, "--image-size", 32, "--style-size", 32,
                    "--device", "cpu", "--checkpoint-every", 0)
    assert result.exit_code == 0, result.output
    # the header says which loss network and why (conftest: no VGG weights, downloads fail)
    assert "loss network: efficientnet-lite0 (no ImageNet VGG-16 weights" in result.stdout
    info = json.loads(invoke("info", "--json", out).stdout)
    assert info["loss_net"] == "efficientnet-lite0" and info["network"] == "light"
    record = modelfile.load(out)
    assert record["train"]["style_layers"] == list(LOSS_NET_LAYERS["efficientnet-lite0"][1])
    assert invoke("apply", photo, "--model", out, "--out", tmp_path / "o.png").exit_code == 0  # no flags needed


@pytest.mark.parametrize("args, fragment", [
    (["--norm", "spectral"], "--norm"),
    (["--loss-net", "alexnet"], "--loss-net"),
    (["--network", "resnet"], "--network"),
    (["--device", "tpu"], "--device"),
])
def test_train_bad_choices(tmp_path, photos_dir, style_path, args, fragment):
    result = invoke("train", "--style", style_path, "--content", photos_dir, "--out", tmp_path / "m.pt", *args)
    assert_clean_failure(result, fragment)


def test_train_without_photos(tmp_path, style_path):
    (tmp_path / "empty").mkdir()
    result = invoke("train", "--style", style_path, "--content", tmp_path / "empty", "--out", tmp_path / "m.pt",
                    "--loss-net", "random", "--device", "cpu")
    assert_clean_failure(result, "no training photos", "--content")


# ---------------------------------------------------------------- apply

def test_apply_writes_a_stylized_image(tmp_path, model, photo):
    out = tmp_path / "out.png"
    result = invoke("apply", photo, "--model", model, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}"
    assert Image.open(out).size == Image.open(photo).size
    assert np.abs(pixels(out) - pixels(photo)).mean() > 5  # it changed the photo
    assert files_under(tmp_path) == ["out.png", "photo.png"]


def test_apply_style_weight_zero_returns_the_photo(tmp_path, model, photo):
    for s in ("0", "1"):
        result = invoke("apply", photo, "--model", model, "--out", tmp_path / f"s{s}.png", "--style-weight", s,
                        "--device", "cpu")
        assert result.exit_code == 0, result.output
    zero, one = pixels(tmp_path / "s0.png"), pixels(tmp_path / "s1.png")
    # strength-conditioned networks output photo + s * residual: at 0 the photo itself (PNG: 8-bit exact)
    assert np.abs(zero - pixels(photo)).max() <= 1
    assert np.abs(one - pixels(photo)).mean() > 5


def test_apply_keeps_alpha(tmp_path, model):
    rgba = np.asarray(make_photo(3).convert("RGBA")).copy()
    rgba[..., 3] = np.tile(np.linspace(0, 255, rgba.shape[1]).round().astype(np.uint8), (rgba.shape[0], 1))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    result = invoke("apply", tmp_path / "cutout.png", "--model", model, "--out-dir", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "out" / "cutout.png")
    assert out.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(out)[..., 3], rgba[..., 3])


def test_apply_odd_and_tiny_sizes(tmp_path, model):
    for w, h in [(37, 29), (3, 50), (1, 1)]:
        make_photo(4, 48, 40).resize((w, h)).save(tmp_path / f"p{w}x{h}.png")
    result = invoke("apply", tmp_path, "--model", model, "--out-dir", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for w, h in [(37, 29), (3, 50), (1, 1)]:
        assert Image.open(tmp_path / "out" / f"p{w}x{h}.png").size == (w, h)


def test_style_weight_out_of_range_is_refused(tmp_path, model, photo):
    result = invoke("apply", photo, "--model", model, "--out", tmp_path / "out.png", "--style-weight", "1.5")
    assert_clean_failure(result, "--style-weight")
    assert not (tmp_path / "out.png").exists()


@pytest.fixture
def bad_input(request, tmp_path, model, photo, monkeypatch):
    """(arguments for apply, folder that must stay empty, what the error line says) for each bad input."""
    out_dir = tmp_path / "out"
    base = ["--model", model, "--out-dir", out_dir, "--device", "cpu"]
    case = request.param
    if case == "missing input":
        return [tmp_path / "nope.jpg", *base], out_dir, "nope.jpg"
    if case == "not an image":
        (tmp_path / "notes.jpg").write_text("shopping list: eggs, milk")
        return [tmp_path / "notes.jpg", *base], out_dir, "notes.jpg"
    if case == "truncated image":
        make_photo(5).save(tmp_path / "whole.jpg", quality=95)
        data = (tmp_path / "whole.jpg").read_bytes()
        (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
        return [tmp_path / "cut.jpg", *base], out_dir, "cut.jpg"
    if case == "output under a file":
        (tmp_path / "somefile.txt").write_text("I am a file")
        return ([photo, "--model", model, "--out-dir", tmp_path / "somefile.txt" / "sub", "--device", "cpu"],
                out_dir, "somefile.txt")
    if case == "unknown model name":
        models = tmp_path / "models"
        models.mkdir()
        shutil.copy(model, models / "mine.pt")
        monkeypatch.setenv("STYLIZE_MODELS", str(models))
        return [photo, "--model", "nosuchmodel", "--out-dir", out_dir], out_dir, "mine"
    if case == "model not ours":
        torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
        return [photo, "--model", tmp_path / "other.pt", "--out-dir", out_dir], out_dir, "not a stylize model"
    if case == "unknown output format":
        return [photo, "--model", model, "--out", out_dir / "photo.xyz", "--device", "cpu"], out_dir, "photo.xyz"
    if case == "unknown style":
        return [photo, "--style", "nosuch", *base], out_dir, "stripes"
    raise AssertionError(case)


@pytest.mark.parametrize("bad_input", ["missing input", "not an image", "truncated image", "output under a file",
                                       "unknown model name", "model not ours", "unknown output format",
                                       "unknown style"], indirect=True)
def test_bad_inputs_fail_cleanly(bad_input, tmp_path):
    args, out_dir, fragment = bad_input
    before = files_under(tmp_path)
    result = invoke("apply", *args)
    assert_clean_failure(result, fragment)
    assert files_under(out_dir) == []  # no partial output
    assert files_under(tmp_path) == before  # nothing written anywhere (no .part files either)


def test_out_equal_to_input_is_refused(tmp_path, model, photo):
    before = photo.read_bytes()
    result = invoke("apply", photo, "--model", model, "--out", photo, "--device", "cpu")
    assert_clean_failure(result, "overwrite")
    assert photo.read_bytes() == before
    # and so is an --out-dir that would put an output on its input
    result = invoke("apply", tmp_path, "--model", model, "--out-dir", tmp_path, "--device", "cpu")
    assert_clean_failure(result, "overwrite")
    assert photo.read_bytes() == before


def test_batch_with_a_corrupt_file_writes_the_good_ones(tmp_path, model):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    make_photo(1).save(src / "good1.jpg")
    make_photo(2).save(src / "sub" / "good2.png")
    (src / "sub" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 100)
    result = invoke("apply", src, "--model", model, "--out-dir", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert files_under(tmp_path / "out") == ["good1.jpg", "sub/good2.png"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "bad.jpg" in errors[0]
    assert "2 written, 0 skipped, 1 failed" in result.stdout


def test_output_names_never_collide(tmp_path, model):
    src = tmp_path / "in"
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
        make_photo(ord(sub)).save(src / sub / "x.png")
    make_photo(7).save(src / "y.png")
    make_photo(8).save(src / "y.gif")  # GIF is read, written as PNG: y.png is taken
    result = invoke("apply", src, "--model", model, "--out-dir", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "out") == ["a/x.png", "b/x.png", "y.png", "y_2.png"]
    # the same names given as separate files land in one folder
    result = invoke("apply", src / "a" / "x.png", src / "b" / "x.png", "--model", model,
                    "--out-dir", tmp_path / "flat", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert files_under(tmp_path / "flat") == ["x.png", "x_2.png"]
    a, b = pixels(tmp_path / "flat" / "x.png"), pixels(tmp_path / "flat" / "x_2.png")
    assert np.abs(a - b).max() > 0  # two different photos, two different outputs


# ---------------------------------------------------------------- models and info

REQUIRED = {"name", "path", "norm", "styles"}


def test_models_json(tmp_path, model, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(model, models / "tiny.pt")
    (models / "broken.pt").write_bytes(b"not a model")
    monkeypatch.setenv("STYLIZE_MODELS", str(models))
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert "broken" not in rows and "broken.pt" in result.stderr  # a warning, not a failure
    row = rows["tiny"]
    assert REQUIRED <= set(row)
    assert row["path"] == str(models / "tiny.pt") and row["norm"] == "instance" and row["styles"] == ["stripes"]
    plain = invoke("models")
    assert plain.exit_code == 0 and "tiny" in plain.stdout and "stripes" in plain.stdout


def test_info_json(model):
    result = invoke("info", "--json", model)
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert REQUIRED <= set(d)
    assert d["name"] == model.stem and d["path"] == str(model) and d["norm"] == "instance"
    assert isinstance(d["styles"], list) and d["styles"] == ["stripes"]
    assert d["train"]["loss_net"] == "random" and d["train"]["iterations"] == 30
    text = invoke("info", model)
    assert text.exit_code == 0 and "styles: ['stripes']" in text.stdout


def test_info_of_something_else_fails_cleanly(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x00" * 64)
    assert_clean_failure(invoke("info", tmp_path / "x.pt"), "not a stylize model")
    assert_clean_failure(invoke("info", "nosuchmodel"), "unknown model")


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "apply", "models", "info"):
        assert command in result.stdout

"""Style transfer by optimization (optimize.py, `stylize apply --optimize`): the loss it lowers, the
photo it keeps, the work size, and the CLI's requests it refuses. Real EfficientNet-Lite0 features
(its pip package), on small synthetic photos and paintings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_photo, make_style
from stylize.apply.engines import optimize
from stylize.apply.engines.optimize import Optimizer
from test_cli import assert_clean_failure, invoke


def as_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def painting() -> torch.Tensor:
    return as_tensor(make_style(1)).float() / 255


@pytest.fixture(scope="module")
def optimizer(painting) -> Optimizer:
    return Optimizer(painting)


def terms(opt: Optimizer, y: torch.Tensor, photo: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        out = opt.loss(y[None].float() / 255, photo[None].float() / 255)
    return {k: float(v) for k, v in out.items()}


def test_optimizing_brings_the_photo_toward_the_painting_and_keeps_the_photo(optimizer):
    photo, other = as_tensor(make_photo(0, 64, 56)), as_tensor(make_photo(10, 64, 56))
    y = optimizer(photo, 30)
    assert y.shape == photo.shape and y.dtype == torch.uint8
    # measured: the style term falls to 0.17-0.24 of the photo's in 30 steps (4 photos and paintings)
    assert terms(optimizer, y, photo)["style"] < 0.5 * terms(optimizer, photo, photo)["style"]
    # still this photo: 30-37 (0-255) from it, 61-69 from another photo
    assert (y.float() - photo.float()).abs().mean() < 0.75 * (y.float() - other.float()).abs().mean()


def test_style_weight_blends_with_the_photo_and_zero_gives_it_back(optimizer):
    photo = as_tensor(make_photo(1, 48, 40))
    assert torch.equal(optimizer(photo, 10, strength=0.0), photo)
    full, half = optimizer(photo, 10), optimizer(photo, 10, strength=0.5)
    expected = photo.float() + 0.5 * (full.float() - photo.float())
    assert (half.float() - expected).abs().max() <= 1  # rounding only: the steps are deterministic
    assert torch.equal(optimizer(photo.float() / 255, 10), full)  # a float photo is the same photo


def test_a_large_photo_is_optimized_at_the_work_size_and_keeps_its_own_detail(optimizer, monkeypatch):
    monkeypatch.setattr(optimize, "OPTIMIZE_SIZE", 32)
    seen, steps = [], []
    real = Optimizer.optimize

    def spy(self, photo, n, progress):
        seen.append(tuple(photo.shape))
        return real(self, photo, n, progress)

    monkeypatch.setattr(Optimizer, "optimize", spy)
    photo = as_tensor(make_photo(2, 96, 80))
    y = optimizer(photo, 3, progress=lambda done, total: steps.append((done, total)))
    assert seen == [(3, 32, 38)] and y.shape == photo.shape
    assert steps == [(1, 3), (2, 3), (3, 3)]
    # the photo's finer detail is back (scale.restore): the output's edges follow the photo's
    grad = lambda t: t.float().mean(0).diff(dim=1)  # noqa: E731
    assert torch.corrcoef(torch.stack([grad(y).flatten(), grad(photo).flatten()]))[0, 1] > 0.5


def test_apply_optimize_writes_the_photo_stylized(tmp_path, photo):
    style = tmp_path / "painting.png"
    make_style(3).save(style)
    out = tmp_path / "out.png"
    result = invoke("apply", photo, "--style", style, "--optimize", 5, "--out", out)
    assert result.exit_code == 0, result.output
    y, x = np.asarray(Image.open(out)), np.asarray(Image.open(photo))
    assert y.shape == x.shape and np.abs(y.astype(int) - x).mean() > 3  # it changed the photo


def test_apply_optimize_says_which_flags_it_does_not_use(tmp_path, photo):
    style = tmp_path / "painting.png"
    make_style(3).save(style)
    out = tmp_path / "out.png"
    result = invoke("apply", photo, "--style", style, "--optimize", 2, "--tile", 256, "--style-size", 200, "--out", out)
    assert result.exit_code == 0 and out.exists(), result.output
    assert "--tile and --style-size do not apply to --optimize" in result.output


@pytest.mark.parametrize("extra, fragment", [
    (["--model", "arbitrary"], "leave out --model"),
    (["--mask", "MASK"], "leave out --mask"),
    (["--style", "SECOND"], "one painting"),
    (["--runtime", "onnx"], "--runtime onnx does not cover --optimize"),
])
def test_apply_optimize_refuses_what_it_cannot_do_in_one_line(tmp_path, photo, extra, fragment):
    style = tmp_path / "painting.png"
    make_style(3).save(style)
    make_style(4).save(tmp_path / "second.png")
    Image.new("L", (48, 40), 255).save(tmp_path / "mask.png")
    extra = [{"MASK": tmp_path / "mask.png", "SECOND": tmp_path / "second.png"}.get(a, a) for a in extra]
    out = tmp_path / "out.png"
    result = invoke("apply", photo, "--style", style, "--optimize", 3, "--out", out, *extra)
    assert_clean_failure(result, fragment)
    assert not out.exists()

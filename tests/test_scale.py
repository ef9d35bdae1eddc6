"""scale.py: a photo larger than the model's work size is stylized at that size, brought back up and
given back its own fine detail; PyTorch and ONNX Runtime alike; the photo exactly at strength 0."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_photo, random_cin_record
from stylize.models import modelfile
from stylize.apply import scale
from stylize.apply.engines.pytorch import Stylizer


def photo(seed: int, w: int, h: int) -> np.ndarray:
    x = np.asarray(make_photo(seed, w, h), dtype=np.uint8).transpose(2, 0, 1).copy()
    rng = np.random.default_rng(seed)  # and fine detail the work size cannot hold
    return np.clip(x.astype(int) + rng.integers(-30, 31, x.shape), 0, 255).astype(np.uint8)


def test_work_shape_keeps_the_aspect_and_leaves_small_photos_alone():
    assert scale.work_shape(300, 400, None) is None and scale.work_shape(300, 400, {}) is None
    assert scale.work_shape(300, 400, {"work_size": 300}) is None  # no larger than the work size
    assert scale.work_shape(600, 1000, {"work_size": 300}) == (300, 500)
    assert scale.work_shape(1000, 601, {"work_size": 300}) == (499, 300)


def test_restore_gives_back_the_photo_when_the_network_changed_nothing_and_its_detail_otherwise():
    x = photo(1, 96, 64)
    small = scale.resize(x, (32, 48))
    assert small.shape == (3, 32, 48) and small.flags.writeable
    assert np.array_equal(scale.restore(small, small, x), x)  # strength 0: the network returns its input
    flat = np.full_like(small, 128)  # a network that paints grey: the output is grey plus the photo's detail
    detail = x.astype(int) - scale.resize(small, x.shape[1:])
    got = scale.restore(flat, small, x).astype(int)
    inside = (np.abs(128 + detail) < 255) & (128 + detail > 0)
    assert np.array_equal(got[inside], (128 + detail)[inside]) and np.abs(detail).mean() > 5


@pytest.fixture(scope="module")
def model():
    return random_cin_record(["a", "b"])


def test_a_model_with_a_work_size_stylizes_at_it(model, tmp_path):
    """The output of a 96x64 photo with work size 32 is the 48x32 stylization brought up, plus the
    photo's detail; unlike the full-size stylization; a mask goes down with the photo."""
    plain = Stylizer(modelfile.save(model, tmp_path / "plain.pt"), "cpu")
    worked = Stylizer(modelfile.save({**model, "apply": {"work_size": 32}}, tmp_path / "worked.pt"), "cpu")
    x = photo(2, 96, 64)
    small = scale.resize(x, (32, 48))
    cond = plain.condition(["b"])
    want = scale.restore(plain.run(torch.from_numpy(small), cond, 0.7).numpy(), small, x)
    got = worked.run(torch.from_numpy(x), cond, 0.7).numpy()
    assert np.array_equal(got, want)
    full = plain.run(torch.from_numpy(x), cond, 0.7).numpy()
    assert np.abs(full.astype(int) - got).mean() > 2  # the work size changes the picture
    assert np.array_equal(worked.run(torch.from_numpy(x), cond, 0.0).numpy(), x)  # 0: the photo exactly
    mask = torch.zeros(64, 96)
    mask[:, :48] = 1
    masked = worked.run(torch.from_numpy(x), worked.condition(["a", "b"], mask), 1.0).numpy()
    assert masked.shape == x.shape


@pytest.mark.slow
def test_onnx_runtime_applies_the_work_size_as_pytorch_does(model, tmp_path):
    from stylize.apply.engines import onnx_runtime
    from stylize.apply.engines.export import export_onnx

    path = modelfile.save({**model, "apply": {"work_size": 32, "full_strength": 0.8}}, tmp_path / "worked.pt")
    torch_path = Stylizer(path, "cpu")
    x = photo(3, 96, 64)
    for default in (False, True):
        fast = onnx_runtime.OnnxStylizer(export_onnx(path, tmp_path / f"g{default}.onnx", default=default).path)
        for specs, strength in (((None, 1.0), (["b"], 0.5), (None, 0.0)) if not default else ((None, 1.0),)):
            want = torch_path.run(torch.from_numpy(x), torch_path.condition(specs), strength).numpy()
            got = fast.run(x, fast.condition(specs), strength)
            assert got.shape == x.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1

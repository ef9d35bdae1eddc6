"""bench/common.py, and every benchmark and study script importable from a fresh clone."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted([*ROOT.glob("bench/*.py"), *ROOT.glob("studies/*.py")])


@pytest.fixture(scope="module")
def common():
    return load_script("bench/common.py")


@pytest.mark.slow
def test_every_script_imports_from_outside_the_checkout(tmp_path):
    # moved scripts and shared helpers: a broken import shows here, not months later in a rerun
    assert len(SCRIPTS) >= 15
    code = ("import importlib.util, sys\n"
            "for i, path in enumerate(sys.argv[1:]):\n"
            "    spec = importlib.util.spec_from_file_location(f'script{i}', path)\n"
            "    sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)\n"
            "    spec.loader.exec_module(module)\n")
    r = subprocess.run([sys.executable, "-c", code, *map(str, SCRIPTS)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_timed_measures_a_process_and_stops_on_failure(common):
    wall, peak_mb = common.timed([sys.executable, "-c", "x = bytearray(60_000_000)"])
    assert wall > 0 and peak_mb > 60
    with pytest.raises(SystemExit, match="failed \\(3\\)"):
        common.timed([sys.executable, "-c", "import sys; sys.exit(3)"])


def test_psnr(common):
    a = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert common.psnr(a, a) == float("inf")
    assert common.psnr(a, a + 0.1) == pytest.approx(20.0, abs=1e-3)  # mse 0.01
    assert common.psnr(a.numpy(), (a + 0.1).numpy()) == pytest.approx(20.0, abs=1e-3)


def test_random_model_applies_like_a_trained_one(common, tmp_path):
    from stylize.apply.engines.pytorch import load_stylizer

    for norm, styles in (("instance", ("random",)), ("conditional", ("a", "b", "c"))):
        path = common.random_model(tmp_path / f"{norm}.pt", norm, styles, width=8)
        stylizer = load_stylizer(str(path), "cpu")
        assert stylizer.styles == list(styles)
        photo = np.asarray(common.synthetic_photo(np.random.default_rng(0), 40, 32))
        assert photo.shape == (32, 40, 3)
        y = stylizer.run(torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 255,
                         stylizer.condition(None, None, None), 1.0)
        assert y.shape == (3, 32, 40) and torch.isfinite(y).all()


def test_mark_difference_sees_brushwork_not_palette(tmp_path):
    """bench/arbitrary.py's mark_difference: two outputs that differ only in colour (the same
    strokes, another hue) differ little; the same colours with other strokes differ a lot."""
    from PIL import Image

    arbitrary = load_script("bench/arbitrary.py")
    rng = np.random.default_rng(0)
    strokes = np.kron(rng.random((24, 32)) > 0.5, np.ones((8, 8)))  # 192x256 blocks of light and dark
    other = np.kron(rng.random((48, 64)) > 0.5, np.ones((4, 4)))  # finer marks

    def save(name, lum, tint):
        rgb = (lum[..., None] * 120 + 60 + np.array(tint)).clip(0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(tmp_path / name)
        return tmp_path / name
    a = save("a.png", strokes, (0, 0, 0))
    recoloured = save("b.png", strokes, (60, -50, 40))
    restroked = save("c.png", other, (0, 0, 0))
    assert arbitrary.mark_differences([a, a]) == 0
    colour_only, marks_only = arbitrary.mark_differences([a, recoloured]), arbitrary.mark_differences([a, restroked])
    assert arbitrary.differences([a, recoloured]) > 30 and colour_only < 3  # measured 50 and 0.0
    assert marks_only > 20  # measured 42

"""The package as users install it: a built wheel, installed elsewhere, applies the shipped default
model (the shipped models travel in the wheel as package data)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_photo

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_built_wheel_applies_the_default_model(tmp_path):
    def run(*args, **kw):
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, **kw)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    # no build isolation: setuptools comes with the test extra, so nothing is downloaded
    run("-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("stylize-*.whl")
    run("-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "STYLIZE_RUNTIME": "torch"}
    where = run("-c", "import stylize.models.modelfile as m; print(m.__file__); print(m.SHIPPED_DIR)", env=env,
                cwd=tmp_path).split()
    assert all(Path(p).is_relative_to(tmp_path / "site") for p in where), where  # not the checkout
    make_photo(0, 64, 48).save(tmp_path / "photo.jpg")
    run("-c", "from stylize.cli import main; main()", "apply", "photo.jpg", env=env, cwd=tmp_path)
    assert Image.open(tmp_path / "stylized" / "photo.jpg").size == (64, 48)

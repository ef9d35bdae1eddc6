"""tools/textures.py: the procedural "paintings" the arbitrary-style model trains on besides the
public-domain ones. A model's record names the texture files it trained on, so each must come out
the same from its kind and number, every time."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def textures():
    return load_script("tools/textures.py")


@pytest.mark.parametrize("kind", ["strokes", "shapes"])
def test_a_texture_is_a_function_of_its_number(textures, kind):
    make = textures.KINDS[kind]
    a, b, c = (np.asarray(make(n, 64)) for n in (3, 3, 4))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5  # another number, another texture
    assert a.std() > 3  # not a blank canvas


def test_the_command_writes_each_kind_under_its_own_name(tmp_path):
    for kind in ("strokes", "shapes"):
        subprocess.run([sys.executable, str(ROOT / "tools" / "textures.py"), str(tmp_path), "--kind", kind,
                        "--count", "2", "--first", "5", "--size", "48"], check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes_0005.png", "shapes_0006.png",
                                                          "texture_0005.png", "texture_0006.png"]

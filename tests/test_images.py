"""Reading and writing images: orientation, alpha, modes, and every failure as a one-line StylizeError."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stylize import images
from stylize.errors import StylizeError
from stylize.images import find_images, load_image, save_image

from conftest import make_photo


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith("."))


def test_png_round_trip_is_exact(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "in.png")
    x, alpha = load_image(tmp_path / "in.png")
    assert x.dtype == torch.float32 and x.shape == (3, 40, 48) and alpha is None
    np.testing.assert_array_equal((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), a)
    save_image(x, tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), a)
    assert leftovers(tmp_path) == []


def test_exif_orientation_is_honoured(tmp_path):
    # stored 48 wide and 40 high, red block at the stored top-left; orientation 6 = rotate 90 clockwise
    a = np.zeros((40, 48, 3), np.uint8)
    a[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    x, _ = load_image(tmp_path / "rotated.jpg")
    assert x.shape == (3, 48, 40)  # displayed 40 wide and 48 high
    top_right, top_left = x[:, :8, -8:].mean(dim=(1, 2)), x[:, :8, :8].mean(dim=(1, 2))
    assert top_right[0] > 0.8 and top_right[1] < 0.2  # the red block moved to the top-right
    assert top_left.max() < 0.2


def test_alpha_is_kept_aside_and_restored_on_png(tmp_path):
    rgba = np.zeros((20, 24, 4), np.uint8)
    rgba[..., :3] = np.random.default_rng(1).integers(0, 256, (20, 24, 3))
    rgba[..., 3] = np.linspace(0, 255, 24).round().astype(np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    x, alpha = load_image(tmp_path / "in.png")
    assert x.shape == (3, 20, 24) and alpha.shape == (1, 20, 24)
    np.testing.assert_allclose(alpha[0].numpy(), rgba[..., 3] / 255.0, atol=1e-6)
    save_image(x, tmp_path / "out.png", alpha)
    back = Image.open(tmp_path / "out.png")
    assert back.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(back), rgba)
    # formats without alpha drop it rather than fail
    save_image(x, tmp_path / "out.jpg", alpha)
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"


def check_rgb(x, expected_hw3):
    assert x.dtype == torch.float32 and x.shape[0] == 3
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected_hw3, atol=1e-6)


def test_greyscale_loads_as_three_equal_channels(tmp_path):
    g = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    Image.fromarray(g, "L").save(tmp_path / "grey.png")
    x, alpha = load_image(tmp_path / "grey.png")
    check_rgb(x, np.repeat(g[..., None] / 255.0, 3, axis=2))
    assert alpha is None


def test_palette_image_loads_its_colours(tmp_path):
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2, 0, 2, 2, 1, 0])
    im.save(tmp_path / "pal.png")
    x, _ = load_image(tmp_path / "pal.png")
    colours = {0: (1, 0, 0), 1: (0, 1, 0), 2: (0, 0, 1)}
    expected = np.array([[colours[i] for i in row] for row in ([0, 1, 2, 0], [2, 2, 1, 0])], float)
    check_rgb(x, expected)


def test_palette_transparency_becomes_alpha(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.putdata([0, 1])
    im.save(tmp_path / "pal.png", transparency=1)
    _, alpha = load_image(tmp_path / "pal.png")
    np.testing.assert_array_equal(alpha[0].numpy(), [[1.0, 0.0]])


def test_cmyk_converts_to_rgb(tmp_path):
    cmyk = np.zeros((2, 2, 4), np.uint8)
    cmyk[0, 0] = (0, 0, 0, 0)      # white
    cmyk[0, 1] = (255, 0, 0, 0)    # cyan
    cmyk[1, 0] = (0, 0, 0, 255)    # black
    cmyk[1, 1] = (0, 255, 255, 0)  # red
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.tif")
    x, _ = load_image(tmp_path / "cmyk.tif")
    check_rgb(x, np.array([[(1, 1, 1), (0, 1, 1)], [(0, 0, 0), (1, 0, 0)]], float))


def test_16_bit_greyscale_keeps_its_range(tmp_path):
    a = (np.arange(12 * 20).reshape(12, 20) * 270).astype(np.uint16)  # up to 64530
    Image.fromarray(a).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    x, _ = load_image(tmp_path / "deep.png")
    check_rgb(x, np.repeat(a[..., None] / 65535.0, 3, axis=2))
    # a dark 16-bit image stays dark (not rescaled as if it were 8-bit)
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(tmp_path / "dark.png")
    x, _ = load_image(tmp_path / "dark.png")
    assert float(x.max()) == pytest.approx(200 / 65535, rel=1e-5)
    # and can be downscaled
    x, _ = load_image(tmp_path / "deep.png", max_size=10)
    assert x.shape == (3, 6, 10)


def test_max_size_downscales_the_longest_side(tmp_path):
    make_photo(0, 48, 40).save(tmp_path / "p.png")
    x, _ = load_image(tmp_path / "p.png", max_size=24)
    assert x.shape == (3, 20, 24)
    x, _ = load_image(tmp_path / "p.png", max_size=100)  # never upscaled
    assert x.shape == (3, 40, 48)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    make_photo(0, 48, 40).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 500)
    with pytest.raises(StylizeError, match="decompression-bomb"):
        load_image(tmp_path / "big.png")


def test_pillow_settings_of_the_importing_program_are_kept(tmp_path):
    # a program that imports stylize keeps Pillow's pixel limit and its own warning filters, and
    # stylize still opens photos past Pillow's limit (set very low here) up to its own
    make_photo(0, 48, 40).save(tmp_path / "p.png")
    code = (
        "import warnings, numpy, torch; from PIL import Image; Image.MAX_IMAGE_PIXELS = 100; "  # their own filters
        "before = list(warnings.filters); "
        "import stylize.cli, stylize.pipeline, stylize.images as im; "
        f"x, _ = im.load_image({str(tmp_path / 'p.png')!r}); assert x.shape == (3, 40, 48), x.shape; "
        "assert Image.MAX_IMAGE_PIXELS == 100, Image.MAX_IMAGE_PIXELS; "
        "assert warnings.filters == before, 'warning filters changed'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_truncated_jpeg_is_an_error(tmp_path):
    make_photo(0).save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(StylizeError, match="half.jpg: corrupt or truncated") as e:
        load_image(tmp_path / "half.jpg")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", b"\xff\xd8\xff\xe0" + b"\x00" * 64])
def test_non_images_are_errors(tmp_path, content):
    p = tmp_path / "not_an_image.jpg"
    p.write_bytes(content)
    with pytest.raises(StylizeError, match="not_an_image.jpg"):
        load_image(p)


def test_missing_file_and_folder_are_errors(tmp_path):
    with pytest.raises(StylizeError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(StylizeError, match="folder"):
        load_image(tmp_path)


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    x = torch.rand(3, 16, 16)
    for ext in (".jpg", ".png", ".webp", ".bmp", ".tif"):
        out = save_image(x, tmp_path / "sub" / f"out{ext}")
        assert Image.open(out).size == (16, 16)
    save_image(torch.zeros(3, 16, 16), tmp_path / "sub" / "out.png")  # overwrite
    assert np.asarray(Image.open(tmp_path / "sub" / "out.png")).max() == 0
    assert leftovers(tmp_path / "sub") == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch, error):
    def failing_save(self, fp, format=None, **params):
        fp.write(b"half an image")  # something was written before the failure
        raise error

    monkeypatch.setattr(Image.Image, "save", failing_save)
    dest = tmp_path / "out.png"
    with pytest.raises(StylizeError if isinstance(error, OSError) else KeyboardInterrupt):
        save_image(torch.rand(3, 8, 8), dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    dest = tmp_path / "out.png"
    save_image(torch.ones(3, 8, 8), dest)
    before = dest.read_bytes()
    monkeypatch.setattr(Image.Image, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(StylizeError, match="cannot write"):
        save_image(torch.zeros(3, 8, 8), dest)
    assert dest.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_unknown_output_extension_is_refused(tmp_path):
    with pytest.raises(StylizeError, match="unknown output format"):
        save_image(torch.rand(3, 8, 8), tmp_path / "out.xyz")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_under_a_file_is_an_error(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StylizeError, match="cannot create output folder"):
        save_image(torch.rand(3, 8, 8), tmp_path / "file.txt" / "sub" / "out.png")


def test_find_images_is_recursive_sorted_and_filters_extensions(tmp_path):
    for rel in ["b/2.JPG", "a/1.png", "a/notes.txt", "c.webp", "d.jpeg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()  # a folder with an image-like name is not an image
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/1.png", "b/2.JPG", "c.webp", "d.jpeg"]


def test_to_pil_clamps_and_rounds():
    im = images.to_pil(torch.tensor([[[-0.5, 0.5]], [[1.5, 0.999]], [[0.0, 1 / 255]]]))
    assert np.asarray(im).tolist() == [[[0, 255, 0], [128, 255, 1]]]

"""Reading and writing images: orientation, alpha, modes, and every failure as a one-line StylizeError."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
        "import stylize.cli, stylize.apply.batch, stylize.images as im; "
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


# ---------------------------------------------------------------- big photos in bounded memory (issue 34)
# A photo the pixel guard accepts may have 250 megapixels: 750 MB as the (3, H, W) uint8 array and
# 1 GB as Pillow's image. Each step below may add only bands of it (BAND_PIXELS, made small here),
# measured with tracemalloc (numpy's and Python's allocations; Pillow's own are its C heap).

def _peak(function, *args):
    import tracemalloc

    tracemalloc.start()
    try:
        result = function(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _mode_images(tmp_path):
    """A 60x50 image in each mode that converts differently, saved as PNG or TIFF."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    out = {"RGB": Image.fromarray(rgb), "L": Image.fromarray(rgb[..., 0]), "P": pal,
           "RGBA": Image.fromarray(np.dstack([rgb, rgb[..., 1]]), "RGBA"), "CMYK": Image.fromarray(rgb).convert("CMYK"),
           "I;16": Image.fromarray((rgb[..., 0].astype(np.uint16) * 200)),
           "I": Image.fromarray(rgb[..., 1].astype(np.int32) * 3),  # 8-bit levels past 255: read as 16-bit
           "F": Image.fromarray(rgb[..., 2].astype(np.float32) / 300)}
    paths = {}
    for mode, im in out.items():
        paths[mode] = tmp_path / f"{mode.replace(';', '')}.{'tif' if mode in ('CMYK', 'I', 'F') else 'png'}"
        im.save(paths[mode], **({"transparency": 3} if mode == "P" else {}))
    return paths


def test_a_photo_is_read_a_band_at_a_time_with_the_same_result(tmp_path, monkeypatch):
    paths = _mode_images(tmp_path)
    whole = {m: [images.read_array(p, uint8=u) for u in (False, True)] for m, p in paths.items()}
    monkeypatch.setattr(images, "BAND_PIXELS", 60 * 7)  # bands of 7 rows, the last one shorter
    for mode, path in paths.items():
        for (x, alpha), uint8 in zip(whole[mode], (False, True)):
            y, beta = images.read_array(path, uint8=uint8)
            np.testing.assert_array_equal(y, x, err_msg=mode)
            assert (beta is None) == (alpha is None) and (beta is None or np.array_equal(beta, alpha)), mode
    big = tmp_path / "big.png"
    make_photo(0, 600, 400).save(big)
    (x, _), peak = _peak(images.read_array, big, None, True)
    assert peak < x.nbytes * 1.1, peak / x.nbytes  # the array and a band; it was twice the array


def test_opening_a_photo_makes_no_copy_of_it(tmp_path, monkeypatch):
    make_photo(0, 48, 40).save(tmp_path / "p.png")
    a = np.zeros((40, 48, 3), np.uint8)
    a[:16, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "rotated.jpg", exif=exif.tobytes())

    def copy(self):
        raise AssertionError("a copy of the whole image (1 GB at the pixel limit)")

    monkeypatch.setattr(Image.Image, "copy", copy)
    assert images.open_image(tmp_path / "p.png").size == (48, 40)
    assert images.open_image(tmp_path / "rotated.jpg").size == (40, 48)  # and still turned upright


def test_an_output_is_filled_a_band_at_a_time(monkeypatch):
    rng = np.random.default_rng(0)
    x, alpha = rng.integers(0, 256, (3, 400, 600), dtype=np.uint8), rng.integers(0, 256, (1, 400, 600), dtype=np.uint8)
    expected = np.dstack([x.transpose(1, 2, 0), alpha[0]])
    monkeypatch.setattr(images, "BAND_PIXELS", 600 * 9)
    im, peak = _peak(images.to_pil, x)
    assert np.array_equal(np.asarray(im), expected[..., :3]) and peak < x.nbytes * 0.1, peak / x.nbytes
    assert np.array_equal(np.asarray(images.to_pil(x, alpha)), expected)
    as_float = images.to_pil(torch.from_numpy(x).float() / 255, torch.from_numpy(alpha).float() / 255)
    assert np.array_equal(np.asarray(as_float), expected)


def test_metadata_of_a_png_decodes_no_pixels(tmp_path, monkeypatch):
    """Pillow's getexif decodes a whole PNG to look for EXIF after its pixels: a second decode of the
    photo, 1 GB at the pixel limit. The chunk is found by skipping from chunk to chunk instead."""
    import struct

    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x010F], exif[0x0112] = "Maker", 6
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "before.png", exif=exif.tobytes(), dpi=(300, 300))
    data, chunks, pos = (tmp_path / "before.png").read_bytes(), [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos:pos + 12 + length]))
        pos += 12 + length
    order = [c for k, c in chunks if k not in (b"eXIf", b"IEND")] + [c for k, c in chunks if k == b"eXIf"] + [chunks[-1][1]]
    (tmp_path / "after.png").write_bytes(data[:8] + b"".join(order))  # eXIf after the pixels, as some tools write it
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: pytest.fail("decoded the pixels"))
    for name in ("before.png", "after.png"):
        meta = images.metadata(tmp_path / name)
        kept = Image.Exif()
        kept.load(meta["exif"])
        assert dict(kept) == {0x010F: "Maker"} and meta["dpi"] == pytest.approx((300, 300), abs=0.01), name  # orientation applied


def test_work_size_resizing_and_restoring_go_in_bands_exactly(monkeypatch):
    from stylize.apply import scale

    def two_passes(a, shape):  # Pillow's bicubic, its horizontal pass then its vertical one, whole
        im = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)))
        im = im.resize((shape[1], im.height), Image.Resampling.BICUBIC).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
        return np.asarray(im).transpose(2, 0, 1)

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 630, 400), dtype=np.uint8)
    shape = scale.work_shape(630, 400, {"work_size": 40})  # (63, 40): the photo's tenth, as 480 px is a big one's
    whole_small = scale.resize(x, shape)  # within one band: Pillow's own call
    monkeypatch.setattr(scale, "BAND_PIXELS", 400 * 11)
    small, resize_peak = _peak(scale.resize, x, shape)
    np.testing.assert_array_equal(small, two_passes(x, shape))
    assert np.abs(small.astype(int) - whole_small).max() <= 2  # Pillow takes the passes the other way round here
    y_small = rng.integers(0, 256, small.shape, dtype=np.uint8)
    out, peak = _peak(scale.restore, y_small, small, x)
    expected = np.clip(two_passes(y_small, x.shape[1:]).astype(int) + x - two_passes(small, x.shape[1:]), 0, 255)
    np.testing.assert_array_equal(out, expected)
    # shrinking: the photo's horizontal pass (a tenth of it) and bands; restoring: the output, both
    # small images' horizontal passes (a tenth each) and bands. Whole, they took 1.0 and 5.0 times the photo.
    assert resize_peak < x.nbytes * 0.3 and peak < x.nbytes * 1.5, (resize_peak / x.nbytes, peak / x.nbytes)


def test_a_photo_is_freed_before_its_output_is_written(tmp_path, monkeypatch):
    """apply_files drops the decoded photo once stylized, so a big photo's write holds the output
    alone (the reader's future used to keep the photo until the next one)."""
    import weakref

    from stylize.apply import batch as pipeline
    from stylize.apply.recipe import Look
    from stylize.settings import ApplyConfig

    photos = {}

    class Stylizer:  # every photo over the memory budget: one at a time
        name, has_strength, budget, apply, multiple, least = "invert", True, 1, {}, 1, 0

        def condition(self, *args, **kwargs):
            return Look(np.ones(1, np.float32))

        def load(self, path, max_size=None):
            x, alpha = images.read_array(path, max_size, uint8=True)
            photos[Path(path).stem] = weakref.ref(x)
            return x, alpha

        def network(self, x, look, strength):
            return 255 - x

    alive, save = [], pipeline.save_image
    monkeypatch.setattr(pipeline, "save_image", lambda y, dst, *a, **k: alive.append(photos[dst.stem]() is not None)
                        or save(y, dst, *a, **k))
    for i in range(2):
        make_photo(i, 64, 48).save(tmp_path / f"p{i}.png")
    report = pipeline.apply_files(Stylizer(), [str(tmp_path / "p0.png"), str(tmp_path / "p1.png")],
                                  ApplyConfig(out_dir=str(tmp_path / "out")))
    assert len(report.written) == 2 and alive == [False, False]


def test_photos_too_big_to_read_side_by_side_are_read_alone(tmp_path, monkeypatch):
    """Before a photo is decoded its size is known from its header: a batch reads photos ahead only
    while together they stay within pipeline.READ_AHEAD_PIXELS (three huge photos were decoded at
    once before the first one's size was known)."""
    import threading
    import time

    from stylize.apply import batch as pipeline
    from stylize.apply.recipe import Look
    from stylize.settings import ApplyConfig

    lock, reading, most = threading.Lock(), [0], [0]

    class Stylizer:  # a budget no photo here reaches: read-ahead is limited by the headers alone
        name, has_strength, budget, apply, multiple, least = "invert", True, 1 << 40, {}, 1, 0

        def condition(self, *args, **kwargs):
            return Look(np.ones(1, np.float32))

        def load(self, path, max_size=None):
            with lock:
                reading[0] += 1
                most[0] = max(most[0], reading[0])
            time.sleep(0.05)
            with lock:
                reading[0] -= 1
            return images.read_array(path, max_size, uint8=True)

        def network(self, x, look, strength):
            return 255 - x

    for i in range(4):
        make_photo(i, 64, 48).save(tmp_path / f"p{i}.png")  # 3072 pixels each
    for limit, expected in ((5000, 1), (7000, 2)):
        most[0] = 0
        monkeypatch.setattr(pipeline, "READ_AHEAD_PIXELS", limit)
        report = pipeline.apply_files(Stylizer(), [str(tmp_path / f"p{i}.png") for i in range(4)],
                                      ApplyConfig(out_dir=str(tmp_path / f"out{limit}")))
        assert len(report.written) == 4 and most[0] == expected, (limit, most[0])

"""The apply recipe (recipe.py): written once, followed alike by every engine; caches keyed by content."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_photo, make_style, random_cin_record
from stylize.apply import palette, recipe
from stylize.apply.engines.pytorch import AdaINStylizer
from stylize.models import modelfile
from stylize.models.adain import AdaINConfig, AdaINNet


def as_tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


def test_colour_matched_statistics_follow_the_photo_not_its_id(tmp_path):
    """--color-method match over many photos: a photo whose array has the id() of one before it (the
    same object refilled, as Python reuses a freed one's) still gets the painting matched to itself."""
    torch.manual_seed(0)
    net = AdaINNet(AdaINConfig(width=4))
    record = {"path": str(tmp_path / "adain.pt"), "kind": "adain", "net": net.cfg.to_dict(), "state_dict": net.state_dict()}
    style = tmp_path / "style.png"
    make_style(3).save(style)
    specs = [str(style)]
    photo = as_tensor(make_photo(1))
    used = AdaINStylizer(record, "cpu", 64)
    used.run(photo, used.condition(specs, None, photo, True), 1.0)
    photo.copy_(as_tensor(make_photo(2)))  # another photo under the same id()
    got = np.asarray(used.run(photo, used.condition(specs, None, photo, True), 1.0))
    fresh = AdaINStylizer(record, "cpu", 64)
    want = np.asarray(fresh.run(photo, fresh.condition(specs, None, photo, True), 1.0))
    assert np.array_equal(got, want)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """One calibrated model (network strength, palette) on both engines: PyTorch and ONNX Runtime."""
    from stylize.apply.engines.export import export_onnx
    from stylize.apply.engines.onnx_runtime import OnnxStylizer
    from stylize.apply.engines.pytorch import Stylizer

    rec = random_cin_record(["a", "b"])
    colours = [palette.stats(np.asarray(make_style(i)).transpose(2, 0, 1).copy()) for i in (5, 6)]
    rec["apply"] = {"full_strength": 0.8, "palette": 0.5, "colours": [palette.as_record(c) for c in colours]}
    path = modelfile.save(rec, tmp_path_factory.mktemp("recipe") / "calibrated.pt")
    return Stylizer(path, "cpu"), OnnxStylizer(export_onnx(path, path.with_suffix(".onnx")).path)


def stylized(engines, x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(e.run(x, e.condition(["a=0.3", "b=0.7"]), 0.6)) for e in engines]


@pytest.mark.slow  # an ONNX export
@pytest.mark.parametrize("change", ["strength", "padding"])
def test_one_change_to_the_recipe_reaches_both_engines(engines, monkeypatch, change):
    """The recipe is written once: change one of its rules and the PyTorch path and the ONNX path both
    follow, and still give the same picture (within a level: float rounding)."""
    x = np.asarray(make_photo(7, 45, 37)).transpose(2, 0, 1).copy()  # odd sides: padded
    before = stylized(engines, x)
    if change == "strength":  # the network at a third of --style-weight, no palette step
        monkeypatch.setattr(recipe, "calibrated", lambda strength, apply: (strength / 3, 0.0))
    else:  # to a multiple of 16 rather than the network's 4
        real = recipe.padding
        monkeypatch.setattr(recipe, "padding", lambda h, w, multiple, least=0: real(h, w, 16, least))
    after = stylized(engines, x)
    for b, a in zip(before, after):
        assert np.abs(a.astype(int) - b).max() > 8  # each engine followed the change
    assert np.abs(after[0].astype(int) - after[1]).max() <= 1
    assert np.abs(before[0].astype(int) - before[1]).max() <= 1
    if change == "strength":  # exactly the network alone at that strength: nothing else was done
        network = engines[0](torch.from_numpy(x), torch.tensor([0.3, 0.7]), 0.2, dtype=torch.uint8)
        assert np.array_equal(after[0], network.numpy())


def test_colour_blur_takes_a_colour_stripe_and_keeps_the_luminance_and_the_patches():
    """color.blur_colour: magenta and green columns of one luminance (a network's colour stripe) go
    grey; a luminance stripe and two large colour patches stay; sigma 0 gives the picture back."""
    from stylize.apply import color

    h, w = 48, 64
    ycbcr = np.zeros((3, h, w), np.float32)
    ycbcr[0] = 0.5 + 0.1 * (np.arange(w) % 6 < 3)  # a luminance stripe, period 6
    ycbcr[1, :, : w // 2], ycbcr[2, :, : w // 2] = 0.15, -0.1  # a blue-ish patch left, a red-ish right
    ycbcr[1, :, w // 2:], ycbcr[2, :, w // 2:] = -0.1, 0.15
    ycbcr[1:, : h // 2] += 0.08 * np.where(np.arange(w) % 2, 1, -1)  # magenta/green columns, top half
    picture = np.clip(np.rint(color.to_rgb(ycbcr) * 255), 0, 255).astype(np.uint8)
    out = color.blur_colour(picture, 2.0)

    def ycc(p):
        return color.to_ycbcr(p.astype(np.float32) / 255)
    before, after = ycc(picture), ycc(out)
    assert np.abs(after[0] - before[0]).max() < 2 / 255  # luminance: rounding only
    stripe = lambda c: np.abs(np.diff(c[1:, 8:20, 4:28], axis=-1)).mean()  # column to column, left patch
    assert stripe(before) > 0.1 and stripe(after) < 0.2 * stripe(before)
    for rows in (slice(h // 2 + 6, h - 6),):  # the patches' colour, away from their edge
        assert np.abs(after[1:, rows, 4:24] - before[1:, rows, 4:24]).max() < 0.01
        assert np.abs(after[1:, rows, -24:-4] - before[1:, rows, -24:-4]).max() < 0.01
    assert np.array_equal(color.blur_colour(picture, 0.0), picture)


@pytest.mark.parametrize("key, value", [("colour_blur", 1.5), ("flatten", 3), ("flow", 4)])
def test_a_model_file_s_finishing_steps_are_followed_and_absent_change_nothing(engines, key, value):
    """The apply block's colour_blur, flatten and flow reach the output (the picture without them,
    blurred, flattened or smoothed along the photo's lines); without the key, the recipe's picture is
    what it was."""
    from stylize.apply import color, flatten, flow

    engine = engines[0]
    x = np.asarray(make_photo(3)).transpose(2, 0, 1).copy()
    step = {"colour_blur": color.blur_colour, "flatten": flatten.flatten,
            "flow": lambda picture, length: flow.follow(picture, x, length)}[key]
    look = engine.condition(["a"])
    saved = engine.apply
    try:
        engine.apply = {}  # the network alone, no palette step after it
        plain = np.asarray(engine.run(x, look, 1.0))
        engine.apply = {key: value}
        changed = np.asarray(engine.run(x, look, 1.0))
        engine.apply = {}
        again = np.asarray(engine.run(x, look, 1.0))
    finally:
        engine.apply = saved
    assert np.array_equal(again, plain)
    assert not np.array_equal(changed, plain)
    assert np.array_equal(changed, step(plain, value))


def _marks_on_two_patches(h: int = 48, w: int = 64) -> np.ndarray:
    """A dark patch left of a light one (an edge at w/2), both under a fine crosshatch: a checker of
    2x2 marks of +-25 levels, the grid blind judges see at 100% in a stamped picture; uint8 (3, H, W)."""
    base = np.where(np.arange(w) < w // 2, 60, 190)[None, :].repeat(h, 0)
    marks = 25 * np.where(((np.arange(h)[:, None] // 2) + (np.arange(w)[None, :] // 2)) % 2, 1, -1)
    return np.repeat((base + marks)[None], 3, 0).astype(np.uint8)


def _edge_width(picture: np.ndarray) -> int:
    """Columns the mean row takes to rise from 10% to 90% of the way across the edge."""
    row = picture[0, 12:-12].astype(float).mean(0)
    lo, hi = row[: len(row) // 2 - 8].mean(), row[len(row) // 2 + 8:].mean()
    t = (row - lo) / (hi - lo)
    return int(np.argmax(t > 0.9) - np.argmax(t > 0.1))


def test_flatten_paints_a_field_of_marks_flat_and_keeps_the_edge_where_a_blur_smears_it():
    """flatten.flatten (the generalized Kuwahara filter): the crosshatch inside each patch goes, and the edge between the patches stays within 2 columns; a Gaussian blur that takes as much of
    the marks (the negative control) smears the same edge over many; radius 0 gives the picture back."""
    from PIL import Image, ImageFilter

    from stylize.apply import flatten

    picture = _marks_on_two_patches()
    flat = flatten.flatten(picture, 4)

    def marks(p):  # the spread of levels inside each patch, away from the edge and the border
        return max(p[0, 8:-8, 6:24].std(), p[0, 8:-8, -24:-6].std())
    assert marks(picture) > 20 and marks(flat) < 0.2 * marks(picture)
    assert _edge_width(picture) <= 1 and _edge_width(flat) <= 2
    blurred = np.asarray(Image.fromarray(picture[0]).filter(ImageFilter.GaussianBlur(3)))[None].repeat(3, 0)
    assert marks(blurred) < 0.2 * marks(picture) and _edge_width(blurred) > 4
    assert np.array_equal(flatten.flatten(picture, 0), picture)


def test_flatten_in_bands_is_the_picture_flattened_in_one_piece(monkeypatch):
    """A picture taller than a band (flatten._BAND rows) is flattened a band at a time, each with the
    rows around it that its disc reaches: the same picture, to a level, as in one piece."""
    from stylize.apply import flatten

    picture = np.random.default_rng(0).integers(0, 256, (3, 70, 45), dtype=np.uint8)
    whole = flatten.flatten(picture, 3)
    monkeypatch.setattr(flatten, "_BAND", 16)
    banded = flatten.flatten(picture, 3)
    assert np.abs(banded.astype(int) - whole).max() <= 1
    tiny = picture[:, :2, :3]  # smaller than the disc: mirrored as often as it takes
    assert flatten.flatten(tiny, 4).shape == tiny.shape


@pytest.mark.parametrize("axis", [1, 2])
def test_flow_smooths_marks_along_the_photo_s_lines_and_keeps_the_edge_across_them(axis):
    """flow.follow: on a photo of two bands (an edge along the rows, or along the columns), a picture's
    fine crosshatch is smoothed along the edge's direction, and the edge between its two patches
    stays within 2 pixels. The negative control: the same picture smoothed along the lines of the
    photo turned a quarter (the lines across the edge) smears that edge. Length 0 gives the picture back."""
    from stylize.apply import flow

    def turned(p):  # the edge along the rows (axis 1) or, as made, along the columns
        return np.ascontiguousarray(p.transpose(0, 2, 1)) if axis == 1 else p

    columns = np.where(np.arange(64) < 32, 60, 190)[None, None, :].repeat(64, 1).repeat(3, 0).astype(np.uint8)
    rows = np.ascontiguousarray(columns.transpose(0, 2, 1))  # the same photo turned: its lines cross the edge
    picture, photo, across = turned(_marks_on_two_patches(64, 64)), turned(columns), turned(rows)
    along, smeared = turned(flow.follow(picture, photo, 4)), turned(flow.follow(picture, across, 4))

    def marks(p):  # the spread of levels inside each patch, away from the edge and the border
        return max(p[0, 10:-10, 6:24].std(), p[0, 10:-10, -24:-6].std())
    assert marks(turned(picture)) > 20 and marks(along) < 0.2 * marks(turned(picture))
    assert _edge_width(along) <= 2
    assert _edge_width(smeared) > 4
    assert np.array_equal(flow.follow(picture, photo, 0), picture)
    for shape in ((3, 1, 1), (3, 2, 3), (3, 5, 40)):  # smaller than the smoothing: no error, same shape
        small = np.full(shape, 128, np.uint8)
        assert flow.follow(small, small, 4).shape == shape


def test_flow_in_bands_is_the_picture_smoothed_in_one_piece(monkeypatch):
    """A picture taller than a band (flow._BAND rows) is smoothed a band at a time, each with the rows
    its streamlines and the photo's tangents reach: the same picture as in one piece."""
    from stylize.apply import flow

    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (3, 150, 40), dtype=np.uint8)
    photo = np.asarray(make_photo(5).resize((40, 150))).transpose(2, 0, 1).copy()
    whole = flow.follow(picture, photo, 3)
    monkeypatch.setattr(flow, "_BAND", 16)
    banded = flow.follow(picture, photo, 3)
    assert np.abs(banded.astype(int) - whole).max() <= 1
    assert not np.array_equal(whole, picture)

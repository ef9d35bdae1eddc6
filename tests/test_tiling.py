"""Tiled apply (tiling.py): tiles give the untiled result, with the whole image's statistics.

Tiny networks (width 4-8) and small photos with tiles of 32 px, so that tiling really happens: every
window (tile plus halo) is smaller than the photo.
"""
from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stylize.apply.engines import tiling
from stylize.cli import app
from stylize.apply.engines.pytorch import Stylizer
from stylize.models.networks import NetConfig, TransformerNet
from stylize.models.norms import Condition, InstanceStat

from conftest import make_photo


def photo(w: int = 192, h: int = 144, seed: int = 3) -> torch.Tensor:
    """uint8 (3, h, w); the left third darkened so that tiles differ a lot in their own statistics."""
    a = np.asarray(make_photo(seed, w, h)).copy()
    a[:, : w // 3] //= 4
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def whole(s: Stylizer, x, **kw) -> torch.Tensor:
    return s(x, tile=0, **kw)  # tile=0 and the default budget: small photos run in one piece


# ------------------------------------------------------------------ geometry

@pytest.mark.parametrize("length,tile,overlap", [(8, 32, 16), (96, 24, 16), (100, 32, 16), (144, 32, 16),
                                                 (600, 64, 16), (804, 128, 32), (6000, 928, 16), (52, 48, 0)])
def test_tiles_cover_the_image_and_blend_to_one(length, tile, overlap):
    p = tiling.plan(length, 12, tile, overlap=overlap)
    cores, size = p.rows, p.height
    assert cores[0][0] == 0 and cores[-1][1] == size
    assert all(s % tiling.ALIGN == 0 and e - s <= max(tile, size if len(cores) == 1 else 0) for s, e in cores)
    total = torch.zeros(size)
    for (s, e), w in zip(cores, tiling.ramps(cores)):
        total[s:e] += w
    assert torch.allclose(total, torch.ones(size))  # feathering weights: a partition of unity
    parts = tiling.owned(cores)  # statistics: every pixel counted once, inside its own tile
    assert parts[0][0] == 0 and parts[-1][1] == size and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert all(s <= a and b <= e for (a, b), (s, e) in zip(parts, cores))


def test_only_neighbours_overlap_for_every_size():
    for length in range(8, 400, 4):
        for tile in range(8, 160, 4):
            for overlap in (0, 8, 16, 32):
                cores = tiling.plan(length, 8, tile, overlap=overlap).rows
                assert all(cores[i + 2][0] >= cores[i][1] for i in range(len(cores) - 2)), (length, tile, overlap)


# ------------------------------------------------------------------ the network, step by step

@pytest.mark.parametrize("norm", ["instance", "layer", "group", "batch", "none"])
def test_walker_is_the_network(norm):
    torch.manual_seed(0)
    net = TransformerNet(NetConfig(norm, 2, True, 8)).eval()
    x = torch.rand(1, 3, 40, 48)
    cond = Condition(torch.rand(1, 2, 40, 48).softmax(1), torch.tensor([0.7]))
    walker = tiling._Walker(net)
    with torch.inference_mode():
        assert torch.equal(walker.run(None, None, lambda: x, cond), net(x, cond))
        state = walker.run(None, 6, lambda: x, cond)  # stop half-way and go on from the state
        assert torch.equal(walker.run(state, None, lambda: x, cond), net(x, cond))


def test_a_layer_added_to_the_network_is_one_tiling_steps_through():
    # the walker has no copy of the forward pass: a new unit changes the network's output and the
    # walker's alike
    from stylize.models.networks import ConvNorm, ResidualBlock

    torch.manual_seed(0)
    net = TransformerNet(NetConfig("instance", 1, True, 8)).eval()
    x, cond = torch.rand(1, 3, 40, 48), Condition(None, torch.tensor([1.0]))
    with torch.inference_mode():
        before = net(x, cond)
        net.res.append(ResidualBlock(32, net.cfg))
        net.up.append(ConvNorm(8, 8, 3, 1, net.cfg))
        after = net(x, cond)
        assert not torch.equal(before, after)
        assert torch.equal(tiling._Walker(net).run(None, None, lambda: x, cond), after)


# ------------------------------------------------------------------ tiled == untiled

# the Johnson network with every norm is the slow half (a second each); the shipped light one stays fast
@pytest.mark.parametrize("norm,network", [pytest.param(n, "johnson", marks=pytest.mark.slow)
                                          for n in ["instance", "conditional", "layer", "group", "batch", "none"]]
                         + [("instance", "light"), ("conditional", "light")])
def test_tiled_equals_untiled(make_model, norm, network):
    s = Stylizer(make_model(norm=norm, num_styles=2 if norm == "conditional" else 1, width=8, network=network), "cpu")
    x = photo()
    styles = torch.tensor([0.3, 0.7]) if norm == "conditional" else None
    untiled = whole(s, x, styles=styles, strength=0.8)
    tiled = s(x, styles, 0.8, tile=32)
    p = tiling.plan(144, 192, 32)  # tiling really happens: many windows, each smaller than the photo
    assert p.count > 20 and max(w.x[1] - w.x[0] for w in p.windows()) < 192
    assert psnr(tiled, untiled) > 50
    # with a halo as deep as the receptive field the tiles are the untiled result to rounding
    cond = Condition(styles[None] if styles is not None else None, torch.tensor([0.8]))
    exact = tiling.stylize_tiled(s.net, x, cond, 32, "cpu", halo=64)
    assert (exact - untiled).abs().max() < 1e-4


def test_spatial_styles_are_cut_with_the_tiles(make_model):
    s = Stylizer(make_model(norm="conditional", num_styles=2, width=8), "cpu")
    x = photo()
    mask = torch.zeros(144, 192)
    mask[:, 96:] = 1
    styles = torch.stack([mask, 1 - mask])
    assert psnr(s(x, styles, tile=32), whole(s, x, styles=styles)) > 50


def test_statistics_are_the_whole_images(make_model, monkeypatch):
    """Every tile normalizes with the statistics the untiled pass computes, never its own."""
    s = Stylizer(make_model(width=4), "cpu")
    x = photo()
    stats = [m.stat for m in s.net.norms()]
    for st in stats:
        st.record = []
    whole(s, x)
    reference = [st.record[0] for st in stats]  # (mean, var) of the whole image, per layer
    for st in stats:
        st.record = None

    seen = []
    forward = InstanceStat.forward

    def spy(self, z):
        seen.append((stats.index(self), self.frozen, tuple(z.shape[-2:])))
        return forward(self, z)

    monkeypatch.setattr(InstanceStat, "forward", spy)
    # a halo as deep as the receptive field: the windows then see exactly what the whole image does
    tiling.stylize_tiled(s.net, x, Condition(None, torch.tensor([1.0])), 32, "cpu", halo=64)
    assert seen and all(frozen is not None for _, frozen, _ in seen)  # no tile used its own statistics
    assert max(shape[1] for i, _, shape in seen if i == 0) < 192  # and they were partial windows
    for i, (mean, var), _ in seen:
        assert torch.allclose(mean, reference[i][0], rtol=1e-4, atol=1e-5)
        assert torch.allclose(var, reference[i][1], rtol=1e-4, atol=1e-5)
    assert all(st.frozen is None for st in stats)  # and nothing stays frozen afterwards


def test_tiles_that_normalize_themselves_would_fail(make_model, monkeypatch):
    """The check above has teeth: with the statistics pass disabled, tiles drift far from the
    untiled result (so test_tiled_equals_untiled would fail); with it, they do not."""
    s = Stylizer(make_model(width=4), "cpu")
    x = photo()
    untiled = whole(s, x)
    assert psnr(s(x, tile=32), untiled) > 45
    monkeypatch.setattr(tiling._Walker, "per_image", lambda self, k: False)  # no statistics pass
    assert psnr(s(x, tile=32), untiled) < 30


def test_preview_statistics_are_consistent_but_not_exact(make_model):
    s = Stylizer(make_model(width=4), "cpu")
    x = photo()
    cond = Condition(None, torch.tensor([1.0]))
    untiled = whole(s, x)
    a = tiling.stylize_tiled(s.net, x, cond, 32, "cpu", stats="preview", preview_pixels=144 * 192)
    b = tiling.stylize_tiled(s.net, x, cond, 32, "cpu", stats="preview", preview_pixels=144 * 192 // 4)
    assert psnr(a, untiled) > 45  # a preview as large as the photo is the photo: exact statistics
    assert psnr(b, untiled) < psnr(a, untiled)


def test_uint8_in_and_out(make_model):
    s = Stylizer(make_model(width=4), "cpu")
    x = photo()
    y8 = s(x, tile=32, dtype=torch.uint8)
    yf = s(x.float() / 255, tile=32)
    assert y8.dtype == torch.uint8 and y8.shape == x.shape
    assert (y8.float() - yf * 255).abs().max() <= 0.5 + 1e-3
    assert torch.equal(whole(s, x, dtype=torch.uint8), (whole(s, x) * 255).round().to(torch.uint8))


def test_odd_sizes_and_thin_strips(make_model):
    s = Stylizer(make_model(width=4), "cpu")
    g = torch.Generator().manual_seed(0)
    for w, h in ((203, 141), (150, 5), (7, 130)):
        x = (torch.rand(3, h, w, generator=g) * 255).to(torch.uint8)
        assert psnr(s(x, tile=32), whole(s, x)) > 40, (w, h)


def test_states_on_disk_match_memory_and_are_removed(make_model, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    s = Stylizer(make_model(width=4), "cpu")
    x = photo()
    cond = Condition(None, torch.tensor([1.0]))
    in_memory = tiling.stylize_tiled(s.net, x, cond, 32, "cpu", memory_mb=None)
    on_disk = tiling.stylize_tiled(s.net, x, cond, 32, "cpu", memory_mb=0)  # float16 in files
    assert psnr(on_disk, in_memory) > 50
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_error_mid_way_leaves_the_network_as_it_was(make_model, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    s = Stylizer(make_model(norm="layer", width=4), "cpu")
    before = [type(m.stat) for m in s.net.norms()]
    calls = {"n": 0}
    run = tiling._Walker.run

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return run(self, *a, **kw)

    monkeypatch.setattr(tiling._Walker, "run", failing)
    with pytest.raises(KeyboardInterrupt):
        tiling.stylize_tiled(s.net, photo(), Condition(None, torch.tensor([1.0])), 32, "cpu", memory_mb=0)
    assert [type(m.stat) for m in s.net.norms()] == before  # group norms swapped back
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary states are gone


# ------------------------------------------------------------------ when to tile

def test_images_over_the_budget_are_tiled(make_model, monkeypatch):
    s = Stylizer(make_model(width=4), "cpu", memory_mb=1)  # 1 MB: a few thousand pixels per pass
    calls = []
    real = tiling.stylize_tiled
    monkeypatch.setattr(tiling, "stylize_tiled", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    x = photo()
    y = s(x)
    assert calls == [s.tile_size()]
    s.memory_mb = 1024
    assert psnr(y, s(x)) > 45 and len(calls) == 1  # under the budget: one piece


def test_gpu_out_of_memory_falls_back_to_tiles_and_says_so(make_model, monkeypatch):
    notices = []
    s = Stylizer(make_model(width=4), "cpu", notice=notices.append)
    x = photo()
    expected = whole(s, x)
    forward = s.net.forward

    def big_fails(inp, cond=None):
        if inp.shape[-1] >= 192:  # the whole photo does not fit; tiles do
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(inp, cond)

    monkeypatch.setattr(s.net, "forward", big_fails)
    y = s(x)
    assert psnr(y, expected) > 45
    assert len(notices) == 1 and "out of GPU memory" in notices[0] and "tiles" in notices[0]


def test_cli_tile_option(make_model, tmp_path):
    from PIL import Image

    model = make_model(width=8)
    src = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(photo().permute(1, 2, 0).numpy())).save(src)
    runner = CliRunner()
    for name, extra in (("whole.png", []), ("tiled.png", ["--tile", "64"])):
        result = runner.invoke(app, ["apply", str(src), "--model", str(model), "--out", str(tmp_path / name),
                                     "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
    a = torch.from_numpy(np.asarray(Image.open(tmp_path / "whole.png")) / 255.0)
    b = torch.from_numpy(np.asarray(Image.open(tmp_path / "tiled.png")) / 255.0)
    assert psnr(a, b) > 45


def test_tiles_shrink_until_they_fit_on_the_gpu(make_model, monkeypatch):
    s = Stylizer(make_model(width=4), "cpu")
    tried, notices = [], []
    real = tiling.stylize_tiled

    def oom_above_64(net, x, cond, tile, device, **kw):
        tried.append(tile)
        if tile > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(net, x, cond, tile, device, **kw)

    monkeypatch.setattr(tiling, "stylize_tiled", oom_above_64)
    x = photo()
    y = tiling.run_tiles(s.net, x, Condition(None, torch.tensor([1.0])), 256, "cpu", notices.append)
    assert tried == [256, 128, 64] and len(notices) == 2 and "64 px" in notices[-1]
    assert psnr(y, whole(s, x)) > 45

"""Loss terms against hand computations, and the perceptual loss on a small known feature network."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stylize.features.losses import (SLICED_POOL, PerceptualLoss, gram, mean_std, quantiles, relative_error, sliced_directions,
                            sliced_distance, sorted_projections, style_stats, total_variation)
from stylize.features.vgg import VGGFeatures


def test_gram_matches_explicit_loops():
    f = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    a = f.numpy().astype(np.float64)
    b, c, h, w = a.shape
    expected = np.zeros((b, c, c))
    for n in range(b):
        for i in range(c):
            for j in range(c):
                total = 0.0
                for y in range(h):
                    for x in range(w):
                        total += a[n, i, y, x] * a[n, j, y, x]
                expected[n, i, j] = total / (c * h * w)
    g = gram(f)
    assert g.shape == (2, 3, 3)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.numpy(), g.transpose(1, 2).numpy())  # symmetric


def test_gram_of_a_constant_map():
    f = torch.full((1, 2, 3, 3), 2.0)
    # every entry: sum over 9 pixels of 2*2, divided by c*h*w = 18
    torch.testing.assert_close(gram(f), torch.full((1, 2, 2), 36 / 18))


def test_mean_std_matches_numpy():
    f = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(1)) * 3 + 1
    mean, std = mean_std(f)
    a = f.numpy().astype(np.float64)
    np.testing.assert_allclose(mean.numpy(), a.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), np.sqrt(a.var(axis=(2, 3)) + 1e-5), rtol=1e-5)  # population var
    # a constant map has std sqrt(eps), not zero (no division by zero downstream)
    _, s0 = mean_std(torch.ones(1, 1, 4, 4))
    torch.testing.assert_close(s0, torch.full((1, 1), 1e-5 ** 0.5))


def test_style_stats_shapes():
    f = torch.rand(2, 4, 5, 5)
    assert style_stats(f, "gram").shape == (2, 16)
    ms = style_stats(f, "meanstd")
    assert ms.shape == (2, 8)
    torch.testing.assert_close(ms[:, :4], f.mean(dim=(2, 3)))


def test_total_variation_matches_explicit_loops():
    y = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(2))
    a = y.numpy().astype(np.float64)
    expected = []
    for n in range(2):
        dh = [abs(a[n, c, i + 1, j] - a[n, c, i, j]) for c in range(3) for i in range(3) for j in range(5)]
        dw = [abs(a[n, c, i, j + 1] - a[n, c, i, j]) for c in range(3) for i in range(4) for j in range(4)]
        expected.append(np.mean(dh) + np.mean(dw))
    np.testing.assert_allclose(total_variation(y).numpy(), expected, rtol=1e-5)
    assert float(total_variation(torch.full((1, 3, 8, 8), 0.4)).max()) == 0.0


def test_total_variation_of_a_checkerboard():
    y = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2).float().expand(1, 3, 4, 4)
    torch.testing.assert_close(total_variation(y), torch.tensor([2.0]))  # every neighbour differs by 1


def test_relative_error():
    y = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[1.0, 2.0, 5.0], [3.0, 4.0, 0.0]])
    # per row: sum (y - t)^2 / sum t^2
    torch.testing.assert_close(relative_error(y, t), torch.tensor([4.0 / 30.0, 1.0]))
    torch.testing.assert_close(relative_error(t, t), torch.zeros(2))
    # scale invariant: the same relative error whatever the feature magnitude
    torch.testing.assert_close(relative_error(100 * y, 100 * t), relative_error(y, t))
    # a zero target does not divide by zero
    assert torch.isfinite(relative_error(torch.ones(1, 3), torch.zeros(1, 3))).all()


def small_feature_net() -> VGGFeatures:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                             nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True))
    return VGGFeatures(features, ["relu1_1", "relu1_2", "relu2_1"], "test features")


@pytest.mark.parametrize("kind", ["gram", "meanstd", "sliced"])
def test_perceptual_loss_terms(kind):
    g = torch.Generator().manual_seed(3)
    styles = [torch.rand(3, 24, 20, generator=g), torch.rand(3, 16, 16, generator=g) ** 3]
    loss = PerceptualLoss(small_feature_net(), ["relu1_2"], ["relu1_1", "relu2_1"], kind)
    loss.set_styles(styles)
    assert loss.targets["relu2_1"].shape[0] == 2  # one target row per style
    x = torch.rand(2, 3, 16, 16, generator=g)
    weights = {"content": 1.0, "style": 10.0, "tv": 3.0, "pixel": 5.0}

    same = loss(x, x, weights=weights)
    assert float(same["content"]) == 0.0 and float(same["pixel"]) == 0.0
    torch.testing.assert_close(same["total"], sum(weights[k] * same[k] for k in weights))

    # the second style image scores zero style loss against style 1 and not against style 0
    y = styles[1][None].expand(2, 3, 16, 16)
    own = loss(y, x, style_index=torch.tensor([1, 1]))["style"]
    other = loss(y, x, style_index=torch.tensor([0, 0]))["style"]
    assert float(own) < 1e-6 < float(other)

    # strength scales the style term and pulls toward the photo with (1 - s) * mse
    s = torch.tensor([0.0, 0.5])
    terms = loss(y, x, style_index=torch.tensor([0, 0]), strength=s)
    per_example = loss(y, x, style_index=torch.tensor([0, 0]))["style"]  # same for both rows here
    torch.testing.assert_close(terms["style"], per_example * 0.25)
    mse = (y - x).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["pixel"], ((1 - s) * mse).mean())


@pytest.mark.parametrize("kind", ["gram", "sliced"])
def test_perceptual_loss_gradients_reach_the_output(kind):
    loss = PerceptualLoss(small_feature_net(), ["relu1_2"], ["relu1_1"], kind)
    loss.set_styles([torch.rand(3, 16, 16)])
    y = torch.rand(1, 3, 16, 16, requires_grad=True)
    loss(y, torch.rand(1, 3, 16, 16), weights={"content": 1, "style": 1, "tv": 1, "pixel": 1})["total"].backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.net.parameters())  # the loss network is frozen


def test_unknown_style_loss_is_refused():
    with pytest.raises(ValueError):
        PerceptualLoss(small_feature_net(), ["relu1_1"], ["relu1_1"], "fourier")


def test_sliced_directions_are_unit_and_deterministic():
    d = sliced_directions(6)
    assert d.shape == (6, 6)
    torch.testing.assert_close(d.norm(dim=0), torch.ones(6))
    assert torch.equal(d, sliced_directions(6)) and not torch.equal(d, sliced_directions(6, seed=1))


def test_sliced_distance_compares_distributions_not_positions():
    g = torch.Generator().manual_seed(4)
    f = torch.rand(2, 5, 6, 7, generator=g)
    d = sliced_directions(5)
    p = sorted_projections(f, d)
    assert p.shape == (2, 5, 42) and bool((p[..., 1:] >= p[..., :-1]).all())
    torch.testing.assert_close(sliced_distance(p, p), torch.zeros(2))
    # the same feature vectors at shuffled positions: the same distribution
    shuffled = f.flatten(2)[:, :, torch.randperm(42, generator=g)].reshape(f.shape)
    torch.testing.assert_close(sliced_distance(sorted_projections(shuffled, d), p), torch.zeros(2))
    # a target taken on a larger image of the same distribution (every vector twice) is read at matching ranks
    twice = torch.cat([f, f], dim=3)
    assert float(sliced_distance(p, quantiles(sorted_projections(twice, d))).max()) < 1e-3
    # other features: positive
    assert float(sliced_distance(sorted_projections(f ** 2, d), p).min()) > 1e-3


def test_sliced_sees_what_a_gram_matrix_misses():
    # one channel: +-1 everywhere, or 0 and +-sqrt(2): the same Gram (mean square 1), other distributions
    signs = torch.tensor([1.0, -1.0]).repeat(32).view(1, 1, 8, 8)
    spiky = torch.tensor([0.0, 2 ** 0.5, 0.0, -(2 ** 0.5)]).repeat(16).view(1, 1, 8, 8)
    torch.testing.assert_close(gram(signs), gram(spiky))
    d = sliced_directions(1)
    assert float(sliced_distance(sorted_projections(spiky, d), sorted_projections(signs, d))) > 0.1


def test_quantiles_keep_the_extremes():
    p = torch.arange(5000.0).view(1, 1, -1)
    q = quantiles(p, levels=11)
    assert q.shape == (1, 1, 11) and float(q[0, 0, 0]) == 0 and float(q[0, 0, -1]) == 4999
    assert torch.equal(quantiles(p[..., :7]), p[..., :7])  # fewer values than levels: all of them


def test_sliced_loss_draws_directions_reproducibly():
    g = torch.Generator().manual_seed(5)
    style = torch.rand(3, 16, 16, generator=g)
    loss = PerceptualLoss(small_feature_net(), ["relu1_2"], ["relu1_1", "relu2_1"], "sliced")
    loss.set_styles([style])
    assert loss.directions["relu2_1"].shape == (6, 6 * SLICED_POOL)
    a, b = loss.draw_directions(torch.Generator().manual_seed(0)), loss.draw_directions(torch.Generator().manual_seed(0))
    assert list(a) == ["relu1_1", "relu2_1"] and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(set(a["relu2_1"].tolist())) == sorted(a["relu2_1"].tolist()) and len(a["relu2_1"]) == 6
    c = loss.draw_directions(torch.Generator().manual_seed(1))
    assert not torch.equal(a["relu2_1"], c["relu2_1"])
    x = torch.rand(1, 3, 16, 16, generator=g)
    for d in (a, c, None):  # whichever directions: zero for the style itself, positive for another image
        assert float(loss(style[None], x, directions=d)["style"]) < 1e-6
        assert float(loss(x, x, directions=d)["style"]) > 1e-3
    assert PerceptualLoss(small_feature_net(), ["relu1_2"], ["relu1_1"], "gram").draw_directions(g) is None


def test_color_term_measures_the_palette_and_only_when_weighted():
    loss = PerceptualLoss(small_feature_net(), ["relu1_2"], ["relu1_1"], "gram")
    g = torch.Generator().manual_seed(4)
    style = torch.rand(3, 24, 24, generator=g) * torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1)  # reds
    loss.set_styles([style])
    shuffled = style.flatten(1)[:, torch.randperm(24 * 24, generator=g)].view(1, 3, 24, 24)  # same colours, anywhere
    blue = torch.rand(1, 3, 24, 24, generator=g) * torch.tensor([0.1, 0.2, 0.9]).view(1, 3, 1, 1)
    w = {"content": 1.0, "style": 1.0, "tv": 0.0, "pixel": 0.0, "color": 1.0}
    same, other = loss(shuffled, blue, weights=w)["color"], loss(blue, blue, weights=w)["color"]
    assert same < 1e-3 and other > 0.1  # measured: 5e-6 and 1.16
    assert "color" not in loss(blue, blue, weights={**w, "color": 0.0})

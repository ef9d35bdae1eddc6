"""palette.py: colour statistics in bands, the map between two palettes, and recolouring by weights."""
from __future__ import annotations

import numpy as np
import pytest

from stylize.apply import palette


def image(seed: int, h: int = 300, w: int = 40, tint=(0.0, 0.0, 0.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.35, 0.65, (3, 1, 1)) + np.asarray(tint)[:, None, None]
    mixed = base + 0.06 * rng.standard_normal((3, h, w))  # noise around a colour, rarely clipped
    mixed[1] += 0.5 * (mixed[0] - mixed[0].mean())  # channels correlated, as in photos
    return (np.clip(mixed, 0, 1) * 255).round().astype(np.uint8)


def test_stats_in_bands_equal_the_whole_image(monkeypatch):
    x = image(0, 700)  # more rows than a band
    mean, cov = palette.stats(x)
    f = x.reshape(3, -1).astype(np.float64) / 255
    # float32 products, float64 sums: measured 1e-8 off (6e-8 on a 12 MP photo) for entries of ~5e-3
    assert np.allclose(mean, f.mean(1)) and np.abs(cov - np.cov(f, bias=True)).max() < 1e-6
    assert np.allclose(palette.stats(x.astype(np.float32) / 255)[1], cov, atol=1e-6)  # float input alike


def test_recolour_gives_the_target_palette_and_nothing_at_amount_zero():
    photo, painting = image(1), image(2, tint=(0.2, -0.15, 0.1))
    target = palette.stats(painting)
    out = palette.recolour(photo, [target], [1.0], 1.0)
    mean, cov = palette.stats(out)
    # measured: 0.07 levels of mean, covariance within 0.9% (rounding to uint8, a little clipping)
    assert np.abs(mean - target[0]).max() * 255 < 1
    assert np.abs(cov - target[1]).max() < 0.05 * np.abs(target[1]).max()
    assert np.array_equal(palette.recolour(photo, [target], [1.0], 0.0), photo)
    half = palette.recolour(photo, [target], [1.0], 0.5)
    assert np.abs(palette.stats(half)[0] - (palette.stats(photo)[0] + target[0]) / 2).max() * 255 < 2


def test_per_pixel_weights_give_each_region_its_palette():
    photo = image(3)
    a, b = palette.stats(image(4, tint=(0.25, 0, 0))), palette.stats(image(5, tint=(0, 0, 0.25)))
    w = np.zeros((2, *photo.shape[1:]))
    w[0, :150], w[1, 150:] = 1, 1
    out = palette.recolour(photo, [a, b], w, 1.0).astype(float)
    alone_a = palette.recolour(photo, [a], [1.0], 1.0).astype(float)
    alone_b = palette.recolour(photo, [b], [1.0], 1.0).astype(float)
    assert np.array_equal(out[:, :150], alone_a[:, :150]) and np.array_equal(out[:, 150:], alone_b[:, 150:])
    assert np.abs(alone_a - alone_b).mean() > 20  # the two palettes differ a lot


def test_transfer_maps_source_to_target_statistics():
    s, t = palette.stats(image(6)), palette.stats(image(7, tint=(0, 0.15, -0.1)))
    a, b = palette.transfer(s, t)
    assert np.allclose(a @ s[0] + b, t[0])
    assert np.allclose(a @ s[1] @ a.T, t[1], atol=1e-4)
    with pytest.raises(ValueError):
        palette.recolour(image(8), [t], np.ones((2, 3, 4)), 1.0)  # weights that fit no image

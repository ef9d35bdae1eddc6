"""Procedurally made painting-like textures, for training an arbitrary-style network on more
"paintings" than the public-domain ones at hand (README: "Any painting").

Each texture is a pure function of its kind and number, over a palette of 3 to 7 colours around a
random hue scheme. Two kinds:
- strokes: a ground and brush strokes that follow a smooth random flow field (long or short, thin or
  broad), sometimes dots, sometimes dark outlines, sometimes a soft blur;
- shapes: flat colour regions, most with dark outlines: mosaic cells, overlapping polygons, circles
  and rings, or wavy bands (what posters, stained glass, Cubist and Expressionist paintings share,
  and strokes alone never show the network).
They are ours, so a model trained on them can be shipped.

    python tools/textures.py OUT_DIR [--kind strokes|shapes] [--count 300] [--first 0] [--size 512]
"""
from __future__ import annotations

import argparse
import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def palette(r: np.random.Generator) -> list[tuple[int, int, int]]:
    base = r.random()
    scheme = r.choice(["analogous", "complementary", "triad", "free"])
    hues = {"analogous": [base + d for d in r.uniform(-0.08, 0.08, 5)],
            "complementary": [base + 0.5 * r.integers(0, 2) + r.uniform(-0.04, 0.04) for _ in range(5)],
            "triad": [base + r.integers(0, 3) / 3 + r.uniform(-0.03, 0.03) for _ in range(5)],
            "free": list(r.random(5))}[scheme]
    k = int(r.integers(3, 8))
    sat, val = r.uniform(0.15, 1.0), r.uniform(0.35, 1.0)
    colours = []
    for i in range(k):
        h = hues[i % len(hues)] % 1.0
        s = float(np.clip(sat + r.normal(0, 0.2), 0, 1))
        v = float(np.clip(val + r.normal(0, 0.25), 0.05, 1))
        colours.append(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)))
    return colours


def flow(r: np.random.Generator):
    """A smooth angle field: a few random sinusoids."""
    waves = [(r.normal(0, 3, 2), r.uniform(0, 2 * math.pi), r.uniform(0.5, 2)) for _ in range(3)]
    base = r.uniform(0, math.pi)

    def angle(x: float, y: float) -> float:
        return base + sum(a * math.sin(k[0] * x + k[1] * y + p) for k, p, a in waves)
    return angle


def texture(n: int, size: int = 512) -> Image.Image:
    r = np.random.default_rng(n)
    colours = palette(r)
    ground = colours[int(r.integers(len(colours)))]
    im = Image.new("RGB", (size, size), ground)
    d = ImageDraw.Draw(im)
    angle = flow(r)
    width = float(r.choice([2, 4, 8, 14, 24]))
    length = float(r.choice([6, 15, 30, 60]))
    curved = r.random() < 0.6
    for _ in range(int(r.integers(400, 2500) * (8 / max(width, 4)) ** 0.5)):
        x, y = r.uniform(0, size, 2)
        c = np.array(colours[int(r.integers(len(colours)))]) + r.normal(0, 12, 3)
        c = tuple(int(v) for v in np.clip(c, 0, 255))
        w = max(1, int(width * r.uniform(0.5, 1.5)))
        pts = [(x, y)]
        for _ in range(6 if curved else 1):
            a = angle(x / size, y / size)
            step = length * r.uniform(0.6, 1.4) / (6 if curved else 1)
            x, y = x + step * math.cos(a), y + step * math.sin(a)
            pts.append((x, y))
        d.line(pts, fill=c, width=w, joint="curve")
    if r.random() < 0.3:  # dots
        for _ in range(int(r.integers(100, 800))):
            x, y = r.uniform(0, size, 2)
            rad = r.uniform(1, width)
            c = colours[int(r.integers(len(colours)))]
            d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=c)
    if r.random() < 0.3:  # dark outlines along the flow
        dark = tuple(int(v * 0.2) for v in colours[0])
        for _ in range(int(r.integers(20, 120))):
            x, y = r.uniform(0, size, 2)
            pts = [(x, y)]
            for _ in range(12):
                a = angle(x / size, y / size) + math.pi / 2
                x, y = x + 10 * math.cos(a), y + 10 * math.sin(a)
                pts.append((x, y))
            d.line(pts, fill=dark, width=int(r.integers(1, 5)), joint="curve")
    if r.random() < 0.25:
        im = im.filter(ImageFilter.GaussianBlur(r.uniform(0.5, 2.5)))
    return im


def _outlined(labels: np.ndarray, colours: np.ndarray, dark: tuple, width: int) -> Image.Image:
    """A label image (H, W) painted with one colour per label, with `width`-pixel dark lines (0: none)
    where labels meet."""
    im = Image.fromarray(colours[labels].astype(np.uint8))
    if width:
        edge = np.zeros(labels.shape, bool)
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        edge[:-1] |= labels[:-1] != labels[1:]
        mask = Image.fromarray(edge.astype(np.uint8) * 255)
        if width > 1:
            mask = mask.filter(ImageFilter.MaxFilter(width | 1))
        im.paste(dark, mask=mask)
    return im


def shapes(n: int, size: int = 512) -> Image.Image:
    r = np.random.default_rng(1_000_003 + n)  # a stream of its own: shapes n and strokes n are unrelated
    colours = palette(r)
    jitter = lambda k: np.clip(np.array([colours[i] for i in r.integers(len(colours), size=k)])  # noqa: E731
                               + r.normal(0, 10, (k, 3)), 0, 255)
    dark = tuple(int(v * 0.15) for v in colours[int(r.integers(len(colours)))])
    width = int(r.choice([0, 1, 2, 3, 5, 8]))
    kind = r.choice(["cells", "polygons", "circles", "bands"])
    if kind == "cells":  # a mosaic: the nearest of k random points
        k = int(r.integers(15, 500))
        points = r.uniform(0, size, (k, 2))
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        labels = np.empty((size, size), np.int64)
        for top in range(0, size, 32):
            p = np.stack([ys[top:top + 32], xs[top:top + 32]], -1)[..., None, :]
            labels[top:top + 32] = ((p - points) ** 2).sum(-1).argmin(-1)
        im = _outlined(labels, jitter(k), dark, width)
    elif kind == "bands":  # wavy parallel bands of colour
        angle = flow(r)
        ys, xs = np.mgrid[0:size, 0:size] / size
        wave = np.vectorize(angle)(xs, ys)
        band = float(r.choice([8, 16, 30, 60]))
        labels = np.floor((ys * size + 0.15 * size * np.sin(wave)) / band).astype(np.int64)
        labels -= labels.min()
        im = _outlined(labels, jitter(int(labels.max()) + 1), dark, min(width, int(band) // 4))
    else:  # overlapping polygons or circles (some as concentric rings), each with an outline
        im = Image.new("RGB", (size, size), colours[int(r.integers(len(colours)))])
        d = ImageDraw.Draw(im)
        big = float(r.choice([20, 50, 100, 200]))
        for c in jitter(int(r.integers(30, 400) * (50 / big))):
            x, y = r.uniform(0, size, 2)
            rad = big * r.uniform(0.3, 1.2)
            fill = tuple(int(v) for v in c)
            if kind == "polygons":
                m = int(r.integers(3, 7))
                ang = np.sort(r.uniform(0, 2 * math.pi, m))
                pts = [(x + rad * math.cos(t), y + rad * math.sin(t)) for t in ang]
                d.polygon(pts, fill=fill, outline=dark if width else None, width=max(width, 1))
            else:
                rings = int(r.integers(1, 5)) if r.random() < 0.5 else 1
                for j in range(rings):
                    q = rad * (1 - j / rings)
                    f = fill if j % 2 == 0 else colours[int(r.integers(len(colours)))]
                    d.ellipse([x - q, y - q, x + q, y + q], fill=f, outline=dark if width else None,
                              width=max(width, 1))
    if r.random() < 0.3:  # a painted, not printed, surface: fine speckle
        a = np.asarray(im).astype(np.float32) + r.normal(0, 8, (size, size, 1))
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if r.random() < 0.2:
        im = im.filter(ImageFilter.GaussianBlur(r.uniform(0.5, 2)))
    return im


KINDS = {"strokes": texture, "shapes": shapes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--first", type=int, default=0, help="number of the first texture")
    ap.add_argument("--kind", choices=list(KINDS), default="strokes")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    prefix = "texture" if a.kind == "strokes" else a.kind  # strokes keep the file names models were trained on
    for n in range(a.first, a.first + a.count):
        KINDS[a.kind](n, a.size).save(a.out / f"{prefix}_{n:04d}.png")
    print(f"wrote {a.count} textures to {a.out}")


if __name__ == "__main__":
    main()

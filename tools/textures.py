"""Procedurally made painting-like textures, for training an arbitrary-style network on more
"paintings" than the public-domain ones at hand (README: "Any painting").

Each texture is a pure function of its number: a palette (3 to 7 colours around a random hue
scheme), a ground, and brush strokes that follow a smooth random flow field (long or short, thin
or broad), sometimes dots, sometimes dark outlines, sometimes a soft blur. They are ours, so a model
trained on them can be shipped.

    python tools/textures.py OUT_DIR [--count 300] [--size 512]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--first", type=int, default=0, help="number of the first texture")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    for n in range(a.first, a.first + a.count):
        texture(n, a.size).save(a.out / f"texture_{n:04d}.png")
    print(f"wrote {a.count} textures to {a.out}")


if __name__ == "__main__":
    main()

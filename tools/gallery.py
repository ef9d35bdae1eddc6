"""The README's gallery, regenerated from the shipped models and the credited example photos:

    python tools/gallery.py [--out examples] [--size 640] [--paintings A B C D]

writes, into --out:
  gallery_styles.jpg     every example photo through every shipped single-style model
  gallery_strength.jpg   the default model at strengths 0, 0.25, 0.5, 0.75, 1 (`--style-weight`)
  gallery_mix.jpg        the shipped multi-style model: two styles mixed in steps, then a mask
                         (left half one style, right half the other)
  gallery_multi.jpg      every style of the shipped multi-style model (at half --size)
  gallery_arbitrary.jpg  the any-painting model (settings.DEFAULT_ADAPTIVE_MODEL) on textures made by tools/textures.py (ours, so
                         the picture can be shipped), each texture at the head of its column

With --paintings A B C D it also writes ../docs/arbitrary_examples.jpg: every example photo through
those paintings (the model card's held-out ones), the outputs only, since the paintings are not ours
to ship; with --optimize STEPS as well, ../docs/optimize_examples.jpg: per painting, the arbitrary
model's output beside `stylize apply --optimize STEPS`'s (minutes on a CPU).

Photos are scaled to --size px (longest side) first, so strokes look as they do on a photo of that
size. Everything here is the library's public API; nothing is tuned per picture.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from stylize.models import modelfile
from stylize.images import load_image, save_pil, to_pil
from stylize.apply.engines.pytorch import load_stylizer
from stylize.settings import DEFAULT_ADAPTIVE_MODEL, DEFAULT_MODEL
from stylize.apply.sheet import tile_grid

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
# tools/textures.py kinds and numbers; the arbitrary model trained on numbers 0-23 of each kind only
TEXTURES = [("strokes", 103), ("strokes", 117), ("shapes", 102), ("shapes", 108)]
MIX = ("starry_night", "composition_vii")  # two palettes far apart, for the mix and the mask


def shipped() -> list[dict]:
    return [modelfile.describe(modelfile.load(p)) for p in modelfile.models_in(modelfile.SHIPPED_DIR)]


def styles_sheet(photos, models) -> Image.Image:
    singles = [m for m in models if m["kind"] == "transformer" and len(m["styles"]) == 1 and m["norm"] != "adaptive"]
    singles.sort(key=lambda m: (m["name"] != DEFAULT_MODEL, m["name"]))
    stylizers = [load_stylizer(m["path"], "cpu") for m in singles]
    return tile_grid([[(to_pil(x), name)] + [(to_pil(s.run(x, s.condition(None), 1.0)), m["name"])
                                             for s, m in zip(stylizers, singles)] for name, x in photos])


def strength_sheet(name, x) -> Image.Image:
    s = load_stylizer(DEFAULT_MODEL, "cpu")
    return tile_grid([[(to_pil(x), name)] + [(to_pil(s.run(x, s.condition(None), k)), f"{DEFAULT_MODEL} @ {k:g}")
                                              for k in (0.0, 0.25, 0.5, 0.75, 1.0)]])


def multi_stylizer(models):
    multi = [m for m in models if m["kind"] == "transformer" and len(m["styles"]) > 1]
    return load_stylizer(multi[0]["path"], "cpu") if multi else None


def mix_sheet(name, x, models) -> Image.Image | None:
    """Two styles of the multi-style model mixed in steps, then a mask (left one, right the other)."""
    if (s := multi_stylizer(models)) is None:
        return None
    a, b = MIX if all(m in s.styles for m in MIX) else s.styles[:2]
    row = [(to_pil(x), name)]
    for w in (1.0, 0.75, 0.5, 0.25, 0.0):
        row.append((to_pil(s.run(x, s.condition([f"{a}={w}", f"{b}={1 - w}"]), 1.0)), f"{a} {w:g} / {b} {1 - w:g}"))
    mask = torch.zeros(x.shape[1:])
    mask[:, : x.shape[2] // 2] = 1
    row.append((to_pil(s.run(x, s.condition([a, b], mask), 1.0)), f"mask: {a} | {b}"))
    return tile_grid([row])


def multi_sheet(name, x, models) -> Image.Image | None:
    """Every style of the multi-style model, six to a row, after the photo."""
    if (s := multi_stylizer(models)) is None:
        return None
    tiles = [(to_pil(s.run(x, s.condition([style]), 1.0)), style) for style in s.styles]
    rows = [tiles[i:i + 6] for i in range(0, len(tiles), 6)]
    return tile_grid([[(to_pil(x), name)] + rows[0]] + [[None] + r for r in rows[1:]])


def arbitrary_sheet(photos, size: int) -> Image.Image:
    sys.path.insert(0, str(ROOT / "tools"))
    from textures import KINDS

    s = load_stylizer(DEFAULT_ADAPTIVE_MODEL, "cpu")
    paintings, labels = [], [f"{kind} {n}" for kind, n in TEXTURES]
    for kind, n in TEXTURES:
        path = ROOT / "build" / f"{kind}_{n}.png"
        path.parent.mkdir(exist_ok=True)
        KINDS[kind](n, 512).save(path)
        paintings.append(path)
    head = [None] + [(Image.open(p).convert("RGB"), label) for label, p in zip(labels, paintings)]
    rows = [[(to_pil(x), name)] + [(to_pil(s.run(x, s.condition([str(p)]), 1.0)), label)
                                   for label, p in zip(labels, paintings)] for name, x in photos]
    w, h = rows[0][0][0].size
    head = [None] + [(im.resize((w, h), Image.Resampling.LANCZOS) if im.size != (w, h) else im, label)
                     for im, label in (t for t in head[1:])]
    return tile_grid([head] + rows)


def examples_sheet(photos, paintings: list[Path]) -> Image.Image:
    s = load_stylizer(DEFAULT_ADAPTIVE_MODEL, "cpu")
    return tile_grid([[(to_pil(x), name)] + [(to_pil(s.run(x, s.condition([str(p)]), 1.0)), p.stem) for p in paintings]
                      for name, x in photos])


def optimize_sheet(photos, paintings: list[Path], steps: int) -> Image.Image:
    from stylize.apply.engines.optimize import Optimizer, painting_for

    s = load_stylizer(DEFAULT_ADAPTIVE_MODEL, "cpu")
    rows = [[(to_pil(x), name)] for name, x in photos]
    for p in paintings:
        with torch.enable_grad():
            opt = Optimizer(painting_for(str(p)))
            for row, (name, x) in zip(rows, photos):
                row += [(to_pil(s.run(x, s.condition([str(p)]), 1.0)), f"{p.stem}: model"),
                        (to_pil(opt(x, steps)), f"--optimize {steps}")]
    return tile_grid(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples")
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--paintings", nargs="*", type=Path, default=[])
    ap.add_argument("--optimize", type=int, default=0, metavar="STEPS")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    photos = [(p, load_image(ROOT / "examples" / p, max_size=args.size)[0]) for p in PHOTOS]
    models = shipped()
    sheets = {"gallery_styles.jpg": styles_sheet(photos, models),
              "gallery_strength.jpg": strength_sheet(*photos[0]),
              "gallery_mix.jpg": mix_sheet(*photos[0], models),
              "gallery_multi.jpg": multi_sheet(photos[2][0], load_image(ROOT / "examples" / photos[2][0],
                                                                          max_size=args.size // 2)[0], models),
              "gallery_arbitrary.jpg": arbitrary_sheet(photos, args.size)}
    for name, sheet in sheets.items():
        if sheet is None:
            print(f"{name}: skipped (no shipped multi-style model)")
            continue
        print(f"wrote {save_pil(sheet, args.out / name, quality=90)}")
    if args.paintings:
        sheet = examples_sheet(photos, args.paintings)
        print(f"wrote {save_pil(sheet, ROOT / 'docs' / 'arbitrary_examples.jpg', quality=90)}")
    if args.paintings and args.optimize:
        sheet = optimize_sheet(photos, args.paintings, args.optimize)
        print(f"wrote {save_pil(sheet, ROOT / 'docs' / 'optimize_examples.jpg', quality=90)}")


if __name__ == "__main__":
    main()

"""AdaIN on the shipped WCT model's decoders (issue 30: "an AdaIN model ships, if a decoder trained
this way makes it worth shipping").

AdaIN (Huang and Belongie 2017) is WCT's diagonal case: each channel of the photo's features is
given the painting's mean and standard deviation, and the correlations between channels are left
as they are. So the shipped `wct` model's encoder, levels, strengths and decoders paint AdaIN
pictures when its two matrices are made diagonal: the photo's whitening (models/wct.inverse_sqrt)
and the painting's colouring (models/wct.colouring). This study does exactly that, through the
PyTorch WCT engine, and nothing else changes.

    python studies/adain_decoders.py PAIRS.tsv [--out-dir runs/adain_decoders]

PAIRS.tsv: lines "painting<TAB>photo"; writes OUT_DIR/adain/<photo>.png and OUT_DIR/wct/<photo>.png
(each as `stylize apply photo --style painting --model wct --runtime torch` would, the first with the
diagonal transform), and OUT_DIR/sheet.jpg: photo, painting, WCT, AdaIN per row. The panel's result
is in weights/README.md (wct's section, "AdaIN on these decoders").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from stylize.models import wct  # noqa: E402
from stylize.models.whitening import EPS  # noqa: E402


def diagonal_inverse_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """AdaIN's whitening: each channel divided by its own standard deviation."""
    return torch.diag(torch.rsqrt(torch.diagonal(cov) + EPS))


def diagonal_colouring(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaIN's colouring: the painting's per-channel standard deviation, no correlations."""
    return mean, torch.diag((torch.diagonal(cov) + EPS).sqrt())


def paint(pairs: list[tuple[Path, Path]], out: Path, adain: bool) -> list[Path]:
    from stylize.cli import app  # the CLI, so each picture is exactly what apply writes

    saved = wct.inverse_sqrt, wct.colouring
    if adain:
        wct.inverse_sqrt, wct.colouring = diagonal_inverse_sqrt, diagonal_colouring
    try:
        folder = out / ("adain" if adain else "wct")
        folder.mkdir(parents=True, exist_ok=True)
        made = []
        for painting, photo in pairs:
            target = folder / f"{photo.stem}.png"
            if not target.exists():
                app(["apply", str(photo), "--style", str(painting), "--model", "wct", "--runtime", "torch",
                     "--out", str(target)], standalone_mode=False)
            made.append(target)
        return made
    finally:
        wct.inverse_sqrt, wct.colouring = saved


def sheet(rows: list[list[Path]], out: Path, height: int = 200) -> None:
    names = ["photo", "painting", "WCT (shipped)", "AdaIN, same decoders"]
    tiles = [[Image.open(p).convert("RGB") for p in row] for row in rows]
    widths = [max(round(t[i].width * height / t[i].height) for t in tiles) for i in range(len(names))]
    canvas = Image.new("RGB", (sum(widths) + 4 * len(names), 20 + len(rows) * (height + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, name in enumerate(names):
        draw.text((x + 4, 4), name, fill="black")
        for r, t in enumerate(tiles):
            im = t[i].resize((round(t[i].width * height / t[i].height), height), Image.LANCZOS)
            canvas.paste(im, (x, 20 + r * (height + 4)))
        x += widths[i] + 4
    canvas.save(out, quality=85)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", type=Path, help='lines "painting<TAB>photo"')
    ap.add_argument("--out-dir", type=Path, default=Path("runs/adain_decoders"))
    args = ap.parse_args(argv)
    out = args.out_dir
    pairs = [tuple(Path(f) for f in line.split("\t")[:2]) for line in args.pairs.read_text().splitlines() if line.strip()]
    ours = paint(pairs, out, adain=False)
    adain = paint(pairs, out, adain=True)
    sheet([[photo, painting, a, b] for (painting, photo), a, b in zip(pairs, ours, adain)], out / "sheet.jpg")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Held-out quality against training time: is a training run finished?

Scores every checkpoint a run kept (RUN_DIR/keep_*.pt, or any model files given) on photos it never
trained on, with ../shared/tools/quality.py (style_match and structure; see bench/peer.py), and plots
both against the wall time of training at that checkpoint. A run is finished when the curves are
flat and its samples stop changing.

  python bench/curve.py --style-image starry.jpg --photos P [P ...] --out curve.png MODEL [MODEL ...]

Photos are stylized at full size on the CPU with PyTorch (the same network ONNX Runtime runs).
Writes the plot, a CSV beside it, and the last model's outputs as OUT-stem_PHOTO.png.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import QUALITY, load_quality  # noqa: E402

from stylize.models import modelfile  # noqa: E402
from stylize.images import load_image, save_image  # noqa: E402
from stylize.apply.engines.pytorch import Stylizer  # noqa: E402


def plot(rows: list[dict], path: Path, photos: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    t = [float(r["minutes"]) for r in rows]
    for key in ("style_match", "structure"):
        ax.plot(t, [float(r[key]) for r in rows], marker="o", label=key)
    ax.set_xlabel("training wall time, minutes")
    ax.set_ylim(min([0.0] + [float(r["style_match"]) for r in rows]) - 0.05, 1)
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    ax.set_title(f"held out: {photos} photos")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--style-image", type=Path, required=True)
    ap.add_argument("--photos", nargs="+", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the plot (PNG); the CSV goes beside it")
    ap.add_argument("--quality", type=Path, default=QUALITY)
    args = ap.parse_args(argv)
    score = load_quality(args.quality)
    photos = [load_image(p)[0] for p in args.photos]
    tmp = args.out.with_suffix("")
    rows = []
    for model in args.models:
        rec = modelfile.load(model)
        history = rec.get("history") or []
        seconds = history[-1]["seconds"] if history else float("nan")
        s = Stylizer(rec, device="cpu")
        figs = []
        for path, x in zip(args.photos, photos):
            with torch.no_grad():
                y = s(x)
            out = save_image(y, f"{tmp}_{path.stem}.png")
            figs.append(score(str(path), str(args.style_image), str(out)))
        row = {"model": model.name, "iteration": rec.get("iteration"), "minutes": round(seconds / 60, 2),
               "style_match": round(statistics.mean(f["style_match"] for f in figs), 4),
               "structure": round(statistics.mean(f["structure"] for f in figs), 4)}
        rows.append(row)
        print(row, flush=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    plot(rows, args.out, len(photos))
    return rows


if __name__ == "__main__":
    main()

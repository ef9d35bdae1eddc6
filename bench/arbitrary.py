"""Any painting: stylize's arbitrary-style model against the peer's style-image mode, side by side on
the same photos and paintings (held out: neither trained nor tuned on), with quality figures, how
much the output changes from painting to painting, a picture grid, and speed.

  python bench/arbitrary.py --photos P [P ...] --paintings S [S ...] [--model arbitrary | --optimize STEPS]
         [--peer "../shared/tools/peer.sh stylize {photo} --style-image {style} -o {out} --device cpu"]
         [--out-dir bench/out/arbitrary] [--speed-photo P --runs 5 [--pin CPUS]] [--no-peer] [--json F]

Both tools write PNG: stylize at the photo's size, the peer at most 1024 px on the longer side (it
stylizes at 384 px and upscales; stylize works at the model's work size, scale.py). The speed photo
is 1024x768, so there both write the same size. Quality: ../shared/tools/quality.py (style_match, structure) per photo and painting.
"Follows the painting": for each photo, the mean absolute difference (0-255) between the outputs for
every two paintings; the issue's yardstick was 14 for the old AdaIN preview against 53 for the peer.
The same for the marks alone (mark_difference): luminance less its blur, both tools' outputs at 384 px.
The grid `grid.jpg` has a row per photo: the photo, then per painting stylize's output and the peer's,
under a first row of the paintings. Speed: whole processes at the --speed-photo's size, alternating
the tools, median of --runs after a warm-up (which fills stylize's ONNX cache).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PEER_SH, QUALITY, ROOT, add_pin_option, load_quality, pinned, timed  # noqa: E402

PEER = f"{PEER_SH} stylize {{photo}} --style-image {{style}} -o {{out}} --device cpu"


def ours(photo: Path, style: Path, out: Path, model: str, optimize: int = 0) -> list[str]:
    how = ["--optimize", str(optimize)] if optimize else ["--model", model]  # --optimize: no model
    return [sys.executable, "-m", "stylize", "apply", str(photo), *how, "--style", str(style), "--out", str(out)]


def differences(outputs: list[Path]) -> float:
    """Mean |a - b| (0-255) over every pair of outputs (same photo, different paintings)."""
    ims = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in outputs]
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(ims, 2)]))


def marks(path: Path, side: int = 384) -> np.ndarray:
    """The output's marks without its colours: luminance less its blur (radius 2), at `side` px (the
    peer's working size, so its upscaled softness neither helps nor hurts it)."""
    from PIL import ImageFilter

    im = Image.open(path).convert("L")
    im.thumbnail((side, side), Image.LANCZOS)
    return (np.asarray(im, dtype=np.float32)
            - np.asarray(im.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32))


def mark_differences(outputs: list[Path]) -> float:
    """Mean |a - b| (0-255) of the marks (see marks) over every pair of outputs (same photo, different
    paintings): how much the brushwork, not the palette, follows the painting."""
    ims = [marks(p) for p in outputs]
    return float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(ims, 2)]))


def grid(photos: list[Path], paintings: list[Path], cells: dict, path: Path, side: int = 200) -> None:
    def tile(p: Path) -> Image.Image:
        im = Image.open(p).convert("RGB")
        im.thumbnail((side, side), Image.LANCZOS)
        canvas = Image.new("RGB", (side, side), "white")
        canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        return canvas

    tools = sorted({t for (_, _, t) in cells})
    cols = 1 + len(paintings) * len(tools)
    sheet = Image.new("RGB", (cols * (side + 4), (len(photos) + 1) * (side + 4)), "white")
    for j, s in enumerate(paintings):
        sheet.paste(tile(s), ((1 + j * len(tools)) * (side + 4), 0))
    for i, photo in enumerate(photos, 1):
        sheet.paste(tile(photo), (0, i * (side + 4)))
        for j, s in enumerate(paintings):
            for k, t in enumerate(tools):
                sheet.paste(tile(cells[photo, s, t]), ((1 + j * len(tools) + k) * (side + 4), i * (side + 4)))
    sheet.save(path, quality=88)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", nargs="+", type=Path, required=True)
    ap.add_argument("--paintings", nargs="+", type=Path, required=True)
    ap.add_argument("--model", default="arbitrary")
    ap.add_argument("--peer", default=PEER, help="command template with {photo}, {style} and {out}")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--quality", type=Path, default=QUALITY)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out" / "arbitrary")
    ap.add_argument("--optimize", type=int, default=0, metavar="STEPS",
                    help="stylize apply --optimize STEPS (no model) instead of --model")
    ap.add_argument("--speed-photo", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    add_pin_option(ap)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    score = load_quality(args.quality)
    tools = ["stylize"] + ([] if args.no_peer else ["peer"])
    cells: dict = {}
    for s in args.paintings:
        for p in args.photos:
            cells[p, s, "stylize"] = out = args.out_dir / "stylize" / s.stem / f"{p.stem}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            timed(ours(p, s, out, args.model, args.optimize))
            if "peer" in tools:  # the peer's outputs do not depend on our model: kept between runs
                out = args.out_dir / "peer" / s.stem / f"{p.stem}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                if not out.exists():
                    timed(args.peer.format(photo=p, style=s, out=out))
                cells[p, s, "peer"] = out
    report: dict = {"model": f"--optimize {args.optimize}" if args.optimize else args.model,
                    "photos": [p.name for p in args.photos],
                    "paintings": [s.name for s in args.paintings], "figures": {}}
    for t in tools:
        figs = [score(str(p), str(s), str(cells[p, s, t])) for p in args.photos for s in args.paintings]
        per_painting = {s.stem: {k: round(statistics.mean(score(str(p), str(s), str(cells[p, s, t]))[k]
                                                          for p in args.photos), 4) for k in ("style_match", "structure")}
                        for s in args.paintings}
        report["figures"][t] = {
            "style_match": round(statistics.mean(f["style_match"] for f in figs), 4),
            "structure": round(statistics.mean(f["structure"] for f in figs), 4),
            "painting_to_painting_difference": round(statistics.mean(
                differences([cells[p, s, t] for s in args.paintings]) for p in args.photos), 2),
            "mark_difference": round(statistics.mean(
                mark_differences([cells[p, s, t] for s in args.paintings]) for p in args.photos), 2),
            "per_painting": per_painting,
        }
    grid(args.photos, args.paintings, cells, args.out_dir / "grid.jpg")
    report["picture"] = str(args.out_dir / "grid.jpg")
    if args.speed_photo:
        times = {t: [] for t in tools}
        style = args.paintings[0]
        with tempfile.TemporaryDirectory() as tmp, pinned(args.pin):
            for i in range(args.runs + 1):
                for t in tools:
                    out = Path(tmp) / f"{t}_{i}.png"
                    cmd = (ours(args.speed_photo, style, out, args.model, args.optimize) if t == "stylize"
                           else args.peer.format(photo=args.speed_photo, style=style, out=out))
                    s, _ = timed(cmd)
                    if i:
                        times[t].append(s)
        w, h = Image.open(args.speed_photo).size
        report["speed"] = {t: {"median_s": round(statistics.median(v), 3)} for t, v in times.items()}
        report["speed"]["photo"] = f"{w}x{h}, both writing PNG at that size"
        report["speed"]["cpus"] = args.pin or "all"
        if "peer" in times:
            report["speed"]["ratio_stylize_over_peer"] = round(
                statistics.median(times["stylize"]) / statistics.median(times["peer"]), 3)
    print(json.dumps({k: v for k, v in report.items() if k not in ("photos", "paintings")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

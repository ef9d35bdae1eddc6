"""How a model should apply: the network's strength at --style-weight 1, and how much of the
painting's palette the output then takes (mixing.calibrated, palette.recolour).

A network trained for minutes on a CPU can overshoot (its marks bury the photo at full strength) or
fall short of the painting's palette. This grid measures, on photos (and, for the arbitrary model,
paintings) that are neither trained on nor held out for the model card, every pair of a network
strength and a palette amount: quality.py's style_match and structure, and a picture. The chosen
pair is written into a copy of the model file ("apply"), which `stylize apply` then follows.

For the arbitrary-style model, --paintings are any paintings (given at apply time); for a trained
model they are its own paintings, one per style in the model's order, whose colours the file keeps.

  python studies/calibration.py --model weights/arbitrary.pt --photos P [P ...] --paintings S [S ...] \
      --out-dir runs/calibration [--strengths 1,0.8,0.6,0.5,0.4] [--amounts 0,0.5,0.75,1]
  python studies/calibration.py --model MODEL --set 0.5 1.0 [--work-size 480] --write calibrated.pt [--paintings S ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from bench.common import QUALITY, load_quality, side_by_side  # noqa: E402
from stylize.models import modelfile
from stylize.apply import palette  # noqa: E402
from stylize.images import save_image  # noqa: E402
from stylize.images import load_image  # noqa: E402
from stylize.apply.engines.pytorch import ArbitraryStylizer, Stylizer  # noqa: E402


def painting_colours(record: dict, paintings: list[Path]) -> list:
    """A trained model's styles' colour statistics, from its paintings at its training style size."""
    if len(paintings) != len(record["styles"]):
        raise SystemExit(f"give one painting per style ({len(record['styles'])}: {', '.join(record['styles'])})")
    size = record.get("train", {}).get("style_size") or 1024
    return [palette.stats(load_image(p, size)[0].numpy()) for p in paintings]


def grid(args) -> dict:
    score = load_quality(args.quality)
    record = modelfile.load(args.model)
    record.pop("apply", None)  # the network alone: this grid is what chooses its calibration
    if args.work_size:  # ... at the scale it will apply at (scale.py)
        record["apply"] = {"work_size": args.work_size}
    arbitrary = bool(record["net"].get("style_dim"))
    s = ArbitraryStylizer(record, "cpu") if arbitrary else Stylizer(record, "cpu")
    own = None if arbitrary else painting_colours(record, args.paintings)
    strengths = [float(v) for v in args.strengths.split(",")]
    amounts = [float(v) for v in args.amounts.split(",")]
    results: dict[str, list[dict]] = {}
    rows = []
    for k, painting in enumerate(args.paintings):
        for photo in args.photos:
            x, _ = s.load(photo)
            cond = s.condition([str(painting)] if arbitrary else [record["styles"][k]], None, x)
            target = palette.stats(s.painting(str(painting)).numpy()) if arbitrary else own[k]
            row = [photo]
            for strength in strengths:
                with torch.inference_mode():
                    y = s.run(x, cond, strength).numpy()
                for amount in amounts:
                    key = f"strength {strength:g}, palette {amount:g}"
                    out = args.out_dir / f"s{strength:g}_p{amount:g}" / painting.stem / f"{photo.stem}.png"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    save_image(palette.recolour(y, [target], [1.0], amount), out)
                    results.setdefault(key, []).append(score(str(photo), str(painting), str(out)))
                    if amount == amounts[-1]:
                        row.append(out)
            rows.append(row + [painting])
            print(painting.stem, photo.stem, flush=True)
    table = {k: {m: round(statistics.mean(r[m] for r in rs if r[m] == r[m]), 4) for m in ("style_match", "structure")}
             for k, rs in results.items()}
    side_by_side(rows, args.out_dir / "sheet.jpg", height=200)
    report = {"model": str(args.model), "photos": [p.name for p in args.photos],
              "paintings": [p.name for p in args.paintings], "table": table,
              "sheet": str(args.out_dir / "sheet.jpg") + f" (rows: photo, strengths {args.strengths} at palette "
                                                        f"{amounts[-1]:g}, painting)"}
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=1))
    for k, v in table.items():
        print(f"{k:28s} style_match {v['style_match']:.3f}  structure {v['structure']:.3f}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--photos", nargs="+", type=Path, default=[])
    ap.add_argument("--paintings", nargs="+", type=Path, default=[])
    ap.add_argument("--strengths", default="1,0.8,0.6,0.5,0.4")
    ap.add_argument("--amounts", default="0,0.5,0.75,1")
    ap.add_argument("--quality", type=Path, default=QUALITY)
    ap.add_argument("--out-dir", type=Path, default=Path("runs/calibration"))
    ap.add_argument("--set", nargs=2, type=float, metavar=("FULL_STRENGTH", "PALETTE"))
    ap.add_argument("--write", type=Path, help="with --set: the calibrated copy of --model")
    ap.add_argument("--work-size", type=int, default=0, help="shorter side the network works at on larger "
                    "photos (stylize/apply/scale.py; 0: full size); with --set, written into the file")
    args = ap.parse_args(argv)
    if args.set:
        if not args.write:
            ap.error("--set needs --write FILE")
        record = modelfile.load(args.model)
        record["apply"] = {"full_strength": args.set[0], "palette": args.set[1],
                           **({"work_size": args.work_size} if args.work_size else {})}
        if not record["net"].get("style_dim"):  # a trained model keeps its paintings' colours
            record["apply"]["colours"] = [palette.as_record(c) for c in painting_colours(record, args.paintings)]
        print(f"wrote {modelfile.save(record, args.write)}")
        return
    if not args.photos or not args.paintings:
        ap.error("give --photos and --paintings (or --set with --write)")
    grid(args)


if __name__ == "__main__":
    main()

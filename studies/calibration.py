"""How a model should apply: the network's strength at --style-weight 1, and how much of the
painting's palette the output then takes (recipe.calibrated, palette.recolour).

A network trained for minutes on a CPU can overshoot (its marks bury the photo at full strength) or
fall short of the painting's palette. This grid (stylize/apply/calibrate.py, what `stylize
calibrate` runs) measures, on photos (and, for the arbitrary model, paintings) that are neither
trained on nor held out for the model card, every pair of a network strength and a palette amount:
here with quality.py's style_match and structure (../shared/tools, the model card's scorer), and a
picture. The chosen pair is written into a copy of the model file ("apply", modelfile.APPLY), which
`stylize apply` then follows.

For the arbitrary-style model, --paintings are any paintings (given at apply time); for a trained
model they are its own paintings, one per style in the model's order, whose colours the file keeps.

  python studies/calibration.py --model weights/arbitrary.pt --photos P [P ...] --paintings S [S ...] \
      --out-dir runs/calibration [--strengths 1,0.8,0.6,0.5,0.4] [--amounts 0,0.5,0.75,1] [--write FILE]
  python studies/calibration.py --model MODEL --set 0.5 1.0 [--work-size 480] --write calibrated.safetensors [--paintings S ...]
(--write replaces FILE, the model itself included.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from bench.common import QUALITY, load_quality, side_by_side  # noqa: E402
from stylize.apply import calibrate, palette  # noqa: E402
from stylize.images import save_image  # noqa: E402
from stylize.models import modelfile  # noqa: E402


def grid(args) -> calibrate.Calibration:
    quality = load_quality(args.quality)
    scratch = args.out_dir / ".scoring.png"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    amounts = [float(v) for v in args.amounts.split(",")]
    rows: dict = {}

    def score(photo: Path, painting: Path, output) -> dict:  # quality.py reads files
        save_image(output, scratch)
        return quality(str(photo), str(painting), str(scratch))

    def progress(step: calibrate.Step) -> None:
        out = args.out_dir / f"s{step.strength:g}_p{step.amount:g}" / step.painting.stem / f"{step.photo.stem}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        save_image(step.output, out)
        if step.amount == amounts[-1]:
            rows.setdefault((step.painting, step.photo), []).append(out)
            if len(rows[step.painting, step.photo]) == 1:
                print(step.painting.stem, step.photo.stem, flush=True)

    result = calibrate.calibrate(args.model, args.photos, args.paintings, score=score, progress=progress,
                                 strengths=[float(v) for v in args.strengths.split(",")], amounts=amounts,
                                 work_size=args.work_size)
    scratch.unlink(missing_ok=True)
    side_by_side([[photo, *outs, painting] for (painting, photo), outs in rows.items()],
                 args.out_dir / "sheet.jpg", height=200)
    table = {f"strength {s:g}, palette {a:g}": v for (s, a), v in result.table.items()}
    report = {"model": str(args.model), "photos": [p.name for p in args.photos],
              "paintings": [p.name for p in args.paintings], "table": table,
              "chosen": {"full_strength": result.chosen[0], "palette": result.chosen[1],
                         "rule": f"the most style_match with structure >= {calibrate.MIN_STRUCTURE}"},
              "sheet": str(args.out_dir / "sheet.jpg") + f" (rows: photo, strengths {args.strengths} at palette "
                                                        f"{amounts[-1]:g}, painting)"}
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=1))
    for k, v in table.items():
        print(f"{k:28s} style_match {v['style_match']:.3f}  structure {v['structure']:.3f}")
    print(f"chosen: strength {result.chosen[0]:g}, palette {result.chosen[1]:g}")
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--photos", nargs="+", type=Path, default=[])
    ap.add_argument("--paintings", nargs="+", type=Path, default=[])
    ap.add_argument("--strengths", default=",".join(f"{v:g}" for v in calibrate.STRENGTHS))
    ap.add_argument("--amounts", default=",".join(f"{v:g}" for v in calibrate.AMOUNTS))
    ap.add_argument("--quality", type=Path, default=QUALITY)
    ap.add_argument("--out-dir", type=Path, default=Path("runs/calibration"))
    ap.add_argument("--set", nargs=2, type=float, metavar=("FULL_STRENGTH", "PALETTE"))
    ap.add_argument("--write", type=Path, help="the calibrated copy of --model (with --set: that pair; else the "
                    "grid's choice)")
    ap.add_argument("--work-size", type=int, default=calibrate.MODEL_WORK_SIZE,
                    help="shorter side the network works at on larger photos (stylize/apply/scale.py; 0: full "
                    "size; default: the model file's); with --set, written into the file")
    args = ap.parse_args(argv)
    if args.set:
        if not args.write:
            ap.error("--set needs --write FILE")
        record = modelfile.read_record(args.model)
        block = {"full_strength": args.set[0], "palette": args.set[1]}
        size = (record.get("apply") or {}).get("work_size", 0) if args.work_size < 0 else args.work_size
        block.update({"work_size": size} if size else {})
        if not record["net"].get("style_dim"):  # a trained model keeps its paintings' colours
            block["colours"] = [palette.as_record(c) for c in calibrate.painting_colours(record, args.paintings)]
        print(f"wrote {modelfile.write_apply(args.model, block, args.write, overwrite=True)}")
        return
    if not args.photos or not args.paintings:
        ap.error("give --photos and --paintings (or --set with --write)")
    result = grid(args)
    if args.write:
        print(f"wrote {modelfile.write_apply(args.model, result.apply, args.write, overwrite=True)}")


if __name__ == "__main__":
    main()

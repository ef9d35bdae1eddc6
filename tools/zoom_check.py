"""The blind 100% check of issue 29 ("no uniform hatching or repeated stamp at 100% zoom"): crops of
stylized pictures, unscaled, shuffled and labelled only by a random number, for judges who answer
one question of each; then the tally. The A/B preference panel is ../shared/tools/panel.py; this
is its companion for the zoom criterion (model card, "The zoom criterion, judged blind").

    python tools/zoom_check.py make LIST OUT_DIR [--key KEY.json] [--seed N]
        LIST: one picture a line, "label<TAB>path"; a label's part before "/" is its group
        (e.g. "udnie/chicago"). -> OUT_DIR/sheets/s00.png ... (six 400x300 centre crops a sheet,
        one picture pixel per screen pixel), OUT_DIR/brief.txt, and the key (default
        OUT_DIR/../KEY_<name>.json, outside the folder the judges see)
    python tools/zoom_check.py tally KEY.json ANSWERS.json...
        -> per group: crops called machine texture by a majority, the yes votes, the judges' notes

Each judge gets brief.txt (with its own answer file named) and the sheets, nothing else. The
count depends on the group of judges and on what else is on the sheets: compare candidates
judged by the same judges on the same sheets, never counts from different groups.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CROP = (400, 300)
PER_SHEET = 6
BRIEF = """You are checking pictures made by an image-stylization program (photos repainted in the manner of a painting) for one specific machine artifact. You judge by eye only.

The sheets are PNG files in {sheets} (s00.png, s01.png, ...). Each sheet holds up to six crops, each shown at 100% (one picture pixel per screen pixel, no resampling), each labelled with a number like #123. Open every sheet and look at every crop closely; zoom in if you can.

For each crop, answer one question: does it show a uniform hatching, fine grid, crosshatch or stripe pattern laid over the picture regardless of what is in it, OR the same small motif (a facet, block, dab, curl, chevron, comma, ripple) stamped over and over, so that a region looks tiled or wallpapered? Answer "yes" if you can see either, even faintly and even in one region only. Answer "no" if the marks vary in size, shape and direction the way a painter's would, or if the region is simply smooth, even if the picture is ugly, blurry or strange in other ways: those are not the question.

Do not try to find out how the pictures were made or which program made which; look at nothing but the sheets.

Write your answers as JSON to ANSWER_FILE, one entry per crop number, for example:
{{"123": {{"answer": "yes", "note": "same small facet stamped over the grass"}}, "456": {{"answer": "no", "note": ""}}}}
Every crop on every sheet must have an entry. Keep each note under 15 words: what you saw and where. When done, reply with the number of crops you answered and how many you called "yes".
"""


def centre_crop(path: Path) -> Image.Image:
    im = Image.open(path).convert("RGB")
    left, top = max((im.width - CROP[0]) // 2, 0), max((im.height - CROP[1]) // 2, 0)
    return im.crop((left, top, left + CROP[0], top + CROP[1]))  # no resampling; padded if smaller


def make(listing: Path, out: Path, key_path: Path | None, seed: int) -> None:
    rows = [line.rstrip("\n").split("\t") for line in listing.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    numbers = rng.sample(range(100, 1000), len(rows))
    order = rng.sample(range(len(rows)), len(rows))
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    font = ImageFont.load_default(size=28)
    w, h = CROP
    key = {}
    for s in range(0, len(order), PER_SHEET):
        sheet = Image.new("RGB", (2 * w + 30, 3 * (h + 40) + 10), "white")
        draw = ImageDraw.Draw(sheet)
        for j, i in enumerate(order[s:s + PER_SHEET]):
            label, path = rows[i]
            x, y = 10 + (j % 2) * (w + 10), 10 + (j // 2) * (h + 40)
            draw.text((x, y), f"#{numbers[i]}", fill="black", font=font)
            sheet.paste(centre_crop(Path(path)), (x, y + 34))
            key[str(numbers[i])] = label
        sheet.save(out / "sheets" / f"s{s // PER_SHEET:02d}.png")
    (out / "brief.txt").write_text(BRIEF.format(sheets=(out / "sheets").resolve()))
    key_path = key_path or out.resolve().parent / f"KEY_{out.name}.json"
    key_path.write_text(json.dumps(key, indent=1))
    print(f"{len(rows)} crops on {-(-len(rows) // PER_SHEET)} sheets in {out / 'sheets'}; key {key_path} (keep it from the judges)")


def tally(key_path: Path, answers: list[Path]) -> None:
    key = json.loads(key_path.read_text())
    votes, notes = defaultdict(list), defaultdict(list)
    for a in answers:
        for number, v in json.loads(a.read_text()).items():
            votes[number].append(str(v["answer"]).strip().lower().startswith("y"))
            if v.get("note"):
                notes[number].append(v["note"])
    groups = defaultdict(list)
    for number, label in key.items():
        groups[label.split("/")[0]].append(number)
    for group, numbers in sorted(groups.items()):
        called = [n for n in numbers if 2 * sum(votes[n]) > len(votes[n])]
        yes, total = sum(sum(votes[n]) for n in numbers), sum(len(votes[n]) for n in numbers)
        print(f"{group}: {len(called)}/{len(numbers)} crops called machine texture ({yes} of {total} votes yes)")
        for n in called:
            print(f"    {key[n]}: {' / '.join(notes[n])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("listing", type=Path)
    m.add_argument("out", type=Path)
    m.add_argument("--key", type=Path)
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tally")
    t.add_argument("key", type=Path)
    t.add_argument("answers", type=Path, nargs="+")
    a = p.parse_args()
    make(a.listing, a.out, a.key, a.seed) if a.command == "make" else tally(a.key, a.answers)


if __name__ == "__main__":
    main()

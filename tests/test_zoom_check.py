"""tools/zoom_check.py: the blind 100% check's sheets show each picture unscaled under a number only,
the key (kept apart) maps every number back, and the tally counts a crop called by a majority."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from conftest import load_script


def test_sheets_show_unscaled_crops_under_numbers_and_the_tally_takes_the_majority(tmp_path, capsys):
    zc = load_script("tools/zoom_check.py")
    rng = np.random.default_rng(0)
    pictures = {}
    for group in ("ours", "theirs"):
        for k in range(4):
            a = rng.integers(0, 256, (320, 420, 3), dtype=np.uint8)
            path = tmp_path / f"{group}_{k}.png"
            Image.fromarray(a).save(path)
            pictures[f"{group}/{k}"] = a
    listing = tmp_path / "list.tsv"
    listing.write_text("".join(f"{label}\t{tmp_path / label.replace('/', '_')}.png\n" for label in pictures))
    out = tmp_path / "judge_me"
    zc.make(listing, out, None, seed=3)

    assert sorted(p.name for p in out.iterdir()) == ["brief.txt", "sheets"]  # no key where judges look
    key = json.loads((tmp_path / "KEY_judge_me.json").read_text())
    assert sorted(key.values()) == sorted(pictures)
    assert len(list((out / "sheets").glob("s*.png"))) == 2  # 8 crops, 6 a sheet
    assert str((out / "sheets").resolve()) in (out / "brief.txt").read_text()

    # every crop is the picture's centre 400x300, pixel for pixel, somewhere on a sheet
    sheets = [np.asarray(Image.open(p)) for p in sorted((out / "sheets").glob("s*.png"))]
    for label, a in pictures.items():
        crop = a[10:310, 10:410]
        found = any((s[y:y + 300, x:x + 400] == crop).all()
                    for s in sheets for y in (44, 384, 724) for x in (10, 420)
                    if s.shape[0] >= y + 300)
        assert found, label

    numbers = {label: n for n, label in key.items()}
    yes = {"answer": "yes", "note": "same facet tiled"}
    no = {"answer": "no", "note": ""}
    answers = []
    for j in range(3):  # "ours/0" called by all three, "ours/1" by one only, "theirs/*" by two of three
        votes = {n: no for n in key}
        votes[numbers["ours/0"]] = yes
        if j == 0:
            votes[numbers["ours/1"]] = yes
        if j < 2:
            votes.update({numbers[f"theirs/{k}"]: yes for k in range(4)})
        answers.append(tmp_path / f"answers_{j}.json")
        answers[-1].write_text(json.dumps(votes))
    zc.tally(tmp_path / "KEY_judge_me.json", answers)
    printed = capsys.readouterr().out
    assert "ours: 1/4 crops called machine texture (4 of 12 votes yes)" in printed
    assert "theirs: 4/4 crops called machine texture (8 of 12 votes yes)" in printed

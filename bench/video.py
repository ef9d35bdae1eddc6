"""Flicker of stylized video, and the damping that reduces it (stylize/video.py), by measurement.

Each clip's frames are stylized once; the damping is then replayed on them with each --smooth value,
so the figures differ by the damping alone. Per clip and value it reports:
- flicker: mean change (0-255) between consecutive output frames over the pixels whose input changed
  by less than video.STILL (the input's own figure beside it: sensor noise, compression);
- ghosting: mean difference (0-255) between the damped frame and that frame stylized alone, over
  the pixels whose input changed by more than 4 * video.STILL (the price: trails behind motion).
It writes a strip per clip (frames 0, n/3, 2n/3: input, undamped, damped at --strip-smooth).

    python bench/video.py CLIP.mp4 ... --max-size 480 --smooth 0 0.5 0.7 0.85 0.93 --out-dir docs/video
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stylize import graphs  # noqa: E402
from stylize.video import STILL, Damping, Flicker, _size  # noqa: E402


def frames_of(path: Path, max_size: int | None, limit: int) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        w, h = _size(s.codec_context.width, s.codec_context.height, max_size)
        out = []
        for f in c.decode(s):
            out.append(np.asarray(f.to_image().resize((w, h), Image.LANCZOS)))
            if len(out) == limit:
                break
    return out


def measure(photos, stylized, smooth: float):
    damp, flick, ghost, n = Damping(smooth), Flicker(), 0.0, 0
    outs = []
    for i, (p, y) in enumerate(zip(photos, stylized)):
        out = damp(p, y)
        flick.add(p, out)
        if i:
            moving = np.abs(p.astype(np.float32) - photos[i - 1]).mean(axis=2) > 4 * STILL
            if moving.any():
                ghost += float(np.abs(out.astype(np.float32) - y).mean(axis=2)[moving].mean())
                n += 1
        outs.append(out)
    return flick, ghost / max(1, n), outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="+", type=Path)
    ap.add_argument("--model", default="starry_night")
    ap.add_argument("--max-size", type=int, default=480)
    ap.add_argument("--frames", type=int, default=150, help="at most this many frames per clip")
    ap.add_argument("--smooth", type=float, nargs="+", default=[0, 0.5, 0.7, 0.85, 0.93])
    ap.add_argument("--strip-smooth", type=float, default=None, help="damping shown in the strip (default: the largest)")
    ap.add_argument("--out-dir", type=Path, default=Path("bench_video"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stylizer = graphs.load(args.model, default=True)
    results = {}
    for clip in args.clips:
        photos = frames_of(clip, args.max_size, args.frames)
        cond = stylizer.condition(None)
        stylized = [np.ascontiguousarray(np.asarray(stylizer.run(p.transpose(2, 0, 1).copy(), cond, 1.0)).transpose(1, 2, 0))
                    for p in photos]
        rows, shown = {}, {}
        for s in args.smooth:
            flick, ghost, outs = measure(photos, stylized, s)
            rows[s] = {"flicker": round(flick.output, 2), "input_flicker": round(flick.input, 2), "ghosting": round(ghost, 2)}
            shown[s] = outs
            print(f"{clip.name}: smooth {s}: flicker {flick.output:.2f} (input {flick.input:.2f}), ghosting {ghost:.2f}")
        results[clip.name] = rows
        pick = args.strip_smooth if args.strip_smooth is not None else max(args.smooth)
        idx = [0, len(photos) // 3, 2 * len(photos) // 3]
        rows_img = [np.concatenate([photos[i] for i in idx], 1), np.concatenate([stylized[i] for i in idx], 1),
                    np.concatenate([shown[pick][i] for i in idx], 1)]
        Image.fromarray(np.concatenate(rows_img, 0)).save(args.out_dir / f"{clip.stem}_strip.jpg", quality=88)
        # the same pixel row over time: flicker is visible as vertical noise in the undamped band
        y = photos[0].shape[0] // 2
        bands = [np.stack([f[y] for f in seq], 0) for seq in (photos, stylized, shown[pick])]
        Image.fromarray(np.concatenate(bands, 1)).save(args.out_dir / f"{clip.stem}_timeline.png")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

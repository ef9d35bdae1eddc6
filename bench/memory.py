"""Peak memory of `stylize apply` on big photos, up to the largest the pixel guard accepts.

    python bench/memory.py [--sizes 4000x3000,8000x6000,max] [--model NAME] [--out-dir DIR] [--json FILE]
        [-- MORE APPLY OPTIONS, e.g. --runtime torch]

Each size gets a synthetic PNG (a colour gradient plus a repeating noise pattern: the work of a
photo of its size for the decoder, the network and the detail band, in a small file), and `stylize
apply PHOTO --out-dir DIR -q` runs on it as a whole process under `/usr/bin/time -v`, which reports
its maximum resident set size. `max` is the largest square photo that `images.MAX_PIXELS` (the
decompression-bomb guard) accepts. The table gives each photo's size, megapixels, file size, wall
time and peak resident memory; the largest peak is checked against the README's bound ("Big
photos": 3 GB). About 1.5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.common  # noqa: E402,F401  (the checkout's stylize on sys.path)
from stylize.images import MAX_PIXELS  # noqa: E402

BOUND_MB = 3000  # the README's promise for any photo the guard accepts


def largest_square() -> tuple[int, int]:
    side = math.isqrt(MAX_PIXELS)
    return side, side


def parse_size(text: str) -> tuple[int, int]:
    if text == "max":
        return largest_square()
    w, _, h = text.partition("x")
    return int(w), int(h)


def synthetic_png(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A colour gradient plus a 61x53 tile of noise repeated over it (the gradient steps every 8
    tiles across, so a row's bytes mostly repeat and the PNG stays small: 9 MB at 250
    megapixels), built a band of rows at a time into one Pillow image."""
    rng = np.random.default_rng(seed)
    tile = np.round(rng.normal(0, 12, (53, 61, 3))).astype(np.int16)
    im = Image.new("RGB", (width, height))
    step = tile.shape[1] * 8
    xs = ((np.arange(width) // step) * step / width)[None, :, None]
    strip = np.tile(tile, (1, -(-width // tile.shape[1]), 1))[:, :width]  # a band of tiles across the photo
    for top in range(0, height, 512):
        rows = np.arange(top, min(top + 512, height))
        ys = (rows / height)[:, None, None]
        base = np.concatenate(np.broadcast_arrays(60 + 150 * xs, 40 + 170 * ys, 200 - 120 * xs * ys), axis=2)
        a = np.clip(np.round(base).astype(np.int16) + strip[rows % tile.shape[0]], 0, 255).astype(np.uint8)
        im.paste(Image.fromarray(a, "RGB"), (0, top))
    im.save(path, compress_level=3)
    return path


def measure(photo: Path, out_dir: Path, model: str | None, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one `stylize apply` process, from /usr/bin/time -v."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "stylize", "apply", str(photo), "--out-dir", str(out_dir), "-q"]
    cmd += (["--model", model] if model else []) + extra
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0 or rss is None:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return wall, int(rss.group(1)) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4000x3000,8000x6000,max",
                    help="WIDTHxHEIGHT list; max: the largest square the pixel guard accepts")
    ap.add_argument("--model", default=None, help="model name or file (default: apply's default model)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where photos and outputs go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("extra", nargs="*", help="more apply options, after --, e.g. -- --runtime torch")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="stylize-memory-") as tmp:
        folder = args.out_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        print(f"{'photo':>12} {'MP':>6} {'PNG':>9} {'wall s':>7} {'peak RSS MB':>12}")
        for w, h in sizes:
            photo = synthetic_png(folder / f"photo_{w}x{h}.png", w, h)
            wall, mb = measure(photo, folder / "out", args.model, args.extra)
            rows.append({"size": f"{w}x{h}", "megapixels": round(w * h / 1e6, 1), "png_kb": photo.stat().st_size // 1024,
                         "wall_s": round(wall, 1), "peak_rss_mb": round(mb)})
            print(f"{f'{w}x{h}':>12} {w * h / 1e6:6.1f} {photo.stat().st_size // 1024:>6} KB {wall:7.1f} {mb:12.0f}", flush=True)
            photo.unlink()
            for f in (folder / "out").glob("*"):
                f.unlink()
        worst = max(r["peak_rss_mb"] for r in rows)
        print(f"largest peak {worst:.0f} MB: {'within' if worst <= BOUND_MB else 'OVER'} the {BOUND_MB} MB bound "
              f"(guard: {MAX_PIXELS:,} pixels)")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

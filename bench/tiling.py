"""Tiled apply: peak memory and time on a big photo, and tiled against untiled on one that fits.

    python bench/tiling.py --out-dir bench/out [--device cpu|cuda] [--json results.json]

1. big: an 8000x6000 photo (--size) stylized the way `stylize apply` does it (uint8 in, tiled by
   the memory budget, uint8 out, written as JPEG), in a child process so that its peak resident
   memory (and on CUDA its peak GPU memory) is its own.
2. compare: a 1024x768 photo (--compare-size) stylized whole and in tiles of --compare-tile px,
   with exact statistics (the default) and with statistics from a downscaled copy ("preview"):
   PSNR, largest difference, and how much larger the difference is on the tile seams than
   elsewhere. The difference image, amplified, goes to --out-dir.

The model is --model (the shipped starry_night by default); without one, a randomly initialised
network of the shipped architecture (NetConfig defaults, width 32): same cost and memory, and the
output says so. The photos are examples/ photos scaled up, with a little noise for texture.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import example_photo, psnr, random_model  # noqa: E402
from stylize.models import modelfile
from stylize.apply.budget import budget_pixels  # noqa: E402
from stylize.apply.engines import tiling  # noqa: E402
from stylize.errors import StylizeError  # noqa: E402
from stylize.images import load_image, save_image  # noqa: E402
from stylize.apply.engines.pytorch import Stylizer  # noqa: E402
from stylize.models.norms import Condition  # noqa: E402
from stylize.settings import ApplyConfig  # noqa: E402


def model_file(name: str, folder: Path) -> tuple[str, str]:
    """(model path or name, what it is): the named model, or a random width-32 one saved in folder."""
    if name != "random":
        try:
            rec = modelfile.load(name)
            return rec["path"], f"{Path(rec['path']).stem} (trained, width {rec['net'].get('width')})"
        except StylizeError as e:
            print(f"note: {e}; using a random network instead", file=sys.stderr)
    path = random_model(folder / "random.pt", half=False)
    return str(path), "random init, width 32 (shipped architecture: same cost and memory as trained)"


def child(args) -> None:
    """The measured run: what apply_files does with one photo, then report peaks as JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    stylizer = Stylizer(args.model, args.device, memory_mb=args.memory)
    x, alpha = load_image(args.photo, dtype=torch.uint8)
    h, w = x.shape[1:]
    p = tiling.plan(h, w, stylizer.tile_size())
    over = (h * w) > budget_pixels(args.memory, stylizer.net.cfg.width)
    if stylizer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    y = stylizer(x, dtype=torch.uint8)
    t2 = time.perf_counter()
    del x
    save_image(y, args.out, alpha)
    t3 = time.perf_counter()
    import resource
    result = {"size": f"{w}x{h}", "tiles": p.count if over else 1, "tile": stylizer.tile_size() if over else None,
              "load_s": t1 - t0, "stylize_s": t2 - t1, "save_s": t3 - t2,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if stylizer.device.type == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    print(json.dumps(result))


def run_big(args, model: str, folder: Path) -> dict:
    w, h = map(int, args.size.lower().split("x"))
    photo = folder / f"big_{w}x{h}.jpg"
    example_photo((w, h)).save(photo, quality=92)
    out = folder / "big_stylized.jpg"
    cmd = [sys.executable, __file__, "--child", "--model", model, "--photo", str(photo), "--out", str(out),
           "--device", args.device, "--memory", str(args.memory)] + (["--threads", str(args.threads)] if args.threads else [])
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS, nobody else's
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"big run failed with exit code {proc.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # the same figure as `/usr/bin/time -v`'s maximum resident set
    with Image.open(out) as im:
        im.load()
        assert im.size == (w, h), im.size
    return result


def seams(d: torch.Tensor, p: tiling.Plan, band: int = 4) -> tuple[float, float]:
    """Mean |difference| within `band` px of where tiles meet, and elsewhere: a seam that shows is a
    line where the first is far above the second, and far above 1/255."""
    h, w = d.shape[-2:]
    near = torch.zeros(h, w, dtype=torch.bool)
    for cores, axis in ((p.rows, 0), (p.cols, 1)):
        for i in range(1, len(cores)):
            for edge in (cores[i][0], cores[i - 1][1]):  # the overlap's two ends
                lo, hi = max(0, edge - band), min(h if axis == 0 else w, edge + band)
                if axis == 0:
                    near[lo:hi] = True
                else:
                    near[:, lo:hi] = True
    m = d.abs().mean(0)
    return m[near].mean().item(), m[~near].mean().item()


def run_compare(args, model: str, out_dir: Path) -> dict:
    w, h = map(int, args.compare_size.lower().split("x"))
    x = torch.from_numpy(np.asarray(example_photo((w, h))).copy()).permute(2, 0, 1).contiguous()
    stylizer = Stylizer(model, args.device, memory_mb=1e9)  # whole, to compare against
    t0 = time.perf_counter()
    whole = stylizer(x)
    t_whole = time.perf_counter() - t0
    p = tiling.plan(h, w, args.compare_tile)
    rows = {}
    for stats in ("exact", "preview"):
        t0 = time.perf_counter()
        if stats == "exact":  # the real path: Stylizer routes to tiling.py
            tiled = stylizer(x, tile=args.compare_tile)
        else:  # statistics from a copy with half the side, for the record (see tiling.py)
            cond = Condition(None, torch.tensor([1.0], device=stylizer.device)
                             if stylizer.record["net"].get("strength") else None)
            tiled = tiling.stylize_tiled(stylizer.net, x, cond, args.compare_tile, stylizer.device, stats=stats,
                                         preview_pixels=h * w // 4)
        dt = time.perf_counter() - t0
        d = tiled - whole
        at_seams, elsewhere = seams(d, p)
        rows[stats] = {"psnr_db": psnr(tiled, whole), "max_abs_diff": d.abs().max().item(),
                       "mean_abs_diff_at_seams": at_seams, "mean_abs_diff_elsewhere": elsewhere, "seconds": dt,
                       "pixels_differing_in_8bit": int(((tiled * 255).round() != (whole * 255).round()).any(0).sum())}
        if stats == "exact":
            diff_path = out_dir / "tiling_difference_x{}.png".format(args.gain)
            save_image((d.abs() * args.gain).clamp(0, 1), diff_path)
            # and stretched so that the largest difference is white: a seam would show as a line
            save_image(d.abs() / d.abs().max().clamp_min(1e-12), out_dir / "tiling_difference_stretched.png")
            save_image(tiled, out_dir / "tiling_tiled.png")
            save_image(whole, out_dir / "tiling_untiled.png")
            rows[stats]["difference_image"] = str(diff_path)
        else:
            save_image((d.abs() * 4).clamp(0, 1), out_dir / "tiling_difference_preview_x4.png")
    return {"size": f"{w}x{h}", "tile": args.compare_tile, "tiles": p.count, "halo": tiling.HALO,
            "overlap": tiling.OVERLAP, "untiled_s": t_whole, **{f"stats_{k}": v for k, v in rows.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="starry_night", help="model name or file; 'random' for a random width-32 network")
    ap.add_argument("--size", default="8000x6000")
    ap.add_argument("--memory", type=float, default=ApplyConfig.memory_mb, help="memory budget, MB (as --memory)")
    ap.add_argument("--compare-size", default="1024x768")
    ap.add_argument("--compare-tile", type=int, default=256)
    ap.add_argument("--gain", type=int, default=64, help="amplification of the saved difference image")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--photo", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = {"device": args.device, "threads": torch.get_num_threads(), "memory_mb": args.memory}
    with tempfile.TemporaryDirectory(prefix="stylize-bench-") as tmp:
        model, about = model_file(args.model, Path(tmp))
        results["model"] = about
        print(f"model: {about}")
        results["compare"] = c = run_compare(args, model, args.out_dir)
        print(f"\ntiled vs untiled, {c['size']}, tiles of {c['tile']} px ({c['tiles']} tiles, halo {c['halo']}, "
              f"overlap {c['overlap']}); untiled {c['untiled_s']:.1f} s")
        print(f"{'statistics':<10} {'PSNR dB':>8} {'max |d|':>9} {'mean |d| seams':>15} {'elsewhere':>10} "
              f"{'8-bit px differing':>19} {'time s':>7}")
        for k in ("exact", "preview"):
            r = c[f"stats_{k}"]
            print(f"{k:<10} {r['psnr_db']:>8.1f} {r['max_abs_diff']:>9.1e} {r['mean_abs_diff_at_seams']:>15.1e} "
                  f"{r['mean_abs_diff_elsewhere']:>10.1e} {r['pixels_differing_in_8bit']:>19} {r['seconds']:>7.1f}")
        print(f"difference image (x{args.gain}): {c['stats_exact']['difference_image']}")
        if not args.skip_big:
            results["big"] = b = run_big(args, model, Path(tmp))
            print(f"\nbig photo {b['size']} on {args.device}, memory budget {args.memory:g} MB: "
                  f"{b['tiles']} tiles of {b['tile']} px")
            print(f"{'peak RSS MB':>12} {'load s':>7} {'stylize s':>10} {'save s':>7} {'wall s':>7}"
                  + (f" {'GPU alloc MB':>13} {'GPU reserved MB':>16}" if "cuda_peak_reserved_mb" in b else ""))
            print(f"{b['peak_rss_mb']:>12.0f} {b['load_s']:>7.1f} {b['stylize_s']:>10.1f} {b['save_s']:>7.1f} "
                  f"{b['wall_s']:>7.1f}" + (f" {b['cuda_peak_allocated_mb']:>13.0f} {b['cuda_peak_reserved_mb']:>16.0f}"
                                            if "cuda_peak_reserved_mb" in b else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

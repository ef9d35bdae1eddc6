"""Batch apply that loses nothing: 200 files, 195 photos of mixed sizes and 5 corrupt ones, run whole, then
interrupted (SIGTERM, then Ctrl-C, then SIGKILL) and resumed with --skip-existing.

    python bench/batch.py [--count 200] [--model random] [--json results.json] [--keep DIR]

Runs `stylize apply FOLDER --out-dir OUT` as a subprocess, as a user would, and checks:
- the whole run: 195 outputs, 5 failures named on stderr, exit code 1, one summary line;
- interrupted runs: exit code 130 (SIGTERM and SIGINT) or death (SIGKILL), every output present is a
  complete image, no .part file is left (after SIGKILL, the next run removes its leftovers);
- the final resume with --skip-existing: only what is missing is done, 195 complete outputs in all,
  each the size of its photo, none truncated.
The model is a random network (width --width) saved the way training saves models, unless --model names one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import random_model  # noqa: E402

FORMATS = (".jpg", ".png", ".webp")


def make_inputs(src: Path, count: int, corrupt: int, seed: int = 0) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """count photos (crops of examples/ photos, 64 to 720 px a side, JPEG/PNG/WebP) in nested folders,
    with repeated names across folders and one GIF beside a PNG of the same name; and `corrupt`
    broken files. -> ({relative path: (w, h)} of the photos, [relative paths of the broken ones])."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted((ROOT / "examples").glob("*.jpg"))
               if "_" not in p.stem]  # the photos, not stylized examples
    photos = {}
    for i in range(count):
        folder = Path(f"trip{i % 7}") / (f"day{i % 3}" if i % 2 else "")
        name, ext = f"img_{i // 7:03d}", FORMATS[i % 3]
        if i == count - 1 and count > 28:  # a GIF beside trip0/img_004.png (i = 28): both want that name
            folder, name, ext = Path("trip0"), "img_004", ".gif"
        w, h = rng.randint(64, 720), rng.randint(64, 720)
        im = rng.choice(sources)
        s = max(w / im.width, h / im.height)
        im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.Resampling.BILINEAR)
        x0, y0 = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
        rel = folder / (name + ext)
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        im.crop((x0, y0, x0 + w, y0 + h)).save(src / rel)
        photos[rel.as_posix()] = (w, h)
    broken = []
    good_jpg = src / next(p for p in photos if p.endswith(".jpg"))
    data = good_jpg.read_bytes()
    makers = [
        ("broken/truncated.jpg", data[: len(data) // 2]),
        ("broken/noise.jpg", b"\xff\xd8\xff\xe0" + rng.randbytes(2000)),
        ("trip1/notes.png", b"shopping list: eggs, milk"),
        ("trip2/empty.webp", b""),
        ("broken/cut.png", (src / next(p for p in photos if p.endswith(".png"))).read_bytes()[:400]),
    ]
    for rel, blob in makers[:corrupt]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(blob)
        broken.append(rel)
    return photos, broken


def outputs(out: Path, parts: bool = True) -> list[Path]:
    files = sorted(p for p in out.rglob("*") if p.is_file()) if out.exists() else []
    return files if parts else [p for p in files if not p.name.endswith(".part")]


def check_outputs(out: Path, sizes: dict[str, tuple[int, int]]) -> dict:
    """Every file under out: a complete image of its photo's size; no .part files."""
    files = outputs(out)
    parts = [p for p in files if p.name.endswith(".part")]
    bad = []
    for p in files:
        if p in parts:
            continue
        try:
            with Image.open(p) as im:
                im.load()  # decodes everything: a truncated file fails here
                size = im.size
        except Exception as e:
            bad.append(f"{p}: {e}")
            continue
        rel = p.relative_to(out).as_posix()
        want = sizes.get(rel)
        if want is not None and size != want:
            bad.append(f"{p}: {size}, photo is {want}")
    return {"files": len(files) - len(parts), "part_files": len(parts), "broken_outputs": bad}


def expected_names(sizes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Output name -> size, as stylize names them (GIF -> PNG, and _2 when that name is taken)."""
    out, taken = {}, set()
    for rel in sorted(sizes, key=lambda r: Path(r)):  # the order stylize finds them in
        p = Path(rel)
        suffix = p.suffix if p.suffix in FORMATS else ".png"
        q, k = p.with_suffix(suffix), 2
        while q.as_posix().casefold() in taken:
            q = p.with_name(f"{p.stem}_{k}{suffix}")
            k += 1
        taken.add(q.as_posix().casefold())
        out[q.as_posix()] = sizes[rel]
    return out


def run(cmd, env, stop_after: int | None = None, out: Path | None = None, sig=None) -> dict:
    """Run cmd; with stop_after, send `sig` once `out` holds that many files."""
    t0 = time.perf_counter()
    # SIGINT as at a terminal, even when this script runs in the background (where it is ignored)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    sent = None
    if stop_after is not None:
        while proc.poll() is None:
            if len(outputs(out, parts=False)) >= stop_after:
                proc.send_signal(sig)
                sent = time.perf_counter() - t0
                break
            time.sleep(0.02)
    stdout, stderr = proc.communicate()
    summary = re.search(r"(\d+) written, (\d+) skipped, (\d+) failed in ([\d.]+) s(?:, ([\d.]+) img/s)?", stdout)
    return {"exit_code": proc.returncode, "seconds": time.perf_counter() - t0, "signal_at_s": sent,
            "errors": [line for line in stderr.splitlines() if line.startswith("error: ")],
            "summary": summary.group(0) if summary else None,
            "written": int(summary.group(1)) if summary else None,
            "skipped": int(summary.group(2)) if summary else None,
            "img_per_s": float(summary.group(5)) if summary and summary.group(5) else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="files in all, corrupt ones included")
    ap.add_argument("--corrupt", type=int, default=5, choices=range(0, 6))
    ap.add_argument("--model", default="random", help="model name or file; 'random': a random network")
    ap.add_argument("--width", type=int, default=16, help="width of the random network")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="stylize-batch-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = work / "photos"
        sizes, broken = make_inputs(src, args.count - args.corrupt, args.corrupt)
        expect = expected_names(sizes)
        model = str(random_model(work / "random.pt", width=args.width)) if args.model == "random" else args.model
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        stylize = [sys.executable, "-m", "stylize", "apply", str(src), "--model", model, "--device", args.device]
        results = {"photos": len(sizes), "corrupt": len(broken), "model": "random, width %d" % args.width
                   if args.model == "random" else args.model, "runs": {}}
        checks = []

        def check(name, ok, detail=""):
            checks.append((name, bool(ok), detail))

        # 1. the whole batch at once
        r = run(stylize + ["--out-dir", str(work / "out_a")], env)
        o = check_outputs(work / "out_a", expect)
        results["runs"]["whole"] = {**r, **o}
        check("whole: exit code 1", r["exit_code"] == 1, r["exit_code"])
        check(f"whole: {len(expect)} outputs", o["files"] == len(expect), o["files"])
        check("whole: outputs named as expected", sorted(p.relative_to(work / "out_a").as_posix()
                                                           for p in outputs(work / "out_a")) == sorted(expect))
        check(f"whole: {len(broken)} failures reported, each naming its file",
              len(r["errors"]) == len(broken) and all(any(Path(b).name in e for e in r["errors"]) for b in broken),
              r["errors"])
        check("whole: no broken or partial output", not o["broken_outputs"] and not o["part_files"], o)

        # 2. interrupted three times, then resumed to the end
        out = work / "out_b"
        base = stylize + ["--out-dir", str(out), "--skip-existing"]
        n = len(expect)
        for step, (sig, at) in enumerate([(signal.SIGTERM, n // 4), (signal.SIGINT, n // 2),
                                          (signal.SIGKILL, 3 * n // 4)]):
            r = run(base, env, stop_after=at, out=out, sig=sig)
            o = check_outputs(out, expect)
            name = signal.Signals(sig).name
            results["runs"][f"killed_{name}"] = {**r, **o}
            if sig == signal.SIGKILL:
                check(f"{name}: killed", r["exit_code"] == -signal.SIGKILL, r["exit_code"])
                check(f"{name}: outputs present are complete", not o["broken_outputs"], o["broken_outputs"])
            else:
                check(f"{name}: exit code 130", r["exit_code"] == 130, r["exit_code"])
                check(f"{name}: outputs present are complete, no .part file",
                      not o["broken_outputs"] and not o["part_files"], o)
                check(f"{name}: stopped part-way ({o['files']} of {n})", at <= o["files"] < n, o["files"])
        before = check_outputs(out, expect)["files"]
        r = run(base, env)
        o = check_outputs(out, expect)
        results["runs"]["resumed"] = {**r, **o, "present_before": before}
        check("resume: exit code 1 (the corrupt files fail again)", r["exit_code"] == 1, r["exit_code"])
        check("resume: only the missing ones were done", r["written"] == n - before and r["skipped"] == before,
              r["summary"])
        check(f"resume: {n} outputs in all, none truncated, no .part file",
              o["files"] == n and not o["broken_outputs"] and not o["part_files"], o)

    print(f"{len(sizes)} photos (64-720 px a side, JPEG/PNG/WebP/GIF, nested folders) + {len(broken)} corrupt files; "
          f"model: {results['model']}; device {args.device}")
    print(f"\n{'run':<16} {'exit':>5} {'outputs':>8} {'seconds':>8} {'img/s':>6}  summary")
    for name, r in results["runs"].items():
        print(f"{name:<16} {r['exit_code']:>5} {r['files']:>8} {r['seconds']:>8.1f} "
              f"{(r['img_per_s'] or 0):>6.1f}  {r['summary'] or ''}")
    print()
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"))
    results["checks"] = [{"check": c, "ok": ok} for c, ok, _ in checks]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")
    sys.exit(0 if all(ok for _, ok, _ in checks) else 1)


if __name__ == "__main__":
    main()

"""The training input pipeline: batches a second from the photo cache against today's loader, and
against what one training step of the default recipe consumes, in one run.

    python bench/pipeline.py [--content DIR | --photos 48] [--style FILE] [--device cpu|cuda]
        [--threads 2] [--batches 300] [--old-batches 30] [--steps 10] [--warmup 3] [--repeats 2]
        [--profile-steps 20] [--json FILE]

All in this process, one after another, with --threads torch threads (default 2):
- cache: the photos decoded once into a fresh cache (data.PhotoCache, in a temporary folder unless
  --cache-dir), its size and time; then opened again.
- loaders, batches a second, as the training loop gets them (float in [0, 1], on the device; on
  CUDA timed to the device's end): the default recipe's batches (4 crops of 160 px, photos scaled to
  480 px; settings.TrainConfig). "decode": today's loader for a CPU run, every photo decoded and
  resized at each use (CropDataset in a DataLoader; no workers on a CPU, 4 and pinned on CUDA, as
  `stylize train` runs it). "cache": data.CachedCrops from the memory map, cut on the device (on
  CUDA: the gpu_data lever) and, on CUDA, "cache-host": cut on the host, sent from pinned memory.
- the default recipe (light network width 16, batch 4, 160 px, EfficientNet-Lite0 loss, the device's
  levers) trained by stylize.train.training.train with each loader, alternating, --repeats times: seconds a
  step over steps warmup+1 .. warmup+steps (loader included), medians; it/s.
- ratio: the cache's batches a second times the cache run's seconds a step, the batches it can
  deliver while one step consumes one (issue 32 asks for 20 or more).
- host overhead: torch.profiler over --profile-steps steps of a tiny network (the recipe's light
  network at width 4 and EfficientNet-Lite0 loss, 32 px crops, batch 4): with the arithmetic ~25
  times smaller than at 160 px, the wall time a step is mostly what the host spends on a step
  (Python, dispatch, loader), a floor under a GPU step however fast the GPU. Reported: wall ms a
  step, operators a step (top-level; leaves, about the kernels a GPU would launch), the operators'
  own time, the time outside any operator, and where tensor values are read on the host
  (aten::item, by caller): on a GPU each read of a device tensor is a wait for the device; reads of
  the CPU generators' draws are not. On CUDA, the syncs a step of the recipe makes are also counted
  (torch.cuda.set_sync_debug_mode).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import synthetic_photo  # noqa: E402


class _Done(Exception):
    pass


@contextlib.contextmanager
def env(name: str, value: str):
    """The environment variable set to value inside, as it was after."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


def make_inputs(args, folder: Path) -> tuple[Path, Path, str]:
    """-> (photo folder, style image, description of the photos)."""
    import numpy as np

    from bench.train import make_style
    from stylize.images import find_images

    if args.content:
        content = Path(args.content)
        desc = f"{len(find_images(content))} photos from {content}"
    else:
        content = folder / "photos"
        content.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.photos):
            synthetic_photo(rng, 481, 321).save(content / f"photo{i:04d}.jpg", quality=90)
        desc = f"{args.photos} synthetic 481x321 JPEGs"
    style = Path(args.style) if args.style else folder / "style.png"
    if not args.style:
        make_style(512).save(style)
    return content, style, desc


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(make, n: int, device, warmup: int = 2) -> float:
    """Batches a second over n batches after `warmup`, each on the device (waited for at the end)."""
    it = iter(make(n + warmup))
    for _ in range(warmup):
        x, _ = next(it)
    sync(device)
    t = time.perf_counter()
    for x, _ in it:
        if x is not None and x.device != device:
            x = x.to(device, non_blocking=True)
    sync(device)
    return n / (time.perf_counter() - t)


def train_steps(cfg, levers, loader: str, warmup: int, steps: int, device, count_syncs: bool = False) -> dict:
    """Seconds a step of training over steps warmup+1 .. warmup+steps (the loader's time included)."""
    import torch

    from stylize.train.training import train

    times, syncs = [], []

    def progress(p):
        if p.event != "step":
            return
        if not count_syncs:  # (a sync of its own, which the count would see)
            sync(device)
        times.append(time.perf_counter())
        if count_syncs:
            syncs.append(sum("synchroniz" in str(w.message) for w in log))
            log.clear()
        if p.iteration == warmup + steps:
            raise _Done

    with env("STYLIZE_LOADER", loader), warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        if count_syncs:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            train(cfg, progress, levers=levers)
        except _Done:
            pass
        finally:
            if count_syncs:
                torch.cuda.set_sync_debug_mode("default")
    step = (times[-1] - times[warmup - 1]) / steps
    out = {"loader": loader, "seconds_per_step": step, "per_second": 1 / step}
    if count_syncs:  # a step's own: the last steps' (the first ones also meet set-up)
        out["syncs_per_step"] = statistics.median(syncs[warmup:])
    return out


def host_profile(args, content: Path, style: Path, tmp: Path, device, levers) -> dict:
    """torch.profiler over a tiny network's steps: what the host spends on a step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from stylize.settings import TrainConfig
    from stylize.train.training import train

    cfg = TrainConfig(style=[str(style)], content=str(content), out=str(tmp / "profiled" / "model.pt"),
                      width=args.profile_width, image_size=32, content_size=0, style_size=64,
                      iterations=10_000, device=args.device, checkpoint_every=0, sample_every=0, seed=0,
                      loss_net="efficientnet-lite0")
    warm, n = 3, args.profile_steps
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    result = {}
    for stack in (False, True):  # the timing without stacks (they cost), then where values are read
        verbose = torch._C._profiler._ExperimentalConfig(verbose=True) if stack else None  # for Python frames
        with profile(activities=acts, schedule=schedule(wait=0, warmup=warm, active=n if not stack else 3),
                     with_stack=stack, acc_events=True, experimental_config=verbose) as prof:
            def progress(p, prof=prof, last=warm + (n if not stack else 3)):
                if p.event == "step":
                    sync(device)
                    prof.step()
                    if p.iteration == last:
                        raise _Done
            with env("STYLIZE_LOADER", "cache"):
                try:
                    train(cfg, progress, levers=levers)
                except _Done:
                    pass
        events = prof.events()
        if not stack:
            steps = [e for e in events if e.name.startswith("ProfilerStep")]
            top = [e for e in events if e.cpu_parent is not None and e.cpu_parent.name.startswith("ProfilerStep")]
            ops = [e for e in events if not e.name.startswith("ProfilerStep") and e.device_type.name == "CPU"]
            wall = sum(e.cpu_time_total for e in steps) / len(steps) / 1e3
            inside = sum(e.cpu_time_total for e in top) / len(steps) / 1e3
            result.update(wall_ms=wall, ops_ms=inside, outside_ms=wall - inside, steps=len(steps),
                          top_ops=len(top) / len(steps),
                          leaf_ops=sum(not e.cpu_children for e in ops) / len(steps),
                          item_calls=sum(e.name == "aten::item" for e in ops) / len(steps))
        else:
            where = collections.Counter()
            reads = [e for e in events if e.name == "aten::item"]
            for e in reads:  # by the innermost Python function that called it (the profiler's line is its start)
                frames = [re.sub(r"^.*?((?:stylize|torch)/[\w/]+\.py)\(\d+\)", r"\1", f) for f in e.stack
                          if not f.startswith("<built-in")]
                where[frames[0] if frames else "elsewhere"] += 1
            result["item_callers"] = {k: v / 3 for k, v in where.most_common()}
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--content", help="folder of training photos (default: --photos synthetic JPEGs)")
    ap.add_argument("--photos", type=int, default=48, help="synthetic 481x321 photos (BSDS500's size) without --content")
    ap.add_argument("--style", help="the painting (default: a synthetic one)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the 2 cores of the issue)")
    ap.add_argument("--batches", type=int, default=300, help="batches timed from the cache")
    ap.add_argument("--old-batches", type=int, default=30, help="batches timed from today's loader")
    ap.add_argument("--steps", type=int, default=10, help="training steps timed per run")
    ap.add_argument("--warmup", type=int, default=3, help="training steps left out of the timing")
    ap.add_argument("--repeats", type=int, default=2, help="training runs per loader, alternating; medians")
    ap.add_argument("--profile-steps", type=int, default=20, help="steps of the tiny network profiled (0: none)")
    ap.add_argument("--profile-width", type=int, default=4, help="the tiny network's width")
    ap.add_argument("--image-size", type=int, help="crop side (default: the recipe's)")
    ap.add_argument("--batch-size", type=int, help="batch (default: the recipe's)")
    ap.add_argument("--cache-dir", help="the cache folder ($STYLIZE_CACHE; default: a fresh temporary one)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if not 1 <= args.warmup or args.steps < 1:
        sys.exit("error: need --warmup >= 1 and --steps >= 1")

    import torch

    from stylize.train import data, speed
    from stylize.devices import pick_device
    from stylize.settings import TrainConfig

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    levers = speed.default_levers(device)
    recipe = TrainConfig()
    size, batch = args.image_size or recipe.image_size, args.batch_size or recipe.batch_size
    scale = max(recipe.content_size, size)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "threads": torch.get_num_threads(), "torch": str(torch.__version__), "batch": batch, "size": size,
                 "content_size": recipe.content_size, "levers": sorted(levers)}
    with tempfile.TemporaryDirectory() as tmp, env(data.CACHE_ENV, args.cache_dir or str(Path(tmp) / "cache")):
        measure(args, res, Path(tmp), device, levers, size, batch, scale)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res.update(load_average=load, date=time.strftime("%Y-%m-%d"))
    print_report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


def measure(args, res: dict, tmp: Path, device, levers, size: int, batch: int, scale: int) -> None:
    from stylize.train import data
    from stylize.settings import TrainConfig

    recipe = TrainConfig()
    content, style, res["photos"] = make_inputs(args, tmp)
    files = data.content_files(content)

    t = time.perf_counter()
    cache = data.PhotoCache.open(files, scale, workers=args.threads)
    res["cache"] = {"built": cache.built, "seconds": time.perf_counter() - t, "mb": cache.nbytes / 2**20,
                    "photos": len(cache), "path": str(cache.path)}
    t = time.perf_counter()
    data.PhotoCache.open(files, scale)
    res["cache"]["reopen_seconds"] = time.perf_counter() - t
    print(f"cache: {len(cache)} photos, {cache.nbytes / 2**20:.0f} MB, "
          f"{'made' if cache.built else 'found'} in {res['cache']['seconds']:.1f} s, "
          f"opened again in {res['cache']['reopen_seconds'] * 1e3:.0f} ms", file=sys.stderr, flush=True)

    cuda = device.type == "cuda"
    workers = 4 if cuda else 0  # as `stylize train` runs on each (TrainConfig.workers -1)
    common = dict(files=files, image_size=size, batch_size=batch, seed=0, start_iteration=0,
                  content_size=recipe.content_size)
    loaders = {"decode": (lambda n: data.batches(**common, iterations=n, workers=workers, pin=cuda,
                                                 loader="decode"), args.old_batches),
               "cache": (lambda n: data.batches(**common, iterations=n, device=device, loader="cache"),
                         args.batches)}
    if cuda:
        loaders["cache-host"] = (lambda n: data.batches(**common, iterations=n, device=device, loader="cache",
                                                        host_crops=True), args.batches)
    res["loaders"], res["decode_workers"] = {}, workers
    for name, (make, n) in loaders.items():
        res["loaders"][name] = loader_rate(make, n, device)
        print(f"loader {name}: {res['loaders'][name]:.1f} batches/s", file=sys.stderr, flush=True)

    cfg = TrainConfig(style=[str(style)], content=str(content), out=str(tmp / "recipe" / "model.pt"),
                      iterations=10_000, device=args.device, checkpoint_every=0, sample_every=0, seed=0,
                      image_size=size, batch_size=batch, loss_net="efficientnet-lite0")  # what auto gives
    # without VGG-16's ImageNet weights, as the recipe was made
    runs = collections.defaultdict(list)
    order = ["decode", "cache"]
    for r in range(args.repeats):
        for loader in (order if r % 2 == 0 else order[::-1]):
            runs[loader].append(train_steps(cfg, levers, loader, args.warmup, args.steps, device))
            print(f"recipe, loader {loader}: {runs[loader][-1]['seconds_per_step']:.3f} s a step",
                  file=sys.stderr, flush=True)
    res["recipe"] = {}
    for k, v in runs.items():
        step = statistics.median(x["seconds_per_step"] for x in v)
        res["recipe"][k] = {"seconds_per_step": step, "per_second": 1 / step,
                            "runs": [round(x["seconds_per_step"], 4) for x in v]}
    if cuda:
        res["recipe"]["cache"]["syncs_per_step"] = train_steps(cfg, levers, "cache", args.warmup, args.steps,
                                                               device, count_syncs=True)["syncs_per_step"]
    step = res["recipe"]["cache"]["seconds_per_step"]
    res["ratio"] = res["loaders"]["cache"] * step  # batches delivered while one step consumes one
    res["ratio_decode"] = res["loaders"]["decode"] * res["recipe"]["decode"]["seconds_per_step"]
    if args.profile_steps:
        res["host"] = host_profile(args, content, style, tmp, device, levers)


def print_report(r: dict) -> None:
    c, lo, rec = r["cache"], r["loaders"], r["recipe"]
    print(f"{r['device']}, {r['threads']} threads, torch {r['torch']}, load average {r['load_average']:.2f}; "
          f"{r['photos']}; batch {r['batch']} x {r['size']} px from photos at {r['content_size']} px")
    print(f"cache: {c['photos']} photos, {c['mb']:.0f} MB, made in {c['seconds']:.1f} s, opened again in "
          f"{c['reopen_seconds'] * 1e3:.0f} ms")
    for name, v in lo.items():
        print(f"loader {name:<11} {v:9.1f} batches/s" + (f"  ({v / lo['decode']:.0f}x decode)" if name != "decode" else ""))
    for name, v in rec.items():
        print(f"recipe step, {name:<6} {v['seconds_per_step']:.3f} s ({v['per_second']:.2f} it/s; runs {v['runs']})"
              + (f", {v['syncs_per_step']:.0f} syncs a step" if "syncs_per_step" in v else ""))
    print(f"ratio: the cache delivers {r['ratio']:.0f} batches while a step consumes one "
          f"(decoding: {r['ratio_decode']:.1f}); the recipe with the cache at "
          f"{rec['decode']['seconds_per_step'] / rec['cache']['seconds_per_step']:.2f}x the rate with decoding")
    if "host" in r:
        h = r["host"]
        print(f"host, tiny network (width 4, 32 px): {h['wall_ms']:.1f} ms a step: {h['ops_ms']:.1f} in "
              f"{h['top_ops']:.0f} operators ({h['leaf_ops']:.0f} leaves), {h['outside_ms']:.1f} outside any; "
              f"{h['item_calls']:.0f} values read on the host a step: " +
              ", ".join(f"{k} {v:.0f}" for k, v in h["item_callers"].items()))


if __name__ == "__main__":
    main()

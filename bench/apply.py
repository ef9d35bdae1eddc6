"""Apply speed, end to end: stylize's path against the plain path, same network, same photos.

Every measurement is a whole process, from start to files written, as a user meets it:
  stylize: `stylize apply PHOTOS --out-dir ...` (on a CPU: ONNX Runtime, no torch import; on a GPU:
           PyTorch with stylize's settings);
  plain:   bench/plain_apply.py (torch + torchvision, fp32, eager, NCHW, one image at a time: how
           pytorch/examples fast_neural_style and the AdaIN ports run).
For each model (IN, CIN, AdaIN), size and batch (number of photos per process) it reports images per
second (median of --runs after one warm-up, which also fills stylize's ONNX cache), the peak resident
memory of the process, the ratio stylize/plain, the largest pixel difference between the two outputs,
and FLOPs per image (torch.utils.flop_counter) with the fraction of the device's peak this reaches
(--peak-gflops; defaults: the 2-core AVX-512 CPU here ~360 fp32, H100/H200 989 000 bf16 dense).

  python bench/apply.py [--device cpu] [--models in,cin,adain] [--sizes 512x512,1024x1024,1920x1080]
                        [--batches 1,4] [--runs 3] [--json bench_apply.json]
Models are the shipped starry_night (IN), and an untrained 3-style CIN and AdaIN model of the same
architecture (speed does not depend on the weights); --model-in/--model-cin/--model-adain override.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, random_model, timed  # noqa: E402

PHOTO = ROOT / "examples" / "chelsea.jpg"


def make_models(folder: Path, args) -> dict[str, Path]:
    from stylize.models import modelfile
    from stylize.models.adain import AdaINConfig, AdaINNet
    from stylize.settings import TrainConfig
    from stylize.train.training import model_record

    models = {"in": Path(args.model_in) if args.model_in else modelfile.resolve("starry_night")}
    if args.model_cin:
        models["cin"] = Path(args.model_cin)
    else:
        models["cin"] = random_model(folder / "cin3.pt", "conditional", ("a", "b", "c"))
    if args.model_adain:
        models["adain"] = Path(args.model_adain)
    else:
        from stylize.features.vgg import random_features

        net = AdaINNet(AdaINConfig(encoder="random vgg19", width=32))
        net.encoder.features.load_state_dict(random_features("vgg19")[0][:21].state_dict())
        rec = model_record(net, TrainConfig(norm="adaptive", network="adain"), [], half=True)
        rec.update(kind="adain", net=net.cfg.to_dict())
        models["adain"] = modelfile.save(rec, folder / "adain.pt")
    return models


def flops_per_image(kind: str, model: Path, w: int, h: int) -> float:
    """Counted on the meta device: no compute, exact for these networks."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stylize.models import modelfile
    from stylize.models.adain import AdaINConfig, AdaINNet
    from stylize.models.networks import NetConfig, TransformerNet

    rec = modelfile.load(model)
    with torch.device("meta"):
        net = AdaINNet(AdaINConfig(**rec["net"])) if kind == "adain" else TransformerNet(NetConfig(**rec["net"]))
        x = torch.empty(1, 3, h + (-h) % 8, w + (-w) % 8)
        with FlopCounterMode(display=False) as counter:
            if kind == "adain":
                net(x, [net.style_stats(torch.empty(1, 3, 512, 512))])
            else:
                net(x)
    return float(counter.get_total_flops())


def default_peak(device: str) -> float:
    if device == "cpu":
        return 360.0
    import torch

    name = torch.cuda.get_device_name()
    return 989_000.0 if ("H100" in name or "H200" in name) else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="in,cin,adain")
    ap.add_argument("--sizes", default="512x512,1024x1024,1920x1080")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model-in")
    ap.add_argument("--model-cin")
    ap.add_argument("--model-adain")
    ap.add_argument("--peak-gflops", type=float)
    ap.add_argument("--json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_apply_"))
    env = dict(os.environ, STYLIZE_CACHE=str(work / "cache"))
    models = make_models(work, args)
    peak = args.peak_gflops or default_peak(args.device)
    style = work / "style.jpg"
    Image.open(ROOT / "examples" / "rocket.jpg").convert("RGB").resize((512, 384)).save(style, quality=95)
    stylize = [str(Path(sys.executable).with_name("stylize"))]
    plain = [sys.executable, str(ROOT / "bench" / "plain_apply.py")]
    rows = []
    print(f"{'model':<7}{'size':>11}{'batch':>6}{'path':>9}{'img/s':>9}{'peak MB':>9}{'ratio':>7}{'diff':>6}{'of peak':>9}")
    for kind in args.models.split(","):
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            flops = flops_per_image(kind, models[kind], w, h)
            for batch in map(int, args.batches.split(",")):
                photos = work / f"photos_{size}_{batch}"
                photos.mkdir(exist_ok=True)
                base = Image.open(PHOTO).convert("RGB")
                files = []
                for i in range(batch):  # distinct crops, so nothing can be cached between photos
                    im = base.resize((w + 16 * i, h + 16 * i), Image.Resampling.BICUBIC).crop((8 * i, 8 * i, 8 * i + w, 8 * i + h))
                    files.append(str(photos / f"p{i}.jpg"))
                    im.save(files[-1], quality=95)
                extra = ["--style", str(style)] if kind == "adain" else []
                cmds = {
                    "plain": plain + [str(models[kind]), str(work / "out_plain"), *files, "--device", args.device, *extra],
                    "stylize": stylize + ["apply", *files, "--model", str(models[kind]), "--out-dir", str(work / "out_stylize"),
                                          "--device", args.device, "--memory", "8192", *extra],
                }
                times = {k: [] for k in cmds}
                mems = {k: [] for k in cmds}
                for r in range(args.runs + 1):  # run 0 warms caches (and fills stylize's ONNX cache)
                    for k, cmd in cmds.items():
                        wall, mem = timed(cmd, env)
                        if r:
                            times[k].append(wall)
                            mems[k].append(mem)
                # same output: the first photo through both paths, written losslessly
                timed(plain + [str(models[kind]), str(work / "png_plain"), files[0], "--device", args.device, "--ext", ".png", *extra], env)
                timed(stylize + ["apply", files[0], "--model", str(models[kind]), "--out", str(work / "png_stylize.png"),
                               "--device", args.device, "--memory", "8192", *extra], env)
                a = np.asarray(Image.open(work / "png_plain" / "p0.png"), dtype=np.int16)
                diff = int(np.abs(a - np.asarray(Image.open(work / "png_stylize.png"), dtype=np.int16)).max())
                per = {k: batch / statistics.median(v) for k, v in times.items()}
                for k in ("plain", "stylize"):
                    row = {"device": args.device, "model": kind, "size": size, "batch": batch, "path": k,
                           "per_second": round(per[k], 4), "megapixels_per_second": round(per[k] * w * h / 1e6, 4),
                           "seconds": round(statistics.median(times[k]), 3), "runs": args.runs,
                           "peak_memory_mb": round(max(mems[k]), 1), "gflop_per_image": round(flops / 1e9, 1),
                           "fraction_of_peak": round(per[k] * flops / 1e9 / peak, 4), "max_pixel_difference": diff}
                    if k == "stylize":
                        row["ratio"] = round(per["stylize"] / per["plain"], 3)
                    rows.append(row)
                    print(f"{kind:<7}{size:>11}{batch:>6}{k:>9}{row['per_second']:>9.3f}{row['peak_memory_mb']:>9.0f}"
                          f"{row.get('ratio', ''):>7}{diff:>6}{row['fraction_of_peak']:>9.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print("wrote", args.json)


if __name__ == "__main__":
    main()

"""Training speed: stylize's training loop against the plain loop, same network, batch and photos, same run.

    python bench/train.py [--device auto|cuda|cpu] [--size 256] [--batch 4,16] [--iterations 60]
        [--warmup 10] [--content DIR | --photos 256] [--style FILE] [--levers auto [--levers none ...]]
        [--target-loss 0.6 --max-iterations 2000] [--json results.json]

plain: the loop of pytorch/examples' fast_neural_style, re-implemented here: a torchvision ImageFolder
  of JPEG files with Resize, CenterCrop and ToTensor, a standard DataLoader (no workers, as there,
  unless --plain-workers), fp32 eager NCHW, torchvision's VGG-16 `features` cut into four slices
  ending at relu4_3, Adam, MSE content loss at relu2_2 and MSE Gram style loss at the four slice ends
  with that script's weights (1e5, 1e10), and the loss values read back every step as it does.
stylize: stylize.train.training.train(), as `stylize train` runs it, with the device's speed levers
  (stylize/train/speed.py: on CUDA bf16, channels_last loss network, cudnn benchmark, fused Adam, photos
  decoded once and cropped on the GPU; none on CPU). --levers picks others; each gives a stylize row.

Both paths train the same TransformerNet (stylize.models.networks; --norm, --width; without the strength
conditioning unless --all-strengths) on the same JPEG files at the same crop size and batch, with the same
VGG-16 weights: torchvision's ImageNet weights if they are cached, else stylize.features.vgg's random VGG-16
features saved to a file both load (no download; the table says which). stylize's loss adds a TV term
(and, with --all-strengths, the pixel term) to the plain loop's two. Each path runs in its own process, so
its memory peak and its process-wide switches (cudnn.benchmark) are its own.

per_second: training images per second over iterations warmup+1 .. iterations (start-up, cuDNN
  autotuning, compilation and the first decode of cached photos before that are excluded).
peak_memory_mb: on CUDA the peak of torch.cuda.max_memory_allocated over those iterations; elsewhere
  the process's peak resident memory over them (Linux VmHWM, reset at the warmup), Python and torch
  included.
ratio: stylize's per_second over the plain row's (same device, model, size and batch).
time to target (--target-loss): wall seconds from calling train(), start-up included, until stylize's
  total loss averaged over 10 iterations is at most the target, on seed 0. The plain loop optimises a
  differently scaled loss (raw MSE, weights 1e5 and 1e10), so it has no comparable target.
stylize decodes each photo once, into its photo cache (data.PhotoCache), before the first step: the
plain loop decodes at each use. With the gpu_data lever (CUDA's default) the crops are cut on the GPU
from a copy of the cache (when it fits in a quarter of the free GPU memory), else on the host. The
cache's making is in the first, untimed iterations; bench/pipeline.py times the loaders alone.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import synthetic_photo  # noqa: E402

TARGET_WINDOW = 10  # iterations the loss is averaged over for --target-loss
PLAIN_CONTENT_WEIGHT, PLAIN_STYLE_WEIGHT = 1e5, 1e10  # pytorch/examples fast_neural_style defaults
VGG16_RELU4_3 = 23  # torchvision vgg16().features[:23] ends at relu4_3


# ------------------------------------------------------------------------------------------ inputs

def make_style(size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) * (64 / size)
    img = np.stack([0.5 + 0.5 * np.sin(xx * 0.9 + yy * 0.3), 0.5 + 0.5 * np.cos(yy * 0.7),
                    ((xx // 6 + yy // 6) % 2) * 0.8], axis=-1)
    return Image.fromarray((img * 255).round().astype(np.uint8), "RGB")


def make_inputs(args, folder: Path) -> tuple[Path, Path, str]:
    """-> (photo folder, style image, description of the photos)."""
    if args.content:
        from stylize.images import find_images

        content = Path(args.content)
        n = len(find_images(content))
        if not n:
            sys.exit(f"error: no images in {content}")
        desc = f"{n} photos from {content}"
    else:
        content = folder / "photos"
        content.mkdir()
        w, h = args.photo_size
        rng = np.random.default_rng(0)
        for i in range(args.photos):
            synthetic_photo(rng, w, h).save(content / f"photo{i:05d}.jpg", quality=90)
        desc = f"{args.photos} synthetic {w}x{h} JPEGs"
    if args.style:
        style = Path(args.style)
    else:
        style = folder / "style.png"
        make_style(args.style_size).save(style)
    return content, style, desc


def loss_net_weights(choice: str, folder: Path) -> tuple[str | None, str]:
    """-> (VGG-16 state-dict file both paths load, or None for torchvision's cached ImageNet file; words)."""
    import torch

    from stylize.features import vgg

    cached = Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"
    if choice == "imagenet" or (choice == "auto" and cached.is_file()):
        if not cached.is_file():
            sys.exit(f"error: ImageNet VGG-16 weights not cached at {cached}")
        return None, "VGG-16 ImageNet weights"
    features, _ = vgg.random_features("vgg16")
    path = folder / "vgg16_random.pth"
    torch.save(features.state_dict(), path)
    return str(path), "random VGG-16 features (stylize.features.vgg, seed 0; ImageNet weights not cached)"


# ---------------------------------------------------------------------------------- measurement

def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        except OSError:
            pass


def read_peak(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; lifetime peak


def throughput(times: list[float], images: list[int], warmup: int) -> float:
    """Images per second from the end of iteration `warmup` to the end of the last one."""
    return sum(images[warmup:]) / (times[-1] - times[warmup - 1])


# ----------------------------------------------------------------------------------- the paths

def run_plain(spec: dict) -> dict:
    """pytorch/examples fast_neural_style's train loop, on stylize's TransformerNet."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, models, transforms

    from stylize.devices import pick_device
    from stylize.models.networks import NetConfig, TransformerNet

    device = pick_device(spec["device"])
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    size, batch = spec["size"], spec["batch"]
    root = Path(spec["tmp"]) / "imagefolder"  # ImageFolder wants class folders: one, linking to the photos
    root.mkdir(exist_ok=True)
    if not (root / "photos").exists():
        (root / "photos").symlink_to(Path(spec["content"]).resolve(), target_is_directory=True)
    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    loader = DataLoader(datasets.ImageFolder(str(root), transform), batch_size=batch,
                        num_workers=spec["plain_workers"])

    net = TransformerNet(NetConfig(spec["norm"], 1, spec["strength"], spec["width"])).to(device)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    mse = torch.nn.MSELoss()

    if spec["vgg_file"]:
        full = models.vgg16(weights=None, init_weights=False)  # its random init would be overwritten
        full.features.load_state_dict(torch.load(spec["vgg_file"], map_location="cpu", weights_only=True))
    else:
        full = models.vgg16(weights=models.VGG16_Weights.IMAGENET1K_V1)
    cuts = [0, 4, 9, 16, VGG16_RELU4_3]  # relu1_2, relu2_2, relu3_3, relu4_3, as the example slices it
    slices = torch.nn.ModuleList(torch.nn.Sequential(*full.features[a:b]) for a, b in zip(cuts, cuts[1:]))
    del full
    slices.to(device).requires_grad_(False)

    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def vgg(x):
        outs = []
        for s in slices:
            x = s(x)
            outs.append(x)
        return outs

    def gram_matrix(y):
        b, ch, h, w = y.size()
        features = y.view(b, ch, w * h)
        return features.bmm(features.transpose(1, 2)) / (ch * h * w)

    style = Image.open(spec["style"]).convert("RGB")
    if max(style.size) > spec["style_size"]:  # the same style image size as stylize's --style-size
        style.thumbnail((spec["style_size"],) * 2, Image.Resampling.LANCZOS)
    style = transforms.ToTensor()(style).repeat(batch, 1, 1, 1).to(device)
    gram_style = [gram_matrix(f) for f in vgg((style - mean) / std)]

    times, images, losses = [], [], []
    net.train()
    while len(times) < spec["iterations"]:
        for x, _ in loader:
            n_batch = len(x)
            optimizer.zero_grad()
            x = x.to(device)
            y = net(x)
            features_y = vgg((y - mean) / std)
            features_x = vgg((x - mean) / std)
            content_loss = PLAIN_CONTENT_WEIGHT * mse(features_y[1], features_x[1])
            style_loss = 0.0
            for ft_y, gm_s in zip(features_y, gram_style):
                style_loss += mse(gram_matrix(ft_y), gm_s[:n_batch, :, :])
            style_loss *= PLAIN_STYLE_WEIGHT
            total_loss = content_loss + style_loss
            total_loss.backward()
            optimizer.step()
            losses.append(content_loss.item() + style_loss.item())  # read back every step, as the example logs
            times.append(time.perf_counter())
            images.append(n_batch)
            if len(times) == spec["warmup"]:
                reset_peak(device)
            if len(times) == spec["iterations"]:
                break
    peak = read_peak(device)
    return {"per_second": throughput(times, images, spec["warmup"]), "peak_memory_mb": peak,
            "final_loss": sum(losses[-TARGET_WINDOW:]) / len(losses[-TARGET_WINDOW:]), "levers": []}


class _Done(Exception):
    pass


def run_stylize(spec: dict) -> dict:
    """stylize.train.training.train(), stopped from its progress callback once measured."""
    import torch

    from stylize.train import speed
    from stylize.devices import pick_device
    from stylize.settings import TrainConfig
    from stylize.train.training import train

    device = pick_device(spec["device"])
    levers = speed.parse_levers(spec["levers"], device)
    target = spec["target_loss"]
    iterations = max(spec["iterations"], spec["max_iterations"] if target is not None else 0)
    if spec["recipe"]:  # the shipped recipe as `stylize train` runs it: settings.TrainConfig's defaults
        cfg = TrainConfig(style=[spec["style"]], content=spec["content"], iterations=iterations,
                          out=str(Path(spec["tmp"]) / "stylize" / "model.pt"), device=spec["device"],
                          seed=spec["seed"], checkpoint_every=0, sample_every=iterations + 1)
    else:
        cfg = TrainConfig(
            style=[spec["style"]], content=spec["content"], out=str(Path(spec["tmp"]) / "stylize" / "model.pt"),
            norm=spec["norm"], width=spec["width"], all_strengths=spec["strength"], iterations=iterations,
            batch_size=spec["batch"], image_size=spec["size"], style_size=spec["style_size"], loss_net="vgg16",
            vgg_weights=spec["vgg_file"], device=spec["device"], seed=spec["seed"], checkpoint_every=0,
            sample_every=iterations + 1,
            # the plain loop's loss: Gram matrices at the ends of its four slices, content at relu2_2
            style_loss="gram", content_layers=["relu2_2"], style_layers=["relu1_2", "relu2_2", "relu3_3", "relu4_3"])
    times, losses, out = [], [], {"peak_memory_mb": None, "seconds_to_target": None, "iterations_to_target": None}

    def progress(p):
        if p.event != "step":
            return
        times.append(time.perf_counter())
        losses.append(p.losses["total"])
        if p.iteration == spec["warmup"]:
            reset_peak(device)
        if p.iteration == spec["iterations"]:
            out["peak_memory_mb"] = read_peak(device)
        window = losses[-TARGET_WINDOW:]
        if (target is not None and out["seconds_to_target"] is None and len(window) == TARGET_WINDOW
                and sum(window) / TARGET_WINDOW <= target):
            out["seconds_to_target"], out["iterations_to_target"] = times[-1] - start, p.iteration
        if p.iteration >= spec["iterations"] and (target is None or out["seconds_to_target"] is not None):
            raise _Done

    torch.manual_seed(spec["seed"])
    saved = os.environ.get("STYLIZE_CACHE")
    if spec.get("synthetic"):  # the photo cache of throw-away photos goes with them
        os.environ["STYLIZE_CACHE"] = str(Path(spec["tmp"]) / "cache")
    start = time.perf_counter()
    try:
        train(cfg, progress, levers=levers)
    except _Done:
        pass
    finally:
        if saved is None:
            os.environ.pop("STYLIZE_CACHE", None)
        else:
            os.environ["STYLIZE_CACHE"] = saved
    n = spec["iterations"]
    out.update(per_second=throughput(times[:n], [spec["batch"]] * n, spec["warmup"]),
               final_loss=statistics.fmean(losses[max(0, n - TARGET_WINDOW):n]),
               levers=sorted(levers), iterations_run=len(times))
    return out


def recipe_model() -> str:
    from stylize.settings import TrainConfig

    t = TrainConfig()
    return f"recipe: {t.network} w{t.width}, {t.image_size} px"


def child(spec: dict) -> None:
    import torch

    from stylize.devices import pick_device

    result = (run_plain if spec["path"] == "plain" else run_stylize)(spec)
    result.update(threads=torch.get_num_threads(), device_name=device_name(pick_device(spec["device"])))
    print(json.dumps(result))


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def run_child(spec: dict) -> dict:
    env = dict(os.environ, STYLIZE_OFFLINE="1")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"error: the {spec['path']} path failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- main

def print_table(rows: list[dict], notes: list[str]) -> None:
    head = f"{'device':<22} {'model':<24} {'size':>4} {'batch':>5}  {'path':<8} {'levers':<44} " \
           f"{'img/s':>8} {'peak MB':>8} {'ratio':>6} {'to target':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        lev = ",".join(r["levers"]) or "-"
        target = (f"{r['seconds_to_target']:.1f}s" if r.get("seconds_to_target") is not None
                  else ("not hit" if r.get("target_loss") is not None and r["path"] == "stylize" else ""))
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else ""
        print(f"{r['device_name'][:22]:<22} {r['model']:<24} {r['size']:>4} {r['batch']:>5}  {r['path']:<8} "
              f"{lev[:44]:<44} {r['per_second']:>8.2f} {r['peak_memory_mb']:>8.0f} {ratio:>6} {target:>10}")
    for n in notes:
        print(n)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    ap.add_argument("--size", type=int, default=256, help="crop side in pixels")
    ap.add_argument("--batch", default="4,16", help="batch sizes, comma-separated")
    ap.add_argument("--iterations", type=int, default=60, help="iterations per measurement")
    ap.add_argument("--warmup", type=int, default=10, help="iterations left out of the timing")
    ap.add_argument("--norm", default="instance")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--all-strengths", action="store_true", help="train strength-conditioned networks (stylize's default)")
    ap.add_argument("--content", help="folder of training photos (default: --photos synthetic JPEGs)")
    ap.add_argument("--photos", type=int, default=256, help="synthetic photos to make without --content")
    ap.add_argument("--photo-size", default="640x480", help="synthetic photo size, WxH (COCO's usual)")
    ap.add_argument("--style", help="style image (default: a synthetic one)")
    ap.add_argument("--style-size", type=int, default=512, help="longest side of the style image, both paths")
    ap.add_argument("--loss-net", default="auto", choices=("auto", "imagenet", "random"),
                    help="VGG-16 weights for both paths; auto: ImageNet if cached, else random")
    ap.add_argument("--levers", action="append", help="stylize's speed levers: auto (the device's), none, all, "
                    "names, or +name/-name; repeat for more stylize rows")
    ap.add_argument("--plain-workers", type=int, default=0, help="the plain DataLoader's workers (the example: 0)")
    ap.add_argument("--target-loss", type=float, help="also time stylize to this total loss (10-iteration mean)")
    ap.add_argument("--max-iterations", type=int, default=2000, help="give up on the target after this many")
    ap.add_argument("--repeats", type=int, default=1, help="run every measurement this many times; median")
    ap.add_argument("--recipe", action="store_true", help="the stylize rows train the default recipe (its network, "
                    "loss network, crop size and weights: settings.TrainConfig) instead of the plain row's setup")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--in-process", action="store_true", help="run both paths in this process (quick checks; "
                    "plain runs first, so stylize's process-wide switches cannot speed it up)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return []
    batches = [int(b) for b in args.batch.split(",")]
    if not 1 <= args.warmup < args.iterations or args.iterations < TARGET_WINDOW and args.target_loss is not None:
        sys.exit("error: need 1 <= --warmup < --iterations (and --iterations >= 10 with --target-loss)")
    try:
        args.photo_size = tuple(int(v) for v in args.photo_size.lower().split("x"))
    except ValueError:
        sys.exit(f"error: --photo-size {args.photo_size!r}: expected WxH")
    levers = args.levers or ["auto"]

    import torch

    from stylize.devices import pick_device
    from stylize.errors import StylizeError
    from stylize.train import speed

    try:
        device = pick_device(args.device)
        for lv in levers:
            speed.parse_levers(lv, device)
    except StylizeError as e:
        sys.exit(f"error: {e}")
    model = f"TransformerNet {args.norm} w{args.width}" + (" +strength" if args.all_strengths else "")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        content, style, photos = make_inputs(args, tmp)
        vgg_file, vgg_words = loss_net_weights(args.loss_net, tmp)
        base = dict(device=args.device, size=args.size, warmup=args.warmup, iterations=args.iterations,
                    norm=args.norm, width=args.width, strength=args.all_strengths, content=str(content),
                    style=str(style), style_size=args.style_size, vgg_file=vgg_file, seed=0, tmp=str(tmp),
                    plain_workers=args.plain_workers, target_loss=args.target_loss,
                    max_iterations=args.max_iterations, recipe=args.recipe, synthetic=not args.content)
        results: dict[tuple, list[dict]] = {}
        for r in range(args.repeats):
            for b in batches:
                runs = [("plain", "")] + [("stylize", lv) for lv in levers]
                for path, lv in (runs if r % 2 == 0 or args.in_process else runs[::-1]):  # alternate between repeats
                    print(f"repeat {r + 1}/{args.repeats}: {path} {lv} batch {b}", file=sys.stderr, flush=True)
                    spec = dict(base, path=path, batch=b, levers=lv)
                    if args.in_process:
                        result = (run_plain if path == "plain" else run_stylize)(spec)
                        result.update(threads=torch.get_num_threads(), device_name=device_name(device))
                    else:
                        result = run_child(spec)
                    results.setdefault((b, path, lv), []).append(result)
    rows = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for (b, path, lv), runs in results.items():
        med = sorted(runs, key=lambda x: x["per_second"])[len(runs) // 2]
        recipe = path == "stylize" and args.recipe
        row = dict(device=device.type, device_name=med["device_name"], size=args.size, batch=b,
                   model=recipe_model() if recipe else model,
                   path=path, per_second=round(statistics.median(x["per_second"] for x in runs), 3),
                   peak_memory_mb=round(med["peak_memory_mb"], 1), levers=med["levers"], loss_net=vgg_words,
                   photos=photos, iterations=args.iterations, warmup=args.warmup, repeats=args.repeats,
                   threads=med["threads"], final_loss=med["final_loss"], torch=str(torch.__version__),
                   load_average=load, plain_workers=args.plain_workers if path == "plain" else None)
        if path == "stylize":
            plain = statistics.median(x["per_second"] for x in results[(b, "plain", "")])
            row.update(ratio=round(row["per_second"] / plain, 3), target_loss=args.target_loss,
                       seconds_to_target=med.get("seconds_to_target"),
                       iterations_to_target=med.get("iterations_to_target"))
        rows.append(row)
    rows.sort(key=lambda r: (r["batch"], r["path"] != "plain"))
    notes = [f"photos: {photos}; loss network: {vgg_words}; {rows[0]['threads']} threads; "
             f"{args.iterations} iterations, first {args.warmup} not timed; load average {load:.2f}"
             if load is not None else f"photos: {photos}; loss network: {vgg_words}"]
    print_table(rows, notes)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()

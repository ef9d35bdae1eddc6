"""The normalization study: why instance norm is the choice for stylization, measured and shown.

Trains one style under one budget with every --norm of the transformer network (instance, batch,
layer, group, none, and ibn: instance norm in the encoder, batch norm after it), on the network
whose every layer normalizes (`light-instance`; the shipped `light` network normalizes in its encoder
only), then measures on photos none of the runs trained on. The networks are the paper's, without strength conditioning
(whose output adds the photo itself, so it could not be invariant to the photo's brightness):
  - the loss curves of all runs in one plot (losses.png);
  - held-out content and style losses (the training loss network) and quality.py's style_match and
    structure, the same photos through each model side by side (side_by_side.jpg);
  - batch dependence: one photo's output alone in evaluation mode, alone in training mode (batch
    statistics), and in training mode inside a batch of 16 different photos (does it change with its
    neighbours?); mean absolute difference in 0-255 levels (batch.jpg shows the batch-norm case);
  - contrast invariance: the photo darkened to half, and at half its contrast, against the photo,
    each through the model (contrast.jpg); instance norm should give nearly the same stylization.
Models that apply (`--reference NAME=MODEL[:STYLE]`, e.g. the shipped multi-style model's style of
the same painting, or the arbitrary model with the painting) are measured beside them, not trained.

  python studies/norm_study.py --style starry_night.jpg --content TRAIN_DIR --heldout P [P ...] \
      --out-dir docs/normalization [--iterations 1000] [--reference conditional=masters:starry_night]

Runs already trained in --out-dir are reused (delete a model to retrain it); report.json has every
figure. Machine and wall time of each run are in report.json too.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from bench.common import QUALITY, ROOT, load_quality  # noqa: E402
from stylize.images import load_style  # noqa: E402
from stylize.images import load_image, save_pil, to_pil  # noqa: E402
from stylize.apply.engines.pytorch import load_stylizer  # noqa: E402
from stylize.features.losses import PerceptualLoss  # noqa: E402
from stylize.settings import LOSS_NET_LAYERS, TrainConfig  # noqa: E402
from stylize.apply.sheet import tile_grid  # noqa: E402
from stylize.train.training import train  # noqa: E402
from stylize.features.vgg import loss_network  # noqa: E402

NORMS = ["instance", "batch", "layer", "group", "none", "ibn"]


def train_runs(args) -> dict[str, dict]:
    runs = {}
    for norm in args.norms:
        out = args.out_dir / f"{norm}.pt"
        if not out.exists():
            cfg = TrainConfig(style=[str(args.style)], content=str(args.content), out=str(out), norm=norm,
                              network="light-instance", all_strengths=False, iterations=args.iterations, seed=0,
                              sample_every=args.iterations, checkpoint_every=0, teacher=args.teacher)
            bar = tqdm(total=args.iterations, desc=norm, unit="it")
            t0 = time.perf_counter()
            train(cfg, lambda p: bar.update(1) if p.event == "step" else None)
            bar.close()
            (args.out_dir / f"{norm}.seconds").write_text(f"{time.perf_counter() - t0:.0f}")
        seconds = args.out_dir / f"{norm}.seconds"
        runs[norm] = {"model": str(out), "seconds": float(seconds.read_text()) if seconds.exists() else None}
    return runs


def loss_plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = ("content", "style")
    for norm, run in runs.items():
        with open(Path(run["model"]).with_name(Path(run["model"]).stem + "_run") / "losses.csv") as f:
            rows = list(csv.DictReader(f))
        it = [int(r["iteration"]) for r in rows]
        if "style" not in rows[0]:  # distilled (--teacher): its terms are the pixel and feature distances
            keys = ("pixel", "content")
        for ax, key in zip(axes, keys):
            v = torch.tensor([float(r[key]) for r in rows])
            smooth = torch.nn.functional.avg_pool1d(v[None, None], 25, 1, 12, count_include_pad=False)[0, 0]
            ax.plot(it, smooth.numpy(), label=norm)
    for ax, key in zip(axes, keys):
        ax.set_title(f"{key} loss (training batches, moving mean of 25)")
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def stylizers(runs: dict, references: list[str]) -> dict[str, tuple]:
    out = {norm: (load_stylizer(r["model"], "cpu"), None) for norm, r in runs.items()}
    for ref in references:
        name, _, spec = ref.partition("=")
        model, _, style = spec.partition(":")
        out[name] = (load_stylizer(model, "cpu"), style or None)
    return out


def run(s, style, x: torch.Tensor) -> torch.Tensor:
    return s(x, s.condition([style]) if style else None)


@torch.no_grad()
def heldout(models, photos, args, score) -> dict:
    taps = LOSS_NET_LAYERS["efficientnet-lite0"]
    loss = PerceptualLoss(loss_network("efficientnet-lite0", taps[0] + taps[1]), *taps)
    loss.set_styles([load_style(args.style, 1024)[1]])
    figures, rows = {}, []
    out = args.out_dir / "outputs"
    out.mkdir(exist_ok=True)
    for name, (s, style) in models.items():
        content, styl, match, structure = [], [], [], []
        for p, x in photos:
            y = run(s, style, x).clamp(0, 1)
            terms = loss(y[None], x[None])
            content.append(float(terms["content"]))
            styl.append(float(terms["style"]))
            path = save_pil(to_pil(y), out / f"{name}_{Path(p).stem}.png")
            q = score(str(p), str(args.style), str(path))
            match.append(q["style_match"])
            structure.append(q["structure"])
        n = len(photos)
        figures[name] = {"content_loss": sum(content) / n, "style_loss": sum(styl) / n,
                         "style_match": sum(match) / n, "structure": sum(structure) / n}
    for p, x in photos[:3]:
        rows.append([(to_pil(x), Path(p).stem)] + [(Image.open(out / f"{name}_{Path(p).stem}.png"), name)
                                                  for name in models])
    save_pil(tile_grid(rows), args.out_dir / "side_by_side.jpg", quality=88)
    return figures


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.clamp(0, 1) - b.clamp(0, 1)).abs().mean() * 255)


@torch.no_grad()
def batch_dependence(models, crops) -> dict:
    """One photo (crops[0]) alone in eval mode, alone in training mode, among 15 others in training mode."""
    figures, picture = {}, None
    for name, (s, style) in models.items():
        if style is not None or not hasattr(s, "net"):
            continue
        net, x = s.net, torch.stack(crops)
        net.eval()
        alone_eval = net(x[:1])
        net.train()
        alone_train, in_batch = net(x[:1]), net(x)[:1]
        net.eval()
        figures[name] = {"eval_vs_train_mode": levels(alone_eval, alone_train),
                         "alone_vs_batch_of_16": levels(alone_train, in_batch)}
        if name == "batch":
            picture = [(to_pil(crops[0]), "photo"), (to_pil(alone_eval[0].clamp(0, 1)), "eval mode"),
                       (to_pil(alone_train[0].clamp(0, 1)), "train mode, alone"),
                       (to_pil(in_batch[0].clamp(0, 1)), "train mode, batch of 16")]
    return figures, picture


@torch.no_grad()
def contrast(models, photo: torch.Tensor) -> tuple[dict, list]:
    dark = photo * 0.5
    flat = (photo - photo.mean()) * 0.5 + photo.mean()
    figures, rows = {}, [[(to_pil(photo), "photo"), (to_pil(dark), "darkened to half"),
                          (to_pil(flat), "half the contrast")]]
    for name, (s, style) in models.items():
        y, yd, yf = (run(s, style, v) for v in (photo, dark, flat))
        figures[name] = {"darkened": levels(y, yd), "low_contrast": levels(y, yf)}
        rows.append([(to_pil(y.clamp(0, 1)), f"{name}"), (to_pil(yd.clamp(0, 1)), f"{name}, dark photo"),
                     (to_pil(yf.clamp(0, 1)), f"{name}, flat photo")])
    return figures, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", type=Path, required=True)
    ap.add_argument("--content", type=Path, required=True)
    ap.add_argument("--heldout", type=Path, nargs="+", required=True)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "normalization")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--norms", nargs="+", default=NORMS)
    ap.add_argument("--teacher", help="train by distillation from this WCT model (e.g. wct; train --teacher)")
    ap.add_argument("--reference", action="append", default=[])
    ap.add_argument("--size", type=int, default=512, help="held-out photos: longest side")
    ap.add_argument("--quality", type=Path, default=QUALITY)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runs = train_runs(args)
    loss_plot(runs, args.out_dir / "losses.png")
    models = stylizers(runs, args.reference)
    photos = [(p, load_image(p, max_size=args.size)[0]) for p in args.heldout]
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "iterations": args.iterations, "teacher": args.teacher, "runs": runs,
              "heldout": heldout(models, photos, args, load_quality(args.quality))}
    crops = []
    for p in sorted(args.content.glob("*.jpg"))[:16]:
        x = load_image(p)[0]
        top, left = (x.shape[1] - 256) // 2, (x.shape[2] - 256) // 2
        crops.append(x[:, top:top + 256, left:left + 256] if min(x.shape[1:]) >= 256 else x[:, :256, :256])
    report["batch_dependence"], picture = batch_dependence(models, crops)
    if picture:
        save_pil(tile_grid([picture]), args.out_dir / "batch.jpg", quality=88)
    report["contrast"], rows = contrast(models, photos[0][1])
    save_pil(tile_grid(rows), args.out_dir / "contrast.jpg", quality=88)
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("heldout", "batch_dependence", "contrast")}, indent=1))


if __name__ == "__main__":
    main()

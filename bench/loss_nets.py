"""Offline loss networks compared by the stylizations they produce (issue 7).

Every candidate drives the same procedure, and only its outputs are judged, never its own loss value:
  1. Gatys-style optimisation: Adam on the pixels, starting from the photo, content + style + TV loss
     with the training defaults' weights (settings.TrainConfig), on held-out BSDS500 test photos and
     paintings not used for tuning;
  2. optionally (--train), a short feed-forward training per loss network named in --train-nets,
     applied to held-out photos.
Outputs are scored with the network-free figures of quality.py (style_match: how much of the
photo-to-painting gap in colour-patch distributions the output closes; structure: how well the photo's
edges survive). Writes OUT/table.md, OUT/results.json, every output PNG and side-by-side sheets.

  python bench/loss_nets.py --out-dir runs/loss_nets            # the whole comparison, 2 processes
  python bench/loss_nets.py --candidates random,random-cov --photos 1 --styles mosaic.jpg   # a subset

Each process runs one thread; `--jobs` sets how many run at once.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUALITY = Path(__file__).resolve().parents[2] / "shared" / "tools" / "quality.py"
# Held-out paintings: not used for tuning (starry_night, mosaic were), nor reserved for the CIN study.
STYLES = ("candy.jpg", "picasso_self_portrait.jpg", "brushstrokes.jpg")
TUNING_STYLES = ("starry_night.jpg", "mosaic.jpg")
PHOTOS = ("100007.jpg", "108004.jpg", "119082.jpg")  # BSDS500 test


# ---------------------------------------------------------------------------------------------------
# Candidate loss networks. Each maps an RGB image in [0, 1] to a dict of named feature maps.
# ---------------------------------------------------------------------------------------------------

class Ensemble(nn.Module):
    """Several networks side by side; their taps are suffixed @k."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x):
        return {f"{k}@{i}": v for i, net in enumerate(self.nets) for k, v in net(x).items()}


class RandomBank(nn.Module):
    """One layer of random filters of several sizes applied to an image pyramid (after Ustyuzhaninov
    et al. 2017, whose single multi-scale random layer matched VGG on texture synthesis). Filters of
    side k at pyramid level l cover k * 2**l pixels; the pyramid keeps large filters affordable."""

    def __init__(self, sizes=(3, 7, 11), levels=4, channels=128, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.levels = levels
        self.convs = nn.ModuleList()
        for k in sizes:
            conv = nn.Conv2d(3, channels, k, padding=k // 2, padding_mode="replicate", bias=False)
            w = torch.randn(conv.weight.shape, generator=g)
            w -= w.mean(dim=(1, 2, 3), keepdim=True)  # zero-mean: respond to patterns, not brightness alone
            conv.weight.data.copy_(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            self.convs.append(conv)
        self.sizes = sizes
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x):
        x = (x - self.mean) / self.std
        out = {}
        for level in range(self.levels):
            if level:
                x = F.avg_pool2d(x, 2)
            for k, conv in zip(self.sizes, self.convs):
                out[f"k{k}_l{level}"] = F.relu(conv(x))
        return out


def random_vgg(seed=0, pool="max"):
    from stylize import vgg

    features, desc = vgg.random_features("vgg19", seed)
    if pool == "avg":
        features = nn.Sequential(*[nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m for m in features])
    return features, desc


def vgg_taps(built, taps):
    from stylize.vgg import VGGFeatures

    features, desc = built
    return VGGFeatures(features, taps, desc)


JOHNSON = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]  # stylize's default taps (VGG-16 names)
GATYS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@dataclass
class Candidate:
    name: str
    what: str
    build: object  # () -> module
    content: list
    style: list
    stat: str = "gram"  # gram | cov (mean + centred Gram) | swd (sliced Wasserstein on features)
    color: float = 0.0  # weight of a sliced-Wasserstein term on pixel colours, as one more style layer
    scales: tuple = (1,)  # style loss also on the image downsampled by these factors
    pool: int = 4  # swd: random directions kept per channel; each step uses as many as there are channels
    library: str | None = None  # --loss-net name when the candidate is offered by stylize


def _vgg(taps, seed=0, pool="max", seeds=1):
    def build():
        nets = [vgg_taps(random_vgg(seed + i, pool), taps) for i in range(seeds)]
        return nets[0] if seeds == 1 else Ensemble(nets)
    return build


def _suffix(layers, seeds):
    return layers if seeds == 1 else [f"{l}@{i}" for i in range(seeds) for l in layers]


def candidates() -> dict[str, Candidate]:
    bank_style = [f"k{k}_l{l}" for k in (3, 7, 11) for l in range(4)]
    c = [
        Candidate("random", "today's --loss-net random: VGG-19, seed 0, max pool, Gram at relu1_2..relu4_3",
                  _vgg(["relu2_2"] + JOHNSON), ["relu2_2"], JOHNSON, library="random"),
        Candidate("random-avg", "as random, average pooling", _vgg(["relu2_2"] + JOHNSON, pool="avg"),
                  ["relu2_2"], JOHNSON),
        Candidate("random-gatys", "as random, Gram at relu1_1..relu5_1 (Gatys' layers)",
                  _vgg(["relu2_2"] + GATYS), ["relu2_2"], GATYS),
        Candidate("random-cov", "as random, mean + centred Gram (covariance) per layer",
                  _vgg(["relu2_2"] + JOHNSON), ["relu2_2"], JOHNSON, stat="cov"),
        Candidate("random-swd", "as random, sliced Wasserstein on features (Heitz et al. 2021) for Gram",
                  _vgg(["relu2_2"] + JOHNSON), ["relu2_2"], JOHNSON, stat="swd"),
        Candidate("random-avg-swd", "as random-swd, average pooling",
                  _vgg(["relu2_2"] + JOHNSON, pool="avg"), ["relu2_2"], JOHNSON, stat="swd"),
        Candidate("random-swd-fixed", "as random-swd, one fixed direction per channel (no resampling)",
                  _vgg(["relu2_2"] + JOHNSON), ["relu2_2"], JOHNSON, stat="swd", pool=1),
        Candidate("random-avg-cov", "as random-cov, average pooling",
                  _vgg(["relu2_2"] + JOHNSON, pool="avg"), ["relu2_2"], JOHNSON, stat="cov"),
        Candidate("random-color", "as random, plus a sliced-Wasserstein colour term",
                  _vgg(["relu2_2"] + JOHNSON), ["relu2_2"], JOHNSON, color=1.0),
        Candidate("random-ms", "as random, style loss also at half resolution",
                  _vgg(["relu2_2"] + JOHNSON), ["relu2_2"], JOHNSON, scales=(1, 2)),
        Candidate("random-3seeds", "three random VGG-19s (seeds 0-2), losses averaged",
                  _vgg(["relu2_2"] + JOHNSON, seeds=3), _suffix(["relu2_2"], 3), _suffix(JOHNSON, 3)),
        Candidate("bank", "one random layer, 3/7/11 px filters x 128 on a 4-level pyramid, Gram",
                  lambda: RandomBank(), ["k3_l0", "k7_l0"], bank_style),
        Candidate("bank-cov", "as bank, mean + centred Gram", lambda: RandomBank(), ["k3_l0", "k7_l0"],
                  bank_style, stat="cov"),
    ]
    return {x.name: x for x in c}


# ---------------------------------------------------------------------------------------------------
# Style statistics and the objective
# ---------------------------------------------------------------------------------------------------

def rel(a, b):
    return (a - b).pow(2).sum() / b.pow(2).sum().clamp_min(1e-8)


def stats(f, kind):
    b, c, h, w = f.shape
    f = f.reshape(b, c, h * w)
    if kind == "gram":
        return (f @ f.transpose(1, 2) / (h * w),)
    mean = f.mean(2, keepdim=True)
    d = f - mean
    return mean.squeeze(2), d @ d.transpose(1, 2) / (h * w)


def sliced_w2(f, target, g):
    """Squared sliced Wasserstein-2 distance between the feature vectors of f (1, C, H, W) and of
    target (1, C, H', W'), relative to the target's projections' size; random directions per call."""
    c = f.shape[1]
    dirs = torch.randn(c, c, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    py = torch.sort(dirs.T @ f.reshape(c, -1), dim=1)[0]
    pt = torch.sort(dirs.T @ target.reshape(c, -1), dim=1)[0]
    if pt.shape[1] != py.shape[1]:  # compare quantiles
        idx = torch.linspace(0, pt.shape[1] - 1, py.shape[1]).round().long()
        pt = pt[:, idx]
    return (py - pt).pow(2).mean() / pt.pow(2).mean().clamp_min(1e-8)


class SlicedTarget:
    """The style's feature distribution along a fixed pool of random directions, as quantiles, so a
    step only projects and sorts the output's features (resampling directions and sorting the style's
    features every step, as Heitz et al. do, cost 6x the Gram loss here)."""

    def __init__(self, t, g, pool=4, levels=1024):
        c = t.shape[1]
        d = torch.randn(c, pool * c, generator=g)
        self.dirs = d / d.norm(dim=0, keepdim=True)
        p = torch.sort(self.dirs.T @ t.reshape(c, -1), dim=1)[0]
        idx = torch.linspace(0, p.shape[1] - 1, min(levels, p.shape[1])).round().long()
        self.q = p[:, idx]

    def loss(self, f, g):
        c = f.shape[1]
        pick = torch.randperm(self.dirs.shape[1], generator=g)[:c]
        py = torch.sort(self.dirs[:, pick].T @ f.reshape(c, -1), dim=1)[0]
        pt = F.interpolate(self.q[pick][None], size=py.shape[1], mode="linear", align_corners=True)[0]
        return (py - pt).pow(2).mean() / pt.pow(2).mean().clamp_min(1e-8)


class Objective:
    def __init__(self, cand: Candidate, net, style: torch.Tensor, seed=0):
        self.c, self.net = cand, net
        self.g = torch.Generator().manual_seed(seed)
        self.targets = {}
        with torch.no_grad():
            for s in cand.scales:
                img = style if s == 1 else F.avg_pool2d(style, s)
                f = net(img)
                for l in cand.style:
                    self.targets[s, l] = (SlicedTarget(f[l], self.g, cand.pool) if cand.stat == "swd"
                                          else stats(f[l], cand.stat))
        self.style_img = style

    def __call__(self, y, content_feats):
        c = self.c
        total_style, n = 0.0, 0
        for s in c.scales:
            fy = self.net(y if s == 1 else F.avg_pool2d(y, s))
            if s == 1:
                content = sum(rel(fy[l], content_feats[l]) for l in c.content) / len(c.content)
            for l in c.style:
                t = self.targets[s, l]
                if c.stat == "swd":
                    total_style = total_style + t.loss(fy[l], self.g)
                else:
                    total_style = total_style + sum(rel(a, b) for a, b in zip(stats(fy[l], c.stat), t)) / len(t)
                n += 1
        if c.color:
            total_style = total_style + c.color * sliced_w2(y, self.style_img, self.g)
            n += 1
        return content, total_style / n


def tv(y):
    return (y[:, :, 1:] - y[:, :, :-1]).pow(2).mean() + (y[:, :, :, 1:] - y[:, :, :, :-1]).pow(2).mean()


def load(path, side):
    from stylize.images import load_image

    x, _ = load_image(path)
    s = side / max(x.shape[-2:])
    size = (round(x.shape[1] * s), round(x.shape[2] * s))
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)


def optimise(cand: Candidate, photo: Path, style: Path, out: Path, size: int, steps: int, lr: float,
             style_weight: float) -> dict:
    from stylize.images import save_image
    from stylize.settings import TrainConfig

    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg = TrainConfig()
    net = cand.build()
    x, s = load(photo, size), load(style, 2 * size)  # the painting at twice the photo's size, as in training
    obj = Objective(cand, net, s)
    with torch.no_grad():
        cf = {k: v for k, v in net(x).items() if k in cand.content}
    y = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=lr)
    for _ in range(steps):
        content, style_term = obj(y, cf)
        loss = cfg.content_weight * content + style_weight * style_term + cfg.tv_weight * tv(y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            y.clamp_(0, 1)
    save_image(y.detach()[0], out)
    return {"seconds": round(time.perf_counter() - t0, 1)}


def _task(args):
    name, photo, style, out, size, steps, lr, sw = args
    torch.set_num_threads(1)
    info = out.with_suffix(".json")
    if out.exists() and info.exists():
        return json.loads(info.read_text())
    r = optimise(candidates()[name], Path(photo), Path(style), out, size, steps, lr, sw)
    info.write_text(json.dumps(r))
    return r


# ---------------------------------------------------------------------------------------------------

def quality_module(path: Path):
    spec = importlib.util.spec_from_file_location("quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def as_png(src: Path, dst: Path, side: int) -> Path:
    from PIL import Image

    if not dst.exists():
        im = Image.open(src).convert("RGB")
        im.thumbnail((side, side), Image.BICUBIC)
        im.save(dst)
    return dst


def sheet(rows: list[list[Path]], labels: list[str], path: Path, cell: int = 192):
    """Rows of images side by side, with the column labels on top."""
    from PIL import Image, ImageDraw

    heights = [max(Image.open(p).height * cell // Image.open(p).width for p in r) for r in rows]
    canvas = Image.new("RGB", (cell * len(labels), 14 + sum(heights) + 2 * len(rows)), "white")
    d = ImageDraw.Draw(canvas)
    for i, lab in enumerate(labels):
        d.text((i * cell + 3, 2), lab, fill="black")
    y = 14
    for r, h in zip(rows, heights):
        for i, p in enumerate(r):
            im = Image.open(p).convert("RGB")
            im = im.resize((cell, im.height * cell // im.width), Image.BICUBIC)
            canvas.paste(im, (i * cell, y))
        y += h + 2
    canvas.save(path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="runs/loss_nets")
    ap.add_argument("--candidates", default=",".join(candidates()), help="comma-separated; default: all")
    ap.add_argument("--photos", default=",".join(PHOTOS), help="BSDS500 test file names, or paths")
    ap.add_argument("--styles", default=",".join(STYLES), help="file names in the styles folder, or paths")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--quality", default=str(QUALITY), help="path of quality.py")
    ap.add_argument("--size", type=int, default=192, help="longest side of the photos")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--style-weight", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    from stylize.settings import TrainConfig

    sw = TrainConfig().style_weight if args.style_weight is None else args.style_weight
    data = Path(args.data)
    photos = [Path(p) if "/" in p else data / "content" / "bsds500" / "test" / p for p in args.photos.split(",")]
    styles = [Path(s) if "/" in s else data / "styles" / s for s in args.styles.split(",")]
    names = args.candidates.split(",")
    unknown = set(names) - set(candidates())
    if unknown:
        raise SystemExit(f"unknown candidate(s): {', '.join(sorted(unknown))}; known: {', '.join(candidates())}")
    out = Path(args.out_dir)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    tag = f"s{args.size}_n{args.steps}_lr{args.lr:g}_w{sw:g}"
    tasks = []
    for n in names:
        (out / n).mkdir(exist_ok=True)
        for p in photos:
            for s in styles:
                tasks.append((n, str(p), str(s), out / n / f"{p.stem}__{s.stem}__{tag}.png",
                              args.size, args.steps, args.lr, sw))
    t0 = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            timings = pool.map(_task, tasks, chunksize=1)
    else:
        timings = [_task(t) for t in tasks]
    wall = time.perf_counter() - t0

    q = quality_module(Path(args.quality))
    results = {}
    for t, tm in zip(tasks, timings):
        n, p, s, o = t[:4]
        r = q.score(p, s, str(o))
        results.setdefault(n, []).append({"photo": Path(p).name, "style": Path(s).name, **r, **tm})
    cands = candidates()
    lines = [f"Gatys optimisation: {len(photos)} photos x {len(styles)} styles, {args.size} px, {args.steps} Adam "
             f"steps (lr {args.lr:g}), style weight {sw:g}; wall {wall / 60:.1f} min with {args.jobs} process(es)", "",
             "| candidate | style_match | structure | s/image | what |", "|---|---|---|---|---|"]
    for n in names:
        rs = results[n]
        m = {k: sum(r[k] for r in rs) / len(rs) for k in ("style_match", "structure", "seconds")}
        lines.append(f"| {n} | {m['style_match']:.3f} | {m['structure']:.3f} | {m['seconds']:.0f} | {cands[n].what} |")
    per_style = ["", "| candidate | " + " | ".join(s.stem for s in styles) + " |", "|---" * (len(styles) + 1) + "|"]
    for n in names:
        cells = []
        for s in styles:
            rs = [r for r in results[n] if r["style"] == s.name]
            cells.append(f"{sum(r['style_match'] for r in rs) / len(rs):.3f} / "
                         f"{sum(r['structure'] for r in rs) / len(rs):.3f}")
        per_style.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(lines + ["", "style_match / structure per style:"] + per_style) + "\n"
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table)
    for p in photos:
        rows = []
        for s in styles:
            rows.append([as_png(p, out / "inputs" / f"{p.stem}.png", 512),
                         as_png(s, out / "inputs" / f"{s.stem}.png", 512)]
                        + [out / n / f"{p.stem}__{s.stem}__{tag}.png" for n in names])
        print(sheet(rows, ["photo", "style"] + names, out / f"sheet_{p.stem}_{tag}.png"))


if __name__ == "__main__":
    main()

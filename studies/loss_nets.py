"""Offline loss networks compared by the stylizations they produce (issue 7).

Every candidate drives the same procedures and only its outputs are judged, never its own loss value:
  tuning   Gatys-style optimisation (Adam on the pixels from the photo, 100 steps, 192 px; content 1,
           style 10 unless the candidate says otherwise, TV 10) of one BSDS500 val photo with the two
           tuning paintings (starry_night, mosaic), for every candidate;
  heldout  the same for the finalists on BSDS500 test photos and three paintings never tuned on
           (candy, picasso_self_portrait, brushstrokes);
  docs     the README's picture: examples/ photos with Starry Night;
  train    short feed-forward trainings (stylize train) with the old and new offline loss, applied
           to held-out photos.
Outputs are scored with ../shared/tools/quality.py (style_match: how much of the photo-to-painting gap
in colour-patch distributions the output closes; structure: how well the photo's edges survive) and
with `speckle`, the fine noise a stylization adds (see speckle()). Each phase writes OUT/PHASE/table.md,
results.json, every output PNG and side-by-side sheets; outputs already there are reused.

  python studies/loss_nets.py --out-dir runs/loss_nets              # every phase, 2 processes
  python studies/loss_nets.py --phase tuning --candidates random-gram,random-cov --styles mosaic.jpg

Each process runs one thread; `--jobs` sets how many run at once.
"""
from __future__ import annotations

import argparse
import sys
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from bench.common import QUALITY, SHARED, quality_module  # noqa: E402

DATA = SHARED / "data"
# Held-out paintings: not tuned on (starry_night and mosaic were), nor reserved as held-out elsewhere.
STYLES = ("candy.jpg", "picasso_self_portrait.jpg", "brushstrokes.jpg")
TUNING_STYLES = ("starry_night.jpg", "mosaic.jpg")


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
    from stylize.features import vgg

    features, desc = vgg.random_features("vgg19", seed)
    if pool == "avg":
        features = nn.Sequential(*[nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m for m in features])
    return features, desc


def vgg_taps(built, taps):
    from stylize.features.vgg import VGGFeatures

    features, desc = built
    return VGGFeatures(features, taps, desc)


JOHNSON = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]  # stylize's default taps (VGG-16 names)
GATYS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@dataclass
class Candidate:
    name: str
    what: str
    build: object  # () -> module; unused for library candidates
    content: list
    style: list
    stat: str = "gram"  # gram | cov (mean + centred Gram) | swd (sliced Wasserstein on features)
    color: float = 0.0  # weight of a sliced-Wasserstein term on pixel colours, as one more style layer
    scales: tuple = (1,)  # style loss also on the image downsampled by these factors
    weight: float | None = None  # style loss weight; None: --style-loss-weight
    resample: str = "pool"  # swd: pool (a random C of 4C directions per step), fixed (C), fresh (Heitz)
    library: tuple | None = None  # (loss_net, style_loss): run through stylize's own PerceptualLoss


def _vgg(taps, seed=0, pool="max", seeds=1):
    def build():
        nets = [vgg_taps(random_vgg(seed + i, pool), taps) for i in range(seeds)]
        return nets[0] if seeds == 1 else Ensemble(nets)
    return build


def _suffix(layers, seeds):
    return layers if seeds == 1 else [f"{l}@{i}" for i in range(seeds) for l in layers]


def candidates() -> dict[str, Candidate]:
    bank_style = [f"k{k}_l{l}" for k in (3, 7, 11) for l in range(4)]
    v, cl = _vgg(["relu2_2"] + JOHNSON), ["relu2_2"]
    c = [
        Candidate("random-gram", "before: --loss-net random --style-loss gram (VGG-19, seed 0, Gram at "
                  "relu1_2..relu4_3)", None, cl, JOHNSON, library=("random", "gram")),
        Candidate("random-sliced", "now: --loss-net random (style loss auto = sliced Wasserstein, "
                  "Heitz et al. 2021)", None, cl, JOHNSON, library=("random", "sliced")),
        Candidate("random-avg", "Gram, average pooling", _vgg(["relu2_2"] + JOHNSON, pool="avg"), cl, JOHNSON),
        Candidate("random-gatys", "Gram at relu1_1..relu5_1 (Gatys' layers)", _vgg(["relu2_2"] + GATYS), cl, GATYS),
        Candidate("random-cov", "mean + centred Gram (covariance) per layer", v, cl, JOHNSON, stat="cov"),
        Candidate("random-color", "Gram plus a sliced-Wasserstein term on pixel colours", v, cl, JOHNSON, color=1.0),
        Candidate("random-ms", "Gram, style loss also at half resolution", v, cl, JOHNSON, scales=(1, 2)),
        Candidate("random-3seeds", "Gram on three random VGG-19s (seeds 0-2), averaged",
                  _vgg(["relu2_2"] + JOHNSON, seeds=3), _suffix(cl, 3), _suffix(JOHNSON, 3)),
        Candidate("bank-cov", "one random layer: 3/7/11 px filters x 128 on a 4-level pyramid (after "
                  "Ustyuzhaninov et al.), mean + centred Gram", lambda: RandomBank(), ["k3_l0", "k7_l0"],
                  bank_style, stat="cov"),
        Candidate("bank-cov-w100", "bank-cov, style weight 100", lambda: RandomBank(), ["k3_l0", "k7_l0"],
                  bank_style, stat="cov", weight=100.0),
        Candidate("sliced-fixed", "sliced, one fixed set of C directions per layer", v, cl, JOHNSON, stat="swd",
                  resample="fixed"),
        Candidate("sliced-fresh", "sliced, fresh directions every step (Heitz et al.; 4-6x slower)", v, cl,
                  JOHNSON, stat="swd", resample="fresh"),
        Candidate("sliced-avg", "sliced, average pooling", _vgg(["relu2_2"] + JOHNSON, pool="avg"), cl, JOHNSON,
                  stat="swd"),
        Candidate("sliced-color", "sliced plus the pixel-colour term", v, cl, JOHNSON, stat="swd", color=1.0),
        Candidate("sliced-w3", "sliced, style weight 3", v, cl, JOHNSON, stat="swd", weight=3.0),
        Candidate("gram-w30", "random-gram, style weight 30", None, cl, JOHNSON, library=("random", "gram"),
                  weight=30.0),
        Candidate("gram-w100", "random-gram, style weight 100", None, cl, JOHNSON, library=("random", "gram"),
                  weight=100.0),
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


class SlicedTarget:
    """A style layer's feature distribution for the sliced loss, with the directions chosen as in
    stylize.features.losses (pool) or as the alternatives measured against it (fixed, fresh)."""

    def __init__(self, t, resample="pool", seed=0):
        from stylize.features.losses import SLICED_POOL, quantiles, sliced_directions, sorted_projections

        c = t.shape[1]
        self.t, self.resample = t, resample
        self.dirs = sliced_directions(c, c if resample == "fixed" else SLICED_POOL * c, seed)
        self.q = quantiles(sorted_projections(t, self.dirs))

    def loss(self, f, g):
        from stylize.features.losses import quantiles, sliced_distance, sorted_projections

        c = f.shape[1]
        if self.resample == "fresh":  # new directions every step: the style's features are re-sorted too
            d = torch.randn(c, c, generator=g)
            d = d / d.norm(dim=0, keepdim=True)
            return sliced_distance(sorted_projections(f, d), quantiles(sorted_projections(self.t, d))).sum()
        pick = torch.randperm(self.dirs.shape[1], generator=g)[:c]
        return sliced_distance(sorted_projections(f, self.dirs[:, pick]), self.q[:, pick]).sum()


def color_term(y, style, g):
    """Sliced Wasserstein distance between the pixel colours of y and of the style."""
    from stylize.features.losses import quantiles, sliced_distance, sorted_projections, sliced_directions

    d = sliced_directions(3, 3, int(torch.randint(1 << 30, (1,), generator=g)))
    return sliced_distance(sorted_projections(y, d), quantiles(sorted_projections(style, d))).sum()


class Objective:
    """The content and style terms of one candidate, for one style image."""

    def __init__(self, cand: Candidate, style: torch.Tensor, seed=0):
        self.c, self.net = cand, cand.build()
        self.g = torch.Generator().manual_seed(seed)
        self.targets = {}
        with torch.no_grad():
            for s in cand.scales:
                f = self.net(style if s == 1 else F.avg_pool2d(style, s))
                for l in cand.style:
                    self.targets[s, l] = (SlicedTarget(f[l], cand.resample) if cand.stat == "swd"
                                          else stats(f[l], cand.stat))
        self.style_img = style

    def content_features(self, x):
        with torch.no_grad():
            return {k: v for k, v in self.net(x).items() if k in self.c.content}

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
            total_style = total_style + c.color * color_term(y, self.style_img, self.g)
            n += 1
        return content, total_style / n


class LibraryObjective:
    """The same terms computed by stylize's own PerceptualLoss, as training computes them."""

    def __init__(self, cand: Candidate, style: torch.Tensor, seed=0):
        from stylize.features.losses import PerceptualLoss
        from stylize.features.vgg import loss_network

        net_name, style_loss = cand.library
        self.loss = PerceptualLoss(loss_network(net_name, cand.content + cand.style), cand.content, cand.style,
                                   style_loss)
        self.loss.set_styles([style[0]])
        self.g = torch.Generator().manual_seed(seed)

    def content_features(self, x):
        return x

    def __call__(self, y, x):
        t = self.loss(y, x, directions=self.loss.draw_directions(self.g))
        return t["content"], t["style"]


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
    x, s = load(photo, size), load(style, 2 * size)  # the painting at twice the photo's size, as in training
    obj = (LibraryObjective if cand.library else Objective)(cand, s)
    cf = obj.content_features(x)
    y = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=lr)
    for _ in range(steps):
        content, style_term = obj(y, cf)
        loss = cfg.content_loss_weight * content + style_weight * style_term + cfg.tv_loss_weight * tv(y)
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
    cand = candidates()[name]
    r = optimise(cand, Path(photo), Path(style), out, size, steps, lr, sw if cand.weight is None else cand.weight)
    info.write_text(json.dumps(r))
    return r


# ---------------------------------------------------------------------------------------------------

def speckle(output: Path, photo: Path) -> float:
    """Fine noise the stylization added: high-frequency energy (luminance minus its 1 px Gaussian blur)
    of the output over that of the photo at the same size. quality.py's style_match rewards colour noise
    at fine scales (more style weight on random Gram features raised it while the pictures turned to
    speckle), so this is reported beside it."""
    import numpy as np
    from PIL import Image, ImageFilter

    o = Image.open(output).convert("L")
    c = Image.open(photo).convert("L").resize(o.size, Image.BICUBIC)

    def hf(im):
        a = np.asarray(im, dtype=np.float32)
        return float(np.abs(a - np.asarray(im.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)).mean())

    return hf(o) / max(hf(c), 1e-6)


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


def run_gatys(names, photos, styles, out: Path, args, q) -> str:
    """Optimise every photo x style with every candidate (cached: existing outputs are kept), score,
    write out/table.md, results.json and one side-by-side sheet per photo; returns the table."""
    cands = candidates()
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    tag = f"s{args.size}_n{args.steps}_lr{args.lr:g}"
    tasks = []
    for n in names:
        (out / n).mkdir(exist_ok=True)
        for p in photos:
            for s in styles:
                tasks.append((n, str(p), str(s), out / n / f"{p.stem}__{s.stem}__{tag}.png",
                              args.size, args.steps, args.lr, cands[n].weight or args.style_loss_weight))
    t0 = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            timings = pool.map(_task, tasks, chunksize=1)
    else:
        timings = [_task(t) for t in tasks]
    wall = time.perf_counter() - t0

    results = {}
    for t, tm in zip(tasks, timings):
        n, p, s, o = t[:4]
        results.setdefault(n, []).append({"photo": Path(p).name, "style": Path(s).name, **q.score(p, s, str(o)),
                                          "speckle": speckle(o, Path(p)), **tm})
    lines = [f"Gatys optimisation from the photo: {len(photos)} photo(s) x {len(styles)} style(s) "
             f"({', '.join(x.stem for x in styles)}), {args.size} px, {args.steps} Adam steps (lr {args.lr:g}), "
             f"content weight 1, style weight {args.style_loss_weight:g} unless named, TV 10; "
             f"{wall / 60:.1f} min wall with {args.jobs} process(es)", "",
             "| candidate | style_match | structure | speckle | s/image | what |", "|---|---|---|---|---|---|"]
    for n in names:
        rs = results[n]
        m = {k: sum(r[k] for r in rs) / len(rs) for k in ("style_match", "structure", "speckle", "seconds")}
        lines.append(f"| {n} | {m['style_match']:.3f} | {m['structure']:.3f} | {m['speckle']:.2f} | "
                     f"{m['seconds']:.0f} | {cands[n].what} |")
    lines += ["", "style_match / structure per style:", "",
              "| candidate | " + " | ".join(s.stem for s in styles) + " |", "|---" * (len(styles) + 1) + "|"]
    for n in names:
        cells = []
        for s in styles:
            rs = [r for r in results[n] if r["style"] == s.name]
            cells.append(f"{sum(r['style_match'] for r in rs) / len(rs):.3f} / "
                         f"{sum(r['structure'] for r in rs) / len(rs):.3f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for p in photos:
        rows = [[as_png(p, out / "inputs" / f"{p.stem}.png", 512), as_png(s, out / "inputs" / f"{s.stem}.png", 512)]
                + [out / n / f"{p.stem}__{s.stem}__{tag}.png" for n in names] for s in styles]
        sheet(rows, ["photo", "style"] + names, out / f"sheet_{p.stem}.png")
    return table


def _fit(job):
    """Train one feed-forward model (cached) and return its path and training seconds."""
    cfg_kw, path = job
    torch.set_num_threads(1)
    from stylize.settings import TrainConfig
    from stylize.train.training import train

    info = Path(path).with_suffix(".json")
    if Path(path).exists() and info.exists():
        return json.loads(info.read_text())
    t0 = time.perf_counter()
    train(TrainConfig(**cfg_kw, out=path))
    r = {"seconds": round(time.perf_counter() - t0, 1)}
    info.write_text(json.dumps(r))
    return r


def run_training(nets, photos, styles, content: Path, out: Path, args, q) -> str:
    """Short feed-forward trainings (stylize train) per loss network and style, applied to held-out photos."""
    from stylize.images import save_image
    from stylize.apply.engines.pytorch import Stylizer

    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for net in nets:
        loss_net, style_loss = candidates()[net].library
        for s in styles:
            kw = dict(style=[str(s)], content=str(content), loss_net=loss_net, style_loss=style_loss,
                      iterations=args.train_iterations, batch_size=4, image_size=128, style_size=256,
                      checkpoint_every=0, sample_every=10 ** 6, device="cpu", workers=0, seed=0)
            jobs.append((kw, str(out / f"{net}__{s.stem}.pt")))
    t0 = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            timings = pool.map(_fit, jobs, chunksize=1)
    else:
        timings = [_fit(j) for j in jobs]
    wall = time.perf_counter() - t0
    results = {}
    for (kw, path), tm in zip(jobs, timings):
        net, style = Path(path).stem.split("__")
        model = Stylizer(path, device="cpu")
        for p in photos:
            o = out / f"{net}__{style}__{p.stem}.png"
            save_image(model(load(p, 256)[0]), o)
            results.setdefault(net, []).append({"style": style, "photo": p.name, **tm, "speckle": speckle(o, p),
                                                **q.score(str(p), kw["style"][0], str(o))})
    lines = [f"Feed-forward: stylize train, {args.train_iterations} iterations, batch 4, 128 px crops of BSDS500 "
             f"train, style at 256 px, CPU, one thread per run; applied at 256 px to {len(photos)} held-out photos "
             f"x {len(styles)} style(s); {wall / 60:.1f} min wall with {args.jobs} process(es)", "",
             "| loss network | style_match | structure | speckle | training s/model |", "|---|---|---|---|---|"]
    for net, rs in results.items():
        m = {k: sum(r[k] for r in rs) / len(rs) for k in ("style_match", "structure", "speckle", "seconds")}
        lines.append(f"| {net} | {m['style_match']:.3f} | {m['structure']:.3f} | {m['speckle']:.2f} | "
                     f"{m['seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    rows = [[as_png(p, out / f"photo_{p.stem}.png", 512)] + [out / f"{n}__{s.stem}__{p.stem}.png" for n in nets
                                                              for s in styles] for p in photos]
    sheet(rows, ["photo"] + [f"{n} {s.stem}" for n in nets for s in styles], out / "sheet.png")
    return table


TUNING_PHOTOS = ("val/101085.jpg",)
HELDOUT_PHOTOS = ("test/100007.jpg", "test/108004.jpg")
FINALISTS = ("random-gram", "gram-w100", "random-3seeds", "random-sliced", "sliced-w3", "random-color",
             "sliced-color")
DOCS_NETS = ("random-gram", "gram-w100", "random-sliced")
DOCS_PHOTOS = ("chelsea.jpg", "coffee.jpg")  # examples/ (CC0) and a public-domain painting: publishable
DOCS_STYLES = ("starry_night.jpg",)
TRAIN_NETS = ("random-gram", "random-sliced")
TRAIN_STYLES = ("candy.jpg", "picasso_self_portrait.jpg")
TRAIN_PHOTOS = ("test/100007.jpg", "test/108004.jpg", "test/157032.jpg", "test/35028.jpg")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default="runs/loss_nets")
    ap.add_argument("--phase", choices=("tuning", "heldout", "train", "docs", "all"), default="all")
    ap.add_argument("--candidates", help="comma-separated (default: all for tuning, the finalists for heldout)")
    ap.add_argument("--photos", help="comma-separated paths under content/bsds500/ (or absolute paths)")
    ap.add_argument("--styles", help="comma-separated file names in the styles folder (or paths)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--quality", default=str(QUALITY), help="path of quality.py")
    ap.add_argument("--size", type=int, default=192, help="longest side of the photos")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--style-loss-weight", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--train-iterations", type=int, default=150)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    from stylize.settings import TrainConfig

    if args.style_loss_weight is None:
        args.style_loss_weight = TrainConfig().style_loss_weight
    data = Path(args.data)
    q = quality_module(Path(args.quality))

    def photo_list(default):
        return [Path(p) if p.startswith("/") else data / "content" / "bsds500" / p
                for p in (args.photos.split(",") if args.photos else default)]

    def style_list(default):
        return [Path(s) if "/" in s else data / "styles" / s for s in (args.styles.split(",") if args.styles else default)]

    def names(default):
        chosen = args.candidates.split(",") if args.candidates else list(default)
        unknown = set(chosen) - set(candidates())
        if unknown:
            raise SystemExit(f"unknown candidate(s): {', '.join(sorted(unknown))}; known: {', '.join(candidates())}")
        return chosen

    out = Path(args.out_dir)
    if args.phase in ("tuning", "all"):
        print(run_gatys(names(candidates()), photo_list(TUNING_PHOTOS), style_list(TUNING_STYLES), out / "tuning",
                        args, q))
    if args.phase in ("heldout", "all"):
        print(run_gatys(names(FINALISTS), photo_list(HELDOUT_PHOTOS), style_list(STYLES), out / "heldout", args, q))
    if args.phase in ("docs", "all"):  # the README's picture: examples/ photos, Starry Night
        examples = Path(__file__).resolve().parents[1] / "examples"
        photos, styles, nets = [examples / p for p in DOCS_PHOTOS], style_list(DOCS_STYLES), names(DOCS_NETS)
        print(run_gatys(nets, photos, styles, out / "docs", args, q))
        d, tag = out / "docs", f"s{args.size}_n{args.steps}_lr{args.lr:g}"
        rows = [[d / "inputs" / f"{p.stem}.png", d / "inputs" / f"{s.stem}.png"]
                + [d / n / f"{p.stem}__{s.stem}__{tag}.png" for n in nets] for p in photos for s in styles]
        print(sheet(rows, ["photo", "painting"] + nets, d / "loss_nets.png", cell=256))  # docs/loss_nets.jpg (as JPEG)
    if args.phase in ("train", "all"):
        print(run_training(names(TRAIN_NETS), photo_list(TRAIN_PHOTOS), style_list(TRAIN_STYLES),
                           data / "content" / "bsds500" / "train", out / "train", args, q))


if __name__ == "__main__":
    main()

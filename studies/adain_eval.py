r"""Held-out evaluation of an adaptive (AdaIN) model: its losses next to an untrained decoder's and the photo's.

For every pair of a held-out photo and a held-out painting (neither used in training), measures with
the model's own encoder (stored in the model file) the two losses training minimises (training.py,
AdaINRecipe.step; Huang & Belongie 2017's losses, as relative errors where the paper has squared L2):
  content  relative error of the output's relu4_1 features against the AdaIN target
  style    relative error of the channel mean and std, averaged over relu1_1 .. relu4_1
for three "outputs" of the same photo and painting:
  trained    the model, loaded and run as `stylize apply` does (load_stylizer, AdaINStylizer)
  untrained  the decoder the training run started from (same AdaINConfig and seed, same encoder)
  content    the photo itself, unchanged
and, with ../shared/tools/quality.py (network-free: style_match, structure), the same three on
all pairs or a subset. Writes report.json (settings, every pair, means, timings), grid.jpg (rows:
photos, columns: paintings; a header row of the paintings and a first column of the photos), and
the images it measured (content/, trained/, untrained/), and prints the table.

Photos: the first files (sorted) of each --content folder, taken in turn until --count, resized so
the longest side is --size and cropped to multiples of 8 so the AdaIN target and the output's
features line up (no padding). Paintings are encoded with the longest side --style-size (default:
--size, the same scale as the photos, as in training where photo and painting crops share one size;
`stylize apply` uses 512). Outputs are clamped to [0, 1], as saved images are.

  python studies/adain_eval.py --model runs/adain.pt --content DATA/bsds500/test --content DATA/photos \
      --styles runs/heldout_styles --out-dir runs/adain_eval [--count 8 --size 256 --threads 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from bench.common import QUALITY  # noqa: E402
from stylize.models.adain import ENCODER_TAPS, AdaINConfig, AdaINNet, adain  # noqa: E402
from stylize.images import load_style  # noqa: E402
from stylize.errors import StylizeError  # noqa: E402
from stylize.files import atomic_write  # noqa: E402
from stylize.images import find_images, load_image, save_image, save_pil, to_pil  # noqa: E402
from stylize.apply.engines.pytorch import AdaINStylizer, load_stylizer  # noqa: E402
from stylize.features.losses import mean_std, relative_error, style_stats  # noqa: E402
from stylize.settings import TrainConfig  # noqa: E402
from stylize.features.vgg import vgg_features  # noqa: E402

QUALITY_TOOL = str(QUALITY)
ROWS = {"trained": "trained", "untrained": "untrained decoder", "content": "content image"}


def untrained_decoder(record: dict) -> torch.nn.Module:
    """The decoder the training run started from. Training seeds the global RNG, builds its loss
    network (one default-initialised VGG-19, whatever weights it then loads) and then the AdaINNet,
    whose encoder and decoder draw in that order; replaying those draws gives the same weights."""
    seed = TrainConfig.from_dict(record.get("train", {})).seed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vgg_features("vgg19")
        net = AdaINNet(AdaINConfig(**record["net"]))
    return net.decoder.eval().requires_grad_(False)


def pick_photos(folders: list[str], count: int) -> list[Path]:
    """The first `count` photos, taken in turn from each folder's sorted files."""
    lists = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise StylizeError(f"{folder}: no such folder of photos")
        files = find_images(folder)
        if not files:
            raise StylizeError(f"{folder}: folder holds no images")
        lists.append(files)
    picked = []
    for i in range(max(map(len, lists))):
        picked += [files[i] for files in lists if i < len(files)]
    return picked[:count]


def load_photo(path: Path, size: int) -> torch.Tensor:
    x, _ = load_image(path, max_size=size)
    h, w = x.shape[1] - x.shape[1] % 8, x.shape[2] - x.shape[2] % 8  # the encoder pools three times
    if min(h, w) < 16:
        raise StylizeError(f"{path}: photo too small ({x.shape[2]}x{x.shape[1]}) at --size {size}")
    top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
    return x[:, top:top + h, left:left + w].contiguous()


def losses(encoder, y: torch.Tensor, target: torch.Tensor, style_feats: dict) -> dict[str, float]:
    """Training's content and style terms (AdaINRecipe.step) for one output (3, H, W)."""
    fy = encoder(y[None], all_taps=True)
    style = sum(relative_error(style_stats(fy[k], "meanstd"), style_stats(style_feats[k], "meanstd"))
                for k in ENCODER_TAPS) / len(ENCODER_TAPS)
    return {"content": float(relative_error(fy["relu4_1"], target)[0]), "style": float(style[0])}


def quality(tool: str, content: Path, style: Path, outputs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Run the quality tool on one photo and painting; it prints `PATH\\tstyle_match=X\\tstructure=Y`."""
    cmd = [sys.executable, tool, str(content), str(style), *map(str, outputs.values())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise StylizeError(f"{tool} failed on {content.name} x {style.name}: {done.stderr.strip().splitlines()[-1:]}")
    found = {}
    for line in done.stdout.splitlines():
        path, *fields = line.split("\t")
        found[path] = {k: float(v) for k, v in (f.split("=", 1) for f in fields)}
    missing = [str(p) for p in outputs.values() if str(p) not in found]
    if missing:
        raise StylizeError(f"{tool}: no figures for {missing[0]} in its output {done.stdout!r}")
    return {row: found[str(p)] for row, p in outputs.items()}


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k < 0 or k >= n)."""
    if k < 0 or k >= n:
        return list(range(n))
    return sorted({round(i * n / k) for i in range(k)})


def _font(size: int = 14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def grid(photos: list[Image.Image], styles: list[tuple[str, Image.Image]], outputs: list[list[Image.Image]],
         cell: int, label: int = 20, gap: int = 4) -> Image.Image:
    """Photos down the first column, paintings (named) along the header row, outputs in between; each
    image fitted into a cell x cell box, each row as tall as its tallest image."""
    def fit(im: Image.Image) -> Image.Image:
        im = im.copy()
        im.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        return im

    rows = [[None] + [fit(im) for _, im in styles]]
    rows += [[fit(p)] + [fit(im) for im in r] for p, r in zip(photos, outputs)]
    heights = [max(im.height for im in r if im is not None) for r in rows]
    sheet = Image.new("RGB", (len(rows[0]) * (cell + gap) - gap, label + sum(heights) + gap * (len(rows) - 1)), "white")
    draw, font = ImageDraw.Draw(sheet), _font()
    draw.text((4, 3), "photo \\ style", fill="black", font=font)
    for j, (name, _) in enumerate(styles, 1):
        draw.text((j * (cell + gap) + 4, 3), name[:cell // 8], fill="black", font=font)
    y = label
    for r, h in zip(rows, heights):
        for j, im in enumerate(r):
            if im is not None:
                sheet.paste(im, (j * (cell + gap) + (cell - im.width) // 2, y + (h - im.height) // 2))
        y += h + gap
    return sheet


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="adaptive model file or training checkpoint")
    ap.add_argument("--content", action="append", required=True, help="folder of held-out photos (repeatable)")
    ap.add_argument("--styles", required=True, help="folder of held-out paintings")
    ap.add_argument("--out-dir", default="runs/adain_eval")
    ap.add_argument("--count", type=int, default=8, help="photos, taken in turn from the --content folders")
    ap.add_argument("--max-styles", type=int, default=0, help="first N paintings only (0: all)")
    ap.add_argument("--size", type=int, default=256, help="longest side of the photos")
    ap.add_argument("--style-size", type=int, default=None, help="longest side of the paintings (default: --size)")
    ap.add_argument("--quality-pairs", type=int, default=-1,
                    help="pairs to run the quality tool on, spread over all (-1: all, 0: none)")
    ap.add_argument("--quality-tool", default=QUALITY_TOOL)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except StylizeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


@torch.inference_mode()
def run(args) -> dict:
    t_start = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.count < 1 or args.size < 16:
        raise StylizeError("--count must be at least 1 and --size at least 16")
    if args.quality_pairs and not Path(args.quality_tool).is_file():
        raise StylizeError(f"{args.quality_tool}: quality tool not found; pass --quality-tool or --quality-pairs 0")
    style_size = args.style_size or args.size
    out = Path(args.out_dir)
    for sub in ("content", "trained", "untrained"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    stylizer = load_stylizer(args.model, args.device, style_size=style_size)  # what `stylize apply` runs
    if not isinstance(stylizer, AdaINStylizer):
        raise StylizeError(f"{args.model}: a {stylizer.record.get('kind')} model, not an adaptive (AdaIN) one")
    record, device, encoder = stylizer.record, stylizer.device, stylizer.net.encoder
    fresh = untrained_decoder(record).to(device)

    photo_files = pick_photos(args.content, args.count)
    if not Path(args.styles).is_dir() or not find_images(args.styles):
        raise StylizeError(f"{args.styles}: no folder of painting images")
    style_paths = find_images(args.styles)[: args.max_styles or None]
    photos = [load_photo(p, args.size) for p in photo_files]
    names = [f"{i:02d}_{p.stem}" for i, p in enumerate(photo_files)]
    styles = {}
    for p in style_paths:
        _, s = load_style(p, style_size)  # as AdaINStylizer loads it for the AdaIN target
        styles[p.stem] = (p, s, encoder(s[None].to(device), all_taps=True))
    t_loaded = time.perf_counter()

    pairs, grid_rows = [], []
    for photo_file, name, x in zip(photo_files, names, photos):
        content_png = save_image(x, out / "content" / f"{name}.png")
        content_feat = encoder(x[None].to(device))
        grid_rows.append([])
        for sname, (spath, _, fs) in styles.items():
            t0 = time.perf_counter()
            target = adain(content_feat, *mean_std(fs["relu4_1"]))  # the decoder's input at full strength
            y = stylizer(x, stylizer.condition([str(spath)]))  # the user path: clamped, on the CPU
            y0 = fresh(target)[0].clamp(0, 1)
            outputs = {"trained": y.to(device), "untrained": y0, "content": x.to(device)}
            pair = {"photo": str(photo_file), "style": str(spath),
                    "size": list(x.shape[1:]),
                    **{row: losses(encoder, im, target, fs) for row, im in outputs.items()}}
            pair["_files"] = {"content": content_png,
                              "trained": save_image(y, out / "trained" / f"{name}__{sname}.png"),
                              "untrained": save_image(y0, out / "untrained" / f"{name}__{sname}.png")}
            pair["seconds"] = round(time.perf_counter() - t0, 2)
            pairs.append(pair)
            grid_rows[-1].append(to_pil(y))
            print(f"[{len(pairs)}/{len(photos) * len(styles)}] {name} x {sname}: trained content "
                  f"{pair['trained']['content']:.3f} style {pair['trained']['style']:.3f} ({pair['seconds']}s)",
                  file=sys.stderr, flush=True)
    t_losses = time.perf_counter()

    measured = spread(len(pairs), args.quality_pairs) if args.quality_pairs else []
    for k, i in enumerate(measured, 1):
        p = pairs[i]
        for row, figures in quality(args.quality_tool, p["_files"]["content"], Path(p["style"]), p["_files"]).items():
            p[row].update(figures)
        print(f"[quality {k}/{len(measured)}] {Path(p['photo']).stem} x {Path(p['style']).stem}",
              file=sys.stderr, flush=True)
    t_quality = time.perf_counter()

    sheet = grid([to_pil(x) for x in photos], [(n, to_pil(s)) for n, (_, s, _) in styles.items()], grid_rows,
                 cell=args.size)
    grid_path = save_pil(sheet, out / "grid.jpg", quality=90)
    t_end = time.perf_counter()

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 5)

    # quality figures average over the pairs that have them (all of them unless --quality-pairs)
    means = {row: {k: mean([p[row][k] for p in pairs if k in p[row]]) for k in dict.fromkeys(
        k for p in pairs for k in p[row])} for row in ROWS}
    per_style = {sname: {k: mean([p["trained"][k] for p in pairs if Path(p["style"]).stem == sname])
                         for k in ("content", "style")} for sname in styles}
    for p in pairs:
        p["files"] = {k: str(v) for k, v in p.pop("_files").items()}
    report = {
        "model": str(record["path"]), "kind": record.get("kind"), "iteration": record.get("iteration"),
        "checkpoint": "optimizer" in record, "net": record["net"],
        "train": {k: record.get("train", {}).get(k) for k in ("image_size", "batch_size", "iterations", "loss_net",
                                                              "seed", "style", "content")},
        "settings": {"content": args.content, "styles": args.styles, "count": len(photos), "size": args.size,
                     "style_size": style_size, "device": str(device), "threads": torch.get_num_threads()},
        "losses": "content: relative error at relu4_1 against the AdaIN target; style: relative error of "
                  "channel mean and std averaged over " + ", ".join(ENCODER_TAPS) + " (training.py AdaINRecipe)",
        "rows": ROWS, "means": means, "trained_per_style": per_style,
        "quality_pairs": len(measured), "pairs": pairs, "grid": str(grid_path),
        "seconds": {"load": round(t_loaded - t_start, 1), "losses": round(t_losses - t_loaded, 1),
                    "quality": round(t_quality - t_losses, 1), "grid": round(t_end - t_quality, 1),
                    "total": round(t_end - t_start, 1),
                    "quality_per_pair": round((t_quality - t_losses) / len(measured), 2) if measured else None},
    }
    atomic_write(out / "report.json", lambda f: f.write(json.dumps(report, indent=2).encode()),
                 ".report.", ".json.part")
    print_table(report, len(styles))
    return report


def print_table(report: dict, n_styles: int) -> None:
    it = report["iteration"]
    print(f"{report['model']} ({'checkpoint' if report['checkpoint'] else 'model'}, iteration {it}): "
          f"{report['settings']['count']} held-out photos x {n_styles} held-out styles, "
          f"photos {report['settings']['size']} px, styles {report['settings']['style_size']} px")
    cols = [("content", "content loss"), ("style", "style loss"), ("style_match", "style_match"),
            ("structure", "structure")]
    q = report["quality_pairs"]
    print(f"{'':<20}" + "".join(f"{title:>14}" for _, title in cols) + (f"   (quality on {q} pairs)" if q else ""))
    for row, title in ROWS.items():
        m = report["means"][row]
        print(f"{title:<20}" + "".join(f"{m[k]:>14.4f}" if k in m else f"{'-':>14}" for k, _ in cols))
    print("trained, per style:  " + ", ".join(f"{s} {v['content']:.3f}/{v['style']:.3f}"
                                              for s, v in report["trained_per_style"].items()) + "  (content/style)")
    print(f"report: {Path(report['grid']).parent / 'report.json'} | grid: {report['grid']} | "
          f"seconds: {report['seconds']}")


if __name__ == "__main__":
    main()

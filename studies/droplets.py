"""Droplets: the bright, saturated blobs instance-normalised generators paint into flat areas.

Karras et al. (StyleGAN2, 2020) traced them to instance normalization: the network makes a strong,
local spike that dominates a layer's statistics, and so scales everything else in that layer as it
likes. This script shows and measures them for two or more models on the same photos:

- kurtosis: per norm layer of the transformer network, the largest kurtosis over channels of that
  layer's input (a spike makes a heavy-tailed channel), averaged over the photos: where the spike
  lives. A Gaussian channel has 3; a droplet's spike drives it into the tens.
- a picture: one row per photo, the photo then each model: the judge. (Pixel counts of droplets were
  tried and dropped: a colour outside the painting's palette misses yellow droplets on Starry Night,
  and flat saturated areas count a clear blue sky.)

  python studies/droplets.py --photos P [P ...] --out droplets.jpg MODEL [MODEL ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import side_by_side  # noqa: E402

from stylize.images import load_image, save_image  # noqa: E402
from stylize.apply.engines.pytorch import Stylizer  # noqa: E402


def kurtosis(stylizer: Stylizer, x: torch.Tensor) -> list[float]:
    out = []

    def hook(module, inputs, output):
        z = inputs[0][0].flatten(1).float()
        k = ((z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-5)).pow(4).mean(1)
        out.append(float(k.max()))

    hooks = [n.register_forward_hook(hook) for n in stylizer.net.norms()]
    try:
        with torch.no_grad():
            stylizer(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--photos", nargs="+", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the picture; JSON and outputs beside it")
    args = ap.parse_args(argv)
    rows = [[p] for p in args.photos]
    report = {"photos": [str(p) for p in args.photos]}
    for model in args.models:
        label = f"{model.parent.name}-{model.stem}"  # run folders hold checkpoints of the same name
        s = Stylizer(model, device="cpu")
        kurt = []
        for p, row in zip(args.photos, rows):
            x = load_image(p)[0]
            out = save_image(s(x), args.out.with_name(f"{args.out.stem}_{label}_{p.stem}.png"))
            row.append(out)
            kurt.append(kurtosis(s, x))
        layers = np.mean(np.array(kurt), axis=0)
        report[label] = {"kurtosis_by_layer": [round(float(k), 1) for k in layers],
                         "kurtosis_decoder": round(float(layers[-2:].mean()), 1)}
        print(label, report[label], flush=True)
    side_by_side(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

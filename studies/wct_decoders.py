"""Any painting without a painting collection: WCT on EfficientNet-Lite0 features (a pilot, issue 30).

Li et al. 2017 ("Universal Style Transfer via Feature Transforms"): at each of a few encoder levels,
coarse to fine, the photo's features are whitened and given the painting's covariance and mean,
then a decoder turns them back into a picture. Each decoder is trained only to invert the frozen
encoder, on photos, so no painting is needed at training time.

Departures from the paper, and why:
- The encoder is the ImageNet EfficientNet-Lite0 that the loss network uses (VGG's weights cannot
  be had offline here). The levels are its ReLU6 expansion taps, the ones its style loss reads:
  block1_expand (1/2 resolution, 96 channels), block3_expand (1/4, 144), block5_expand (1/8, 240),
  block8_expand (1/16, 480).
- The decoders are plain (stylize/models/wct.py, `decoder`, where the transform is too): nearest
  upsampling and 3x3 convolutions, trained with an L1 pixel term
  and a feature term at the levels at or below their own (their inverses are blurry otherwise).
- The coarsest level (block8) at full strength loses the subject, so the pilot uses block5 at
  full strength, block3 at 0.6 and block1 at 0.3; `--detail` then gives back the photo's finest
  band (photo minus its blurred copy), which the decoders lose.

  python studies/wct_decoders.py train --level block5_expand --iterations 2500 --out-dir runs/wct
  python studies/wct_decoders.py apply PHOTO PAINTING OUT.png --decoders runs/wct \
      --levels block5_expand:1,block3_expand:0.6,block1_expand:0.3 --detail 2
  python studies/wct_decoders.py invert weights/wct.safetensors docs/wct_inversion.jpg  # what they give back

Pilot, 2026-12-06 (decoders: 2500 / 1500 / 1200 iterations of 4 crops of 192 px on one CPU core,
about 10 minutes each): three blind judges, 30 development photos, against the peer's built-in
Starry Night and against its --style-image; results in weights/README.md (issue 29's section).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from stylize.features.efficientnet import lite0_features  # noqa: E402
from stylize.images import find_images  # noqa: E402
from stylize.models.wct import colouring, covariance, decoder, wct  # noqa: E402
from stylize.models.whitening import LEVELS, fine_band  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def read(path, side: int, shorter: bool = True) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], its shorter (or longer) side at most `side`, both sides multiples of 16."""
    im = Image.open(path).convert("RGB")
    s = min(1.0, side / (min(im.size) if shorter else max(im.size)))
    size = [max(16, round(v * s) // 16 * 16) for v in im.size]
    return torch.from_numpy(np.asarray(im.resize(size, Image.Resampling.BICUBIC)).copy()).permute(2, 0, 1)[None].float() / 255


def train(args) -> None:
    torch.set_num_threads(args.threads)
    encoder, net = lite0_features(list(LEVELS)), decoder(args.level)
    photos = [read(f, 320)[0] for f in find_images(args.content)]
    opt = torch.optim.Adam(net.parameters(), args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iterations, args.lr / 10)
    below = [t for t, (_, h) in LEVELS.items() if h <= LEVELS[args.level][1]]
    rng, t0, out = random.Random(0), time.time(), Path(args.out_dir) / f"{args.level}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    for it in range(args.iterations):
        crops = []
        for _ in range(4):
            p = rng.choice(photos)
            y, x = rng.randrange(p.shape[1] - 191), rng.randrange(p.shape[2] - 191)
            crops.append(p[:, y:y + 192, x:x + 192])
        x = torch.stack(crops)
        with torch.no_grad():
            target = encoder(x)
        y = net(target[args.level])
        got = encoder(y)
        loss = F.l1_loss(y, x) + 0.1 * sum(F.mse_loss(got[t], target[t]) / target[t].pow(2).mean() for t in below)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if it % 100 == 0 or it == args.iterations - 1:
            print(f"{args.level} {it} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
            torch.save(net.state_dict(), out)


def apply(args) -> None:
    torch.set_num_threads(args.threads)
    levels = {s.split(":")[0]: float(s.split(":")[1]) for s in args.levels.split(",")}
    encoder = lite0_features(list(LEVELS))
    nets = {t: decoder(t).eval() for t in levels}
    for t, net in nets.items():
        net.load_state_dict(torch.load(Path(args.decoders) / f"{t}.pt", weights_only=True))
    t0 = time.time()
    x, painting = read(args.photo, args.size), read(args.painting, args.style_size, shorter=False)
    with torch.no_grad():
        style = encoder(painting)
        for t, alpha in levels.items():
            x = nets[t](wct(encoder(x)[t], [colouring(*covariance(style[t]))], alpha)).clamp(0, 1)
    y = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    if args.detail:  # the photo's finest band, which the decoders lose
        photo = Image.open(args.photo).convert("RGB").resize(y.size, Image.Resampling.BICUBIC)
        band = fine_band(np.asarray(photo).transpose(2, 0, 1), args.detail).transpose(1, 2, 0)
        y = Image.fromarray(np.clip(np.asarray(y, np.float32) + band, 0, 255).round().astype(np.uint8))
    y.save(args.out)
    print(f"{args.out}: {time.time() - t0:.2f} s")


def invert(args) -> None:
    """How well a WCT model's decoders invert paintings, against photos: each level's decoder on its own
    encoder's features, no transform. A decoder that cannot give back a painting's strokes cannot paint
    them into a photo either."""
    from stylize.models import modelfile
    from stylize.models.wct import WCTNet
    from stylize.models.whitening import WCTConfig

    torch.set_num_threads(args.threads)
    rec = modelfile.load(args.model)
    net = WCTNet(WCTConfig(**rec["net"])).eval()
    net.load_state_dict(rec["state_dict"])
    groups = {"paintings": find_images(SHARED / "data/styles"),
              "photos": find_images(SHARED / "data/content/bsds500/val")[:args.photos]}
    rows = []
    for group, files in groups.items():
        psnr = {t: [] for t in net.taps}
        for f in files:
            x = read(f, 384, shorter=False)
            with torch.no_grad():
                outs = [net.decoders[t](net.encoder(x, last=t)[t]).clamp(0, 1) for t in net.taps]
            for t, y in zip(net.taps, outs):
                psnr[t].append(float(-10 * torch.log10((y - x).pow(2).mean())))
            if group == "paintings" and Path(f).stem in args.show.split(","):
                rows.append(torch.cat([x[0], *(y[0] for y in outs)], 2)[:, :256])
        print(f"{group} ({len(files)}), PSNR dB by level: " + ", ".join(f"{t} {np.mean(v):.2f}" for t, v in psnr.items()))
    width = max(r.shape[2] for r in rows)
    sheet = torch.cat([F.pad(r, (0, width - r.shape[2])) for r in rows], 1)
    Image.fromarray((sheet.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(args.out, quality=80)
    print(f"{args.out}: each row a painting, then its inverse through the levels {', '.join(net.taps)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one level's decoder on photos")
    t.add_argument("--level", choices=list(LEVELS), required=True)
    t.add_argument("--iterations", type=int, default=2500)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--content", default=str(SHARED / "data/content/bsds500/train"))
    t.add_argument("--out-dir", default="runs/wct")
    t.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("apply", help="stylize a photo with a painting")
    a.add_argument("photo")
    a.add_argument("painting")
    a.add_argument("out")
    a.add_argument("--decoders", default="runs/wct")
    a.add_argument("--levels", default="block5_expand:1,block3_expand:0.6,block1_expand:0.3")
    a.add_argument("--size", type=int, default=480, help="the photo's shorter side at most")
    a.add_argument("--style-size", type=int, default=512, help="the painting's longer side")
    a.add_argument("--detail", type=float, default=2.0, help="blur radius of the photo's band given back (0: none)")
    a.add_argument("--threads", type=int, default=2)
    v = sub.add_parser("invert", help="how well a WCT model's decoders give back paintings, against photos")
    v.add_argument("model", help="a WCT model file, e.g. weights/wct.safetensors")
    v.add_argument("out", help="the sheet: a few paintings and their inverses, level by level")
    v.add_argument("--photos", type=int, default=22, help="BSDS500 val photos to compare with")
    v.add_argument("--show", default="starry_night,composition_vii,wave", help="the paintings on the sheet")
    v.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    {"train": train, "apply": apply, "invert": invert}[args.command](args)


if __name__ == "__main__":
    main()

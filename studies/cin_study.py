"""Conditional instance norm against single-style models, and the strength control, measured.

Trains one conditional (CIN) model on N styles and N single-style instance-norm models with the same
settings and seed, then on held-out photos reports:
  - content and style losses (same loss network as training) of CIN and single-style outputs;
  - the strength curve: mean absolute distance of the output from the photo at each strength
    (must grow monotonically) and PSNR of strength 0 against the photo (target > 35 dB);
and writes a contact sheet of the CIN model at five strengths.

  python studies/cin_study.py --style A.jpg --style B.jpg --style C.jpg --content TRAIN_DIR \
      --heldout TEST_DIR --out-dir runs/cin_study [--iterations 400 --image-size 96 --batch-size 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from bench.common import psnr  # noqa: E402
from stylize.images import load_style  # noqa: E402
from stylize.images import find_images, load_image  # noqa: E402
from stylize.apply.engines.pytorch import Stylizer  # noqa: E402
from stylize.features.losses import PerceptualLoss  # noqa: E402
from stylize.settings import TrainConfig  # noqa: E402
from stylize.apply.sheet import contact_sheet  # noqa: E402
from stylize.train.training import train  # noqa: E402
from stylize.features.vgg import loss_network  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", action="append", required=True)
    ap.add_argument("--content", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--out-dir", default="runs/cin_study")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--loss-net", default="random")
    ap.add_argument("--photos", type=int, default=8, help="held-out photos to evaluate on")
    ap.add_argument("--eval-size", type=int, default=192, help="longest side of held-out photos")
    ap.add_argument("--singles", help="comma-separated style names to train single-style models for "
                    "(default: every style; fewer when time is short)")
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(content=args.content, iterations=args.iterations, image_size=args.image_size,
                  batch_size=args.batch_size, style_size=args.image_size * 2, loss_net=args.loss_net,
                  sample_every=max(1, args.iterations // 4), checkpoint_every=0, device="cpu")
    timings = {}

    def fit(name, styles):
        path = out / f"{name}.pt"
        if not path.exists():
            t = time.perf_counter()
            train(TrainConfig(style=styles, out=str(path), **common))
            timings[name] = round(time.perf_counter() - t, 1)
        return Stylizer(path, "cpu")

    cin = fit("cin", args.style)
    chosen = set(args.singles.split(",")) if args.singles else {Path(s).stem for s in args.style}
    singles = {Path(s).stem: fit(f"single_{Path(s).stem}", [s]) for s in args.style if Path(s).stem in chosen}
    names = [Path(s).stem for s in args.style]

    cfg = TrainConfig(loss_net=args.loss_net)
    loss = PerceptualLoss(loss_network(cfg.loss_net, cfg.content_layers + cfg.style_layers),
                          cfg.content_layers, cfg.style_layers)
    loss.set_styles([load_style(s, args.image_size * 2)[1] for s in args.style])
    photos = [load_image(p, args.eval_size)[0] for p in find_images(args.heldout)[: args.photos]]

    rows = []
    for name in singles:
        i = names.index(name)
        for label, model, weights in (("cin", cin, cin.style_weights([name])), ("single", singles[name], None)):
            c = s = 0.0
            for x in photos:
                y = model(x, weights)
                terms = loss(y[None], x[None], torch.tensor([i]))
                c, s = c + float(terms["content"]) / len(photos), s + float(terms["style"]) / len(photos)
            rows.append({"style": name, "model": label, "content_loss": round(c, 4), "style_loss": round(s, 4)})

    strengths = [0.0, 0.25, 0.5, 0.75, 1.0]
    curve, monotone, psnr0 = {}, True, []
    for name in names:
        w = cin.style_weights([name])
        per_photo = []
        for x in photos:
            d = [float((cin(x, w, s) - x).abs().mean()) for s in strengths]
            per_photo.append(d)
            monotone &= all(b >= a for a, b in zip(d, d[1:]))
            psnr0.append(psnr(cin(x, w, 0.0), x))
        curve[name] = [round(sum(p[k] for p in per_photo) / len(per_photo), 4) for k in range(len(strengths))]

    sheet = contact_sheet(cin, photos[0], names, strengths)
    sheet.save(out / "cin_strengths.jpg", quality=92)
    report = {"settings": common, "train_seconds": timings, "losses": rows, "strengths": strengths,
              "distance_from_photo": curve, "monotone_on_every_photo": monotone,
              "psnr_at_strength_0": {"min": round(min(psnr0), 2), "mean": round(sum(psnr0) / len(psnr0), 2)},
              "sheet": str(out / "cin_strengths.jpg")}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{'style':<16}{'model':<8}{'content':>10}{'style':>10}")
    for r in rows:
        print(f"{r['style']:<16}{r['model']:<8}{r['content_loss']:>10}{r['style_loss']:>10}")
    print("distance from photo at strengths", strengths)
    for k, v in curve.items():
        print(f"  {k:<16}{v}")
    print("monotone on every photo:", monotone, "| PSNR at strength 0:", report["psnr_at_strength_0"])
    print("sheet:", report["sheet"], "| train seconds:", timings)


if __name__ == "__main__":
    main()

"""The plain way to apply a style network, as pytorch/examples fast_neural_style (`neural_style.py
eval`) and naoto0804/pytorch-AdaIN (`test.py`) do it: import torch and torchvision, fp32, eager,
NCHW, one image at a time, torchvision transforms, the style image encoded for every photo.

It runs stylize's own networks (the same weights), so bench/apply.py compares like with like.
  python bench/plain_apply.py MODEL.pt OUT_DIR PHOTO... [--style PAINTING] [--device cpu] [--ext .png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out_dir")
    ap.add_argument("photos", nargs="+")
    ap.add_argument("--style")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ext", default=".jpg", help="output format (JPEG quality 95, as stylize's default)")
    args = ap.parse_args()
    device = torch.device(args.device)
    record = torch.load(args.model, map_location="cpu", weights_only=True)
    state = {k: v.float() for k, v in record["state_dict"].items()}
    if record["kind"] == "adain":
        from stylize.models.adain import AdaINConfig, AdaINNet
        from stylize.features.losses import mean_std

        net = AdaINNet(AdaINConfig(**record["net"]))
    else:
        from stylize.models.networks import NetConfig, TransformerNet

        net = TransformerNet(NetConfig(**record["net"]))
    net.load_state_dict(state)
    net.to(device).eval()
    to_tensor = transforms.ToTensor()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for photo in args.photos:
            x = to_tensor(Image.open(photo).convert("RGB")).unsqueeze(0).to(device)
            h, w = x.shape[-2:]
            if record["kind"] == "adain":
                s = to_tensor(Image.open(args.style).convert("RGB")).unsqueeze(0).to(device)
                x = torch.nn.functional.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="reflect")
                y = net(x, [mean_std(net.encoder(s))])
            else:
                x = torch.nn.functional.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="reflect")
                y = net(x)
            y = y[0, :, :h, :w].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
            Image.fromarray(y).save(Path(args.out_dir) / (Path(photo).stem + args.ext), quality=95)


if __name__ == "__main__":
    main()

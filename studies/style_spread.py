"""How far apart are a model's styles, in the norm layers' scales and shifts?

For an arbitrary-style model, the scales and shifts its predictor gives each of --paintings; for a
model of several styles (conditional instance norm), its trained tables. Per norm layer: the
standard deviation across paintings (or styles) of each channel's scale and shift, averaged over
channels. A model whose styles all look alike has a small spread: the first 9000 iterations of the
shipped arbitrary model gave 0.04-0.07, against 0.26-0.68 for `twelve_styles` (README, "Any
painting": why `--style-lr-scale` multiplies the predictor's rate).

  python studies/style_spread.py --model weights/arbitrary.pt --paintings S [S ...]
  python studies/style_spread.py --model weights/twelve_styles.safetensors
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from stylize.models import modelfile  # noqa: E402
from stylize.apply.engines.pytorch import ArbitraryStylizer  # noqa: E402


def spreads(model: str, paintings: list[str]) -> dict[str, dict[str, float]]:
    """{norm layer: {"scale": spread, "shift": spread}} over the paintings (arbitrary) or styles."""
    record = modelfile.load(model)
    if record.get("predictor"):
        if len(paintings) < 2:
            raise SystemExit("an arbitrary-style model: give at least two --paintings")
        stylizer = ArbitraryStylizer(record, device="cpu")
        embeddings = torch.stack([stylizer.embedding(p) for p in paintings])
        tables = {name: m.tables(embeddings) for name, m in stylizer.base.named_modules()
                  if getattr(m, "project", None) is not None}
    else:
        state = record["state_dict"]
        tables = {k[:-len(".weight")]: (v.float(), state[k[:-len(".weight")] + ".bias"].float())
                  for k, v in state.items() if k.endswith("affine.weight") and v.dim() == 2}
        if not tables:
            raise SystemExit(f"{model}: neither an arbitrary-style model nor one of several styles")
    return {name: {"scale": round(float(w.std(0).mean()), 3), "shift": round(float(b.std(0).mean()), 3)}
            for name, (w, b) in tables.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--paintings", nargs="*", default=[])
    args = ap.parse_args(argv)
    layers = spreads(args.model, args.paintings)
    report = {"layers": layers, "mean_scale": round(statistics.mean(v["scale"] for v in layers.values()), 3),
              "mean_shift": round(statistics.mean(v["shift"] for v in layers.values()), 3)}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

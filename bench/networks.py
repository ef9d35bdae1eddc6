"""Transformer network architectures by the cost of one apply on a CPU: ONNX Runtime time and FLOPs.

Each candidate is exported as stylize exports models (export.py's wrapper, opset 18) and run by ONNX
Runtime on one photo-sized input (--size, default 1024x768), median of --runs after a warm-up, in
one process, one after another; the ratio is against Johnson et al.'s network at width 32. Speed
does not depend on the weights, so the networks are untrained.

  python bench/networks.py [--size 1024x768] [--runs 5] [--threads 2]

Candidates: the shipped architectures (networks.ARCHITECTURES) at widths 32 and 16, and the
variants the light network was chosen from (kernel of the full-resolution layers, number of
residual blocks, separable or full residual convolutions, width).
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from stylize.models import networks
from stylize.apply.engines.export import OPSET, _Transformer
from stylize.models.networks import Architecture, NetConfig, TransformerNet

VARIANTS = {  # name: (architecture, width)
    "johnson w32": ("johnson", 32),
    "johnson w16": ("johnson", 16),
    "light w16": ("light", 16),
    "light w24": ("light", 24),
    "light w12": ("light", 12),
    "light, early upsampling, w16": (Architecture(5, 5, True, "encoder", False), 16),
    "light, 9x9 ends, w16": (Architecture(9, 5, True, "encoder", True), 16),
    "light, 3 blocks, w16": (Architecture(5, 3, True, "encoder", True), 16),
    "light, full convs, w16": (Architecture(5, 5, False, "encoder", True), 16),
}


def build(arch, width: int) -> TransformerNet:
    if not isinstance(arch, str):
        networks.ARCHITECTURES["_candidate"] = arch
        arch = "_candidate"
    return TransformerNet(NetConfig("instance", 1, True, width, arch)).eval()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1024x768")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    w, h = (int(v) for v in args.size.lower().split("x"))
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    rows = []
    for name, (arch, width) in VARIANTS.items():
        torch.manual_seed(0)
        net = build(arch, width)
        with FlopCounterMode(display=False) as count, torch.no_grad():
            net(torch.from_numpy(x))
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Transformer(net, True), (torch.rand(1, 3, 64, 64), torch.ones(1, 1), torch.ones(1)), f,
                              input_names=["image", "styles", "strength"], output_names=["stylized"],
                              dynamic_axes={"image": {2: "h", 3: "w"}}, opset_version=OPSET, dynamo=False)
        session = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
        feed = {"image": x, "styles": np.ones((1, 1), np.float32), "strength": np.ones(1, np.float32)}
        session.run(None, feed)
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t)
        rows.append({"network": name, "params_k": round(sum(p.numel() for p in net.parameters()) / 1e3, 1),
                     "gflops": round(count.get_total_flops() / 1e9, 1), "seconds": round(statistics.median(times), 3)})
    base = rows[0]["seconds"]
    print(f"{'network':<24} {'params':>8} {'GFLOP':>7} {'s':>7} {'ratio':>6}   ({args.size}, ONNX Runtime, "
          f"median of {args.runs})")
    for r in rows:
        r["ratio"] = round(r["seconds"] / base, 3)
        print(f"{r['network']:<24} {r['params_k']:>7}k {r['gflops']:>7} {r['seconds']:>7.3f} {r['ratio']:>6.2f}")
    return rows


if __name__ == "__main__":
    main()

"""Export the shipped models' ONNX graphs ahead of time into weights/onnx/, so that a user's first
`stylize apply` with a shipped model runs at once instead of exporting for seconds (graphs.py
looks beside a model before its cache). Run it after retraining a shipped model; graphs of models
no longer shipped are removed. tests/test_readme.py checks that every shipped model has its graph.

    python tools/ship_graphs.py [--weights weights]

What is shipped: for a transformer model, the graph of its default request (no --style, full
strength: the README's main command) and, for a strength-conditioned one, its general graph
(--style-weight, the web page's slider, mixing); for an arbitrary-style model, its one graph; for
a WCT model its parts, an encoder per level and the paint graph (graphs.parts).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stylize.models import modelfile
from stylize.apply.engines.export import export_onnx, export_wct
from stylize.apply.engines.graphs import SHIPPED_GRAPHS, parts, shipped_graph


def wanted(model: Path) -> list[Path]:
    record = modelfile.read_record(model)
    if record["kind"] == "wct":  # its parts, exported together
        return [shipped_graph(model, part=p) for p in parts(model)]
    net = record["net"]
    if net.get("style_dim"):  # arbitrary: one graph
        return [shipped_graph(model)]
    return [shipped_graph(model, default=True)] + ([shipped_graph(model)] if net.get("strength") else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=Path(__file__).resolve().parent.parent / "weights")
    args = ap.parse_args()
    keep = set()
    for model in modelfile.models_in(args.weights):
        graphs = wanted(model)
        keep.update(graphs)
        if modelfile.read_record(model)["kind"] == "wct" and not all(g.exists() for g in graphs):
            report = export_wct(model, dict(zip(parts(model), graphs)))
            print(f"wrote {len(graphs)} graphs of {model.name} ({sum(g.stat().st_size for g in graphs) / 2**20:.1f} MB, "
                  f"{report.seconds:.0f} s, largest difference {report.max_difference:.1e})")
            continue
        for graph in graphs:
            if graph.exists():
                print(f"{graph.name}: up to date")
                continue
            report = export_onnx(model, graph, default=graph.stem.endswith("-default"))
            print(f"wrote {graph} ({graph.stat().st_size / 2**20:.1f} MB, {report.seconds:.0f} s, "
                  f"largest difference {report.max_difference:.1e})")
    for stale in (args.weights / SHIPPED_GRAPHS).glob("*.onnx"):
        if stale not in keep:
            stale.unlink()
            print(f"removed {stale.name} (no such shipped model now)")


if __name__ == "__main__":
    main()

"""Exporting a model to ONNX, for other runtimes and for stylize's own CPU path (onnx_runtime.py).

One graph per model, any height and width (dynamic axes):
- transformer models (instance, conditional, ...): image (1, 3, H, W) float in [0, 1], H and W
  multiples of 4; styles (1, N) mixing weights summing to 1; strength (1,) in [0, 1] (strength
  models only) -> stylized (1, 3, H, W) clamped to [0, 1].
- AdaIN models: image (1, 3, H, W), H and W multiples of 8; style (1, 3, h, w) in [0, 1]; alpha
  (1,) -> stylized.
- arbitrary-style transformer models: image (1, 3, H, W), multiples of 4; style (1, 3, h, w);
  strength (1,) -> stylized.
- WCT models: an encoder graph per level for the paintings' statistics and one graph, "paint", for
  the photo (export_wct); only each painting's colouring (an eigendecomposition) runs in numpy.
The caller pads to the multiple (reflect) and crops, as the PyTorch path does (onnx_runtime.py).
The graph's metadata ("stylize": JSON) carries kind, styles, strength, width, the multiple, and the
sha256 of the model file it came from, so a runtime needs nothing else.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stylize import __version__
from stylize.apply import recipe
from stylize.apply.engines.onnx_runtime import GRAPH_VERSION
from stylize.models import modelfile
from stylize.errors import StylizeError
from stylize.files import atomic_write
from stylize.models.norms import Condition
from stylize.files import file_sha256

OPSET = 18


class _Transformer(nn.Module):
    def __init__(self, net, strength: bool):
        super().__init__()
        self.net, self.strength = net, strength

    def forward(self, image, styles, strength):
        return self.net(image, Condition(styles, strength if self.strength else None)).clamp(0, 1)


class _Default(nn.Module):
    """The transformer at its default condition, the first style at the network strength the recipe
    gives --style-weight 1 (recipe.calibrated; the graph bakes the number, not the rule), as
    constants: ONNX Runtime then folds the conditional scales and shifts into the convolutions
    before them (the light network ran 12% faster on a CPU). It also takes and gives uint8 pixels,
    (1, 3, H, W), so that the conversions run in ONNX Runtime's threads rather than in NumPy's one."""

    def __init__(self, net, strength: bool, num_styles: int, network_strength: float):
        super().__init__()
        self.net = net
        self.register_buffer("styles", torch.nn.functional.one_hot(torch.tensor([0]), num_styles).float())
        self.register_buffer("strength", torch.full((1,), network_strength) if strength else None)

    def forward(self, image):
        y = self.net(image.float() / 255, Condition(self.styles, self.strength))
        return (y.clamp(0, 1) * 255).round().to(torch.uint8)


class _AdaIN(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image, style, alpha):
        from stylize.features.losses import mean_std

        return self.net(image, [mean_std(self.net.encoder(style))], alpha=alpha).clamp(0, 1)


class _Arbitrary(nn.Module):
    """An arbitrary-style model: the painting's features, its embedding and the network in one graph."""

    def __init__(self, stylizer):
        from stylize.features.efficientnet import SameConv

        super().__init__()
        self.features, self.predictor, self.net = stylizer.features, stylizer.predictor, stylizer.base
        for m in self.features.modules():  # the painting comes cropped to MULTIPLE: constant padding
            if isinstance(m, SameConv):
                m.static = True

    def forward(self, image, style, strength):
        embedding = self.predictor(self.features(style))
        styles = torch.ones(1, 1, dtype=image.dtype, device=image.device)
        s = strength if self.net.cfg.strength else None
        return self.net(image, Condition(styles, s, embedding)).clamp(0, 1)


@dataclass
class ExportReport:
    path: Path
    max_difference: float  # largest |ONNX Runtime - PyTorch| over the check images, on [0, 1] pixels
    seconds: float


def export_onnx(model: str | Path, out: str | Path, check: bool = True, default: bool = False) -> ExportReport:
    """Write `model` as an ONNX graph at `out` (atomically) and, with check, run it in ONNX Runtime
    against PyTorch on two test images of odd sizes; a difference over 1e-3 is an error. With
    `default`, a transformer model's graph takes the image alone and stylizes with the first style
    at full strength (_Default; its metadata says "default": true)."""
    from stylize.apply.engines.pytorch import load_stylizer

    t0 = time.perf_counter()
    record = modelfile.load(model)
    if record.get("kind") == "wct":
        raise StylizeError(f"{record['path']}: a WCT model has one graph per part, not one; "
                           "graphs.wct_graphs exports them (export_wct)")
    stylizer = load_stylizer(record["path"], "cpu")
    adaptive = record.get("kind") == "adain"
    arbitrary = bool(record["net"].get("style_dim"))
    meta = {"kind": record.get("kind"), "styles": list(record.get("styles", [])),
            "strength": bool(record["net"].get("strength", False)), "width": record["net"].get("width"),
            "multiple": 8 if adaptive else 4, "source_sha256": file_sha256(Path(record["path"])),
            "stylize": __version__, "opset": OPSET, "apply": record.get("apply") or {},
            "graph_version": GRAPH_VERSION}
    size = 64 if adaptive else 32
    image = torch.rand(1, 3, size, size + 8)
    if arbitrary:
        from stylize.models.style_prediction import MULTIPLE

        meta.update(arbitrary=True, style_size=stylizer.style_size, style_multiple=MULTIPLE)
        module, names = _Arbitrary(stylizer), ["image", "style", "strength"]
        args = (image, torch.rand(1, 3, 3 * MULTIPLE, 4 * MULTIPLE), torch.tensor([1.0]))
        dims = {"image": {2: torch.export.Dim("h4", min=2, max=8192) * 4, 3: torch.export.Dim("w4", min=2, max=8192) * 4},
                "style": {2: torch.export.Dim("sh", min=1, max=2048) * MULTIPLE,
                          3: torch.export.Dim("sw", min=1, max=2048) * MULTIPLE}, "strength": None}
    elif adaptive:
        module, names = _AdaIN(stylizer.net), ["image", "style", "alpha"]
        args = (image, torch.rand(1, 3, 48, 40), torch.tensor([1.0]))
        dims = {"image": {2: torch.export.Dim("h8", min=1, max=4096) * 8, 3: torch.export.Dim("w8", min=1, max=4096) * 8},
                "style": {2: torch.export.Dim("sh", min=16, max=32768), 3: torch.export.Dim("sw", min=16, max=32768)},
                "alpha": None}
    else:
        module, names = _Transformer(stylizer.net, meta["strength"]), ["image", "styles", "strength"]
        n = len(meta["styles"])
        args = (image, torch.full((1, n), 1.0 / n), torch.tensor([1.0]))
        dims = {"image": {2: torch.export.Dim("h4", min=2, max=8192) * 4, 3: torch.export.Dim("w4", min=2, max=8192) * 4},
                "styles": None, "strength": None}
        if default:
            network_strength = recipe.calibrated(1.0, stylizer.apply)[0]
            module, names, dims = (_Default(stylizer.net, meta["strength"], n, network_strength),
                                   ["image"], {"image": dims["image"]})
            args = ((image * 255).round().to(torch.uint8),)
            meta.update(default=True, network_strength=network_strength)
    out = Path(out)
    _write(out, _program(module, args, names, ["stylized"], dims, record["path"]), meta)
    worst = _check(out, stylizer, adaptive, arbitrary) if check else float("nan")
    if worst > 1e-3:
        out.unlink(missing_ok=True)
        raise StylizeError(f"ONNX export of {record['path']} differs from PyTorch by {worst:.2g}; not written")
    return ExportReport(out, worst, time.perf_counter() - t0)


def _check(path: Path, stylizer, adaptive: bool, arbitrary: bool = False) -> float:
    """Largest difference between the exported graph in ONNX Runtime and the PyTorch model."""
    from stylize.apply.engines.onnx_runtime import OnnxStylizer

    fast = OnnxStylizer(path)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in ((61, 90), (130, 97)):  # odd sizes: the padding and cropping are checked too
        x = torch.nn.functional.interpolate(torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g), size=(h, w),
                                            mode="bilinear")[0]  # smooth, photo-like
        if arbitrary:
            style = torch.rand(3, 80, 48, generator=g)
            with torch.inference_mode():
                ref = _Arbitrary(stylizer)(torch.nn.functional.pad(x[None], (0, (-w) % 4, 0, (-h) % 4), mode="reflect"),
                                           style[None], torch.tensor([0.6]))[0, :, :h, :w]
            got = fast.stylize(x.numpy(), strength=0.6, style=style.numpy())
        elif adaptive:
            style = torch.rand(3, 70, 50, generator=g)
            ref = stylizer.net(torch.nn.functional.pad(x[None], (0, (-w) % 8, 0, (-h) % 8), mode="reflect"),
                               [stylizer.net.style_stats(style[None])])[0, :, :h, :w].clamp(0, 1)
            got = fast.stylize(x.numpy(), style=style.numpy())
        else:
            n = len(stylizer.styles)
            weights = torch.full((n,), 1.0 / n)
            strength = 0.6 if fast.meta["strength"] else 1.0
            if fast.meta.get("default"):  # uint8 in and out: compared in pixel levels, a level at most
                weights = torch.nn.functional.one_hot(torch.tensor(0), n).float()
                strength = fast.meta["network_strength"]  # the network alone, at the strength baked in
                x8 = (x * 255).round().to(torch.uint8)
                with torch.inference_mode():
                    ref = stylizer(x8, weights, strength, dtype=torch.uint8)
                got = fast.stylize(x8.numpy(), weights.tolist(), strength)
                levels = float((torch.from_numpy(got).int() - ref.int()).abs().max())
                worst = max(worst, 0.0 if levels <= 1 else levels / 255)
                continue
            with torch.inference_mode():
                ref = stylizer(x, weights, strength)
            got = fast.stylize(x.numpy(), weights.tolist(), strength)
        worst = max(worst, float((torch.from_numpy(got) - ref.detach()).abs().max()))
    return worst


def _program(module: nn.Module, args: tuple, names: list[str], outputs: list[str], dims: dict, source):
    """torch.onnx's export of `module` (its ModelProto), its errors as one StylizeError line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), args, None, dynamo=True, input_names=names,
                                        output_names=outputs, dynamic_shapes=dims, opset_version=OPSET,
                                        optimize=True, verbose=False, report=False)
    except ImportError as e:
        raise StylizeError(f"ONNX export needs the onnx and onnxscript packages ({e}); pip install onnx onnxscript")
    except Exception as e:  # the exporter's own errors are long; one line says which model and why
        raise StylizeError(f"{source}: ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0]})")
    return program.model_proto


def _write(out: Path, proto, meta: dict) -> None:
    """The graph at `out`, atomically, its metadata ("stylize": JSON) replacing the exporter's."""
    out.parent.mkdir(parents=True, exist_ok=True)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "stylize", json.dumps(meta)
    atomic_write(out, lambda f: f.write(proto.SerializeToString()), f".{out.name}.", ".part")


class _Encoder(nn.Module):
    """A WCT model's encoder up to one tap, for a painting: image (1, 3, H, W) in [0, 1] -> that tap's
    features, their mean (C, 1) and centred Gram matrix (C, C), summed in float32 as
    models/wct.covariance."""

    def __init__(self, encoder, tap: str):
        super().__init__()
        self.encoder, self.tap = encoder, tap

    def forward(self, image):
        f = self.encoder(image, last=self.tap)[self.tap]
        a = f[0].flatten(1)
        mean = a.mean(1, keepdim=True)
        a = a - mean
        return f, mean, a @ a.T


class _Paint(nn.Module):
    """A WCT model painting a photo with one painting: image (1, 3, H, W) in [0, 1], then per level
    the painting's mean (C, 1) and colouring (C, C) (models/wct.colouring), then strength (1,) ->
    the picture clamped to [0, 1]: WCTNet.forward itself, the photo's whitening (wct's Newton-Schulz
    iteration) included."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, image, *inputs):
        *stats, strength = inputs
        return self.net(image, [{t: stats[2 * i: 2 * i + 2] for i, t in enumerate(self.net.taps)}], strength)


def _paint_inputs(net) -> list[str]:
    """The paint graph's input names, in _Paint's order."""
    return ["image", *(f"{kind}_{t}" for t in net.taps for kind in ("mean", "colouring")), "strength"]


def _paint_args(net, h: int, w: int, g: torch.Generator) -> tuple:
    """The paint graph's inputs: a smooth, photo-like image of h x w and a random painting's
    statistics, as engines/onnx_wct.py feeds them (float32), strength 0.6."""
    from stylize.models.wct import colouring

    photo, painting = (torch.nn.functional.interpolate(torch.rand(1, 3, a // 8 + 1, b // 8 + 1, generator=g),
                                                       size=(a, b), mode="bilinear") for a, b in ((h, w), (80, 48)))
    with torch.inference_mode():
        stats = net.style_stats(painting)
    return (photo, *(x.float() for t in net.taps for x in colouring(*stats[t])), torch.tensor([0.6]))


def _same_padding(proto) -> None:
    """Every convolution of an encoder graph padded as TensorFlow's "same" (ONNX's SAME_UPPER: the
    extra pixel of an odd padding at the end), whatever the input's size. The encoder is traced with
    constant padding (SameConv.static: the general formula on symbolic sizes took the exporter many
    minutes), right only for sides that are multiples of the strides; a painting's are any."""
    from onnx import helper

    for node in proto.graph.node:
        if node.op_type == "Conv":
            kept = [a for a in node.attribute if a.name not in ("pads", "auto_pad")]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("auto_pad", "SAME_UPPER")])
    del proto.graph.value_info[:]  # shapes traced at multiples of the strides; ONNX Runtime infers its own


def export_wct(model: str | Path, outs: dict[str, Path], check: bool = True) -> ExportReport:
    """Write a WCT model's graphs (models/wct.py; engines/onnx_wct.py runs them), one per part in
    `outs` ({"enc-TAP": path} per level and {"paint": path}), each checked against PyTorch:
    - enc-TAP, for a painting: image (1, 3, H, W) float in [0, 1], any H and W -> features (1, C, h, w)
      at TAP, their mean (C, 1) and centred Gram matrix (C, C) (_Encoder);
    - paint: image (1, 3, H, W) in [0, 1], H and W multiples of the model's multiple (at least twice
      it), per level mean_TAP (C, 1) and colouring_TAP (C, C) float32, strength (1,) -> picture
      (1, 3, H, W) clamped to [0, 1] (_Paint: WCTNet.forward, one painting, no mask).
    Only the painting's colouring, an eigendecomposition (ONNX has none), is worked out between them,
    once per painting (models/whitening.colouring); the photo's whitening is in the paint graph."""
    from stylize.features.efficientnet import SameConv
    from stylize.models.wct import WCTNet
    from stylize.models.whitening import WCTConfig

    t0 = time.perf_counter()
    record = modelfile.load(model)
    net = modelfile.build(record, lambda: WCTNet(WCTConfig(**record["net"])), record["state_dict"])
    net.eval().requires_grad_(False)
    meta = {"kind": "wct", "net": net.cfg.to_dict(), "multiple": net.multiple, "apply": record.get("apply") or {},
            "source_sha256": file_sha256(Path(record["path"])), "stylize": __version__, "opset": OPSET,
            "graph_version": GRAPH_VERSION}
    image = torch.rand(1, 3, 2 * net.multiple, 3 * net.multiple)
    worst = 0.0
    for part, out in outs.items():
        kind, _, tap = part.partition("-")
        # traced with constant padding (SameConv.static: the general formula on symbolic sizes took the
        # exporter many minutes), right where the sides are multiples of the strides: always so in
        # "paint" (the photo at multiples of the model's multiple, and each decoder gives back its
        # input's size)
        static = [m for m in net.encoder.modules() if isinstance(m, SameConv)]
        for m in static:
            m.static = True
        try:
            if kind == "enc":
                side = {2: torch.export.Dim("h", min=1, max=4096) * net.multiple,
                        3: torch.export.Dim("w", min=1, max=4096) * net.multiple}
                proto = _program(_Encoder(net.encoder, tap), (image,), ["image"], ["features", "mean", "gram"],
                                 {"image": side}, record["path"])
            else:  # the coarsest level's features at least 2 x 2, as the engines pad (a reflection pad of 1)
                side = {2: torch.export.Dim("h", min=2, max=4096) * net.multiple,
                        3: torch.export.Dim("w", min=2, max=4096) * net.multiple}
                names = _paint_inputs(net)
                args = _paint_args(net, 2 * net.multiple, 3 * net.multiple, torch.Generator().manual_seed(0))
                # the rest static: {} each, not None (torch.onnx takes a tuple of Nones for one input's
                # axes and hands torch.export a list where _Paint's *inputs are a tuple)
                proto = _program(_Paint(net), args, names, ["picture"], (side, ({},) * (len(names) - 1)),
                                 record["path"])
        finally:
            for m in static:
                m.static = False
        # a painting's sides are any: "same" padding whatever the size; not in "paint", where it would
        # also pad the decoders' convolutions (ReflectionPad2d pads them; theirs are 0)
        if kind == "enc":
            _same_padding(proto)
        _write(Path(out), proto, {**meta, "part": kind, "tap": tap})
        if check:
            worst = max(worst, _check_wct_part(Path(out), net, kind, tap))
    if worst > 1e-3:
        for out in outs.values():
            Path(out).unlink(missing_ok=True)
        raise StylizeError(f"ONNX export of {record['path']} differs from PyTorch by {worst:.2g}; not written")
    return ExportReport(Path(next(iter(outs.values()))), worst, time.perf_counter() - t0)


def _check_wct_part(path: Path, net, kind: str, tap: str) -> float:
    """Largest difference between a WCT graph in ONNX Runtime and PyTorch (the encoder's general "same"
    padding), relative to the largest value of each output: an encoder's on images of odd sizes (a
    painting's), the paint graph's on photos of multiples of the model's multiple."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in ((61, 90), (130, 97)):
        if kind == "enc":
            args = (torch.rand(1, 3, h, w, generator=g),)
            module = _Encoder(net.encoder, tap)
        else:
            m = net.multiple
            args = _paint_args(net, max(2, h // m) * m, max(2, w // m) * m, g)
            module = _Paint(net)
        with torch.inference_mode():
            refs = module(*args)
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        for ref, out in zip(refs if isinstance(refs, tuple) else (refs,), got):
            worst = max(worst, float(np.abs(out - ref.numpy()).max()) / max(1.0, float(ref.abs().max())))
    return worst

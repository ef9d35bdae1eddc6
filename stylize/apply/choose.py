"""Which engine runs a request: ONNX Runtime on the CPU where it covers the request (faster start
and forward, engines/onnx_runtime.py; engines/onnx_wct.py for WCT models), else PyTorch
(engines/pytorch.py; engines/wct.py for WCT models), or the optimization (engines/optimize.py).
Above the engines: they never import it."""
from __future__ import annotations

from typing import Callable

from stylize.apply.recipe import check_strength
from stylize.errors import StylizeError
from stylize.settings import ApplyConfig


def open_stylizer(config: ApplyConfig, notice: Callable[[str], None] | None = None,
                  tile_progress: Callable[[int, int], None] | None = None,
                  step_progress: Callable[[int, int], None] | None = None):
    """The engine for a request (recipe.Stylizer): ONNX Runtime where it covers it, else PyTorch
    (masks, tiles, --color-method match, interpolating paintings with an AdaIN or arbitrary model, GPUs).
    `config.runtime` "onnx" refuses what ONNX Runtime does not cover; "torch" never uses it. With `config.optimize`, no
    model: the optimization (optimize.py), its steps to `step_progress`."""
    from stylize.apply.engines import graphs, onnx_runtime

    c = config
    if c.optimize:
        if c.runtime == "onnx":
            raise StylizeError("--runtime onnx does not cover --optimize; use --runtime torch or auto")
        from stylize.apply.engines.optimize import OptimizingStylizer
        from stylize.settings import OPTIMIZE_SIZE, STYLE_SIZE

        ignored = [flag for flag, given in (("--tile", c.tile), ("--style-size", c.style_size is not None)) if given]
        if ignored and notice:  # it works at one size, its marks' size with it
            notice(f"{' and '.join(ignored)} do{'es' * (len(ignored) == 1)} not apply to --optimize: it works at "
                   f"{OPTIMIZE_SIZE} px (the photo's shorter side), the painting at {STYLE_SIZE['adaptive']} px "
                   "(its longest)")
        return OptimizingStylizer(c.optimize, c.device, step_progress)

    def torch_stylizer():
        from stylize.apply.engines.pytorch import load_stylizer

        return load_stylizer(c.model, c.device, c.style_size, c.tile, c.memory_mb, notice=notice,
                             tile_progress=tile_progress)

    if c.runtime == "torch" or c.device not in ("auto", "cpu") or (c.device == "auto" and onnx_runtime.accelerator_present()):
        return torch_stylizer()
    why = ("onnxruntime is not installed" if not onnx_runtime.installed() else "--mask" if c.mask else
           "--tile" if c.tile else "--color-method match" if c.match_color else None)
    if why is None:
        default = not c.styles and c.strength == 1.0  # transformer models have a faster graph for it
        if c.strength != 1.0 and not graphs.exists(c.model, default):  # refused before an export of seconds
            from stylize.models import modelfile

            d = modelfile.describe(modelfile.read_record(c.model))
            check_strength(c.strength, d["name"], d["kind"] == "adain" or d["strength"])
        fast = graphs.load(c.model, c.style_size, c.memory_mb, notice, torch_stylizer, default)
        if not isinstance(fast, onnx_runtime.OnnxStylizer) or not (fast.adaptive and c.styles and len(c.styles) > 1):
            return fast  # (OnnxWCT mixes paintings; the PyTorch one where the ONNX cache cannot be written)
        why = "style interpolation"
    if c.runtime == "onnx":
        raise StylizeError(f"--runtime onnx does not cover {why}; use --runtime torch or auto")
    return torch_stylizer()

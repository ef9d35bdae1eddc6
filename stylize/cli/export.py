"""`stylize export`: a model as an ONNX graph for other runtimes (stylize/apply/engines/export.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stylize.cli.common import check_writable, choice, choices, command, complete_models
from stylize.errors import StylizeError


@command()
def export(model: str = typer.Argument(..., help="Model name or file.", autocompletion=complete_models),
           format: str = typer.Option("onnx", "--format", help="onnx (the only one so far).", autocompletion=choices("onnx")),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write [default: MODEL.onnx here].")):
    """Write a model for other runtimes, with any input size; its largest difference from the PyTorch
    output is checked before success is reported. Inputs and outputs are described in the graph."""
    choice(format, ("onnx",), "--format")
    from stylize.apply.engines.export import export_onnx
    from stylize.models.modelfile import resolve

    path = out or Path(resolve(model).stem + ".onnx")
    if path.exists() and path.resolve() == resolve(model).resolve():
        raise StylizeError(f"{path}: refusing to overwrite the model; choose another --out")
    check_writable(path.parent if str(path.parent) else Path("."))  # before the seconds of exporting
    report = export_onnx(model, path)
    typer.echo(f"wrote {report.path} (largest difference from PyTorch {report.max_difference:.1e} on [0, 1] "
               f"pixels; {report.seconds:.1f} s)")

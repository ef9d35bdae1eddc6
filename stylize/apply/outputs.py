"""Rules for output paths that the file pipeline (batch.py) and video (video.py) share."""
from __future__ import annotations

from pathlib import Path

from stylize.errors import StylizeError


def refuse_inputs(outputs: list[Path], inputs: list[Path]) -> None:
    """No output may be one of the inputs."""
    inputs = {f.resolve() for f in inputs}
    for p in outputs:
        if p.resolve() in inputs:
            raise StylizeError(f"{p}: refusing to overwrite an input; choose another --out or --out-dir")

"""`stylize sheet`: a labelled contact sheet of a model's styles or strengths (stylize/apply/sheet.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from stylize.cli.common import choice, choices, command, complete_models
from stylize.errors import StylizeError
from stylize.settings import DEVICES, ApplyConfig

A = ApplyConfig()


@command()
def sheet(
    photo: Path = typer.Argument(..., help="The photo to show through the styles."),
    model: str = typer.Option(A.model, "--model", "-m", metavar="MODEL", autocompletion=complete_models, help="Model name or file."),
    style: Optional[List[str]] = typer.Option(None, "--style", "-s", metavar="STYLE", help="Styles to show (default: all); a,b=0.3 mixes."),
    strengths: str = typer.Option("1", help="Comma-separated strengths, e.g. 0,0.25,0.5,0.75,1."),
    size: int = typer.Option(384, min=32, help="Longest side of each tile."),
    columns: Optional[int] = typer.Option(None, min=1, help="Wrap a single row after this many tiles."),
    out: Path = typer.Option(Path("sheet.jpg"), "--out", "-o", help="Image file to write."),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}.", autocompletion=choices(*DEVICES)),
):
    """Write a labelled contact sheet: every style of a model, or styles at a row of strengths."""
    choice(device, DEVICES, "--device")
    try:
        values = [float(v) for v in strengths.split(",") if v.strip()]
    except ValueError:
        raise StylizeError(f"--strengths {strengths!r}: give numbers separated by commas")
    if not values or any(not 0 <= v <= 1 for v in values):
        raise StylizeError(f"--strengths {strengths!r}: each must be between 0 and 1")
    from stylize.images import load_image, save_pil
    from stylize.apply.engines.pytorch import load_stylizer
    from stylize.apply.sheet import contact_sheet

    if out.exists() and out.resolve() == photo.resolve():
        raise StylizeError(f"{out}: refusing to overwrite the input photo")
    stylizer = load_stylizer(model, device)
    x, _ = load_image(photo, max_size=size)
    typer.echo(f"wrote {save_pil(contact_sheet(stylizer, x, style, values, columns), out)}")

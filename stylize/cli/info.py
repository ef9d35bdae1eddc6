"""`stylize info`: what a model file says about itself (torch-free)."""
from __future__ import annotations

import json

import typer

from stylize.cli.common import command, complete_models


@command()
def info(model: str = typer.Argument(..., help="Model name or file.", autocompletion=complete_models),
         as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """Print what a model file says about itself."""
    from stylize.models import modelfile

    rec = modelfile.read_record(model)  # torch-free
    d = modelfile.describe(rec)
    d["train"] = rec.get("train", {})
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    for k, v in d.items():
        if k == "train":
            typer.echo("train:")
            for tk, tv in v.items():
                typer.echo(f"  {tk}: {tv}")
        else:
            typer.echo(f"{k}: {v}")

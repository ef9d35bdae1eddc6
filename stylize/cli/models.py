"""`stylize models`: the model files stylize finds, with their styles (torch-free)."""
from __future__ import annotations

import json

import typer

from stylize.cli.common import command
from stylize.errors import StylizeError


@command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """List the models stylize can find, with their styles."""
    from stylize.models import modelfile

    rows = []
    for path in modelfile.find_models():
        try:
            rows.append(modelfile.describe(modelfile.read_record(path)))  # torch-free
        except StylizeError as e:
            typer.echo(f"warning: {e}", err=True)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no models found in " + ", ".join(map(str, modelfile.model_dirs())))
    for r in rows:
        styles = ", ".join(r["styles"]) or "any painting (--style PAINTING.jpg)"
        typer.echo(f"{r['name']:<20} {r['norm']:<12} {styles}  ({r['path']})")

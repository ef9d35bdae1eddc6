"""`stylize calibrate`: measure how a model should apply, on photos, and write that into a copy of
its file (stylize/apply/calibrate.py; the "apply" block, modelfile.APPLY)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from stylize.cli.common import choice, choices, command, complete_models, progress_bar
from stylize.errors import StylizeError
from stylize.settings import DEVICES


def _numbers(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StylizeError(f"{flag} {text!r}: give numbers separated by commas, such as 1,0.8,0.6")


@command()
def calibrate(
    model: str = typer.Argument(..., help="Model name or file.", autocompletion=complete_models),
    photos: List[Path] = typer.Option(..., "--photos", help="Photos to measure on (a folder, or files; repeat), "
                                      "neither trained on nor kept for judging the model."),
    painting: Optional[List[Path]] = typer.Option(None, "--painting", metavar="IMAGE", help="A painting (repeat): "
                                                  "for a trained model, its own, one per style in its order "
                                                  "[default: those its training read, where they still are]; "
                                                  "for a model that takes any painting, any."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Calibrated model file to write [default: "
                                       "NAME_calibrated.safetensors in the first folder `stylize models` reads]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists (the model itself included)."),
    strengths: str = typer.Option(",".join(f"{v:g}" for v in (1.0, 0.8, 0.6, 0.5, 0.4)),
                                  help="Network strengths at --style-weight 1 to try."),
    amounts: str = typer.Option("0,0.5,0.75,1", help="Palette amounts to try (0: the network's colours, 1: the painting's)."),
    min_structure: float = typer.Option(0.70, min=-1, max=1, help="Choose the most style_match among outputs "
                                        "that keep this much of the photos' structure."),
    work_size: Optional[int] = typer.Option(None, min=0, help="Shorter side larger photos are stylized at "
                                            "(0: full size) [default: the model file's]."),
    device: str = typer.Option("auto", help=f"{', '.join(DEVICES)}.", autocompletion=choices(*DEVICES)),
    as_json: bool = typer.Option(False, "--json", help="Print the table and the choice as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Measure how a model should apply (network strength, palette) and write it into a copy."""
    choice(device, DEVICES, "--device")
    from stylize.apply import calibrate as calibration
    from stylize.models import modelfile

    source = modelfile.resolve(model)
    target = out or modelfile.model_dirs()[0] / f"{source.stem}_calibrated{modelfile.SUFFIX}"
    if target.exists() and not overwrite:  # before minutes of work, not after
        what = "is the model being calibrated" if target.resolve() == source.resolve() else "exists"
        raise StylizeError(f"{target}: {what}; give another --out, or --overwrite")
    bar = None

    def progress(step: calibration.Step) -> None:
        nonlocal bar
        if bar is None:  # the grid's size is known once the photos and paintings are
            bar = progress_bar(step.total, "outputs", quiet).__enter__()
        bar.update(1)

    try:
        result = calibration.calibrate(
            source, photos, painting, strengths=_numbers(strengths, "--strengths"),
            amounts=_numbers(amounts, "--amounts"), min_structure=min_structure, progress=progress, device=device,
            work_size=calibration.MODEL_WORK_SIZE if work_size is None else work_size)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    path = modelfile.write_apply(source, result.apply, target, overwrite=overwrite)
    strength, amount = result.chosen
    if as_json:
        table = [{"strength": s, "palette": a, **v} for (s, a), v in result.table.items()]
        typer.echo(json.dumps({"model": str(path), "chosen": {"full_strength": strength, "palette": amount},
                               "table": table}, indent=2))
        return
    for (s, a), v in result.table.items():
        mark = "  <- chosen" if (s, a) == result.chosen else ""
        typer.echo(f"strength {s:<4g} palette {a:<4g}  style_match {v['style_match']:.3f}  "
                   f"structure {v['structure']:.3f}{mark}")
    name = path.stem if path.parent.resolve() in {d.resolve() for d in modelfile.model_dirs()} else str(path)
    typer.echo(f"wrote {path}: --style-weight 1 runs the network at {strength:g} and takes {amount:g} of the "
               f"painting's palette; use it with --model {name}")

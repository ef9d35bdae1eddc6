"""What the commands share: the help's style, one-line errors, settings from options, shell
completion, progress bars and notices. Torch-free, as `stylize --help` imports it."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import signal
import sys
from pathlib import Path

import typer
from typer.core import TyperCommand

from stylize.errors import StylizeError


class Command(TyperCommand):
    """Every command's help in one style. An option's value is named by what it takes, where the
    option does not name it itself: N a whole number, X a number, PATH a file or folder, and a word by
    the option's own name (--device DEVICE); click would print <int range>, <float>, <path>, <str>.
    Arguments read PHOTO... in the usage line (typer's own: {PHOTO}).

    `renamed` (see `command`) maps a flag's former spelling to its own: given, it stops the command
    with one line naming the new flag, so that scripts fail loudly rather than mean something else."""

    renamed: dict[str, str] = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for p in self.params:
            if p.metavar is None and not getattr(p, "is_flag", False):
                p.metavar = _METAVARS.get(p.type.name, p.name.upper()) if p.param_type_name == "option" else p.name.upper()

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        for arg in args:
            if arg == "--":  # what follows is arguments
                break
            flag = arg.split("=", 1)[0]
            if flag in self.renamed:
                fail(f"{ctx.info_name} {flag} is now {self.renamed[flag]}", 2)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context):
        for p in self.params:  # before any work: a NaN would train or stylize to nothing
            value = ctx.params.get(p.name)
            if isinstance(value, float) and not math.isfinite(value):
                fail(f"{p.opts[0] if p.opts else p.name} {value}: must be a finite number")
        return super().invoke(ctx)


# by the name of the option's type (typer carries its own copy of click's types)
_METAVARS = {"int": "N", "int range": "N", "integer": "N", "float": "X", "float range": "X", "path": "PATH"}


def command(help: str | None = None, renamed: dict[str, str] | None = None):
    """Declare a command: cli/__init__.py registers a module's function of the command's name with
    these settings (help: instead of the docstring; renamed: see Command). Its StylizeErrors become
    one line (clean_errors)."""
    cls = type("Command", (Command,), {"renamed": renamed}) if renamed else Command

    def declare(function):
        run = clean_errors(function)
        run.command = {"cls": cls, "help": help}
        return run

    return declare


def fail(message: str, code: int = 1):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def clean_errors(function):
    """Turn user errors into one line and a non-zero exit, never a traceback."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except StylizeError as e:
            fail(str(e))
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except MemoryError:
            fail("out of memory; try --max-size or a smaller image")
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                fail("out of memory on the device; try --max-size, --device cpu, or a smaller image")
            raise

    return run


def config_from(cls, params: dict, **values):
    """A settings dataclass (settings.py) from a command's parameters of its fields' names, so that a
    setting is declared twice: its field and its option. `values` override parameters; paths become
    strings (as the model files' JSON records them); a list setting not given keeps its default."""
    for f in dataclasses.fields(cls):
        if f.name in params and f.name not in values:
            value = params[f.name]
            if value is None and f.default_factory is not dataclasses.MISSING:
                continue
            values[f.name] = [_plain(v) for v in value] if isinstance(value, (list, tuple)) else _plain(value)
    return cls(**values)


def _plain(value):
    return str(value) if isinstance(value, Path) else value


def from_env(ctx: typer.Context, name: str) -> bool:
    """Whether an option's value came from its environment variable."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "ENVIRONMENT"


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user set an option (on the command line or through its environment variable)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def choice(value: str, choices, flag: str) -> str:
    if value not in choices:
        raise StylizeError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    return value


def choices(*choices: str):
    """Shell completion for an option that takes one of `choices` (typer's autocompletion=)."""
    return lambda incomplete: [c for c in choices if c.startswith(incomplete)]


def complete_models(incomplete: str) -> list[str]:
    """Shell completion for --model: the names `stylize models` lists (torch-free: the files found,
    not read), or, for what looks like a path, its model files and folders."""
    import glob
    import os

    if incomplete.startswith((".", "~", os.sep)) or os.sep in incomplete:
        found = glob.glob(os.path.expanduser(incomplete) + "*")
        return sorted(f + os.sep if os.path.isdir(f) else f for f in found if os.path.isdir(f) or f.endswith((".pt", ".safetensors")))
    from stylize.models.modelfile import find_models

    return [p.stem for p in find_models() if p.stem.startswith(incomplete)]


def steps_bar(desc: str, unit: str, photos: int, quiet: bool):
    """progress(done, steps) for the work on one photo (its tiles, its optimization steps: minutes on a
    CPU, so they are shown); nothing for a batch, whose bar counts photos."""
    bar = None

    def progress(done: int, steps: int):
        nonlocal bar
        if photos > 1 or quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done == steps:
            bar.close()
            bar = None

    return progress


def notice(message: str) -> None:
    """A line on standard error that leaves a progress bar intact."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def progress_bar(total: int, unit: str, disable: bool):
    """A progress bar, or for one photo (no bar to show) a stand-in that skips importing tqdm."""
    if disable:
        class _Quiet(contextlib.nullcontext):
            def __enter__(self):
                return self

            def update(self, n: int = 1) -> None:
                pass

        return _Quiet()
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, dynamic_ncols=True)


def check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written before any work, not after the first photo;
    nothing is created here (a failed run leaves no empty folders)."""
    import tempfile

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StylizeError(f"{folder}: cannot create output folder ({existing} is a file)")
    try:  # a real file, not os.access: that says yes to root on read-only mounts and /proc
        with tempfile.TemporaryFile(dir=existing, prefix=".stylize-probe-"):
            pass
    except OSError as e:
        raise StylizeError(f"{folder}: cannot write there ({e.strerror})")


@contextlib.contextmanager
def kill_as_interrupt():
    """A kill (SIGTERM) stops a batch the way Ctrl-C does: cleanly, finishing the file being written.
    Yields a dict that gets "signum" when that happens (the exit code is then 128 + SIGTERM)."""
    killed = {}

    def interrupt(signum, frame):
        killed["signum"] = signum
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        yield killed
        return
    try:
        yield killed
    finally:
        signal.signal(signal.SIGTERM, old)

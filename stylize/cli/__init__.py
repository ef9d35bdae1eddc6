"""The `stylize` command: the root app, its global options, and its commands, one module each
(cli/train.py, cli/apply.py, ...; what they share is cli/common.py). Options take their defaults from
settings.py; torch loads only inside a command, so `stylize --help` starts fast. Every StylizeError
becomes one line on stderr, exit 1.

A command is a module stylize/cli/NAME.py with a function NAME declared by @common.command(); it is
registered by adding NAME to COMMANDS."""
from __future__ import annotations

import importlib
import sys

import typer

COMMANDS = ("train", "apply", "sheet", "models", "serve", "info", "export", "calibrate")  # in the order of `stylize --help`

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Fast neural style transfer: train style networks and apply them to photos.")


def _print_version(value: bool):
    if value:
        from stylize import __version__

        typer.echo(f"stylize {__version__}")
        raise typer.Exit()


@app.callback()
def options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                         help="Print the version and exit.")):
    """Fast neural style transfer: train style networks and apply them to photos."""


for _name in COMMANDS:
    _function = getattr(importlib.import_module(f"stylize.cli.{_name}"), _name)
    app.command(_name, **_function.command)(_function)


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())

"""`stylize serve`: the local web page (stylize/serve/server.py)."""
from __future__ import annotations

import signal
from typing import List, Optional

import typer

from stylize.cli.common import choice, choices, command, complete_models
from stylize.errors import StylizeError
from stylize.settings import DEVICES, RUNTIMES, ApplyConfig, ServeConfig

A, S = ApplyConfig(), ServeConfig()


@command(help="A local web page: drop a photo, pick a style or drop a painting, move the strength, download."
         f"\n\nOne picture is made at a time. Connections that send no request within {S.header_timeout:g} s are "
         f"closed; past {S.max_connections} at once, requests are answered 503. Uploads live in a temporary folder, "
         "removed when the server stops (Ctrl-C, SIGTERM or SIGHUP).")
def serve(
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", metavar="MODEL", autocompletion=complete_models, help="Models to offer [default: every shipped one]."),
    host: str = typer.Option(S.host, help="Address to listen on; 127.0.0.1 is this machine only (0.0.0.0: anyone who can reach it)."),
    port: int = typer.Option(S.port, min=0, max=65535, help="Port to listen on (0: any free one)."),
    allow_host: Optional[List[str]] = typer.Option(None, "--allow-host", metavar="NAME", help="Another name the page is reached by (repeat); requests naming any other Host, or sent by another page (Origin), are refused."),
    max_size: int = typer.Option(S.max_size, min=16, help="Longest side photos are stylized at; larger ones are scaled down (the page says so)."),
    max_upload: float = typer.Option(S.max_upload_mb, min=0.01, help="Largest request (photo and painting) accepted, MB; counted as it streams."),
    max_megapixels: float = typer.Option(S.max_megapixels, min=0.01, help="Most pixels a photo or painting may have, read from its header before decoding (decoding takes ~4 bytes a pixel)."),
    queue: int = typer.Option(S.max_queue, min=1, help="Pictures that may wait for the worker; past it, requests are refused (503) until some are done."),
    model_memory: float = typer.Option(S.model_memory_mb, min=0, help="Memory for the models kept open, MB (~150 each at --max-size 1024); the least recently used are closed first."),
    device: str = typer.Option(A.device, help=f"{', '.join(DEVICES)}.", autocompletion=choices(*DEVICES)),
    runtime: str = typer.Option(A.runtime, envvar="STYLIZE_RUNTIME", help="On the CPU: onnx, torch, or auto.",
                                autocompletion=choices(*RUNTIMES)),
):
    """A local web page (server.py); its help, with the fixed limits, is the decorator's."""
    choice(device, DEVICES, "--device")
    choice(runtime, RUNTIMES, "--runtime")
    from importlib.util import find_spec

    if not all(find_spec(m) for m in ("starlette", "uvicorn", "multipart")):  # multipart: Starlette's forms
        raise StylizeError("stylize serve needs Starlette and uvicorn: pip install 'stylize[serve]'")
    from stylize.serve.server import Studio, default_models, listen, make_server, run, url

    sock = listen(host, port)  # before saying the address: a taken port is one line
    try:
        studio = Studio(model or default_models(), max_size, max_upload, device, runtime, max_megapixels, queue,
                        model_memory)
    except BaseException:
        sock.close()
        raise
    server = make_server(studio, sock, allow_host or ())
    typer.echo(f"stylize: open {url(sock)} in a browser (Ctrl-C stops)")
    try:
        stopped = run(server, sock, studio)
    except KeyboardInterrupt:
        stopped = signal.SIGINT
    if stopped:
        typer.echo(f"stylize: stopped ({signal.Signals(stopped).name})", err=True)
        raise typer.Exit(128 + stopped)

"""`stylize serve`: a local web page to stylize a photo without typing (page.html).

Starlette (the toolkit FastAPI is built on) serves it under uvicorn; both are small and well kept,
and nothing here needs FastAPI's validation layer. The page sends a photo, a shipped style or a
painting, and a strength; the server answers with a job, runs the jobs one at a time in a worker
thread through the same file pipeline and recipe as `stylize apply` (batch.apply_files, recipe.py),
and the page polls the job for its progress and then shows and offers the result.

What it refuses, each with a one-line message: a request over `max_upload_mb`, counted while it
streams (413, also without a Content-Length); a photo or painting over `max_megapixels`, read from the
image's header before anything is decoded (413); files that are not images of the usual photo formats
(400); styles it does not offer (400); a full queue (503, `max_queue` pictures waiting); a Host that is
not the address served (DNS rebinding; Starlette's TrustedHostMiddleware, 400) and an Origin that is
not the page itself (another page, even on another port of this machine: CSRF; 403); job ids it did
not hand out (404). A request names the job it `replaces` (the page's previous one, when the slider
moves again): that job is dropped if it has not started. Connections that send no request headers
within `header_timeout` are closed, and uvicorn answers 503 past `max_connections`.

Memory: the worker decodes one picture at a time (requests only read headers); the models it keeps
open are an LRU bounded by `model_memory_mb`, each counted as what the process grew by while it was
opened and ran (ONNX Runtime keeps its working memory with the session).

Uploads and results live only in a temporary folder of its own, under names it makes itself (a
client's file name is never a path); an upload goes once its job is done, a result as jobs age out,
and the folder when the server stops: on Ctrl-C, SIGTERM or SIGHUP (`run`). Each job has a random id,
so two people using the page at once each see only their own results.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from stylize.errors import StylizeError
from stylize.settings import DEFAULT_ADAPTIVE_MODEL, ApplyConfig, ServeConfig

S = ServeConfig()
KEEP_JOBS = 64  # finished jobs kept (with their results) before the oldest go
PAINTING = "painting"  # the style choice that means "the painting I upload"
FORM_SLACK = 65536  # a request's own fields and multipart headers: a few hundred bytes
# Photo formats the page takes. Pillow opens more (EPS through Ghostscript, PDF, ...), which a server
# has no reason to hand untrusted bytes to.
FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF"}
FALLBACK_MODEL_MB = 150  # a model's memory at --max-size 1024 where the process's cannot be read (no /proc)
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


class TooLarge(StylizeError):
    """A request over the size or pixel budget (413)."""


class Busy(StylizeError):
    """The queue is full (503)."""


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass
class Job:
    folder: Path
    photo_size: tuple[int, int] = (0, 0)  # as the photo is seen (EXIF orientation applied)
    state: str = "queued"  # queued, running, done, failed, replaced
    progress: float = 0.0
    message: str = ""
    result: Path | None = None
    size: tuple[int, int] | None = None  # the result's
    future: Future | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class Studio:
    """The server's state, apart from HTTP: offered styles, stylizers, jobs and their folder."""

    def __init__(self, models: list[str], max_size: int = S.max_size, max_upload_mb: float = S.max_upload_mb,
                 device: str = "auto", runtime: str = "auto", max_megapixels: float = S.max_megapixels,
                 max_queue: int = S.max_queue, model_memory_mb: float = S.model_memory_mb):
        from stylize.models import modelfile

        self.max_size, self.max_bytes = max_size, int(max_upload_mb * (1 << 20))
        self.max_pixels, self.max_queue = int(max_megapixels * 1e6), max_queue
        self.model_bytes = int(model_memory_mb * (1 << 20))
        self.device, self.runtime = device, runtime
        self.styles: dict[str, tuple[str, str | None]] = {}  # label -> (model, style of the model)
        self.adaptive: str | None = None  # the model a painting goes through
        self.painting_use: str | None = None
        for m in models:
            d = modelfile.describe(modelfile.read_record(m))
            if modelfile.takes_paintings(d):  # the first one given takes the page's paintings
                if not self.adaptive:
                    self.adaptive, self.painting_use = str(m), d["use"]  # what the page says of the painting mode
            elif len(d["styles"]) == 1:
                self.styles[d["name"]] = (str(m), None)
            else:
                self.styles.update({f"{d['name']}: {s}": (str(m), s) for s in d["styles"]})
        if not self.styles and not self.adaptive:
            raise StylizeError("no models to serve")
        self.folder = Path(tempfile.mkdtemp(prefix="stylize-serve-"))
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="stylize-serve")  # one picture at a time
        # open stylizers, least recently used first, and the bytes each is counted for (worker thread only)
        self._stylizers: OrderedDict = OrderedDict()
        self._sizes: dict = {}

    def choices(self) -> list[str]:
        return list(self.styles) + ([PAINTING] if self.adaptive else [])

    def limits(self) -> dict:
        return {"max_upload_mb": self.max_bytes / (1 << 20), "max_megapixels": self.max_pixels / 1e6,
                "max_size": self.max_size, "max_queue": self.max_queue}

    def waiting(self) -> int:
        with self.lock:
            return sum(j.state == "queued" for j in self.jobs.values())

    def check_room(self, replaces: str | None = None) -> None:
        """Raise Busy when the queue is full (a waiting job this request replaces makes room)."""
        with self.lock:
            self._check_room(replaces)

    def _check_room(self, replaces: str | None) -> None:  # under the lock
        old = self.jobs.get(replaces or "")
        waiting = sum(j.state == "queued" for j in self.jobs.values()) - (old is not None and old.state == "queued")
        if waiting >= self.max_queue:
            raise Busy(f"the server is busy: {waiting} pictures are waiting; try again in a moment")

    def submit(self, photo: bytes | BinaryIO, style: str, strength: float, painting: bytes | BinaryIO | None = None,
               replaces: str | None = None) -> str:
        """Check a request and queue it; returns the job id. The files are bytes or binary files (an
        upload's spooled file); only their headers are read here. Raises StylizeError for a bad
        request, TooLarge over the budgets, Busy when the queue is full. `replaces`: a job id whose
        picture is no longer wanted (dropped if it has not started)."""
        from stylize.apply.recipe import check_strength

        check_strength(strength)
        if style not in self.choices():
            raise StylizeError(f"unknown style {style!r}; choose one of: {', '.join(self.choices())}")
        if style == PAINTING and not painting:
            raise StylizeError("choose a painting to use as the style")
        self.check_room(replaces)
        job_id = secrets.token_hex(16)
        folder = self.folder / job_id
        folder.mkdir()
        files = {"photo": photo, **({"painting": painting} if style == PAINTING else {})}
        try:
            sizes = {name: self._store(folder / name, data, name) for name, data in files.items()}
            with self.lock:
                self._check_room(replaces)
                old = self.jobs.get(replaces or "")
                if old is not None and old.state == "queued" and old.future is not None and old.future.cancel():
                    old.state, old.message, old.finished = "replaced", "replaced by a newer request", time.monotonic()
                    shutil.rmtree(old.folder, ignore_errors=True)
                job = self.jobs[job_id] = Job(folder, sizes["photo"])
                job.future = self.worker.submit(self._run, job, style, strength)
                self._evict()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job_id

    def _store(self, path: Path, data: bytes | BinaryIO, name: str) -> tuple[int, int]:
        """Write an upload and read its header: the (width, height) it shows, within the budgets."""
        from PIL import UnidentifiedImageError

        from stylize.images import _open

        if isinstance(data, (bytes, bytearray)):
            path.write_bytes(data)
        else:
            with open(path, "wb") as f:
                shutil.copyfileobj(data, f, 1 << 20)
        if path.stat().st_size > self.max_bytes:
            raise TooLarge(f"the {name} is larger than {self.max_bytes / (1 << 20):g} MB")
        try:
            with _open(path) as im:  # lazy: the header only
                fmt, (w, h) = im.format, im.size
                turned = _orientation(im) in (5, 6, 7, 8)  # a quarter turn
        except StylizeError:  # past stylize's own decompression-bomb limit
            raise TooLarge(f"the {name} has too many pixels; this server takes at most "
                           f"{self.max_pixels / 1e6:g} megapixels")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise StylizeError(f"the {name} is not an image this server can read")
        if fmt not in FORMATS:
            raise StylizeError(f"the {name} is not an image this server can read ({fmt}; it takes "
                               f"{', '.join(sorted(FORMATS))})")
        if w * h > self.max_pixels:
            raise TooLarge(f"the {name} is {w}x{h} ({w * h / 1e6:.0f} megapixels); this server takes at most "
                           f"{self.max_pixels / 1e6:g} megapixels")
        return (h, w) if turned else (w, h)

    def _evict(self) -> None:
        finished = [k for k, j in self.jobs.items() if j.state in ("done", "failed", "replaced")]
        for k in finished[: max(0, len(self.jobs) - KEEP_JOBS)]:
            shutil.rmtree(self.jobs.pop(k).folder, ignore_errors=True)

    def _stylizer(self, model: str, styles, strength: float):
        """(key, stylizer): an open one, marked recently used, or a new one."""
        from stylize.apply.choose import open_stylizer

        key = (model, not styles and strength == 1.0)  # the default graph only serves full strength
        if key in self._stylizers:
            self._stylizers.move_to_end(key)
        else:
            self._stylizers[key] = open_stylizer(self._request(model, styles, strength), tile_progress=self._tiles)
            self._sizes[key] = 0
        return key, self._stylizers[key]

    def _count(self, key, grown: int | None) -> None:
        """Count what the process grew by over a picture to its model, then close the least recently
        used models while they reach `model_memory_mb` (the one just used stays: 0 keeps only it)."""
        if grown is None:  # no /proc: an estimate, once, scaled to the pictures' size
            grown = 0 if self._sizes[key] else int(FALLBACK_MODEL_MB * (1 << 20) * (self.max_size / 1024) ** 2)
        self._sizes[key] += max(0, grown)
        while len(self._stylizers) > 1 and sum(self._sizes.values()) >= self.model_bytes:
            old = next(iter(self._stylizers))
            del self._stylizers[old], self._sizes[old]

    def _request(self, model: str, styles, strength: float) -> ApplyConfig:
        return ApplyConfig(model=model, styles=styles, strength=strength, max_size=self.max_size,
                           device=self.device, runtime=self.runtime)

    _current: Job | None = None

    def _tiles(self, done: int, steps: int) -> None:  # a big photo in tiles: real progress
        if self._current is not None:
            self._current.progress = 0.1 + 0.85 * done / max(1, steps)

    def _run(self, job: Job, style: str, strength: float) -> None:
        from PIL import Image

        from stylize.apply.batch import apply_files

        job.state, job.progress, job.message, self._current = "running", 0.05, "preparing the model", job
        before, key, state = resident_bytes(), None, "failed"
        try:
            if style == PAINTING:
                model, styles = self.adaptive, [str(job.folder / "painting")]
            else:
                model, one = self.styles[style]
                styles = [one] if one else None
            key, stylizer = self._stylizer(model, styles, strength)
            job.progress, job.message = 0.1, "stylizing"
            out = job.folder / "result.png"
            report = apply_files(stylizer, [str(job.folder / "photo")], self._request(model, styles, strength), out=out,
                                 workers=1)
            if report.failed:
                raise StylizeError(report.failed[0][1])
            with Image.open(out) as im:
                job.size = im.size
            job.result, job.progress, job.message, state = out, 1.0, "done", "done"
        except StylizeError as e:
            job.message = str(e).replace(str(job.folder) + "/", "")
        except Exception as e:  # a server keeps serving: the page shows what went wrong
            job.message = f"{type(e).__name__}: {e}"
        finally:
            try:
                job.finished, self._current = time.monotonic(), None
                for name in ("photo", "painting"):  # the uploads are done with; the result stays a while
                    (job.folder / name).unlink(missing_ok=True)
                if key is not None and key in self._stylizers:
                    now = resident_bytes()
                    self._count(key, None if before is None or now is None else now - before)
            finally:  # last: a finished job's models are already counted and closed
                job.state = state

    def job(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def close(self) -> None:
        """Drop the waiting jobs, let the running one end, and remove the folder (whatever happens)."""
        try:
            self.worker.shutdown(wait=True, cancel_futures=True)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _orientation(im) -> int:
    """The EXIF orientation from what Image.open read (the header); Image.getexif would decode a
    whole PNG to look for EXIF after the pixels."""
    from PIL import Image

    raw = im.info.get("exif")
    if raw:
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(0x0112, 1)
    tags = getattr(im, "tag_v2", None)  # TIFF: the header's tags
    return tags.get(0x0112, 1) if tags is not None else 1


class _BodyTooLarge(Exception):
    pass


def _capped(receive, limit: int):
    """`receive` that raises _BodyTooLarge once the body passes `limit` bytes: a chunked upload (no
    Content-Length) is refused while it streams, not after."""
    seen = 0

    async def capped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return capped


def allowed_hosts(host: str, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The Host names the page answers to: the address served (and the loopback names for a loopback
    address; this machine's names and addresses for 0.0.0.0 / ::), and `extra`."""
    names = {h.lower() for h in extra}
    if host in ("", "0.0.0.0", "::"):
        hostname = socket.gethostname()
        names |= {*LOOPBACK, hostname.lower(), f"{hostname.lower()}.local"}
        try:
            names |= {a[4][0] for a in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
    elif host == "localhost" or _loopback(host):
        names |= set(LOOPBACK)
    else:
        names.add(host.lower())
    return sorted(f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SameOrigin:
    """Refuse a request whose Origin header names another page: a page on another site or on another
    port of this machine making this server work for it (CSRF). Browsers send Origin with every POST
    and every cross-origin fetch; requests without one (curl, scripts) are not a browser's cross-site
    requests. The Host check is Starlette's TrustedHostMiddleware."""

    def __init__(self, app, hosts: list[str], port: int):
        self.app, self.hosts, self.port = app, {h.strip("[]") for h in hosts}, port

    def allowed(self, origin: str) -> bool:
        try:
            u = urlsplit(origin)
            return u.scheme == "http" and (u.hostname or "") in self.hosts and (u.port or 80) == self.port
        except ValueError:
            return False

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from starlette.datastructures import Headers
            from starlette.responses import JSONResponse

            origin = Headers(scope=scope).get("origin")
            if origin is not None and not self.allowed(origin):
                await JSONResponse({"error": f"refused: a request from another page ({origin})"}, 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def make_app(studio: Studio, hosts: list[str] | None = None, port: int | None = None):
    """The Starlette application over a Studio; with `hosts` (allowed_hosts) and the `port` served, the
    Host and Origin checks."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = resources.files("stylize.serve").joinpath("page.html").read_text(encoding="utf-8")
    limit = studio.max_bytes + FORM_SLACK
    too_large = f"upload larger than {studio.max_bytes / (1 << 20):g} MB"

    def refuse(status: int, message: str, **headers):
        return JSONResponse({"error": message}, status_code=status, headers=headers or None)

    async def index(request: Request):
        return HTMLResponse(page)

    async def styles(request: Request):
        return JSONResponse({"styles": studio.choices(), "painting": PAINTING if studio.adaptive else None,
                             "painting_use": studio.painting_use,
                             **studio.limits()})

    async def create(request: Request):
        declared = request.headers.get("content-length")
        # Answered at once, the rest of a refused body unread: uvicorn reads it away on a connection
        # kept alive (so a client that sends it all before reading still gets the answer), and the
        # connection closes if no new request follows within header_timeout (an endless stream).
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return refuse(413, too_large)
        try:
            studio.check_room(request.query_params.get("replaces"))
        except Busy as e:
            return refuse(503, str(e), **{"Retry-After": "5"})
        capped = Request(request.scope, _capped(request.receive, limit))
        try:
            async with capped.form(max_files=2, max_fields=4, max_part_size=4096) as form:
                photo, painting = form.get("photo"), form.get("painting")
                if photo is None or isinstance(photo, str):
                    return refuse(400, "no photo in the request")
                try:
                    strength = float(form.get("strength", "1"))
                except ValueError:
                    return refuse(400, "strength must be a number from 0 to 1")
                art = painting.file if painting is not None and not isinstance(painting, str) else None
                job_id = await run_in_threadpool(studio.submit, photo.file, str(form.get("style", "")), strength,
                                                 art, request.query_params.get("replaces"))
        except _BodyTooLarge:
            return refuse(413, too_large)
        except ClientDisconnect:  # the client went away: nobody to answer
            return Response(status_code=400)
        except HTTPException as e:  # a malformed form (Starlette's parser)
            return refuse(e.status_code, f"not a form upload: {e.detail}")
        except TooLarge as e:
            return refuse(413, str(e))
        except Busy as e:
            return refuse(503, str(e), **{"Retry-After": "5"})
        except StylizeError as e:
            return refuse(400, str(e))
        return JSONResponse({"id": job_id}, status_code=202)

    async def status(request: Request):
        job = studio.job(request.path_params["job"])
        if job is None:
            return refuse(404, "no such job")
        return JSONResponse({"state": job.state, "progress": round(job.progress, 3), "message": job.message,
                             "seconds": round(job.seconds, 1), "photo": list(job.photo_size),
                             "size": list(job.size) if job.size else None, "max_size": studio.max_size})

    async def result(request: Request):
        job = studio.job(request.path_params["job"])
        if job is None or job.result is None:
            return refuse(404, "no such result")
        name = "stylized.png" if request.query_params.get("download") else None
        return FileResponse(job.result, media_type="image/png", filename=name,
                            headers={"Cache-Control": "no-store"})

    middleware = []
    if hosts is not None:
        middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False),
                      Middleware(SameOrigin, hosts=hosts, port=port)]
    return Starlette(routes=[
        Route("/", index),
        Route("/api/styles", styles),
        Route("/api/jobs", create, methods=["POST"]),
        Route("/api/jobs/{job:str}", status),
        Route("/api/jobs/{job:str}/result", result),
    ], middleware=middleware)


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything says the address; a taken port is one line."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        why = "the port is in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e)).split(" (while ")[0]
        raise StylizeError(f"cannot listen on {host}:{port}: {why}") from None


def _protocol(header_timeout: float):
    """uvicorn's h11 protocol, which times only idle keep-alive connections, with a deadline for a
    request's headers: a connection that has not sent them within `header_timeout` seconds of opening
    (or of its last answer) is closed, so half-open connections do not pile up."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._await_headers()

        def on_response_complete(self):
            super().on_response_complete()
            self._await_headers()

        def connection_lost(self, exc):
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def _await_headers(self):
            if self._deadline is not None:
                self._deadline.cancel()
            cycle = self.cycle  # a new request's headers make a new cycle

            def expire():
                if self.cycle is cycle and not self.transport.is_closing():
                    self.transport.close()

            self._deadline = self.loop.call_later(header_timeout, expire)

    return Protocol


def make_server(studio: Studio, sock: socket.socket, allow_hosts: tuple[str, ...] | list[str] = (),
                header_timeout: float = S.header_timeout, max_connections: int = S.max_connections):
    """A uvicorn Server for the studio on a bound socket (listen), with the Host and Origin checks for
    its address and uvicorn's own limits; run it with `run` (or `.run(sockets=[sock])` in a thread)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    hosts = allowed_hosts(host, allow_hosts)
    config = uvicorn.Config(make_app(studio, hosts, port), log_level="warning", lifespan="off",
                            http=_protocol(header_timeout), limit_concurrency=max_connections,
                            timeout_keep_alive=5, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


def run(server, sock: socket.socket, studio: Studio) -> int | None:
    """Serve until Ctrl-C (KeyboardInterrupt), SIGTERM or SIGHUP, and remove the studio's folder in
    every case. uvicorn shuts down gracefully on SIGINT and SIGTERM and then raises the signal again,
    which by default ends the process before any cleanup; SIGHUP (a closed terminal) it does not
    handle. Here both stop the server like Ctrl-C; returns the signal that stopped it, or None."""
    caught: list[int] = []

    def stop(sig, frame):
        caught.append(sig)
        server.handle_exit(sig, frame)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig}
    try:
        server.run(sockets=[sock])
    finally:
        try:
            studio.close()
        finally:
            sock.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return caught[0] if caught else None


def url(sock: socket.socket) -> str:
    """The address to open in a browser."""
    host, port = sock.getsockname()[:2]
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def default_models() -> list[str]:
    """The shipped models the page offers: every style, and for paintings the default painting model
    (the page takes one; `stylize serve --model wct` chooses another)."""
    from stylize.models import modelfile

    shipped = modelfile.models_in(modelfile._shipped_dir())
    styles = sorted(p.stem for p in shipped if not modelfile.takes_paintings(modelfile.describe(modelfile.read_record(p))))
    return styles + [p.stem for p in shipped if p.stem == DEFAULT_ADAPTIVE_MODEL]

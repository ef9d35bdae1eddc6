"""`stylize serve`: a local web page to stylize a photo without typing (page.html).

Starlette (the toolkit FastAPI is built on) serves it under uvicorn; both are small and well kept,
and nothing here needs FastAPI's validation layer. The page sends a photo, a shipped style or a
painting, and a strength; the server answers with a job, runs the jobs one at a time in a worker
thread through the same file pipeline as `stylize apply` (pipeline.apply_files), and the page polls
the job for its progress and then shows and offers the result.

What it refuses: uploads over `max_upload_mb` (413), files that are not images (400), styles it
does not offer (400), job ids it did not hand out (404). Uploads and results live only in a
temporary folder of its own, under names it makes itself (a client's file name is never a path),
removed as jobs age out and when the server stops. Each job has a random id, so two people using the
page at once each see only their own results.
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import StylizeError
from .settings import DEFAULT_ADAPTIVE_MODEL, ApplyConfig, ServeConfig

KEEP_JOBS = 64  # finished jobs kept (with their files) before the oldest go
PAINTING = "painting"  # the style choice that means "the painting I upload"


@dataclass
class Job:
    folder: Path
    state: str = "queued"  # queued, running, done, failed
    progress: float = 0.0
    message: str = ""
    result: Path | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class Studio:
    """The server's state, apart from HTTP: offered styles, stylizers, jobs and their folder."""

    def __init__(self, models: list[str], max_size: int = ServeConfig.max_size,
                 max_upload_mb: float = ServeConfig.max_upload_mb, device: str = "auto", runtime: str = "auto"):
        from . import modelfile

        self.max_size, self.max_bytes = max_size, int(max_upload_mb * (1 << 20))
        self.device, self.runtime = device, runtime
        self.styles: dict[str, tuple[str, str | None]] = {}  # label -> (model, style of the model)
        self.adaptive: str | None = None  # the model a painting goes through
        for m in models:
            d = modelfile.describe(modelfile.read_record(m))
            if d["kind"] == "adain" or d["norm"] == "adaptive":
                self.adaptive = self.adaptive or str(m)
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
        self._stylizers: dict = {}

    def choices(self) -> list[str]:
        return list(self.styles) + ([PAINTING] if self.adaptive else [])

    def submit(self, photo: bytes, style: str, strength: float, painting: bytes | None = None) -> str:
        """Check a request and queue it; returns the job id. Raises StylizeError for a bad request."""
        from .images import open_image
        from .mixing import check_strength

        check_strength(strength)
        if style not in self.choices():
            raise StylizeError(f"unknown style {style!r}; choose one of: {', '.join(self.choices())}")
        if style == PAINTING and not painting:
            raise StylizeError("choose a painting to use as the style")
        job_id = secrets.token_hex(16)
        folder = self.folder / job_id
        folder.mkdir()
        files = {"photo": photo, **({"painting": painting} if style == PAINTING else {})}
        try:
            for name, data in files.items():
                (folder / name).write_bytes(data)
                try:
                    open_image(folder / name)
                except StylizeError:
                    raise StylizeError(f"the {name} is not an image this server can read")
        except StylizeError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = Job(folder)
        with self.lock:
            self.jobs[job_id] = job
            self._evict()
        self.worker.submit(self._run, job, style, strength)
        return job_id

    def _evict(self) -> None:
        finished = [k for k, j in self.jobs.items() if j.state in ("done", "failed")]
        for k in finished[: max(0, len(self.jobs) - KEEP_JOBS)]:
            shutil.rmtree(self.jobs.pop(k).folder, ignore_errors=True)

    def _stylizer(self, model: str, styles, strength: float):
        from .pipeline import open_stylizer

        key = (model, not styles and strength == 1.0)  # the default graph only serves full strength
        if key not in self._stylizers:
            self._stylizers[key] = open_stylizer(self._request(model, styles, strength), tile_progress=self._tiles)
        return self._stylizers[key]

    def _request(self, model: str, styles, strength: float) -> ApplyConfig:
        return ApplyConfig(model=model, styles=styles, strength=strength, max_size=self.max_size,
                           device=self.device, runtime=self.runtime)

    _current: Job | None = None

    def _tiles(self, done: int, steps: int) -> None:  # a big photo in tiles: real progress
        if self._current is not None:
            self._current.progress = 0.1 + 0.85 * done / max(1, steps)

    def _run(self, job: Job, style: str, strength: float) -> None:
        from .pipeline import apply_files

        job.state, job.progress, job.message, self._current = "running", 0.05, "preparing the model", job
        try:
            if style == PAINTING:
                model, styles = self.adaptive, [str(job.folder / "painting")]
            else:
                model, one = self.styles[style]
                styles = [one] if one else None
            stylizer = self._stylizer(model, styles, strength)
            job.progress, job.message = 0.1, "stylizing"
            out = job.folder / "result.png"
            report = apply_files(stylizer, [str(job.folder / "photo")], self._request(model, styles, strength), out=out,
                                 workers=1)
            if report.failed:
                raise StylizeError(report.failed[0][1])
            job.result, job.progress, job.message, job.state = out, 1.0, "done", "done"
        except StylizeError as e:
            job.message, job.state = str(e).replace(str(job.folder) + "/", ""), "failed"
        except Exception as e:  # a server keeps serving: the page shows what went wrong
            job.message, job.state = f"{type(e).__name__}: {e}", "failed"
        finally:
            job.finished, self._current = time.monotonic(), None

    def job(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def close(self) -> None:
        self.worker.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def make_app(studio: Studio):
    """The Starlette application over a Studio."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    page = resources.files("stylize").joinpath("page.html").read_text(encoding="utf-8")

    def refuse(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    async def index(request: Request):
        return HTMLResponse(page)

    async def styles(request: Request):
        return JSONResponse({"styles": studio.choices(), "painting": PAINTING if studio.adaptive else None,
                             "max_upload_mb": studio.max_bytes / (1 << 20)})

    async def create(request: Request):
        size = request.headers.get("content-length")
        if size is None or int(size) > studio.max_bytes + 65536:  # the form's own fields: a few hundred bytes
            if size is not None and int(size) <= 8 * studio.max_bytes:
                # read it away first: a server that answers and closes with the upload unread resets the
                # connection, and the client then sees a reset instead of this answer
                async for _ in request.stream():
                    pass
            return refuse(413, f"upload larger than {studio.max_bytes >> 20} MB")
        async with request.form(max_files=2, max_fields=4, max_part_size=studio.max_bytes) as form:
            photo, painting = form.get("photo"), form.get("painting")
            if photo is None or isinstance(photo, str):
                return refuse(400, "no photo in the request")
            try:
                strength = float(form.get("strength", "1"))
                data = await photo.read()
                art = await painting.read() if painting is not None and not isinstance(painting, str) else None
            except ValueError:
                return refuse(400, "strength must be a number from 0 to 1")
        if len(data) > studio.max_bytes or (art and len(art) > studio.max_bytes):
            return refuse(413, f"upload larger than {studio.max_bytes >> 20} MB")
        try:
            job_id = studio.submit(data, str(form.get("style", "")), strength, art)
        except StylizeError as e:
            return refuse(400, str(e))
        return JSONResponse({"id": job_id}, status_code=202)

    async def status(request: Request):
        job = studio.job(request.path_params["job"])
        if job is None:
            return refuse(404, "no such job")
        return JSONResponse({"state": job.state, "progress": round(job.progress, 3), "message": job.message,
                             "seconds": round(job.seconds, 1)})

    async def result(request: Request):
        job = studio.job(request.path_params["job"])
        if job is None or job.result is None:
            return refuse(404, "no such result")
        name = "stylized.png" if request.query_params.get("download") else None
        return FileResponse(job.result, media_type="image/png", filename=name,
                            headers={"Cache-Control": "no-store"})

    return Starlette(routes=[
        Route("/", index),
        Route("/api/styles", styles),
        Route("/api/jobs", create, methods=["POST"]),
        Route("/api/jobs/{job:str}", status),
        Route("/api/jobs/{job:str}/result", result),
    ])


def default_models() -> list[str]:
    """The shipped models the page offers: every style, and the arbitrary model for paintings."""
    from . import modelfile

    shipped = modelfile._shipped_dir()
    names = sorted(p.stem for p in shipped.glob("*.pt"))
    return [n for n in names if n != DEFAULT_ADAPTIVE_MODEL] + ([DEFAULT_ADAPTIVE_MODEL] if DEFAULT_ADAPTIVE_MODEL in names else [])

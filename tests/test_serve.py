"""`stylize serve` (server.py, page.html): the page driven in a real browser (headless Chromium)
from upload to download, by keyboard and at a phone's width, two users at once, what the server
refuses, and how it holds up: signals, huge images, many models, other pages, chunked uploads, a full
queue, dropped and half-open connections, a taken port."""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from stylize.serve import server as server_module  # noqa: E402
from stylize.serve.server import Studio, allowed_hosts, listen, make_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI sets this (.ci/run installs Debian's chromium), so that the browser test cannot skip there
REQUIRE_BROWSER = os.environ.get("STYLIZE_BROWSER_TEST") == "require"
# what a closed network needs: no background connections, no sandbox as root (see the env notes)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def start_server(studio: Studio, **options) -> SimpleNamespace:
    """The studio behind uvicorn in a thread, on a free port of 127.0.0.1, as `stylize serve` runs it."""
    sock = listen("127.0.0.1", 0)
    srv = make_server(studio, sock, **options)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started
    port = sock.getsockname()[1]
    return SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, studio=studio, srv=srv, thread=thread)


def stop_server(s: SimpleNamespace) -> None:
    s.srv.should_exit = True
    s.thread.join(10)
    s.studio.close()
    assert not s.studio.folder.exists()  # the uploads go with the server


@pytest.fixture
def serve(model, tmp_path, monkeypatch):
    """Start servers: serve(models=..., header_timeout=..., **Studio options); stopped after the test."""
    monkeypatch.chdir(tmp_path)  # anything written outside the server's own folder would show here
    running = []

    def start(models: list[str] | None = None, header_timeout: float = 10.0, **options):
        """models: model files; None among them is the session's tiny model (the default)."""
        options = {"max_size": 256, "max_upload_mb": 0.5, "runtime": "torch", **options}
        models = [str(model) if m is None else m for m in models or [None]]
        s = start_server(Studio(models, **options), header_timeout=header_timeout)
        s.model, s.header_timeout = model, header_timeout
        running.append(s)
        return s

    yield start
    for s in running:
        stop_server(s)


@pytest.fixture
def server(serve):
    return serve()


@contextlib.contextmanager
def worker_held(studio: Studio):
    """Keep the studio's one worker busy, so that jobs wait in its queue, until the block ends."""
    gate = threading.Event()
    studio.worker.submit(gate.wait, 60)
    try:
        yield
    finally:
        gate.set()


def form(fields: dict, files: dict) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for k, v in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def post(url: str, fields: dict, files: dict, headers: dict | None = None) -> tuple[int, dict]:
    """A multipart/form-data POST with the standard library, on a kept-alive connection as a browser
    makes it: the server answers a refused upload at once and reads the rest away, so the whole body
    is sent before the answer is read. (urllib says Connection: close, after which the server closes
    with the body unread, and a loaded machine's client could meet a reset while still sending.)"""
    body, kind = form(fields, files)
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body,
                     {"Content-Type": kind, **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def expected(model: Path, photo: Image.Image, strength: float) -> np.ndarray:
    """What `stylize apply` makes of the photo (the same PyTorch path, PNG on both sides)."""
    from stylize.apply.engines.pytorch import load_stylizer

    s = load_stylizer(model)
    x = np.asarray(photo.convert("RGB")).transpose(2, 0, 1).copy()
    return np.asarray(s.run(x, s.condition(None), strength)).transpose(1, 2, 0).astype(np.float32)


def result_of(server, job_id: str, timeout: float = 60) -> Image.Image:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(get(f"{server.url}/api/jobs/{job_id}")[1])
        assert status["state"] != "failed", status
        if status["state"] == "done":
            code, data = get(f"{server.url}/api/jobs/{job_id}/result")
            assert code == 200
            return Image.open(io.BytesIO(data))
        time.sleep(0.1)
    raise AssertionError("job did not finish")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), one for the module's browser tests."""
    if not Path(CHROMIUM).exists():
        if REQUIRE_BROWSER:
            pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium (see .ci/run)")
        pytest.skip("no Chromium here (CI installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


READY = "document.getElementById('download').getAttribute('aria-disabled') === 'false'"


@pytest.mark.slow
def test_the_page_from_upload_to_download_in_a_browser(server, browser, tmp_path):
    photo = make_photo(3, 96, 72)
    photo.save(tmp_path / "photo.png")
    page = browser.new_page(accept_downloads=True)
    try:
        page.goto(server.url)
        page.wait_for_selector("#style option", state="attached")
        assert page.locator("#style option").all_inner_texts() == ["model"]  # the one model it serves
        page.set_input_files("#photo", str(tmp_path / "photo.png"))
        page.wait_for_function(READY, timeout=60_000)
        first = page.get_attribute("#result", "src")
        # the slider, as a user moves it: ten steps of 0.05 down from 1
        page.focus("#strength")
        for _ in range(10):
            page.keyboard.press("ArrowLeft")
        assert page.inner_text("#strength-value") == "0.50"
        page.wait_for_function(f"document.getElementById('result').getAttribute('src') !== {json.dumps(first)} && {READY}",
                               timeout=60_000)
        assert "Done" in page.inner_text("#status")
        with page.expect_download() as download:
            page.click("#download")
        download.value.save_as(tmp_path / "downloaded.png")
        shown = page.evaluate("document.getElementById('result').naturalWidth")
    finally:
        page.close()
    got = np.asarray(Image.open(tmp_path / "downloaded.png").convert("RGB"), dtype=np.float32)
    assert shown == 96 and got.shape == (72, 96, 3)
    assert np.abs(got - expected(server.model, photo, 0.5)).mean() < 0.5  # the same pixels as `stylize apply`
    assert np.abs(got - expected(server.model, photo, 1.0)).mean() > 2  # and the slider's strength, not full


def test_two_people_at_once_each_get_their_own_picture(server):
    photos = [make_photo(1, 64, 48), make_photo(2, 64, 48)]
    answers = [None, None]

    def use(i):
        code, body = post(f"{server.url}/api/jobs", {"style": "model", "strength": "1"}, {"photo": ("p.png", png(photos[i]))})
        assert code == 202, body
        answers[i] = result_of(server, body["id"])

    threads = [threading.Thread(target=use, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for photo, answer in zip(photos, answers):
        got = np.asarray(answer.convert("RGB"), dtype=np.float32)
        assert np.abs(got - expected(server.model, photo, 1.0)).mean() < 0.5


def test_what_the_server_refuses(server, tmp_path):
    url = f"{server.url}/api/jobs"
    photo = png(make_photo(1, 64, 48))
    big = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)  # ~1 MB as PNG, limit 0.5
    code, body = post(url, {"style": "model"}, {"photo": ("big.png", png(Image.fromarray(big)))})
    assert code == 413 and "larger than" in body["error"]
    code, body = post(url, {"style": "model"}, {"photo": ("notes.png", b"not an image at all")})
    assert code == 400 and "not an image" in body["error"]
    code, body = post(url, {"style": "../../etc/passwd"}, {"photo": ("p.png", photo)})
    assert code == 400 and "unknown style" in body["error"]
    code, body = post(url, {"style": "model", "strength": "2"}, {"photo": ("p.png", photo)})
    assert code == 400 and "between 0 and 1" in body["error"]
    code, body = post(url, {"style": "model"}, {"photo": ("../../escape.png", photo)})  # a client's name is no path
    assert code == 202
    result_of(server, body["id"])
    for path in ("/api/jobs/nosuchjob", "/api/jobs/nosuchjob/result", "/api/jobs/..%2F..%2Fetc%2Fpasswd/result",
                 "/../../etc/passwd"):
        assert get(server.url + path)[0] == 404
    assert not any(tmp_path.rglob("*escape*")) and not list(tmp_path.iterdir())  # nothing outside its own folder
    written = [p for p in server.studio.folder.rglob("*") if p.is_file()]
    assert written and all(p.name in ("photo", "result.png") for p in written)


# -- how the server holds up -----------------------------------------------------------------------

def wait_job(studio: Studio, job_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while studio.job(job_id).state in ("queued", "running"):
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.02)
    return studio.job(job_id)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (RGB), with one row of pixels: what a decompression bomb
    looks like to a reader of headers (a real 15000x15000 PNG of one colour is 0.6 MB; bench/serve.py)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 + 3 * width))) + chunk(b"IEND", b"")


def test_the_pixel_budget_is_read_from_the_header_before_decoding(serve):
    server = serve(max_megapixels=50)
    bomb = png_header(15000, 15000)  # 225 megapixels in 44 bytes of pixels
    assert len(bomb) < 1000
    t0 = time.monotonic()
    code, body = post(f"{server.url}/api/jobs", {"style": "model"}, {"photo": ("bomb.png", bomb)})
    assert code == 413 and "15000x15000" in body["error"] and "at most 50 megapixels" in body["error"], body
    assert time.monotonic() - t0 < 2  # refused from the header: nothing decoded
    assert not [p for p in server.studio.folder.rglob("*") if p.is_file()]  # and nothing kept
    code, body = post(f"{server.url}/api/jobs", {"style": "model"}, {"photo": ("ok.png", png_header(2000, 1000))})
    assert code == 202  # within the budget, it is taken (and fails later as a truncated image, not here)


def test_open_models_are_an_lru_bounded_by_bytes(model, monkeypatch, tmp_path):
    """Each model is counted as what the process grew by while it was opened and ran (here 200 MB a
    new model, nothing a model already open); past the budget the least recently used is closed."""
    memory = [100 << 20]

    def resident():
        return memory[0]

    real_stylizer = Studio._stylizer

    def grows(self, model, styles, strength):
        if (model, not styles and strength == 1.0) not in self._stylizers:
            memory[0] += 200 << 20
        return real_stylizer(self, model, styles, strength)

    monkeypatch.setattr(server_module, "resident_bytes", resident)
    monkeypatch.setattr(Studio, "_stylizer", grows)
    studio = Studio([str(model)], max_size=64, runtime="torch", model_memory_mb=300)
    try:
        photo = png(make_photo(1, 48, 40))
        full, half = (str(model), True), (str(model), False)  # the full-strength graph, the slider's
        assert wait_job(studio, studio.submit(photo, "model", 1.0)).state == "done"
        assert list(studio._stylizers) == [full] and studio._sizes[full] == 200 << 20
        assert wait_job(studio, studio.submit(photo, "model", 0.5)).state == "done"
        assert list(studio._stylizers) == [half]  # 400 MB > 300: the older one is closed
        studio.model_bytes = 500 << 20
        assert wait_job(studio, studio.submit(photo, "model", 1.0)).state == "done"
        assert wait_job(studio, studio.submit(photo, "model", 0.5)).state == "done"  # already open: no growth
        assert list(studio._stylizers) == [full, half] and sum(studio._sizes.values()) == 400 << 20
    finally:
        studio.close()


def test_open_models_are_bounded_with_the_real_measure(model):
    studio = Studio([str(model)], max_size=64, runtime="torch", model_memory_mb=0)
    try:
        photo = png(make_photo(1, 48, 40))
        for strength in (1.0, 0.5, 1.0, 0.3):
            assert wait_job(studio, studio.submit(photo, "model", strength)).state == "done"
            assert len(studio._stylizers) == 1  # a budget of 0 keeps only the one in use
    finally:
        studio.close()


def request(server, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict | bytes]:
    """A request with exactly these headers (urllib would add its own Host)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data
    finally:
        conn.close()


def test_host_and_origin_must_be_the_address_served(server):
    assert allowed_hosts("127.0.0.1") == ["127.0.0.1", "[::1]", "localhost"]
    assert allowed_hosts("192.168.1.5", ["box.local"]) == ["192.168.1.5", "box.local"]
    assert {"localhost", socket.gethostname().lower()} <= set(allowed_hosts("0.0.0.0"))  # every address
    body, kind = form({"style": "model"}, {"photo": ("p.png", png(make_photo(1, 32, 24)))})
    own = f"127.0.0.1:{server.port}"
    assert request(server, "GET", "/api/styles", headers={"Host": own})[0] == 200
    assert request(server, "GET", "/api/styles", headers={"Host": f"localhost:{server.port}"})[0] == 200
    # DNS rebinding: a name that resolves to this machine, from an attacker's page
    assert request(server, "GET", "/api/styles", headers={"Host": f"rebind.example:{server.port}"})[0] == 400
    code, _ = request(server, "POST", "/api/jobs", body, {"Host": f"rebind.example:{server.port}", "Content-Type": kind})
    assert code == 400
    # CSRF: a page on another port of this machine (or another site) posting to the server
    for origin in ("http://127.0.0.1:9999", "http://evil.example", "null", f"https://127.0.0.1:{server.port}"):
        code, answer = request(server, "POST", "/api/jobs", body, {"Host": own, "Content-Type": kind, "Origin": origin})
        assert code == 403 and "another page" in answer["error"], origin
    assert not server.studio.jobs  # none of them started a job
    for origin in (f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}", None):  # the page itself; a script
        headers = {"Host": own, "Content-Type": kind, **({"Origin": origin} if origin else {})}
        code, answer = request(server, "POST", "/api/jobs", body, headers)
        assert code == 202, (origin, answer)


def chunked_post(server, body: bytes, kind: str, chunk: int = 16384) -> tuple[int, dict]:
    """POST with Transfer-Encoding: chunked (no Content-Length), as a streaming client sends."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/api/jobs", (body[i:i + chunk] for i in range(0, len(body), chunk)),
                     {"Content-Type": kind}, encode_chunked=True)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_a_chunked_upload_is_taken_within_the_limit_and_refused_as_it_streams_past_it(serve):
    server = serve(header_timeout=1.0)
    photo = make_photo(4, 64, 48)
    code, answer = chunked_post(server, *form({"style": "model"}, {"photo": ("p.png", png(photo))}))
    assert code == 202, answer
    got = np.asarray(result_of(server, answer["id"]).convert("RGB"), dtype=np.float32)
    assert np.abs(got - expected(server.model, photo, 1.0)).mean() < 0.5
    big = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)  # ~1 MB as PNG, limit 0.5
    code, answer = chunked_post(server, *form({"style": "model"}, {"photo": ("big.png", png(Image.fromarray(big)))}))
    assert code == 413 and "larger than 0.5 MB" in answer["error"]
    # an endless stream: answered while it streams, and the connection closed header_timeout later
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
        head = b'--b\r\nContent-Disposition: form-data; name="photo"; filename="p.png"\r\n\r\n'
        s.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        answers = []
        reader = threading.Thread(target=lambda: answers.append(s.recv(200)), daemon=True)
        reader.start()
        piece = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        t0 = time.monotonic()
        with pytest.raises(OSError):  # reset or broken pipe once the server closes it
            while time.monotonic() - t0 < 20:
                s.sendall(piece)
                if answers:
                    answered = time.monotonic()
        reader.join(5)
    assert answers and answers[0].startswith(b"HTTP/1.1 413"), answers
    assert time.monotonic() - answered < server.header_timeout + 3


def test_a_full_queue_refuses_and_a_new_value_replaces_a_waiting_job(serve):
    server = serve(max_queue=2)
    url = f"{server.url}/api/jobs"
    photo = png(make_photo(5, 48, 40))
    with worker_held(server.studio):
        first = post(url, {"style": "model", "strength": "0.2"}, {"photo": ("p.png", photo)})[1]["id"]
        second = post(url, {"style": "model", "strength": "0.4"}, {"photo": ("p.png", photo)})[1]["id"]
        code, answer = post(url, {"style": "model", "strength": "0.6"}, {"photo": ("p.png", photo)})
        assert code == 503 and "busy" in answer["error"]
        # the slider moved again: the page names its waiting job, which goes, and the queue has room
        code, answer = post(f"{url}?replaces={second}", {"style": "model", "strength": "0.8"}, {"photo": ("p.png", photo)})
        assert code == 202, answer
        third = answer["id"]
        assert server.studio.job(second).state == "replaced" and not server.studio.job(second).folder.exists()
        assert server.studio.waiting() == 2
    for job_id in (first, third):
        result_of(server, job_id)
    assert server.studio.job(second).state == "replaced" and server.studio.job(second).result is None


def test_a_dropped_connection_is_no_traceback_and_half_open_ones_are_closed(serve):
    server = serve(header_timeout=0.5)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:  # an upload cut short
            s.sendall(b"POST /api/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"photo\"; "
                      b"filename=\"p.png\"\r\n\r\n" + b"x" * 1000)
            time.sleep(0.2)
        half_open = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        for i, s in enumerate(half_open):
            if i % 2:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
        time.sleep(1.0)
        for s in half_open:
            s.settimeout(2)
            assert s.recv(100) == b""  # closed by the server
            s.close()
        assert get(f"{server.url}/api/styles")[0] == 200  # and it still serves
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR], [r.getMessage() for r in records]


def test_a_taken_port_is_one_line_and_no_address(model):
    from typer.testing import CliRunner

    from stylize.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--model", str(model), "--port", str(port)])
    assert r.exit_code == 1
    assert r.output.strip() == f"error: cannot listen on 127.0.0.1:{port}: the port is in use"


def serve_process(model: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    """`stylize serve` as a user starts it, its temporary folder under `tmp`; and the address it says."""
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stylize", "serve", "--model", str(model), "--port", "0",
                             "--runtime", "torch", "--max-size", "64"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "open http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, line.split("open ")[1].split()[0].rstrip("/")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_remove_the_uploads(model, tmp_path, sig):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc, url = serve_process(model, tmp)
    try:
        code, answer = post(f"{url}/api/jobs", {"style": "model"}, {"photo": ("p.png", png(make_photo(6, 48, 40)))})
        assert code == 202
        assert list(tmp.glob("stylize-serve-*/*/photo"))  # the upload is there while the job waits or runs
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig
    assert not list(tmp.glob("stylize-serve-*"))
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"stylize: stopped ({sig.name})"


# -- the page: keyboard, a phone, a server gone, a painting not yet chosen, a photo scaled down ----

def open_page(browser, server, **options):
    page = browser.new_page(**options)
    page.goto(server.url)
    page.wait_for_selector("#style option", state="attached")
    return page


def choose_photo_and_wait(page, photo: Path) -> None:
    """Give the page a photo while the server's worker is held: the page then says it is waiting."""
    page.set_input_files("#photo", str(photo))
    page.wait_for_function("document.getElementById('status').textContent.includes('Waiting')")


@pytest.mark.slow
def test_the_page_works_by_keyboard(server, browser, tmp_path):
    make_photo(7, 64, 48).save(tmp_path / "photo.png")
    page = open_page(browser, server)
    choosers = []
    # listening from the start: Playwright turns on its file-chooser interception without waiting
    # for the browser's answer, so a listener added just before Enter could miss the dialog
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    try:
        for _ in range(10):  # Tab from the top of the page to the photo picker
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "drop":
                break
        assert page.evaluate("document.activeElement.id") == "drop"
        page.keyboard.press("Enter")
        for _ in range(100):
            if choosers:
                break
            page.wait_for_timeout(100)
        assert choosers, "Enter on the photo picker opened no file chooser"
        choosers[0].set_files(str(tmp_path / "photo.png"))
        page.wait_for_function(READY, timeout=60_000)
        order = []
        for _ in range(6):  # and on to the style, the slider and Download
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.id"))
        assert {"style", "strength", "download"} <= set(order), order
    finally:
        page.close()


@pytest.mark.slow
def test_the_page_fits_a_phone(server, browser, tmp_path):
    make_photo(8, 512, 384).save(tmp_path / "a photo with a long name from a phone camera 2024-05-01 12.30.45.png")
    page = open_page(browser, server, viewport={"width": 390, "height": 844}, device_scale_factor=2)
    try:
        page.set_input_files("#photo", str(next(tmp_path.glob("a photo*"))))
        page.wait_for_function(READY, timeout=60_000)
        page.wait_for_function("document.getElementById('result').complete")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        width = "(q) => document.querySelector(q).getBoundingClientRect().width"
        assert page.evaluate(width, "figure:first-child") >= 330 and page.evaluate(width, "figure:last-child") >= 330
        assert page.evaluate(width, "#original") >= 300  # 512 px wide, as wide as the phone allows
        assert page.evaluate(width, "#result") == 256  # the server's 256 px, not shrunk
    finally:
        page.close()


@pytest.mark.slow
def test_the_page_says_when_the_server_dies_mid_job(server, browser, tmp_path):
    make_photo(9, 64, 48).save(tmp_path / "photo.png")
    page = open_page(browser, server)
    try:
        with worker_held(server.studio):
            choose_photo_and_wait(page, tmp_path / "photo.png")
            server.srv.should_exit = True  # the server goes while the job waits
            server.thread.join(10)
        page.wait_for_function("document.getElementById('status').className === 'error'", timeout=10_000)
        assert "stopped answering" in page.inner_text("#status")
        assert page.get_attribute("#download", "aria-disabled") == "true"
    finally:
        page.close()


@pytest.mark.slow
def test_choosing_my_own_painting_clears_the_old_result(serve, browser, tmp_path):
    server = serve(models=[None, str(ROOT / "weights" / "arbitrary.pt")])
    make_photo(10, 64, 48).save(tmp_path / "photo.png")
    page = open_page(browser, server)
    try:
        page.set_input_files("#photo", str(tmp_path / "photo.png"))
        page.wait_for_function(READY, timeout=60_000)
        page.select_option("#style", "painting")
        page.wait_for_timeout(600)  # past the page's 250 ms pause before it sends
        assert page.get_attribute("#download", "aria-disabled") == "true" and page.get_attribute("#download", "href") is None
        assert page.get_attribute("#result", "src") is None
        assert "Choose a painting" in page.inner_text("#status")
        # what the painting mode is, under the painting's button: the painting model's own `use` line
        assert page.inner_text("#painting-use").startswith("My own painting: any painting, given at apply time")
    finally:
        page.close()


@pytest.mark.slow
def test_the_page_says_the_photo_was_scaled_down(server, browser, tmp_path):
    make_photo(11, 512, 384).save(tmp_path / "photo.png")  # the test server stylizes at most 256 px
    page = open_page(browser, server)
    try:
        page.set_input_files("#photo", str(tmp_path / "photo.png"))
        page.wait_for_function(READY, timeout=60_000)
        status = page.inner_text("#status")
        assert "256×192" in status and "512×384" in status and "256 px" in status, status
    finally:
        page.close()
    job = next(iter(server.studio.jobs.values()))
    assert job.photo_size == (512, 384) and job.size == (256, 192)


@pytest.mark.slow
def test_moving_the_slider_replaces_the_waiting_picture(server, browser, tmp_path):
    make_photo(12, 64, 48).save(tmp_path / "photo.png")
    page = open_page(browser, server)
    try:
        with worker_held(server.studio):
            choose_photo_and_wait(page, tmp_path / "photo.png")
            page.focus("#strength")
            for _ in range(4):  # four moves, each after the page has sent the one before
                page.keyboard.press("ArrowLeft")
                page.wait_for_timeout(400)
            assert server.studio.waiting() == 1  # only the last value waits
        page.wait_for_function(READY, timeout=60_000)
    finally:
        page.close()
    states = [j.state for j in server.studio.jobs.values()]
    assert states == ["replaced"] * 4 + ["done"], states

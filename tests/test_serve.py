"""`stylize serve` (server.py, page.html): the page driven in a real browser (headless Chromium)
from upload to download, two users at once, and what the server refuses."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from stylize.server import Studio, make_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# CI sets this (.ci/run installs Debian's chromium), so that the browser test cannot skip there
REQUIRE_BROWSER = os.environ.get("STYLIZE_BROWSER_TEST") == "require"
# what a closed network needs: no background connections, no sandbox as root (see the env notes)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written outside the server's own folder would show here
    studio = Studio([str(model)], max_size=256, max_upload_mb=0.5, runtime="torch")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}", studio=studio, model=model)
    srv.should_exit = True
    thread.join(10)
    studio.close()
    assert not studio.folder.exists()  # the uploads go with the server


def post(url: str, fields: dict, files: dict) -> tuple[int, dict]:
    """A multipart/form-data POST with the standard library."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for k, v in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, body.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


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
    from stylize.inference import load_stylizer

    s = load_stylizer(model)
    x = s.wrap(np.asarray(photo.convert("RGB")).transpose(2, 0, 1).copy())
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


@pytest.mark.slow
def test_the_page_from_upload_to_download_in_a_browser(server, tmp_path):
    if not Path(CHROMIUM).exists():
        if REQUIRE_BROWSER:
            pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium (see .ci/run)")
        pytest.skip("no Chromium here (CI installs it)")
    from playwright.sync_api import sync_playwright

    photo = make_photo(3, 96, 72)
    photo.save(tmp_path / "photo.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(server.url)
            page.wait_for_selector("#style option", state="attached")
            assert page.locator("#style option").all_inner_texts() == ["model"]  # the one model it serves
            page.set_input_files("#photo", str(tmp_path / "photo.png"))
            ready = "document.getElementById('download').getAttribute('aria-disabled') === 'false'"
            page.wait_for_function(ready, timeout=60_000)
            first = page.get_attribute("#result", "src")
            # the slider, as a user moves it: ten steps of 0.05 down from 1
            page.focus("#strength")
            for _ in range(10):
                page.keyboard.press("ArrowLeft")
            assert page.inner_text("#strength-value") == "0.50"
            page.wait_for_function(f"document.getElementById('result').getAttribute('src') !== {json.dumps(first)} && {ready}",
                                   timeout=60_000)
            assert "Done" in page.inner_text("#status")
            with page.expect_download() as download:
                page.click("#download")
            download.value.save_as(tmp_path / "downloaded.png")
            shown = page.evaluate("document.getElementById('result').naturalWidth")
        finally:
            browser.close()
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

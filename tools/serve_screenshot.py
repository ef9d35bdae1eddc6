"""The README's pictures of `stylize serve`: the page in headless Chromium with an example photo
through a shipped style, at a desktop's width and at a phone's (390 px). Needs the serve and test
extras and Debian's chromium.

    python tools/serve_screenshot.py docs/serve     # docs/serve/desktop.jpg, docs/serve/phone.jpg
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from stylize.serve.server import Studio, default_models, listen, make_server  # noqa: E402
from test_serve import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

VIEWS = {"desktop": {"viewport": {"width": 1280, "height": 620}},
         # a phone: 390 CSS px, drawn at 2 device pixels each; the whole page, one column
         "phone": {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
                   "has_touch": True}}


def main(out: Path, photo: Path = ROOT / "examples/chelsea.jpg", style: str = "starry_night", strength: str = "0.8") -> None:
    out.mkdir(parents=True, exist_ok=True)
    studio = Studio(default_models())
    sock = listen("127.0.0.1", 0)
    srv = make_server(studio, sock)
    threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, options in VIEWS.items():
                page = browser.new_page(**options)
                page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
                page.wait_for_selector("#style option", state="attached")
                page.select_option("#style", style)
                page.eval_on_selector("#strength", f"(e) => {{ e.value = '{strength}'; e.dispatchEvent(new Event('input')); }}")
                page.set_input_files("#photo", str(photo))
                page.wait_for_function("document.getElementById('download').getAttribute('aria-disabled') === 'false'",
                                       timeout=120_000)
                page.wait_for_function("document.getElementById('result').complete")
                page.wait_for_timeout(400)  # the progress bar's 0.2 s transition to full
                page.screenshot(path=str(out / f"{name}.jpg"), type="jpeg", quality=80, full_page=name == "phone")
                page.close()
            browser.close()
    finally:
        srv.should_exit = True
        studio.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

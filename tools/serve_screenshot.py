"""The README's picture of `stylize serve`: the page in headless Chromium with an example photo
through a shipped style. Needs the serve and test extras and Debian's chromium.

    python tools/serve_screenshot.py docs/serve.jpg
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from stylize.server import Studio, default_models, make_app  # noqa: E402
from test_serve import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402


def main(out: Path, photo: Path = ROOT / "examples/chelsea.jpg", style: str = "starry_night", strength: str = "0.8") -> None:
    studio = Studio(default_models())
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 620})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#style option", state="attached")
            page.select_option("#style", style)
            page.eval_on_selector("#strength", f"(e) => {{ e.value = '{strength}'; e.dispatchEvent(new Event('input')); }}")
            page.set_input_files("#photo", str(photo))
            page.wait_for_function("document.getElementById('download').getAttribute('aria-disabled') === 'false'",
                                   timeout=120_000)
            page.wait_for_function("document.getElementById('result').complete")
            page.screenshot(path=str(out), type="jpeg", quality=85)
            browser.close()
    finally:
        srv.should_exit = True
        studio.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""What the browser tests share: the Chromium they drive (skip without it, fail in CI) and a real
studio server on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("LMSCOPE_CHROMIUM", "/usr/bin/chromium")
# CI (and scripts/test.sh where it could install the browser) sets LMSCOPE_REQUIRE_BROWSER=1:
# there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("LMSCOPE_REQUIRE_BROWSER") == "1"


def playwright(*, module_level: bool = False):
    """Playwright's `sync_api`, or a skip (a failure when REQUIRED) saying what is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        why = f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (or set LMSCOPE_CHROMIUM)"
    else:
        try:
            from playwright import sync_api
            return sync_api
        except ImportError:
            why = "Playwright is not installed: `pip install playwright`"
    if REQUIRED:
        pytest.fail(why)
    pytest.skip(why, allow_module_level=module_level)


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free loopback port; yields its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(500):
        if srv.started:
            break
        time.sleep(0.02)
    assert srv.started, "the studio server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


def run_job(page, path: str, click, timeout: float = 300) -> dict:
    """Start a studio job from the page with `click()` (which makes the page POST /api/jobs/<path>) and
    wait, asking the server as the page does, until it ends; returns the job's final view (its
    "result" is what the page renders)."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(f"/api/jobs/{path}")) as start:
        click()
    assert start.value.status == 202, start.value.text()
    job = start.value.json()
    base = start.value.url.split("/api/jobs/")[0]
    t0 = time.monotonic()
    while job["state"] not in ("done", "error", "cancelled"):
        assert time.monotonic() - t0 < timeout, f"job {path} still {job['state']} after {timeout} s"
        time.sleep(0.1)
        job = page.request.get(f"{base}/api/jobs/{job['id']}").json()
    return job


class Pages:
    """Pages of one browser context at 1280 x 900 (downloads allowed); each page's script errors
    are collected in `errors`."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.errors: list[str] = []

    def open(self, url: str):
        """A new page at `url`, once /api/info has answered (the model line is drawn)."""
        page = self.ctx.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#model-info b")
        return page


@contextlib.contextmanager
def chromium(sync_api) -> Iterator[Pages]:
    """Debian's Chromium through Playwright for one scenario; a script error on any of its pages
    fails the test when the block ends."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        pages = Pages(browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True))
        try:
            yield pages
        finally:
            browser.close()
    assert pages.errors == []

"""The live dashboard in a real browser: Debian's chromium, headless, driven over the DevTools protocol
(a WebSocket; nothing downloaded at test time). Skipped with the reason when chromium is absent
(.ci/run installs it)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(120)

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class Browser:
    """One headless chromium and one page of it, over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        from websockets.sync.client import connect
        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1280,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and len(port_file.read_text().splitlines()) >= 2, 30,
                 message="chromium's DevTools port")
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=10).__enter__()
        self._ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        rid = next(self._ids)
        self.ws.send(json.dumps({"id": rid, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == rid:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    b = Browser(CHROMIUM, tmp_path / "profile")
    yield b
    b.close()


TABLE_PIDS = "[...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.pid)"
EVENT_PIDS = ("[...document.querySelectorAll('#events li')].filter(li => li.dataset.kind === 'worker-exit')"
              ".map(li => li.dataset.pid)")


def test_dashboard_shows_workers_and_a_killed_worker_without_a_reload(cluster, browser, tmp_path):
    port, http_port = free_port(), free_port()
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "2",
                   "--metrics-bind", f"127.0.0.1:{port}", "--http-bind", f"127.0.0.1:{http_port}", "--dashboard")
    c = inst.client()
    for i in range(20):
        c.result("add", i, i)
    c.call("fail", "for the errors chart")
    pids = sorted(str(w["pid"]) for w in inst.wait_ready(2))

    browser.send("Page.enable")
    browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/dashboard")
    wait_for(lambda: sorted(browser.evaluate(TABLE_PIDS) or []) == pids, 15, message="the workers' pids in the table")
    assert browser.evaluate("document.getElementById('link').textContent") == "live"
    assert browser.evaluate("document.querySelector('#methods tr[data-method=\"add\"] td:nth-child(2)')"
                            ".textContent") == "20"
    browser.evaluate("window.__sameDocument = true")     # gone if the page reloads

    victim = pids[0]
    os.kill(int(victim), signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: victim in (browser.evaluate(EVENT_PIDS) or []), 2.0, message="the kill in the events")

    def replaced() -> bool:
        shown = browser.evaluate(TABLE_PIDS) or []
        return len(shown) == 2 and victim not in shown and all(shown)
    deadline = 2.0 - (time.monotonic() - killed_at)
    wait_for(replaced, max(deadline, 0.1), message="the replacement in the table within 2 s")
    new_pids = set(browser.evaluate(TABLE_PIDS)) - set(pids)
    assert new_pids == {str(w["pid"]) for w in inst.ready_workers()} - set(pids)
    assert browser.evaluate("window.__sameDocument === true")

    for i in range(40):                   # a little more traffic for the charts of the screenshot
        c.result("add", i, 1)
    shot = tmp_path / "dashboard.png"
    browser.screenshot(shot)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")

    # the same page served by the workers on the HTTP port, its stream relayed from the master
    browser.send("Page.navigate", url=f"http://127.0.0.1:{http_port}/dashboard")
    current = sorted(str(w["pid"]) for w in inst.ready_workers())
    wait_for(lambda: sorted(browser.evaluate(TABLE_PIDS) or []) == current, 15,
             message="the workers' pids in the table served on the HTTP port")
    wait_for(lambda: browser.evaluate("document.getElementById('link').textContent") == "live", 5,
             message="the HTTP port's stream live")
    assert victim in (browser.evaluate(EVENT_PIDS) or [])      # the history came with the hello
    wait_for(lambda: browser.evaluate("document.querySelector('#methods tr[data-method=\"add\"] td:nth-child(2)')"
                                      ".textContent") == "60", 5, message="the calls of the last minute")

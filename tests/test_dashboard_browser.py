"""A headless Chromium driven over the DevTools protocol, for the dashboard tests that click (tests/test_dashboard.py):
navigate, wait for a condition in the page, click an element, read text, and take downloads into a folder. No
tests of its own; the browser is Debian's chromium, as in test_dashboard.py.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

WAIT = 30.0  # seconds: only to catch a hang; every wait returns as soon as its condition holds


class Browser:
    def __init__(self, binary: str, flags: list[str], profile: Path, downloads: Path) -> None:
        profile.mkdir(parents=True, exist_ok=True)
        downloads.mkdir(parents=True, exist_ok=True)
        self.downloads = downloads
        self.proc = subprocess.Popen([binary, *flags, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      "--window-size=1400,1000", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not open DevTools"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        self.ws: ClientConnection = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=WAIT)
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        call = next(self._ids)
        self.ws.send(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=WAIT))
            if message.get("id") == call:
                assert "error" not in message, message["error"]
                result: dict[str, Any] = message["result"]
                return result

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def go(self, url: str) -> None:
        """Navigate and return once the new document replaced the old one (whose state must not be read)."""
        self.js("window.__leaving = true")
        self.send("Page.navigate", url=url)
        self.wait("!window.__leaving", f"the navigation to {url.split('#')[0]}")

    def wait(self, expression: str, what: str) -> Any:
        deadline = time.monotonic() + WAIT
        while True:  # a page still loading may have no body yet: that is "not yet", not a failure
            value = self.js(f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()")
            if value:
                return value
            assert time.monotonic() < deadline, f"waited {WAIT:.0f} s for {what}"
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        found = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
                        " e.scrollIntoView(); e.click(); return true; })()")  # fmt: skip
        assert found, f"nothing to click at {selector}"

    def texts(self, selector: str) -> dict[str, str]:
        """data-key -> text of every element the selector finds."""
        value: dict[str, str] = self.js(
            f"Object.fromEntries([...document.querySelectorAll({json.dumps(selector)})]"
            ".map((e) => [e.dataset.key || '', e.textContent.trim()]))"
        )
        return value

    def text(self, selector: str) -> str:
        return str(self.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")).strip()

    def download(self, name: str) -> str:
        path = self.downloads / name
        deadline = time.monotonic() + WAIT
        # complete once the file is there and no partial download (.crdownload) is left
        while not path.is_file() or any(self.downloads.glob("*.crdownload")):
            assert time.monotonic() < deadline, f"no download {name}"
            time.sleep(0.1)
        text = path.read_text()
        path.unlink()  # a later download of the same name must not find this one
        return text

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

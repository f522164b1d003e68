"""Headless Chromium driven over the DevTools protocol: which requests a page makes, and its DOM.

Only the page's own requests are recorded (its target's ``Network.requestWillBeSent`` events,
those the browser then blocks included), not the browser's background traffic. Needs the
``chromium`` binary (Debian package ``chromium``) and ``websockets`` (in requirements.lock).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",  # runs as root in CI containers
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-port=0",  # any free port; written to DevToolsActivePort in the profile
]


def find_chromium() -> str | None:
    return next(filter(None, (shutil.which(name) for name in BINARIES)), None)


@dataclass
class PageLoad:
    """What one page load did: every URL it requested (in order) and its DOM after it settled."""

    requests: list[str] = field(default_factory=list)
    blocked: dict[str, str] = field(default_factory=dict)  # url -> why the browser refused it
    dom: str = ""


class Browser:
    """One headless Chromium with a throwaway profile; :meth:`load` opens a page in a new tab."""

    def __init__(self, binary: str, timeout_s: float = 60) -> None:
        from websockets.sync.client import connect

        self._profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        self._proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{binary} did not open its DevTools port in {timeout_s} s")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self._stack = contextlib.ExitStack()
        url = f"ws://127.0.0.1:{port}{path}"
        self._ws = self._stack.enter_context(connect(url, max_size=None, open_timeout=timeout_s))
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.timeout_s = timeout_s

    def _call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout_s
        while True:
            answer = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if answer.get("id") == message["id"]:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._events.append(answer)

    def _next_event(self, wait_s: float) -> dict[str, Any] | None:
        if self._events:
            return self._events.pop(0)
        try:
            return dict(json.loads(self._ws.recv(timeout=wait_s)))
        except TimeoutError:
            return None

    def load(self, url: str, settle_s: float = 1.5) -> PageLoad:
        """Open ``url`` in a new tab; record its requests until none came for ``settle_s`` after load."""
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self._call("Network.enable", session=session)
        self._call("Page.enable", session=session)
        self._call("Page.navigate", {"url": url}, session=session)
        page, loaded, quiet_since = PageLoad(), False, time.monotonic()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and not (loaded and time.monotonic() - quiet_since > settle_s):
            event = self._next_event(0.2)
            if event is None or event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
                quiet_since = time.monotonic()
            elif method == "Network.loadingFailed" and params.get("blockedReason"):
                page.blocked[params.get("requestId", "")] = params["blockedReason"]
            elif method == "Page.loadEventFired":
                loaded, quiet_since = True, time.monotonic()
        expression = {"expression": "document.documentElement.outerHTML", "returnByValue": True}
        page.dom = self._call("Runtime.evaluate", expression, session=session)["result"].get("value", "")
        self._call("Target.closeTarget", {"targetId": target})
        return page

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


@contextlib.contextmanager
def browser(binary: str) -> Iterator[Browser]:
    chromium = Browser(binary)
    try:
        yield chromium
    finally:
        chromium.close()

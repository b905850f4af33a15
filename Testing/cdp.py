"""Drive headless Chromium (Debian ``chromium``) over the DevTools protocol, synchronously.

Just what a browser test needs: open a page, evaluate JavaScript (click, read the DOM), wait for
a condition, take a screenshot. One websocket to the page target (aiohttp, already installed
with trame), one event loop owned by the object.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Optional

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> Optional[str]:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A headless Chromium with one page; use as a context manager."""

    def __init__(self, width: int = 1500, height: int = 950):
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="cpmae-chromium-")
        self._port = free_port()
        exe = find_chromium()
        if exe is None:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self._proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--no-first-run",
             "--disable-dev-shm-usage", f"--window-size={width},{height}",
             f"--remote-debugging-port={self._port}", f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._loop = asyncio.new_event_loop()
        self._ids = 0
        try:
            self._loop.run_until_complete(self._connect())
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> None:
        import aiohttp

        deadline = time.monotonic() + 60
        targets = None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self._port}/json", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            await asyncio.sleep(0.3)
        if not targets:
            raise RuntimeError("chromium did not open its DevTools port")
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self._call("Page.enable")
        await self._call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                         deviceScaleFactor=1, mobile=False)

    async def _call(self, method: str, **params) -> dict:
        self._ids += 1
        my = self._ids
        await self._ws.send_json({"id": my, "method": method, "params": params})
        while True:
            msg = await self._ws.receive_json(timeout=120)
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def call(self, method: str, **params) -> dict:
        return self._loop.run_until_complete(self._call(method, **params))

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def eval(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (awaited if it is a promise)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JavaScript error: {r['exceptionDetails'].get('text')} in {expression[:80]}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; raise with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.eval(expression)
            except RuntimeError:
                last = None
            if last:
                return last
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or expression}")

    def key(self, key: str) -> None:
        """Press and release one key (e.g. 'j', 'ArrowDown') on the page."""
        code = {"ArrowDown": 40, "ArrowUp": 38}.get(key, ord(key.upper()) if len(key) == 1 else 0)
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, windowsVirtualKeyCode=code,
                      **({"text": key} if len(key) == 1 and kind == "keyDown" else {}))

    def screenshot(self, path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        async def shutdown():
            if getattr(self, "_ws", None) is not None:
                await self._ws.close()
            if getattr(self, "_session", None) is not None:
                await self._session.close()

        try:
            self._loop.run_until_complete(shutdown())
        except Exception:
            pass
        self._loop.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""A small DevTools-protocol client for Debian's headless chromium (tests only).

Chromium talks the protocol over a pipe pair when started with --remote-debugging-pipe:
it reads commands from fd 3 and writes replies and events to fd 4, each a JSON document
ended by a NUL byte. No websocket, no extra package. `Browser.open(url)` makes a page and
attaches to it (flat session); `evaluate(js)` runs an expression in the page and returns
its value; `wait_for(js)` polls an expression until it is truthy, bounded in time.

`find_chromium()` fails under CI=true when no chromium is installed (apt: chromium) and
skips loudly elsewhere, like helpers.require.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from helpers.require import in_ci

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "Debian's chromium is not installed (apt-get install chromium)"
    if in_ci():
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    warnings.warn(f"SKIPPING a test: {reason}", UserWarning, stacklevel=2)
    pytest.skip(f"NOT RUN: {reason}")


class Browser:
    def __init__(self, send: trio.lowlevel.FdStream, receive: trio.lowlevel.FdStream) -> None:
        self._send = send
        self._receive = receive
        self._buf = bytearray()
        self._next_id = 0
        self.session = ""
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        await self._send.send_all(json.dumps(msg).encode() + b"\0")
        with trio.fail_after(30):
            while True:
                reply = await self._read()
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
                self.events.append(reply)
                del self.events[:-200]  # keep the last few for failure messages

    async def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            data = await self._receive.receive_some(65536)
            if not data:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += data
        raw, _, rest = bytes(self._buf).partition(b"\0")
        self._buf = bytearray(rest)
        parsed: dict[str, Any] = json.loads(raw)
        return parsed

    async def open(self, url: str) -> None:
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        self.session = attached["sessionId"]
        await self.call("Page.enable")
        await self.call("Runtime.enable")
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        got = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in got:
            raise RuntimeError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 15.0) -> Any:
        """Poll `expression` until truthy (a condition, bounded in count and time)."""
        last: Exception | None = None
        for _ in range(int(seconds / 0.05)):
            try:
                value = await self.evaluate(expression)
            except RuntimeError as exc:  # the page may still be loading
                last = exc
            else:
                if value:
                    return value
            await trio.sleep(0.05)
        raise AssertionError(f"page never satisfied: {expression} (last error: {last})")


@asynccontextmanager
async def headless_chromium() -> AsyncIterator[Browser]:
    exe = find_chromium()
    # chromium's helper processes may still write to the profile while it is removed
    with tempfile.TemporaryDirectory(prefix="trivpn-chromium-", ignore_cleanup_errors=True) as profile:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()

        def wire_fds() -> None:  # in the child: the protocol's fixed fds 3 and 4
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        proc = await trio.lowlevel.open_process(
            [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=wire_fds,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        send = trio.lowlevel.FdStream(to_child_w)
        receive = trio.lowlevel.FdStream(from_child_r)
        browser = Browser(send, receive)
        try:
            yield browser
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    browser.session = ""
                    try:
                        await browser.call("Browser.close")  # a clean exit, children too
                    except (RuntimeError, trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    await proc.wait()
                await send.aclose()
                await receive.aclose()
                proc.terminate()
                with trio.move_on_after(10) as scope:
                    await proc.wait()
                if scope.cancelled_caught:
                    proc.kill()
                    await proc.wait()

"""A headless Firefox (Debian's firefox-esr) driven over WebDriver BiDi, with fake camera and mic.

Playwright's Firefox is a patched build we cannot install from Debian; stock Firefox speaks the W3C
WebDriver BiDi protocol itself, and the little the call tests need (navigate, run a script) is a
few JSON messages over one websocket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import aiohttp

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")

# Fake devices without a permission prompt; loopback ICE candidates (the relay listens on
# 127.0.0.1 in tests) and plain host addresses instead of mDNS names.
PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "remote.active-protocols": 1,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "browser.aboutwelcome.enabled": False,
}
_LISTENING = re.compile(rb"WebDriver BiDi listening on (ws://\S+)")


class BiDiError(RuntimeError):
    """The browser answered a command with an error."""


class Firefox:
    """One headless Firefox process with one top-level browsing context."""

    def __init__(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="panda-firefox-")
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.context = ""
        self.console_errors: list[str] = []
        self.console: list[str] = []

    async def start(self, timeout: float = 60) -> None:
        """Launch Firefox, open a BiDi session and find its first tab."""
        if FIREFOX is None:
            raise RuntimeError("Firefox is not installed (Debian package firefox-esr)")
        profile = Path(self._profile.name)
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
        )
        url = await asyncio.wait_for(asyncio.to_thread(self._launch, profile), timeout)
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url + "/session", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.command("session.new", {"capabilities": {}})
        await self.command("session.subscribe", {"events": ["log.entryAdded"]})
        tree = await self.command("browsingContext.getTree", {})
        self.context = tree["contexts"][0]["context"]

    def _launch(self, profile: Path) -> str:
        """Start the process; return its BiDi websocket address once it prints it."""
        assert FIREFOX is not None
        self._proc = subprocess.Popen(
            [
                FIREFOX,
                "--headless",
                "--no-remote",
                "--profile",
                str(profile),
                "--remote-debugging-port",
                "0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "MOZ_HEADLESS": "1"},
        )
        assert self._proc.stderr is not None
        seen = b""
        for line in self._proc.stderr:
            seen += line
            found = _LISTENING.search(line)
            if found:
                # Keep draining stderr so Firefox never blocks on a full pipe.
                _drain_in_background(self._proc.stderr)
                return found.group(1).decode()
        raise RuntimeError(f"Firefox exited before WebDriver BiDi was up: {seen[-2000:]!r}")

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "log.entryAdded":
                entry = data["params"]
                self.console.append(f"{entry.get('level')}: {entry.get('text')}")
                if entry.get("level") == "error":
                    self.console_errors.append(str(entry.get("text")))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BiDiError("the BiDi connection closed"))

    async def command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one BiDi command and return its result."""
        assert self._ws is not None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, 60)
        if answer.get("type") == "error":
            raise BiDiError(f"{method}: {answer.get('error')}: {answer.get('message')}")
        return answer["result"]

    async def goto(self, url: str) -> None:
        """Navigate the tab and wait until the page has loaded."""
        await self.command(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    async def evaluate(self, function: str, *args: Any) -> Any:
        """Call a JS function (source text) in the page; its result comes back through JSON."""
        wrapped = (
            "async (...args) => { const value = await (" + function + ")(...args);"
            " return JSON.stringify(value === undefined ? null : value); }"
        )
        result = await self.command(
            "script.callFunction",
            {
                "functionDeclaration": wrapped,
                "arguments": [{"type": "string", "value": json.dumps(a)} for a in args],
                "target": {"context": self.context},
                "awaitPromise": True,
                "userActivation": True,
            },
        )
        if result.get("type") == "exception":
            raise BiDiError(f"script error: {result['exceptionDetails'].get('text')}")
        return json.loads(result["result"]["value"])

    async def stop(self) -> None:
        """End the session and the browser process."""
        if self._ws is not None:
            try:
                await asyncio.wait_for(self.command("browser.close", {}), 10)
            except (BiDiError, TimeoutError, ConnectionError):
                pass
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._profile.cleanup()


def _drain_in_background(stream: Any) -> None:
    def drain() -> None:
        for _ in stream:
            pass

    threading.Thread(target=drain, daemon=True).start()

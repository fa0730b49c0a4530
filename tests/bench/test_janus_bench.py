"""The Janus baseline's own logic: its configuration, the network namespace it runs in,
when it is skipped, and the client's request/reply matching on Janus' WebSocket API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench import janus, janus_load


def _fake_lib(root: Path) -> Path:
    lib = root / "lib" / "x86_64-linux-gnu" / "janus"
    for sub, names in (("plugins", ["libjanus_videoroom.so", "libjanus_sip.so"]),
                       ("transports", ["libjanus_websockets.so", "libjanus_http.so"])):
        (lib / sub).mkdir(parents=True)
        for name in names:
            (lib / sub / name).write_text("")
    return lib


def test_config_enforces_ice_to_the_namespace_interface_without_stun(tmp_path: Path) -> None:
    files = janus.config_files(tmp_path, interface="pbench0", port=9999)
    assert set(files) == {"janus.jcfg", "janus.transport.websockets.jcfg",
                          "janus.plugin.videoroom.jcfg"}
    main = files["janus.jcfg"]
    assert 'ice_enforce_list = "pbench0"' in main
    assert "stun" not in main.lower() and "turn" not in main.lower()
    assert f'plugins_folder = "{tmp_path / "plugins"}"' in main
    assert f'transports_folder = "{tmp_path / "transports"}"' in main
    assert "session_timeout = 0" in main  # no keepalives needed during a long window
    ws = files["janus.transport.websockets.jcfg"]
    assert 'ws_ip = "127.0.0.1"' in ws and "ws_port = 9999" in ws
    assert "admin_ws = false" in ws and "wss = false" in ws


def test_libraries_found_and_only_videoroom_and_websockets_loaded(tmp_path: Path) -> None:
    lib = _fake_lib(tmp_path)
    libraries = janus.find_libraries(str(tmp_path / "lib" / "*" / "janus"))
    assert libraries == (lib / "plugins" / "libjanus_videoroom.so",
                         lib / "transports" / "libjanus_websockets.so")
    assert janus.find_libraries(str(tmp_path / "nothing" / "*")) is None
    folder = tmp_path / "run"
    folder.mkdir()
    main = janus.write_config(folder, libraries)
    assert main == folder / "janus.jcfg" and main.exists()
    assert [p.name for p in (folder / "plugins").iterdir()] == ["libjanus_videoroom.so"]
    assert [p.name for p in (folder / "transports").iterdir()] == ["libjanus_websockets.so"]
    assert list((folder / "none").iterdir()) == []


def test_namespace_has_loopback_and_a_test_address_only() -> None:
    cmds = janus.namespace_commands("nsx", "192.0.2.1")
    assert cmds[0] == ["ip", "netns", "add", "nsx"]
    assert all(cmd[:3] == ["ip", "-n", "nsx"] for cmd in cmds[1:])
    assert ["ip", "-n", "nsx", "addr", "add", "192.0.2.1/24", "dev", janus.INTERFACE] in cmds
    assert ["ip", "-n", "nsx", "link", "set", "lo", "up"] in cmds
    assert janus.in_namespace("nsx", ["janus", "-C", "x"]) == [
        "ip", "netns", "exec", "nsx", "janus", "-C", "x"]


def test_skipped_with_install_hint_when_janus_is_missing(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(janus.shutil, "which", lambda name: None)
    reason = janus.unavailable_reason()
    assert reason is not None and "apt-get install janus" in reason

    def measure(*args: Any) -> dict[str, Any]:
        raise AssertionError("nothing may run without janus")

    points, note = janus.run_points([1], 1.0, "quick", measure, lambda pid: 0.0)
    assert points is None and "apt-get install janus" in note


def test_skipped_when_not_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_lib(tmp_path)
    monkeypatch.setattr(janus, "LIB_GLOB", str(tmp_path / "lib" / "*" / "janus"))
    monkeypatch.setattr(janus.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(janus.os, "geteuid", lambda: 1000)
    reason = janus.unavailable_reason()
    assert reason is not None and "root" in reason
    monkeypatch.setattr(janus.os, "geteuid", lambda: 0)
    assert janus.unavailable_reason() is None


def test_check_raises_core_and_plugin_errors_and_feeds_lists_publishers() -> None:
    ok = {"janus": "success", "data": {"id": 5}}
    assert janus_load.check(ok) is ok
    with pytest.raises(janus_load.JanusError, match="458"):
        janus_load.check({"janus": "error", "error": {"code": 458, "reason": "no session"}})
    exists = {"janus": "success", "plugindata": {"data": {"error_code": 427, "error": "x"}}}
    with pytest.raises(janus_load.JanusError, match="error 427:"):
        janus_load.check(exists)
    assert janus_load.feeds({"publishers": [{"id": 7}, {"id": "8"}, {"display": "no id"}]}) \
        == [7, 8]
    assert janus_load.feeds({"videoroom": "event"}) == []
    assert janus_load.plugin_data({"janus": "event", "plugindata": {"data": "junk"}}) == {}
    room = janus_load.room_request(1003)
    assert room["room"] == 1003 and room["publishers"] == 2 and room["videocodec"] == "vp8"


async def _fake_janus(request: web.Request) -> web.WebSocketResponse:
    """Janus' WebSocket API in miniature: ack first, then the reply as an event."""
    ws = web.WebSocketResponse(protocols=("janus-protocol",))
    await ws.prepare(request)
    async for raw in ws:
        msg = raw.json()
        tx = msg["transaction"]
        if msg["janus"] == "create":
            await ws.send_json({"janus": "success", "transaction": tx, "data": {"id": 11}})
        elif msg["janus"] == "attach":
            assert msg["session_id"] == 11 and msg["plugin"] == janus_load.PLUGIN
            await ws.send_json({"janus": "success", "transaction": tx, "data": {"id": 22}})
        elif msg["janus"] == "message":
            await ws.send_json({"janus": "ack", "transaction": tx})
            # an unsolicited event arrives between the ack and the reply
            await ws.send_json({"janus": "event", "sender": 22, "plugindata": {
                "data": {"videoroom": "event", "publishers": [{"id": 99}]}}})
            if msg["body"].get("request") == "bad":
                await ws.send_json({"janus": "event", "transaction": tx, "plugindata": {
                    "data": {"error_code": 426, "error": "no such room"}}})
            else:
                await ws.send_json({"janus": "event", "transaction": tx, "sender": 22,
                                    "plugindata": {"data": {"videoroom": "joined"}},
                                    "jsep": {"type": "answer", "sdp": msg["jsep"]["sdp"]}})
    return ws


async def test_session_matches_replies_by_transaction_past_acks_and_events() -> None:
    app = web.Application()
    app.router.add_get("/", _fake_janus)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    events: list[dict[str, Any]] = []
    got_event = asyncio.Event()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/",
                                       protocols=("janus-protocol",))
            session = janus_load.JanusSession(ws)

            def on_event(msg: dict[str, Any]) -> None:
                events.append(msg)
                got_event.set()

            session.on_event = on_event
            await session.create()
            assert session.session_id == 11
            handle = await session.attach()
            assert handle == 22
            reply = await session.message(handle, {"request": "join"},
                                          {"type": "offer", "sdp": "v=0"})
            assert janus_load.plugin_data(reply) == {"videoroom": "joined"}
            assert reply["jsep"] == {"type": "answer", "sdp": "v=0"}
            await got_event.wait()
            assert janus_load.feeds(janus_load.plugin_data(events[0])) == [99]
            with pytest.raises(janus_load.JanusError, match="426"):
                await session.message(handle, {"request": "bad"}, {"type": "offer", "sdp": ""})
            await session.close()
    finally:
        await runner.cleanup()


class _FakeJanus:
    """Answers listparticipants: first nobody publishes, then the peer (id 8) does."""

    def __init__(self) -> None:
        self.calls = 0

    async def message(self, handle: int, body: dict[str, Any],
                      jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        assert body == {"request": "listparticipants", "room": 1000}
        self.calls += 1
        peers = [{"id": 7, "publisher": True}]  # itself
        if self.calls > 1:
            peers.append({"id": 8, "publisher": True})
        return {"janus": "success", "plugindata": {"data": {"participants": peers}}}


async def test_catch_up_subscribes_from_the_room_list_when_no_event_came(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(janus_load, "CATCH_UP_S", 0.0)
    participant = janus_load.JanusParticipant(janus_load.relay_load.Load(), 0, "a")
    subscribed: list[int] = []

    async def subscribe(feed: int) -> None:
        subscribed.append(feed)

    monkeypatch.setattr(participant, "_subscribe", subscribe)
    participant.janus = _FakeJanus()  # type: ignore[assignment]
    try:
        await participant._catch_up(5, own=7)
        await asyncio.gather(*participant._tasks)
        assert subscribed == [8]
        assert participant.errors and "subscribed from the list" in participant.errors[0]
        # once subscribed (by an event or the list), nothing more is asked
        calls = participant.janus.calls  # type: ignore[union-attr]
        await participant._catch_up(5, own=7)
        assert participant.janus.calls == calls  # type: ignore[union-attr]
    finally:
        await participant.pc.close()

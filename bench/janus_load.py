"""Load generator for the Janus baseline: ``bench/relay_load.py``'s clients on Janus' API.

The same calls, clips, taps and latency matching as against panda; only the signalling
differs. Each participant is one Janus session on the WebSocket API with two handles of
the videoroom plugin, as Janus' own clients do: a publisher (its own peer connection,
sendonly audio + video) and a subscriber to the peer's feed (a second peer connection,
offered by Janus). Room ``1000 + call`` is created by whichever side gets there first.
ICE gathers on one address only (``--ice-address``, the test address of the benchmark's
network namespace: Janus never uses loopback).
Run: python bench/janus_load.py --url ws://127.0.0.1:8188/ --ice-address 192.0.2.1 --calls N
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from bench import relay_load
from panda.media import aiortc_patches
from panda.media.ice import MediaConfig, create_peer_connection
from tests.media.mediagen import EncodedMedia

PLUGIN = "janus.plugin.videoroom"
ROOM_BASE = 1000
ROOM_EXISTS = 427  # JANUS_VIDEOROOM_ERROR_ROOM_EXISTS
ICE_ADDRESS = "192.0.2.1"
REQUEST_TIMEOUT = 30.0
CATCH_UP_S = 5.0  # after publishing, before asking the room who publishes


class JanusError(RuntimeError):
    """Janus (or its videoroom plugin) refused a request."""


def plugin_data(msg: dict[str, Any]) -> dict[str, Any]:
    """The plugin's own payload of a Janus message ({} when it has none)."""
    data = msg.get("plugindata", {}).get("data", {})
    return data if isinstance(data, dict) else {}


def check(msg: dict[str, Any]) -> dict[str, Any]:
    """``msg`` itself, or :class:`JanusError` for a core or plugin error."""
    if msg.get("janus") == "error":
        err = msg.get("error", {})
        raise JanusError(f"janus error {err.get('code')}: {err.get('reason')}")
    data = plugin_data(msg)
    if "error_code" in data:
        raise JanusError(f"videoroom error {data['error_code']}: {data.get('error')}")
    return msg


def room_request(room: int) -> dict[str, Any]:
    """The videoroom request creating a 1:1 call's room."""
    # no periodic keyframe requests, no bitrate cap: Janus forwards what is sent
    return {"request": "create", "room": room, "publishers": 2, "bitrate": 0, "fir_freq": 0,
            "videocodec": "vp8", "audiocodec": "opus"}


def feeds(data: dict[str, Any]) -> list[int]:
    """Publisher ids announced in a videoroom ``joined`` or ``event`` payload."""
    return [int(p["id"]) for p in data.get("publishers", []) if "id" in p]


class JanusSession:
    """One Janus session over one WebSocket: requests matched to replies by transaction.

    A plugin request is first acknowledged (``ack``) and answered later by an ``event``
    carrying the same transaction; that event is the reply. Events without a pending
    transaction (new publishers, webrtcup, media) go to ``on_event``.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.session_id: int | None = None
        self.on_event: Callable[[dict[str, Any]], None] = lambda msg: None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.ensure_future(self._read())

    def dispatch(self, msg: dict[str, Any]) -> None:
        """Route one message from Janus to its waiting request or to ``on_event``."""
        if msg.get("janus") == "ack":
            return
        future = self._pending.pop(str(msg.get("transaction")), None)
        if future is not None:
            if not future.done():
                future.set_result(msg)
        else:
            self.on_event(msg)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if raw.type != aiohttp.WSMsgType.TEXT:
                    break
                self.dispatch(raw.json())
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(JanusError("janus closed the connection"))

    async def request(self, janus: str, handle: int | None = None,
                      **fields: Any) -> dict[str, Any]:
        """Send one request and return its (checked) reply."""
        tx = str(next(self._ids))
        msg: dict[str, Any] = {"janus": janus, "transaction": tx, **fields}
        if self.session_id is not None:
            msg["session_id"] = self.session_id
        if handle is not None:
            msg["handle_id"] = handle
        future = asyncio.get_running_loop().create_future()
        self._pending[tx] = future
        await self.ws.send_json(msg)
        return check(await asyncio.wait_for(future, REQUEST_TIMEOUT))

    async def create(self) -> None:
        reply = await self.request("create")
        self.session_id = int(reply["data"]["id"])

    async def attach(self) -> int:
        """A new videoroom handle of this session."""
        reply = await self.request("attach", plugin=PLUGIN)
        return int(reply["data"]["id"])

    async def message(self, handle: int, body: dict[str, Any],
                      jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"body": body}
        if jsep is not None:
            fields["jsep"] = jsep
        return await self.request("message", handle=handle, **fields)

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


def restricted_peer_connection(address: str) -> RTCPeerConnection:
    """A peer connection whose ICE uses ``address`` only (no STUN, no other interface)."""
    pc = create_peer_connection(MediaConfig())

    def on_transport(dtls: Any) -> None:
        aiortc_patches.restrict_ice_to_addresses(aiortc_patches.dtls_ice_connection(dtls),
                                                 (address,))

    aiortc_patches.on_dtls_transport_created(pc, on_transport)
    return pc


class JanusParticipant(relay_load.Participant):
    """One side of a 1:1 call through Janus' videoroom: publisher + subscriber handles."""

    ice_address = ICE_ADDRESS

    def __init__(self, load: relay_load.Load, call: int, name: str) -> None:
        super().__init__(load, call, name)
        self.room = ROOM_BASE + call
        self.janus: JanusSession | None = None
        self.sub_pc: RTCPeerConnection | None = None
        self._subscribed: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def new_peer_connection(self) -> RTCPeerConnection:
        return restricted_peer_connection(self.ice_address)

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        ws = await session.ws_connect(url, protocols=("janus-protocol",))
        self.janus = JanusSession(ws)
        self.janus.on_event = self._on_event
        await self.janus.create()

    def _on_event(self, msg: dict[str, Any]) -> None:
        if msg.get("janus") == "event":
            self._subscribe_to(feeds(plugin_data(msg)))

    def _subscribe_to(self, publishers: list[int]) -> None:
        for feed in publishers:
            if feed not in self._subscribed:
                self._subscribed.add(feed)
                task = asyncio.ensure_future(self._subscribe(feed))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def publish(self, video: EncodedMedia, audio: EncodedMedia) -> None:
        """Create the room if needed, join it as publisher and publish the clips."""
        janus = self.janus
        assert janus is not None
        handle = await janus.attach()
        if self.name == "a":  # publishes first (relay_load's call_up): makes the room
            try:
                await janus.message(handle, room_request(self.room))
            except JanusError as exc:
                if f"error {ROOM_EXISTS}:" not in str(exc):
                    raise
        joined = await janus.message(handle, {"request": "join", "ptype": "publisher",
                                              "room": self.room, "display": self.key})
        self.add_tracks(video, audio)
        self.offer_at = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        reply = await janus.message(handle, {"request": "publish"},
                                    {"type": "offer", "sdp": self.pc.localDescription.sdp})
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["jsep"]["sdp"], "answer"))
        self.answered.set()
        self._subscribe_to(feeds(plugin_data(joined)))
        own = plugin_data(joined).get("id")
        task = asyncio.ensure_future(self._catch_up(handle, own))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, handle: int, own: Any) -> None:
        """Subscribe to the peer from the room's list if no notification named it in time.

        Insurance against a ``publishers`` event that never comes (seen once under heavy
        load, cause not found): the call must not stall the whole measurement point.
        """
        janus = self.janus
        assert janus is not None
        while not self._subscribed:
            await asyncio.sleep(CATCH_UP_S)
            if self._subscribed:
                return
            try:
                reply = await janus.message(handle, {"request": "listparticipants",
                                                     "room": self.room})
            except Exception as exc:  # reported in the result, not fatal here
                self.errors.append(f"listparticipants: {exc!r}")
                return
            others = [int(p["id"]) for p in plugin_data(reply).get("participants", [])
                      if p.get("publisher") and p.get("id") != own]
            if others and not self._subscribed:
                self.errors.append(f"no publishers event for {others}: subscribed from the list")
                self._subscribe_to(others)

    async def _subscribe(self, feed: int) -> None:
        janus = self.janus
        assert janus is not None
        try:
            handle = await janus.attach()
            self.sub_pc = pc = self.new_peer_connection()
            aiortc_patches.on_transceiver_created(pc, self._on_transceiver)
            reply = await janus.message(handle, {"request": "join", "ptype": "subscriber",
                                                 "room": self.room,
                                                 "streams": [{"feed": feed}]})
            await pc.setRemoteDescription(RTCSessionDescription(reply["jsep"]["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await janus.message(handle, {"request": "start"},
                                {"type": "answer", "sdp": pc.localDescription.sdp})
        except Exception as exc:  # reported in the result, not fatal here
            self.errors.append(f"subscribe to {feed}: {exc!r}")

    def describe(self) -> str:
        sub = self.sub_pc.connectionState if self.sub_pc is not None else "none"
        return f"{super().describe()} feeds={sorted(self._subscribed)} subscriber_pc={sub}"

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.janus is not None:
            await self.janus.close()
        if self.sub_pc is not None:
            await asyncio.shield(self.sub_pc.close())
        await asyncio.shield(self.pc.close())


def main() -> None:
    """Command line: relay_load's, plus ``--ice-address``."""
    if "--ice-address" in sys.argv:
        at = sys.argv.index("--ice-address")
        JanusParticipant.ice_address = sys.argv[at + 1]
        del sys.argv[at:at + 2]
    relay_load.main(JanusParticipant)


if __name__ == "__main__":
    main()

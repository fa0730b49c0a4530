"""Reference server for the relay benchmark: aiortc's ``MediaRelay`` (decode + re-encode).

Speaks the benchmark's WebSocket signalling (``/ws?room=R&pid=P``, JSON offer/answer, the
client offers first, the server re-offers when the other side publishes). Every received
track is decoded by aiortc and re-encoded once per subscriber, as aiortc's examples do.
ICE is loopback-only through panda's ``create_peer_connection``; nothing else of panda is
used. Prints ``READY <port>`` once listening on 127.0.0.1.
Run: python bench/mediarelay_server.py
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from bench.common import run_with_uvloop
from panda.media.ice import MediaConfig, create_peer_connection


class Peer:
    """One participant: its peer connection, its published tracks, its negotiation state."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.pc: RTCPeerConnection = create_peer_connection(MediaConfig(ice_loopback=True))
        self.tracks: list[MediaStreamTrack] = []
        self.subscribed: set[int] = set()
        self.lock = asyncio.Lock()
        self.published = False  # its own offer is answered: safe to re-offer to it
        self.answer: asyncio.Future[str] | None = None
        self.pc.on("track", self.tracks.append)


class Server:
    """Rooms of peers; each peer receives the other peers' tracks through one MediaRelay."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.rooms: dict[str, dict[str, Peer]] = {}

    async def subscribe(self, peer: Peer, room: dict[str, Peer]) -> None:
        """Add every track of the other peers ``peer`` lacks, then re-offer to it."""
        async with peer.lock:
            if not peer.published:
                return
            added = False
            for other in list(room.values()):
                if other is peer:
                    continue
                for track in other.tracks:
                    if id(track) not in peer.subscribed:
                        peer.subscribed.add(id(track))
                        peer.pc.addTransceiver(self.relay.subscribe(track), direction="sendonly")
                        added = True
            if not added or peer.pc.signalingState != "stable":
                return
            loop = asyncio.get_running_loop()
            peer.answer = loop.create_future()
            await peer.pc.setLocalDescription(await peer.pc.createOffer())
            await peer.ws.send_json({"type": "offer", "sdp": peer.pc.localDescription.sdp})
            sdp = await asyncio.wait_for(peer.answer, 30)
            await peer.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        room_key, pid = request.query.get("room", ""), request.query.get("pid", "")
        room = self.rooms.setdefault(room_key, {})
        peer = Peer(ws)
        room[pid] = peer
        tasks: set[asyncio.Task[Any]] = set()
        try:
            async for raw in ws:
                if raw.type != WSMsgType.TEXT:
                    break
                msg = json.loads(raw.data)
                if msg.get("type") == "offer":
                    async with peer.lock:
                        await peer.pc.setRemoteDescription(
                            RTCSessionDescription(msg["sdp"], "offer"))
                        await peer.pc.setLocalDescription(await peer.pc.createAnswer())
                        await ws.send_json({"type": "answer", "sdp": peer.pc.localDescription.sdp})
                        peer.published = True
                    for target in list(room.values()):
                        task = asyncio.ensure_future(self.subscribe(target, room))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                elif msg.get("type") == "answer" and peer.answer and not peer.answer.done():
                    peer.answer.set_result(msg["sdp"])
        finally:
            room.pop(pid, None)
            if not room:
                self.rooms.pop(room_key, None)
            for task in tasks:
                task.cancel()
            await asyncio.shield(peer.pc.close())
        return ws


async def serve() -> None:
    server = Server()
    app = web.Application()
    app.router.add_get("/ws", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    run_with_uvloop(serve())


if __name__ == "__main__":
    main()

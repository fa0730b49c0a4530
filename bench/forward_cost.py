"""Per-packet cost of the packet relay's forwarding path, in one process, next to a floor.

A 1:1 call runs through the real relay (``RoomRegistry``, packet path, loopback ICE) between
two in-process aiortc clients. The publisher's plaintext RTP (VP8 + Opus, with the header
extensions aiortc sends) is captured for a moment, then the publisher's own sending is cut
and fresh SRTP packets continuing its streams are made from the capture with its SRTP
context. Each round feeds a batch of them to the server's ICE socket callback
(``datagram_received``), exactly as the event loop would, and takes the process CPU time:
unprotect, route, rewrite, protect and ``sendto`` to the subscriber, all included.

The floor, timed in the same rounds on the same packets: what any Python relay must do per
packet (pylibsrtp unprotect, header rewrite, protect, ``sendto``) and nothing else.
Prints one JSON object: microseconds per packet (median over rounds) and the ratio.
Run: python bench/forward_cost.py [--packets 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pylibsrtp  # noqa: E402

from bench.common import run_with_uvloop  # noqa: E402
from panda.media.ice import MediaConfig  # noqa: E402
from panda.media.room import RoomRegistry  # noqa: E402
from tests.media import mediagen  # noqa: E402
from tests.media.clients import Client, wait_for  # noqa: E402

_HEADER = struct.Struct("!BBHII")
_SEQ_TS = struct.Struct("!HI")
_SEQ_TS_SSRC = struct.Struct("!HII")


def _sender_transport(client: Client) -> Any:
    return next(t.sender.transport for t in client.pc.getTransceivers()
                if t.sender.transport is not None)


async def _capture(client: Client, seconds: float) -> list[bytes]:
    """The publisher's plaintext RTP for ``seconds``; afterwards it sends nothing more."""
    dtls = _sender_transport(client)
    captured: list[bytes] = []
    capturing = True

    async def send_rtp(data: bytes) -> None:
        if capturing:
            captured.append(data)
            await original(data)

    original = dtls._send_rtp
    dtls._send_rtp = send_rtp
    await asyncio.sleep(seconds)
    capturing = False
    await asyncio.sleep(0.3)  # what is in flight reaches the server before the rounds
    return captured


class Streams:
    """Continues the captured streams: fresh sequence numbers and timestamps per SSRC."""

    def __init__(self, captured: list[bytes], media_ssrcs: set[int]) -> None:
        self.template = [p for p in captured if struct.unpack_from("!I", p, 8)[0] in media_ssrcs]
        self.next: dict[int, tuple[int, int]] = {}
        for p in self.template:
            ssrc = struct.unpack_from("!I", p, 8)[0]
            seq, ts = _SEQ_TS.unpack_from(p, 2)
            self.next[ssrc] = ((seq + 1) & 0xFFFF, ts)

    def batch(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        template = self.template
        for i in range(count):
            base = bytearray(template[i % len(template)])
            ssrc = struct.unpack_from("!I", base, 8)[0]
            seq, ts = self.next[ssrc]
            if i % len(template) == 0 or base[1] & 0x80:
                ts = (ts + 3000) & 0xFFFFFFFF
            _SEQ_TS.pack_into(base, 2, seq, ts)
            self.next[ssrc] = ((seq + 1) & 0xFFFF, ts)
            out.append(bytes(base))
        return out


def _floor_sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session, pylibsrtp.Session]:
    key = os.urandom(28)
    profile = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM

    def session(kind: int, k: bytes) -> pylibsrtp.Session:
        return pylibsrtp.Session(pylibsrtp.Policy(key=k, ssrc_type=kind, srtp_profile=profile))

    return (session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND, key),
            session(pylibsrtp.Policy.SSRC_ANY_INBOUND, key),
            session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND, os.urandom(28)))


def _floor_round(plain: list[bytes], client_tx: pylibsrtp.Session, rx: pylibsrtp.Session,
                 tx: pylibsrtp.Session, sock: socket.socket, addr: tuple[str, int]) -> float:
    packets = [client_tx.protect(p) for p in plain]
    unprotect, protect, sendto, pack_into = rx.unprotect, tx.protect, sock.sendto, _HEADER.pack_into
    start = time.process_time()
    for data in packets:
        packet = bytearray(unprotect(data))
        seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(packet, 2)
        pack_into(packet, 0, packet[0], packet[1], (seq + 7) & 0xFFFF, ts ^ 5, ssrc ^ 1)
        sendto(protect(bytes(packet)), addr)
    return time.process_time() - start


async def main(args: argparse.Namespace) -> dict[str, Any]:
    media_dir = ROOT / "bench" / ".cache"
    media_dir.mkdir(parents=True, exist_ok=True)
    vp8 = mediagen.cached(media_dir, "forward_vp8_640",
                          lambda: mediagen.encode_video(width=640, height=360, seconds=3))
    opus = mediagen.cached(media_dir, "forward_opus", mediagen.encode_opus)
    registry = RoomRegistry(MediaConfig(ice_loopback=True, relay_path="packet"),
                            initial_offer_delay=3600)
    room = registry.get_or_create("forward-cost")
    alice = Client("alice", video=vp8, audio=opus)
    bob = Client("bob", video=None, audio=None)
    try:
        await alice.join(room)
        await alice.publish()
        await bob.join(room)
        await bob.receive_only()
        await wait_for(lambda: len(bob.frames_from("alice", "video")) >= 15, limit=20,
                       what="video at the subscriber")
        captured = await _capture(alice, 1.5)
        streams = Streams(captured, {t.sender._ssrc for t in alice.pc.getTransceivers()})
        server_alice = room.participants["alice"]
        connection = next(iter(server_alice.pc.getTransceivers())).receiver.transport \
            .transport.iceGatherer._connection
        pair = connection._nominated[1]
        protocol, remote = pair.protocol, pair.remote_addr
        client_tx = _sender_transport(alice)._tx_srtp
        relay = registry.packet_relay
        assert relay is not None
        outputs = [relay.output(sub.track) for sub in room.participants["bob"]
                   .subscriptions.values()]
        bob_addr = _sender_transport(bob).transport.iceGatherer._connection \
            ._nominated[1].local_candidate
        floor_client, floor_rx, floor_tx = _floor_sessions()
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        floor_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay_us: list[float] = []
        floor_us: list[float] = []
        forwarded = 0
        for _ in range(args.rounds):
            plain = streams.batch(args.packets)
            protected = [client_tx.protect(p) for p in plain]
            before = sum(o.packets_forwarded for o in outputs if o is not None)
            received = protocol.datagram_received
            start = time.process_time()
            for data in protected:
                received(data, remote)
            relay_us.append((time.process_time() - start) / len(protected) * 1e6)
            forwarded += sum(o.packets_forwarded for o in outputs if o is not None) - before
            floor_us.append(_floor_round(plain, floor_client, floor_rx, floor_tx, floor_sock,
                                         sink.getsockname()) / len(plain) * 1e6)
            await asyncio.sleep(0.2)  # let the clients drain their sockets
        sink.close()
        floor_sock.close()
        relay = statistics.median(relay_us)
        floor = statistics.median(floor_us)
        return {
            "machine": {"python": sys.version.split()[0], "cores": os.cpu_count(),
                        "bob_candidate": f"{bob_addr.host}:{bob_addr.port}"},
            "packets_per_round": args.packets,
            "rounds": args.rounds,
            "forwarded_ratio": forwarded / (args.packets * args.rounds),
            "relay_us_per_packet": round(relay, 2),
            "floor_us_per_packet": round(floor, 2),
            "relay_over_floor": round(relay / floor, 2),
            "relay_us_rounds": [round(x, 2) for x in relay_us],
            "floor_us_rounds": [round(x, 2) for x in floor_us],
        }
    finally:
        await alice.close()
        await bob.close()
        await registry.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await main(parser.parse_args()))

    run_with_uvloop(run())
    print(json.dumps(result, indent=1))

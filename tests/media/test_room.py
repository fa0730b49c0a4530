"""Room behaviour with aiortc clients over loopback: renegotiation, reconnects, bad input."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from panda.media import aiortc_patches
from panda.media.errors import SignalError
from panda.media.ice import MediaConfig
from panda.media.room import Participant, Room, RoomRegistry
from tests.media.clients import Client, contiguous_in, wait_for
from tests.media.mediagen import EncodedMedia


def settled(client: Client) -> bool:
    """No server offer outstanding or pending for this client, and its pc is stable."""
    p = client.participant
    assert p is not None
    task = p._renegotiation_task
    return (not p._offer_outstanding and (task is None or task.done())
            and p._initial_timer is None and client.pc.signalingState == "stable"
            and client.inbox.empty())


async def call(room: Room, vp8: EncodedMedia, opus: EncodedMedia,
               names: tuple[str, ...] = ("alice", "bob")) -> list[Client]:
    clients = []
    for name in names:
        client = Client(name, video=vp8, audio=opus)
        await client.join(room)
        await client.publish()
        clients.append(client)
    for client in clients:
        for other in clients:
            if other is not client:
                await wait_for(lambda c=client, o=other: len(c.frames_from(o.name, "video")) >= 5,
                               what=f"{client.name} gets {other.name}'s video")
    return clients


async def close_all(*clients: Client) -> None:
    for client in clients:
        await client.close()


def growing(get: Any) -> Any:
    start = len(get())
    return lambda: len(get()) >= start + 10


async def test_screen_share_added_by_renegotiation_then_removed(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("screen")
    alice, bob = await call(room, vp8, opus)
    try:
        await wait_for(lambda: settled(alice) and settled(bob), what="quiet signalling")
        screen = alice.add_track("video", "screen")
        await alice.offer()
        await wait_for(lambda: len(bob.frames_from("alice", "video", "screen")) >= 10,
                       what="screen share at bob")
        assert contiguous_in(bob.frames_from("alice", "video", "screen"), screen.sent)
        # camera keeps flowing next to the screen
        await wait_for(growing(lambda: bob.frames_from("alice", "video", "camera")))
        sources = sorted(info["source"] for info in bob.tracks.values()
                         if info["participant_id"] == "alice")
        assert sources == ["camera", "microphone", "screen"]
        # both video receivers on the server have their RTX SSRC routed (aiortc only does one)
        assert alice.participant is not None
        for pub in alice.participant.publications.values():
            if pub.kind == "video":
                rtx = pub.tap.receiver._RTCRtpReceiver__rtx_ssrc
                table = pub.tap.receiver.transport._rtp_router.ssrc_table
                assert rtx and all(table[s] is pub.tap.receiver for s in rtx)

        await wait_for(lambda: settled(alice) and settled(bob), what="quiet signalling")
        screen_mid = next(m for m, s in alice.sources.items() if s == "screen")
        bob_screen_mid = next(m for m, i in bob.tracks.items() if i["source"] == "screen")
        await alice.stop_publishing(screen_mid)
        await wait_for(lambda: bob_screen_mid not in bob.tracks, what="screen removed at bob")
        assert sorted(i["source"] for i in bob.tracks.values()) == ["camera", "microphone"]
        assert [p.source for p in alice.participant.publications.values()] == [
            "microphone", "camera"]
        stalled = len(bob.received[bob_screen_mid].frames)
        await wait_for(growing(lambda: bob.frames_from("alice", "video", "camera")))
        assert len(bob.received[bob_screen_mid].frames) <= stalled + 1
        bob_transceiver = next(t for t in bob.pc.getTransceivers() if t.mid == bob_screen_mid)
        assert bob_transceiver.currentDirection == "inactive"
        assert not alice.errors and not bob.errors
    finally:
        await close_all(alice, bob)


async def test_track_added_on_a_server_m_line_is_published(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("reuse")
    alice, bob = await call(room, vp8, opus)
    try:
        await wait_for(lambda: settled(alice) and settled(bob), what="quiet signalling")
        bob_camera_mid = next(m for m, i in alice.tracks.items()
                              if i["participant_id"] == "bob" and i["kind"] == "video")
        screen = alice.add_track("video", "screen", reuse=True)
        await alice.offer()
        screen_mid = next(m for m, t in alice.published.items() if t is screen)
        assert screen_mid == bob_camera_mid  # the m-line that brings bob's camera to alice
        await wait_for(lambda: len(bob.frames_from("alice", "video", "screen")) >= 10,
                       what="screen share at bob")
        assert contiguous_in(bob.frames_from("alice", "video", "screen"), screen.sent)
        # the same m-line still brings bob's camera to alice
        await wait_for(growing(lambda: alice.received[bob_camera_mid].frames))
        transceiver = next(t for t in alice.pc.getTransceivers() if t.mid == screen_mid)
        assert transceiver.currentDirection == "sendrecv"
        # and it can stop again
        await wait_for(lambda: settled(alice) and settled(bob), what="quiet signalling")
        await alice.stop_publishing(screen_mid)
        await wait_for(lambda: not any(i["source"] == "screen" for i in bob.tracks.values()),
                       what="screen gone at bob")
        await wait_for(growing(lambda: alice.received[bob_camera_mid].frames))
        assert not alice.errors and not bob.errors
    finally:
        await close_all(alice, bob)


async def test_reconnect_replaces_participant_and_media_resumes(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("reconnect")
    alice, bob = await call(room, vp8, opus)
    alice2 = Client("alice", video=vp8, audio=opus)
    try:
        old_participant = alice.participant
        assert old_participant is not None
        await wait_for(lambda: settled(bob), what="quiet signalling")
        # the page reloads: a new pc joins with the same participant id
        await alice2.join(room, "alice")
        await alice2.publish()
        assert room.participants["alice"] is alice2.participant
        assert old_participant.closed
        await wait_for(lambda: old_participant.pc.connectionState == "closed", what="old pc closed")
        with pytest.raises(SignalError) as err:
            await old_participant.handle_signal({"type": "offer", "sdp": "v=0"})
        assert err.value.code == "closed"
        # the old page's websocket closing late must not remove the new participant
        await old_participant.leave()
        assert room.participants["alice"] is alice2.participant
        # bob now receives the new alice (on the m-line that carried the old one), and the
        # new alice receives bob
        new_mid = next(m for m, s in alice2.sources.items() if s == "camera")
        new_sent = alice2.published[new_mid].sent
        await wait_for(lambda: contiguous_in(bob.frames_from("alice", "video")[-10:], new_sent),
                       what="new alice's frames at bob")
        await wait_for(lambda: len(alice2.frames_from("bob", "video")) >= 10, what="bob at alice2")
        assert len([i for i in bob.tracks.values() if i["participant_id"] == "alice"]) == 2
        # bob's m-lines that carried the old alice were reused: no m-line growth
        assert len(bob.pc.getTransceivers()) == 4
        reused = bob.mids_from("alice", "video")[0]
        stamps = bob.received[reused].timestamps
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        # one stream on one SSRC: timestamps go on increasing across the change of source
        assert all(0 < gap < 90000 for gap in gaps), gaps
        assert not bob.errors and not alice2.errors
    finally:
        await close_all(alice, bob, alice2)


async def test_vanished_participant_is_cleaned_up(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("vanish")
    alice, bob = await call(room, vp8, opus)
    try:
        bob_participant = bob.participant
        assert bob_participant is not None
        await bob.pc.close()  # the browser goes away without a leave message
        await wait_for(lambda: "bob" not in room.participants, what="bob removed")
        await wait_for(lambda: "closed" in bob.states, what="on_state told")
        assert bob_participant.closed
        await wait_for(lambda: not any(i["participant_id"] == "bob" for i in alice.tracks.values()),
                       what="alice re-offered without bob")
        assert all(not pub.fanout.tracks for pub in alice.participant.publications.values())
    finally:
        await close_all(alice, bob)


async def test_silent_participant_is_cleaned_up(
    no_decoding: list[str], vp8: EncodedMedia, opus: EncodedMedia, relay_path: str) -> None:
    registry = RoomRegistry(
        MediaConfig(ice_loopback=True, relay_path=relay_path), media_timeout=1.0,
        initial_offer_delay=3600)
    room = registry.get_or_create("silent")
    alice, bob = await call(room, vp8, opus)
    try:
        # the network drops: nothing more arrives from bob, not even a DTLS close
        connection = aiortc_patches.ice_connection_of(bob.pc)
        assert connection is not None
        for protocol in connection._protocols:
            protocol.transport.close()
        await wait_for(lambda: "bob" not in room.participants, limit=10, what="bob removed")
        await wait_for(lambda: "failed" in bob.states, what="on_state failed")
        assert "alice" in room.participants
    finally:
        await close_all(alice, bob)
        await registry.close()


async def test_bad_input_is_refused_and_the_call_goes_on(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("bad")
    alice, bob = await call(room, vp8, opus)
    try:
        await wait_for(lambda: settled(alice) and settled(bob), what="quiet signalling")
        p = alice.participant
        assert p is not None
        good_sdp = alice.pc.localDescription.sdp
        no_ice = "\r\n".join(line for line in good_sdp.split("\r\n")
                             if not line.startswith("a=ice-ufrag"))
        reordered = good_sdp.replace("a=mid:0", "a=mid:9")
        cases: list[tuple[dict[str, Any], str]] = [
            ({"type": "offer", "sdp": "garbage"}, "bad-sdp"),
            ({"type": "offer", "sdp": ""}, "bad-sdp"),
            ({"type": "offer", "sdp": 42}, "bad-sdp"),
            ({"type": "offer", "sdp": "v=0\r\nm=video x\r\n"}, "bad-sdp"),
            ({"type": "offer", "sdp": no_ice}, "bad-sdp"),
            ({"type": "offer", "sdp": reordered}, "bad-sdp"),
            ({"type": "offer", "sdp": good_sdp, "sources": {"0": "webcam"}}, "bad-message"),
            ({"type": "answer", "sdp": good_sdp}, "wrong-state"),
            ({"type": "answer", "sdp": "garbage"}, "bad-sdp"),
            ({"type": "ice-candidate", "candidate": {"candidate": "candidate:nonsense"}},
             "bad-candidate"),
            ({"type": "ice-candidate", "candidate": 5}, "bad-candidate"),
            ({"type": "bogus"}, "bad-message"),
        ]
        for msg, code in cases:
            with pytest.raises(SignalError) as err:
                await p.handle_signal(msg)
            assert err.value.code == code, (msg, err.value)
        # a non-loopback candidate is accepted as a message but never used
        await p.handle_signal({"type": "ice-candidate", "candidate": {
            "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0}})
        assert p.pc.signalingState == "stable"
        assert room.participants["alice"] is p and p.pc.connectionState == "connected"
        # media keeps flowing, and the pc can still renegotiate
        await wait_for(growing(lambda: bob.frames_from("alice", "video")))
        await wait_for(growing(lambda: alice.frames_from("bob", "video")))
        alice.add_track("video", "screen")
        await alice.offer()
        await wait_for(lambda: len(bob.frames_from("alice", "video", "screen")) >= 5,
                       what="renegotiation after errors")
        assert not bob.errors
    finally:
        await close_all(alice, bob)


async def test_server_offers_first_to_a_participant_that_does_not_offer(
    no_decoding: list[str], vp8: EncodedMedia, opus: EncodedMedia, relay_path: str) -> None:
    registry = RoomRegistry(
        MediaConfig(ice_loopback=True, relay_path=relay_path), initial_offer_delay=0.2)
    room = registry.get_or_create("silent-browser")
    alice = Client("alice", video=vp8, audio=opus)
    bob = Client("bob", video=None, audio=None)
    try:
        await alice.join(room)
        await alice.publish()
        await bob.join(room)  # bob never offers: the server does, after the delay
        await wait_for(lambda: len(bob.frames_from("alice", "video")) >= 10, what="video")
        await wait_for(lambda: len(bob.frames_from("alice", "audio")) >= 10, what="audio")
        assert bob.offers_handled >= 1 and bob.answers == 0
    finally:
        await close_all(alice, bob)
        await registry.close()


async def test_glare_server_offer_wins(
    no_decoding: list[str], vp8: EncodedMedia, opus: EncodedMedia, relay_path: str) -> None:
    registry = RoomRegistry(
        MediaConfig(ice_loopback=True, relay_path=relay_path), initial_offer_delay=0.2)
    room = registry.get_or_create("glare")
    alice = Client("alice", video=vp8, audio=opus)
    bob = Client("bob", video=vp8, audio=opus)
    try:
        await alice.join(room)
        await alice.publish()
        # bob joins but holds back server messages: the server's offer stays unanswered
        bob_inbox_hold = asyncio.Event()
        original_send = bob.send

        async def held_send(msg: dict[str, Any]) -> None:
            await bob_inbox_hold.wait()
            await original_send(msg)

        bob.send = held_send  # type: ignore[method-assign]
        participant = await room.join("bob", name="bob", role="tutor", send=held_send)
        bob.participant = participant
        await wait_for(lambda: participant._offer_outstanding, what="server offer")
        bob.add_track("audio", "microphone")
        offer = await bob.pc.createOffer()  # bob offers at the same time
        with pytest.raises(SignalError) as err:
            await participant.handle_signal({"type": "offer", "sdp": offer.sdp})
        assert err.value.code == "glare"
        assert participant.pc.signalingState == "have-local-offer"
    finally:
        bob_inbox_hold.set()
        await close_all(alice, bob)
        await registry.close()


async def test_no_common_codec_is_a_clear_error(
    registry: RoomRegistry, vp8: EncodedMedia, h264: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("codec")
    alice = Client("alice", video=vp8, audio=opus)
    carol = Client("carol", video=h264, audio=opus, video_codecs=("video/h264",))
    try:
        await alice.join(room)
        await alice.publish()
        assert room.video_mime == "video/vp8"
        await carol.join(room)
        with pytest.raises(SignalError) as err:
            await carol.publish()
        assert err.value.code == "no-common-codec"
        assert carol.participant is not None
        assert carol.participant.pc.signalingState == "stable"
        assert carol.participant.pc.remoteDescription is None
    finally:
        await close_all(alice, carol)


async def test_room_codec_is_chosen_for_everyone_while_nobody_publishes_video(
    registry: RoomRegistry, vp8: EncodedMedia, h264: EncodedMedia, opus: EncodedMedia
) -> None:
    """VP8 when every participant can do it, H.264 otherwise; fixed only once video flows."""
    room = registry.get_or_create("codec-choice")
    alice = Client("alice", video=None, audio=None)  # VP8 and H.264, receives only
    carol = Client("carol", video=h264, audio=opus, video_codecs=("video/h264",))
    dave = Client("dave", video=vp8, audio=opus)
    try:
        await alice.join(room)
        await alice.receive_only()
        assert room.video_mime == "video/vp8"  # alice alone: VP8
        await carol.join(room)
        await carol.publish()  # nobody publishes video yet: the room moves to H.264 for carol
        assert room.video_mime == "video/h264"
        await wait_for(lambda: len(alice.frames_from("carol", "video")) >= 5, what="h264 at alice")
        await carol.close()
        await room.leave("carol")
        await dave.join(room)
        await dave.publish()  # carol left: VP8 suits everyone again
        assert room.video_mime == "video/vp8"
        await wait_for(lambda: len(alice.frames_from("dave", "video")) >= 5, what="vp8 at alice")
    finally:
        await close_all(alice, carol, dave)


async def test_h264_room_when_a_participant_cannot_do_vp8(
    registry: RoomRegistry, h264: EncodedMedia, opus: EncodedMedia
) -> None:
    from panda.media.fanout import h264_nal_types

    room = registry.get_or_create("h264")
    alice = Client("alice", video=h264, audio=opus, video_codecs=("video/h264",))
    bob = Client("bob", video=h264, audio=opus)
    try:
        await alice.join(room)
        await alice.publish()
        assert room.video_mime == "video/h264"
        await bob.join(room)
        await bob.publish()  # bob could do VP8 but the room is H.264
        await wait_for(lambda: len(bob.frames_from("alice", "video")) >= 10, what="h264 at bob")
        await wait_for(lambda: len(alice.frames_from("bob", "video")) >= 10, what="h264 at alice")
        got = bob.frames_from("alice", "video")
        assert 5 in h264_nal_types(got[0])  # starts at an IDR
        mid = next(m for m, s in alice.sources.items() if s == "camera")
        sent = alice.published[mid].sent

        def nals(frame: bytes) -> list[bytes]:
            parts = [p for p in frame.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01")
                     .split(b"\x00\x00\x01") if p]
            return parts

        assert contiguous_in([b"|".join(nals(f)) for f in got],
                             [b"|".join(nals(f)) for f in sent])
        assert bob.received[next(iter(bob.mids_from("alice", "video")))].codec == "video/H264"
    finally:
        await close_all(alice, bob)


async def test_keyframe_requested_on_subscribe_and_on_subscriber_pli(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("pli")
    alice = Client("alice", video=vp8, audio=opus)
    bob = Client("bob", video=None, audio=None)
    try:
        await alice.join(room)
        await alice.publish()
        assert alice.pli_received == 0  # nobody subscribed yet: nobody asked
        await bob.join(room)
        await bob.receive_only()
        await wait_for(lambda: alice.pli_received >= 1, what="PLI on subscribe")
        await wait_for(lambda: len(bob.frames_from("alice", "video")) >= 5, what="video at bob")
        before = alice.pli_received
        tap = next(t for tr, t in bob.taps.items() if tr.kind == "video" and t.started)
        for _ in range(5):
            await tap.request_keyframe()  # the subscriber's decoder lost the picture
        await wait_for(lambda: alice.pli_received > before, what="PLI forwarded to publisher")
        await asyncio.sleep(0.1)
        assert alice.pli_received - before <= 2  # five PLIs in a burst: throttled
        stats = room.stats()["alice"]
        assert stats["keyframes_requested"] >= 2
    finally:
        await close_all(alice, bob)


async def test_subscriber_remb_caps_what_the_publisher_is_told(
    registry: RoomRegistry, vp8: EncodedMedia
) -> None:
    room = registry.get_or_create("remb")
    alice = Client("alice", video=vp8, audio=None)
    bob = Client("bob", video=None, audio=None)
    try:
        await alice.join(room)
        await alice.publish(audio=False)
        await bob.join(room)
        await bob.receive_only()
        # without a weak subscriber, the relay's own estimate goes above 300 kbit/s
        await wait_for(lambda: any(r > 300_000 for r in alice.remb_received), limit=20,
                       what="server estimate above 300 kbit/s")
        # bob's receiver now reports at most 300 kbit/s in its REMB
        for tap in bob.taps.values():
            tap.bitrate_limit = 300_000
            tap.send_remb_now()
        mark = len(alice.remb_received)
        await wait_for(lambda: any(r <= 300_000 for r in alice.remb_received[mark:]), limit=5,
                       what="publisher told <= 300 kbit/s")
        first = mark + next(i for i, r in enumerate(alice.remb_received[mark:]) if r <= 300_000)
        await wait_for(lambda: len(alice.remb_received) >= first + 4, limit=10,
                       what="more REMBs")
        assert all(r <= 300_000 for r in alice.remb_received[first:])
        # bob leaves: the cap goes with him
        await room.leave("bob")
        mark = len(alice.remb_received)
        await wait_for(lambda: any(r > 300_000 for r in alice.remb_received[mark:]), limit=10,
                       what="cap lifted")
    finally:
        await close_all(alice, bob)


async def test_registry_close_awaits_every_pc_and_refuses_new_joins(
    no_decoding: list[str], vp8: EncodedMedia, opus: EncodedMedia, relay_path: str) -> None:
    registry = RoomRegistry(
        MediaConfig(ice_loopback=True, relay_path=relay_path), initial_offer_delay=3600)
    room = registry.get_or_create("shutdown")
    alice, bob = await call(room, vp8, opus)
    participants: list[Participant] = list(room.participants.values())
    try:
        await registry.close()
        assert all(p.pc.connectionState == "closed" for p in participants)
        assert not registry._closing and registry.get("shutdown") is None
        with pytest.raises(SignalError):
            await room.join("carol", name="c", role="student", send=alice.send)
        with pytest.raises(SignalError):
            registry.get_or_create("another")
    finally:
        await close_all(alice, bob)


async def test_sink_factory_gets_frames_and_end(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("sinks")
    made: list[tuple[str, str, str, str]] = []

    class Sink:
        def __init__(self) -> None:
            self.frames: list[tuple[bytes, bool]] = []
            self.ended = False

        def on_frame(self, packet: Any, *, keyframe: bool, arrival: float) -> None:
            self.frames.append((bytes(packet), keyframe))

        def on_end(self) -> None:
            self.ended = True

    sinks: dict[tuple[str, str], Sink] = {}

    def factory(participant_id: str, kind: str, source: str, mime: str) -> Sink | None:
        made.append((participant_id, kind, source, mime))
        if kind == "audio" and participant_id == "bob":
            return None
        sink = sinks[(participant_id, source)] = Sink()
        return sink

    alice = Client("alice", video=vp8, audio=opus)
    bob = Client("bob", video=vp8, audio=opus)
    try:
        await alice.join(room)
        await alice.publish()
        room.add_sink_factory(factory)  # existing tracks get sinks at once
        assert sorted(made) == [("alice", "audio", "microphone", "audio/opus"),
                                ("alice", "video", "camera", "video/VP8")]
        await bob.join(room)
        await bob.publish()  # new tracks get sinks when published
        await wait_for(lambda: len(sinks.get(("bob", "camera"), Sink()).frames) >= 20,
                       what="bob's video in sink")
        cam = sinks[("alice", "camera")]
        await wait_for(lambda: any(k for _, k in cam.frames), what="keyframe in sink")
        mid = next(m for m, s in alice.sources.items() if s == "camera")
        assert contiguous_in([f for f, _ in cam.frames], alice.published[mid].sent)
        await room.leave("bob")
        assert sinks[("bob", "camera")].ended
        room.remove_sink_factory(factory)
        assert cam.ended and sinks[("alice", "microphone")].ended
    finally:
        await close_all(alice, bob)

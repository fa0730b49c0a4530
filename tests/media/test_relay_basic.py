"""Two aiortc clients call each other through a Room over loopback."""

from __future__ import annotations

from panda.media.room import RoomRegistry
from tests.media.clients import Client, contiguous_in, wait_for
from tests.media.mediagen import EncodedMedia


async def test_two_clients_forward_audio_and_video_byte_identical(
    registry: RoomRegistry, vp8: EncodedMedia, opus: EncodedMedia
) -> None:
    room = registry.get_or_create("call-1")
    alice = Client("alice", video=vp8, audio=opus)
    bob = Client("bob", video=vp8, audio=opus)
    try:
        await alice.join(room)
        await alice.publish()
        await bob.join(room)
        await bob.publish()

        def enough() -> bool:
            return all(
                len(c.frames_from(other, "video")) >= 20
                and len(c.frames_from(other, "audio")) >= 30
                for c, other in ((alice, "bob"), (bob, "alice"))
            )

        await wait_for(enough, limit=20, what="media both ways")
        for receiver, sender in ((alice, bob), (bob, alice)):
            video_mid = next(m for m, s in sender.sources.items() if s == "camera")
            audio_mid = next(m for m, s in sender.sources.items() if s == "microphone")
            got_video = receiver.frames_from(sender.name, "video")
            got_audio = receiver.frames_from(sender.name, "audio")
            assert contiguous_in(got_video, sender.published[video_mid].sent)
            assert contiguous_in(got_audio, sender.published[audio_mid].sent)
            # a subscriber's first video frame is a keyframe (gating)
            assert not got_video[0][0] & 1 and got_video[0][3:6] == b"\x9d\x01\x2a"
        stats = room.stats()
        assert stats["alice"]["frames_forwarded"] > 0
        relay = registry.packet_relay
        assert (relay is not None) == (registry.config.relay_path == "packet")
        if relay is not None:
            # every subscription really went out as rewritten packets
            for participant in room.participants.values():
                for sub in participant.subscriptions.values():
                    output = relay.output(sub.track)
                    assert output is not None and output.packets_forwarded > 0
        assert stats["alice"]["transport"] == "udp"
        assert stats["alice"]["candidate_pair"].startswith("127.0.0.1:")
        assert not alice.errors and not bob.errors
    finally:
        await alice.close()
        await bob.close()

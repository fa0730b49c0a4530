"""Unit tests of the forwarding pieces: keyframe detection, gating, throttling, overflow."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import av
import pytest
from aiortc.mediastreams import MediaStreamError

from panda.media.fanout import (
    Fanout,
    KeyframeRequester,
    h264_nal_types,
    is_h264_keyframe,
    is_vp8_keyframe,
    keyframe_detector,
)
from tests.media.mediagen import EncodedMedia

VP8_KEY = b"\x50\x42\x00\x9d\x01\x2a\x40\x01\xf0\x00" + b"\x00" * 20
VP8_DELTA = b"\x31\x05\x00" + b"\x11" * 20


class FakeTimers:
    """A clock and call_later under test control."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pending: list[tuple[float, Callable[[], None], Handle]] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle()
        self.pending.append((self.now + delay, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [p for p in self.pending if p[0] <= self.now]
        self.pending = [p for p in self.pending if p[0] > self.now]
        for _, callback, handle in sorted(due, key=lambda p: p[0]):
            if not handle.cancelled:
                callback()


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Sink:
    def __init__(self) -> None:
        self.frames: list[tuple[bytes, bool, int]] = []
        self.ended = 0

    def on_frame(self, packet: av.Packet, *, keyframe: bool, arrival: float) -> None:
        self.frames.append((bytes(packet), keyframe, packet.pts))

    def on_end(self) -> None:
        self.ended += 1


def make_fanout(kind: str = "video", mime: str = "video/VP8", **kwargs: Any) -> tuple[
        Fanout, list[int], FakeTimers]:
    timers = FakeTimers()
    requests: list[int] = []
    fanout = Fanout(kind, mime, 90000 if kind == "video" else 48000,
                    request_keyframe=lambda: requests.append(1), **kwargs)
    fanout.requester = KeyframeRequester(
        lambda: requests.append(1), pending=fanout._any_waiting, min_interval=0.5,
        retry_interval=1.0, clock=timers.clock, call_later=timers.call_later)
    return fanout, requests, timers


# ----------------------------------------------------------------------------- detection


def test_vp8_keyframe_detection_on_real_frames(vp8: EncodedMedia) -> None:
    assert sum(f.keyframe for f in vp8.frames) >= 2
    for frame in vp8.frames:
        assert is_vp8_keyframe(frame.data) == frame.keyframe


def test_vp8_keyframe_detection_edge_cases() -> None:
    assert is_vp8_keyframe(VP8_KEY)
    assert not is_vp8_keyframe(VP8_DELTA)
    assert not is_vp8_keyframe(b"")
    assert not is_vp8_keyframe(VP8_KEY[:5])
    # P bit clear but no start code: a frame reassembled from its middle, not a keyframe
    assert not is_vp8_keyframe(b"\x00" * 30)


def test_h264_keyframe_detection_on_real_frames(h264: EncodedMedia) -> None:
    assert sum(f.keyframe for f in h264.frames) >= 2
    for frame in h264.frames:
        assert is_h264_keyframe(frame.data) == frame.keyframe
    assert 5 in h264_nal_types(h264.frames[0].data)


def test_h264_keyframe_detection_start_codes() -> None:
    idr = b"\x00\x00\x00\x01\x67\x42" + b"\x00\x00\x01\x68\xce" + b"\x00\x00\x00\x01\x65\x88"
    non_idr = b"\x00\x00\x00\x01\x41\x9a\x00"
    assert h264_nal_types(idr) == [7, 8, 5]
    assert is_h264_keyframe(idr)
    assert not is_h264_keyframe(non_idr)
    assert not is_h264_keyframe(b"")


def test_audio_frames_are_all_keyframes_and_unknown_codecs_refused() -> None:
    assert keyframe_detector("audio/opus")(b"\x01")
    with pytest.raises(ValueError):
        keyframe_detector("video/AV1")


# ----------------------------------------------------------------------------- gating


async def test_new_subscriber_waits_for_keyframe_and_asks_for_one() -> None:
    fanout, requests, _ = make_fanout()
    track = fanout.subscribe()
    assert requests == []  # nothing asked until the sender reads
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    assert requests == [1]
    fanout.push(VP8_DELTA, 3000, 0.0)
    fanout.push(VP8_DELTA, 6000, 0.0)
    assert track.queued() == 0 and not reader.done()
    fanout.push(VP8_KEY, 9000, 0.0)
    fanout.push(VP8_DELTA, 12000, 0.0)
    first = await reader
    assert bytes(first) == VP8_KEY and first.pts == 9000
    second = await track.recv()
    assert bytes(second) == VP8_DELTA and second.pts == 12000
    assert second.time_base == first.time_base and first.time_base.denominator == 90000


async def test_audio_is_not_gated() -> None:
    fanout, requests, _ = make_fanout("audio", "audio/opus")
    track = fanout.subscribe()
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    fanout.push(b"\x01\x02", 960, 0.0)
    assert bytes(await reader) == b"\x01\x02"
    assert requests == []


async def test_frames_are_shared_between_subscribers_and_sinks() -> None:
    fanout, _, _ = make_fanout()
    a, b = fanout.subscribe(), fanout.subscribe()
    sink = Sink()
    fanout.add_sink(sink)
    ra, rb = asyncio.ensure_future(a.recv()), asyncio.ensure_future(b.recv())
    await asyncio.sleep(0)
    fanout.push(VP8_DELTA, 1, 0.0)  # before any keyframe: sink sees it, tracks do not
    fanout.push(VP8_KEY, 2, 0.0)
    pa, pb = await ra, await rb
    assert pa is pb  # one av.Packet per frame, not per subscriber
    assert sink.frames == [(VP8_DELTA, False, 1), (VP8_KEY, True, 2)]


# ----------------------------------------------------------------------------- throttling


def test_keyframe_requests_are_throttled_and_deferred() -> None:
    timers = FakeTimers()
    sent: list[float] = []
    requester = KeyframeRequester(lambda: sent.append(timers.now), min_interval=0.5,
                                  retry_interval=1.0, clock=timers.clock,
                                  call_later=timers.call_later)
    requester.request()
    requester.request()
    requester.request()
    assert sent == [100.0]  # burst collapses into one request ...
    timers.advance(0.5)
    assert sent == [100.0, 100.5]  # ... plus one deferred request after the interval
    assert requester.throttled == 2
    timers.advance(5)
    assert len(sent) == 2  # nobody pending: no retries


def test_keyframe_request_retried_while_subscriber_waits() -> None:
    timers = FakeTimers()
    sent: list[float] = []
    waiting = [True]
    requester = KeyframeRequester(lambda: sent.append(timers.now), pending=lambda: waiting[0],
                                  min_interval=0.5, retry_interval=1.0, clock=timers.clock,
                                  call_later=timers.call_later)
    requester.request()
    timers.advance(1.0)
    timers.advance(1.0)
    assert sent == [100.0, 101.0, 102.0]
    waiting[0] = False
    timers.advance(1.0)
    timers.advance(1.0)
    assert len(sent) == 3
    requester.close()
    requester.request()
    assert len(sent) == 3


def test_new_subscriber_gets_a_request_at_once_once_the_last_one_was_answered() -> None:
    timers = FakeTimers()
    sent: list[float] = []
    keyframes = [0]
    requester = KeyframeRequester(lambda: sent.append(timers.now), min_interval=0.5,
                                  retry_interval=1.0, clock=timers.clock,
                                  call_later=timers.call_later, keyframes=lambda: keyframes[0])
    requester.request()  # e.g. another subscriber's PLI
    timers.advance(0.05)
    requester.request_for_new_subscriber()
    assert sent == [100.0]  # unanswered yet: its keyframe serves the new subscriber too
    keyframes[0] += 1  # ... the keyframe came
    timers.advance(0.45)
    assert sent == [100.0, 100.5]  # the usual deferred request, not one more
    keyframes[0] += 1
    timers.advance(0.05)
    requester.request_for_new_subscriber()
    assert sent == [100.0, 100.5]  # answered, but within the storm guard ...
    timers.advance(0.05)
    assert sent == [100.0, 100.5, 100.6]  # ... so right after it, not 0.5 s later
    keyframes[0] += 1
    timers.advance(0.2)
    requester.request_for_new_subscriber()
    assert sent == [100.0, 100.5, 100.6, 100.8]  # answered: at once, within min_interval
    timers.advance(5)
    assert len(sent) == 4


def test_new_subscribers_share_one_outstanding_request() -> None:
    timers = FakeTimers()
    sent: list[float] = []
    requester = KeyframeRequester(lambda: sent.append(timers.now), min_interval=0.5,
                                  retry_interval=1.0, clock=timers.clock,
                                  call_later=timers.call_later, keyframes=lambda: 0)
    for _ in range(10):  # many joins at once, no keyframe yet
        requester.request_for_new_subscriber()
        timers.advance(0.01)
    assert sent == [100.0]


async def test_reading_subscriber_skips_the_throttle_after_a_keyframe() -> None:
    fanout = Fanout("video", "video/VP8", 90000, request_keyframe=lambda: None)
    timers = FakeTimers()
    requests: list[float] = []
    fanout.requester = KeyframeRequester(
        lambda: requests.append(timers.now), pending=fanout._any_waiting, min_interval=0.5,
        retry_interval=1.0, clock=timers.clock, call_later=timers.call_later,
        keyframes=lambda: fanout.keyframes_in)
    first = fanout.subscribe()
    first.reading = True
    fanout._on_track_reading(first)
    fanout.push(VP8_KEY, 1, 0.0)
    timers.advance(0.2)
    second = fanout.subscribe()
    second.reading = True
    fanout._on_track_reading(second)
    assert requests == [100.0, 100.2]


async def test_subscriber_pli_requests_keyframe_throttled() -> None:
    fanout, requests, timers = make_fanout()
    track = fanout.subscribe()
    for _ in range(10):
        track.request_keyframe()
    assert len(requests) == 1
    timers.advance(0.5)
    assert len(requests) == 2
    assert track.keyframe_requests == 10


# ----------------------------------------------------------------------------- overflow


async def test_overflow_flushes_and_waits_for_next_keyframe() -> None:
    fanout, requests, timers = make_fanout(max_queue=4)
    track = fanout.subscribe()
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    fanout.push(VP8_KEY, 0, 0.0)
    assert bytes(await reader) == VP8_KEY
    # the sender stalls: the queue fills to its bound
    for i in range(4):
        fanout.push(VP8_DELTA, 3000 * (i + 1), 0.0)
    assert track.queued() == 4
    timers.advance(1.0)  # past the throttle interval of the subscribe-time request
    requests.clear()
    fanout.push(VP8_DELTA, 15000, 0.0)  # overflow
    assert track.queued() == 0 and track.needs_keyframe and track.overflows == 1
    assert requests == [1]
    fanout.push(VP8_DELTA, 18000, 0.0)
    assert track.queued() == 0  # still waiting for a keyframe
    fanout.push(VP8_KEY, 21000, 0.0)
    fanout.push(VP8_DELTA, 24000, 0.0)
    assert [bytes(await track.recv()), bytes(await track.recv())] == [VP8_KEY, VP8_DELTA]
    assert track.frames_dropped == 4


async def test_overflow_on_keyframe_keeps_the_keyframe() -> None:
    fanout, requests, _ = make_fanout(max_queue=2)
    track = fanout.subscribe()
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    fanout.push(VP8_KEY, 0, 0.0)
    await reader
    fanout.push(VP8_DELTA, 1, 0.0)
    fanout.push(VP8_DELTA, 2, 0.0)
    requests.clear()
    fanout.push(VP8_KEY, 3, 0.0)
    assert track.queued() == 1 and not track.needs_keyframe and requests == []


async def test_audio_overflow_drops_old_frames_only() -> None:
    fanout, requests, _ = make_fanout("audio", "audio/opus", max_queue=3)
    track = fanout.subscribe()
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    fanout.push(b"a", 0, 0.0)
    await reader
    for i, data in enumerate([b"b", b"c", b"d", b"e"]):
        fanout.push(data, 960 * (i + 1), 0.0)
    assert track.queued() == 1 and bytes(await track.recv()) == b"e"
    assert requests == []


# ----------------------------------------------------------------------------- lifecycle


async def test_track_never_raises_while_attached_and_idles_after_publisher_ends() -> None:
    fanout, _, _ = make_fanout()
    track = fanout.subscribe()
    sink = Sink()
    fanout.add_sink(sink)
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    fanout.end()
    await asyncio.sleep(0.01)
    assert not reader.done()  # publisher gone: the sender idles, its loop does not stop
    assert track.fanout is None and sink.ended == 1
    fanout.push(VP8_KEY, 0, 0.0)  # ignored after end
    assert track.queued() == 0
    track.stop()  # the room retires the subscription: now the sender's loop may end
    with pytest.raises(MediaStreamError):
        await reader


async def test_remb_minimum_of_subscribers() -> None:
    limits: list[int | None] = []
    fanout, _, _ = make_fanout(on_bitrate_limit=limits.append)
    a, b = fanout.subscribe(), fanout.subscribe()
    a.set_remb(2_000_000)
    b.set_remb(300_000)
    a.set_remb(1_500_000)  # minimum unchanged: no new limit
    assert limits == [2_000_000, 300_000]
    b.stop()
    assert limits[-1] == 1_500_000
    a.detach()
    assert limits[-1] is None


def test_failing_sink_is_removed_without_breaking_others() -> None:
    fanout, _, _ = make_fanout()

    class Broken(Sink):
        def on_frame(self, packet: av.Packet, *, keyframe: bool, arrival: float) -> None:
            raise RuntimeError("boom")

    broken, good = Broken(), Sink()
    fanout.add_sink(broken)
    fanout.add_sink(good)
    fanout.push(VP8_KEY, 0, 0.0)
    fanout.push(VP8_DELTA, 1, 0.0)
    assert broken not in fanout.sinks and broken.ended == 1
    assert len(good.frames) == 2


async def test_reattached_track_continues_timestamps() -> None:
    first, _, _ = make_fanout()
    second, requests, _ = make_fanout()
    track = first.subscribe()
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    first.push(VP8_KEY, 1000, 0.0)
    assert (await reader).pts == 1000
    first.push(VP8_DELTA, 4000, 0.0)
    assert (await track.recv()).pts == 4000
    track.detach()  # the publisher left: the track idles
    first.push(VP8_KEY, 7000, 0.0)
    assert track.queued() == 0
    track.attach(second)  # a new publisher on the same m-line
    assert requests == [1] and track.needs_keyframe
    second.push(VP8_DELTA, 10, 0.0)  # gated until a keyframe
    second.push(VP8_KEY, 50, 0.0)
    second.push(VP8_DELTA, 3050, 0.0)
    key, delta = await track.recv(), await track.recv()
    assert bytes(key) == VP8_KEY and key.pts == 4000 + 3000  # one frame after the last
    assert bytes(delta) == VP8_DELTA and delta.pts == 10000
    assert track in second.tracks and track not in first.tracks


async def test_lost_publisher_video_makes_subscribers_wait_for_a_keyframe() -> None:
    fanout, requests, timers = make_fanout()
    track = fanout.subscribe()
    reader = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    fanout.push(VP8_KEY, 3000, 0.0)
    assert bytes(await reader) == VP8_KEY
    timers.advance(1.0)
    requests.clear()
    fanout.lost()  # the relay gave up a packet: what follows refers to a lost frame
    assert requests == [1] and fanout.stats()["losses"] == 1
    fanout.push(VP8_DELTA, 6000, 0.0)
    assert track.queued() == 0  # the subscriber would decode garbage: held back
    fanout.push(VP8_KEY, 9000, 0.0)
    fanout.push(VP8_DELTA, 12000, 0.0)
    assert [bytes(p) for p in (await track.recv(), await track.recv())] == [VP8_KEY, VP8_DELTA]


def test_audio_loss_changes_nothing() -> None:
    fanout, requests, _ = make_fanout("audio", "audio/opus")
    fanout.lost()
    assert requests == [] and fanout.losses == 0


def test_keyframe_request_the_publisher_cannot_take_yet_is_retried_soon() -> None:
    timers = FakeTimers()
    ready = [False]
    sent: list[float] = []

    def send() -> bool:
        if ready[0]:
            sent.append(round(timers.now, 1))
        return ready[0]

    requester = KeyframeRequester(send, min_interval=0.5, retry_interval=1.0,
                                  clock=timers.clock, call_later=timers.call_later)
    requester.request()  # the publisher's connection is still being set up
    assert sent == [] and requester.sent == 0 and requester.unsent == 1
    for _ in range(3):
        timers.advance(0.1)
    ready[0] = True
    timers.advance(0.1)
    assert sent == [100.4] and requester.sent == 1  # not a whole retry interval later
    requester.request()
    assert sent == [100.4]  # and the usual throttle applies from there


def test_unsendable_keyframe_requests_give_up_after_a_while() -> None:
    timers = FakeTimers()
    calls: list[int] = []
    requester = KeyframeRequester(lambda: calls.append(1) is not None, clock=timers.clock,
                                  call_later=timers.call_later)
    requester.request()
    for _ in range(200):
        timers.advance(0.1)
    assert 40 <= len(calls) <= 60 and requester.sent == 0 and not timers.pending

"""Forward one published track's encoded frames to N subscriber tracks and sinks.

Nothing here decodes. A :class:`Fanout` receives whole encoded frames (the bytes
aiortc's jitter buffer reassembled) and hands the same ``av.Packet`` to every
:class:`ForwardingTrack` (which an ``RTCRtpSender`` only re-packetises) and to
every :class:`FrameSink` (the recorder).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

logger = logging.getLogger(__name__)

VP8_START_CODE = b"\x9d\x01\x2a"
H264_NAL_IDR = 5

DEFAULT_QUEUE_FRAMES = {"audio": 50, "video": 60}  # ~1 s audio (20 ms frames), ~2 s video
KEYFRAME_MIN_INTERVAL = 0.5  # seconds between two keyframe requests to one publisher
# A subscriber that starts (joins) gets a request at once unless one is on its way: at most
# one per keyframe answered, and never closer than this, so many joins cannot storm a publisher.
KEYFRAME_NEW_SUBSCRIBER_INTERVAL = 0.1
KEYFRAME_RETRY_INTERVAL = 1.0  # re-ask while a subscriber still waits (PLI may be lost)
KEYFRAME_UNSENT_RETRY = 0.1  # a request the publisher's transport could not take yet: try again
KEYFRAME_UNSENT_TRIES = 50  # ... for about 5 s (a new peer connection is still connecting)


# --------------------------------------------------------------------------- keyframes


def is_vp8_keyframe(frame: bytes) -> bool:
    """True if ``frame`` (a VP8 frame without RTP payload descriptor) is a keyframe.

    RFC 6386 9.1: bit 0 of the frame tag is 0 for key frames, and key frames carry the
    start code 9d 01 2a at bytes 3-5 (checked too, so a frame reassembled from its
    middle is never taken for a keyframe).
    """
    return len(frame) >= 10 and not frame[0] & 0x01 and frame[3:6] == VP8_START_CODE


def h264_nal_types(frame: bytes) -> list[int]:
    """NAL unit types of an Annex-B H.264 access unit (start-code separated)."""
    types: list[int] = []
    pos = frame.find(b"\x00\x00\x01")
    while pos != -1:
        header = pos + 3
        if header < len(frame):
            types.append(frame[header] & 0x1F)
        pos = frame.find(b"\x00\x00\x01", header)
    return types


def is_h264_keyframe(frame: bytes) -> bool:
    """True if the Annex-B access unit holds an IDR slice."""
    return H264_NAL_IDR in h264_nal_types(frame)


def keyframe_detector(mime_type: str) -> Callable[[bytes], bool]:
    """The keyframe test for a codec; audio frames all count as keyframes."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return is_vp8_keyframe
    if mime == "video/h264":
        return is_h264_keyframe
    if mime.startswith("audio/"):
        return _always_true
    raise ValueError(f"unsupported codec for forwarding: {mime_type}")


def _always_true(frame: bytes) -> bool:
    return True


# --------------------------------------------------------------------------- throttling


class KeyframeRequester:
    """Throttles keyframe requests to one publisher.

    A request sends at once unless one went out less than ``min_interval`` ago; then
    one deferred request is scheduled. After each request, a retry fires after
    ``retry_interval`` while ``pending()`` says a subscriber still waits. ``send``
    returns False when the request could not go out (the publisher's connection is not
    up yet): it is not counted, and is tried again shortly instead of a full interval
    later. ``keyframes()`` counts the keyframes the publisher has sent so far: it tells
    :meth:`request_for_new_subscriber` whether the last request was answered.
    """

    def __init__(
        self,
        send: Callable[[], bool | None],
        *,
        pending: Callable[[], bool] = lambda: False,
        min_interval: float = KEYFRAME_MIN_INTERVAL,
        retry_interval: float = KEYFRAME_RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], asyncio.TimerHandle | object]
        | None = None,
        keyframes: Callable[[], int] | None = None,
    ) -> None:
        self._send = send
        self._pending = pending
        self._keyframes = keyframes
        self._keyframes_at_last = -1
        self.min_interval = min_interval
        self.retry_interval = retry_interval
        self._clock = clock
        self._call_later = call_later
        self._last: float | None = None
        self._deferred: object | None = None
        self._retry: object | None = None
        self.sent = 0
        self.throttled = 0
        self.unsent = 0
        self._unsent_tries = 0
        self.closed = False

    def _schedule(self, delay: float, callback: Callable[[], None]) -> object:
        if self._call_later is not None:
            return self._call_later(delay, callback)
        return asyncio.get_running_loop().call_later(delay, callback)

    def request(self) -> None:
        """Ask for a keyframe now, or as soon as the throttle allows."""
        self._request(self.min_interval)

    def request_for_new_subscriber(self) -> None:
        """A subscriber just started and has no picture: ask now, even within
        ``min_interval`` of the last request, once that one was answered (a keyframe came
        since). A request still unanswered brings the keyframe this subscriber waits for.
        """
        answered = (self._keyframes is not None
                    and self._keyframes() != self._keyframes_at_last)
        self._request(KEYFRAME_NEW_SUBSCRIBER_INTERVAL if answered else self.min_interval)

    def _request(self, interval: float) -> None:
        if self.closed:
            return
        now = self._clock()
        if self._last is None or now - self._last >= interval:
            if self._deferred is not None:
                # This request serves the deferred one too.
                cancel = getattr(self._deferred, "cancel", None)
                if cancel is not None:
                    cancel()
                self._deferred = None
            self._fire()
            return
        self.throttled += 1
        if self._deferred is None:
            delay = self._last + interval - now
            self._deferred = self._schedule(delay, self._on_deferred)

    def _on_deferred(self) -> None:
        self._deferred = None
        if not self.closed:
            self._fire()

    def _on_retry(self) -> None:
        self._retry = None
        if not self.closed and self._pending():
            self.request()

    def _fire(self) -> None:
        try:
            went = self._send() is not False
        except Exception:
            logger.exception("keyframe request failed")
            went = True  # counted as sent: retried at the normal pace, never in a tight loop
        if not went:
            self.unsent += 1
            self._unsent_tries += 1
            if self._deferred is None and self._unsent_tries <= KEYFRAME_UNSENT_TRIES:
                self._deferred = self._schedule(KEYFRAME_UNSENT_RETRY, self._on_deferred)
            return
        self._unsent_tries = 0
        self._last = self._clock()
        if self._keyframes is not None:
            self._keyframes_at_last = self._keyframes()
        self.sent += 1
        if self._retry is None:
            self._retry = self._schedule(self.retry_interval, self._on_retry)

    def close(self) -> None:
        """Cancel pending timers; later requests do nothing."""
        self.closed = True
        for handle in (self._deferred, self._retry):
            cancel = getattr(handle, "cancel", None)
            if cancel is not None:
                cancel()
        self._deferred = self._retry = None


# --------------------------------------------------------------------------- tracks & sinks


class FrameSink(Protocol):
    """Receives every whole encoded frame a fanout forwards (the recorder implements it)."""

    def on_frame(self, packet: av.Packet[Any], *, keyframe: bool, arrival: float) -> None: ...

    def on_end(self) -> None: ...


class ForwardingTrack(MediaStreamTrack):
    """A subscriber's view of a published track: ``recv()`` returns encoded ``av.Packet``s.

    It never raises ``MediaStreamError`` while attached (the sender's loop would stop for
    good); only :meth:`stop` ends it. Frames queue only once the sender reads (the first
    ``recv()``): before that nothing is buffered, and the keyframe wait starts then.
    """

    def __init__(self, kind: str, fanout: Fanout | None, max_queue: int) -> None:
        super().__init__()
        self.kind = kind
        self._fanout = fanout
        self._frames: deque[av.Packet[Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.max_queue = max_queue
        self.reading = False
        self.needs_keyframe = kind == "video"
        self.frames_forwarded = 0
        self.frames_dropped = 0
        self.overflows = 0
        self.keyframe_requests = 0
        self.remb: int | None = None
        # Timestamps continue across a change of source (see attach()).
        self._pts_offset = 0
        self._last_pts: int | None = None
        self._rebase = False

    @property
    def fanout(self) -> Fanout | None:
        return self._fanout

    def attach(self, fanout: Fanout) -> None:
        """Forward another publication from now on (reusing this track and its sender).

        The new source's timestamps start anywhere; they are shifted to continue just
        after the last frame sent, as the receiver sees one stream on one SSRC.
        """
        if self._fanout is not None:
            self.detach()
        self.needs_keyframe = self.kind == "video"
        self.remb = None
        self._rebase = True
        fanout._add_track(self)
        if self.reading and self._fanout is not None:
            fanout._on_track_reading(self)

    def queued(self) -> int:
        return len(self._frames)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _put(self, packet: av.Packet[Any]) -> None:
        self._frames.append(packet)
        self._wake()

    def _flush(self) -> None:
        self.frames_dropped += len(self._frames)
        self._frames.clear()

    async def recv(self) -> av.Packet[Any]:
        """Next encoded frame; waits (without limit) while the publisher is silent."""
        if not self.reading:
            self.reading = True
            if self._fanout is not None:
                self._fanout._on_track_reading(self)
        frames = self._frames
        while not frames:
            if self.readyState != "live":
                raise MediaStreamError
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
        self.frames_forwarded += 1
        packet = frames.popleft()
        if self._rebase:
            self._rebase = False
            if self._last_pts is not None and packet.pts is not None:
                step = _frame_step(self.kind, packet.time_base)
                self._pts_offset = self._last_pts + step - packet.pts
        if self._pts_offset and packet.pts is not None:
            shifted = av.Packet(bytes(packet))
            shifted.pts = shifted.dts = packet.pts + self._pts_offset
            shifted.time_base = packet.time_base
            packet = shifted
        self._last_pts = packet.pts
        return packet

    def request_keyframe(self) -> None:
        """The subscriber lost a picture (PLI/FIR): ask the publisher, throttled."""
        self.keyframe_requests += 1
        if self._fanout is not None:
            self._fanout.request_keyframe()

    def set_remb(self, bitrate: int) -> None:
        """The subscriber's receive estimate (bit/s) for this track."""
        self.remb = bitrate
        if self._fanout is not None:
            self._fanout._on_remb_changed()

    def detach(self) -> None:
        """Stop receiving frames (publisher gone) but stay live: the sender idles."""
        fanout = self._fanout
        self._fanout = None
        self._frames.clear()
        if fanout is not None:
            fanout._remove_track(self)

    def stop(self) -> None:
        """End the track: the sender's loop exits after its current ``recv()``."""
        self.detach()
        super().stop()
        self._wake()


class Fanout:
    """One published track -> N :class:`ForwardingTrack` subscribers + sinks.

    ``request_keyframe`` asks the publisher for a keyframe (throttled here);
    ``on_bitrate_limit`` receives the minimum of the subscribers' REMB estimates
    (or ``None`` when none reported).
    """

    def __init__(
        self,
        kind: str,
        mime_type: str,
        clock_rate: int,
        *,
        request_keyframe: Callable[[], bool | None],
        on_bitrate_limit: Callable[[int | None], None] | None = None,
        max_queue: int | None = None,
        requester: KeyframeRequester | None = None,
    ) -> None:
        if kind not in ("audio", "video"):
            raise ValueError(f"bad kind {kind!r}")
        self.kind = kind
        self.mime_type = mime_type
        self.time_base = fractions.Fraction(1, clock_rate)
        self._is_keyframe = keyframe_detector(mime_type)
        self.max_queue = max_queue or DEFAULT_QUEUE_FRAMES[kind]
        self._tracks: list[ForwardingTrack] = []
        self._sinks: list[FrameSink] = []
        self._on_bitrate_limit = on_bitrate_limit
        self.bitrate_limit: int | None = None
        self.requester = requester or KeyframeRequester(
            request_keyframe, pending=self._any_waiting, keyframes=self._keyframes_seen)
        self.frames_in = 0
        self.keyframes_in = 0
        self.bytes_in = 0
        self.losses = 0
        self.ended = False

    # ----------------------------------------------------------------- subscribers

    @property
    def tracks(self) -> tuple[ForwardingTrack, ...]:
        return tuple(self._tracks)

    @property
    def sinks(self) -> tuple[FrameSink, ...]:
        return tuple(self._sinks)

    @property
    def keyframes_requested(self) -> int:
        return self.requester.sent

    def subscribe(self) -> ForwardingTrack:
        """A new subscriber track; frames flow once its sender starts reading."""
        track = ForwardingTrack(self.kind, self, self.max_queue)
        if not self.ended:
            self._tracks.append(track)
        else:
            track._fanout = None
        return track

    def _add_track(self, track: ForwardingTrack) -> None:
        if not self.ended and track not in self._tracks:
            track._fanout = self
            self._tracks.append(track)
            if track.remb is not None:
                self._on_remb_changed()

    def _keyframes_seen(self) -> int:
        return self.keyframes_in

    def _on_track_reading(self, track: ForwardingTrack) -> None:
        # A new subscriber's first picture is what a join waits for: not throttled behind
        # a request someone else's keyframe already answered.
        if track.needs_keyframe and not self.ended:
            self.requester.request_for_new_subscriber()

    def _remove_track(self, track: ForwardingTrack) -> None:
        if track in self._tracks:
            self._tracks.remove(track)
            if track.remb is not None:
                self._on_remb_changed()

    def _any_waiting(self) -> bool:
        return any(t.reading and t.needs_keyframe for t in self._tracks)

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (throttled); audio has none to ask for."""
        if self.kind == "video" and not self.ended:
            self.requester.request()

    def lost(self) -> None:
        """Video from the publisher was lost for good: later frames refer to what is missing.

        Subscribers cannot tell (their stream has no gap: it is re-packetised here), so
        they wait for the next keyframe, which is asked for at once.
        """
        if self.kind != "video" or self.ended:
            return
        self.losses += 1
        for track in self._tracks:
            track.needs_keyframe = True
        self.requester.request()

    def _on_remb_changed(self) -> None:
        estimates = [t.remb for t in self._tracks if t.remb is not None]
        limit = min(estimates) if estimates else None
        if limit != self.bitrate_limit:
            self.bitrate_limit = limit
            if self._on_bitrate_limit is not None:
                self._on_bitrate_limit(limit)

    # ----------------------------------------------------------------- sinks

    def add_sink(self, sink: FrameSink) -> None:
        """Start feeding ``sink``; it gets every frame from now on (video: from a keyframe
        on is the sink's business, keyframe flags tell it)."""
        if self.ended:
            sink.on_end()
            return
        if sink not in self._sinks:
            self._sinks.append(sink)
            if self.kind == "video":
                self.requester.request()

    def remove_sink(self, sink: FrameSink, *, end: bool = True) -> None:
        """Stop feeding ``sink`` (calling its ``on_end`` unless ``end`` is False)."""
        if sink in self._sinks:
            self._sinks.remove(sink)
            if end:
                _end_sink(sink)

    # ----------------------------------------------------------------- frames

    def push(self, data: bytes, timestamp: int, arrival: float) -> None:
        """Forward one whole encoded frame (RTP timestamp units, starting anywhere)."""
        if self.ended:
            return
        keyframe = self._is_keyframe(data)
        self.frames_in += 1
        self.bytes_in += len(data)
        if keyframe and self.kind == "video":
            self.keyframes_in += 1
        tracks = self._tracks
        sinks = self._sinks
        if not tracks and not sinks:
            return
        packet = av.Packet(data)
        packet.pts = timestamp
        packet.dts = timestamp
        packet.time_base = self.time_base
        want_keyframe = False
        for track in tracks:
            if not track.reading:
                continue
            if track.needs_keyframe:
                if not keyframe:
                    continue
                track.needs_keyframe = False
            if len(track._frames) >= track.max_queue:
                # The subscriber's sender cannot keep up: drop what is queued and, for
                # video, resume at the next keyframe rather than grow without bound.
                track.overflows += 1
                track._flush()
                if self.kind == "video" and not keyframe:
                    track.needs_keyframe = True
                    want_keyframe = True
                    continue
            track._put(packet)
        if want_keyframe:
            self.requester.request()
        failed: list[FrameSink] | None = None
        for sink in sinks:
            try:
                sink.on_frame(packet, keyframe=keyframe, arrival=arrival)
            except Exception:
                logger.exception("frame sink %r failed; removed", sink)
                failed = [*(failed or ()), sink]
        if failed:
            for sink in failed:
                self.remove_sink(sink)

    def end(self) -> None:
        """The publication is over: detach subscribers (they idle) and end sinks."""
        if self.ended:
            return
        self.ended = True
        self.requester.close()
        for track in list(self._tracks):
            track.detach()
        for sink in list(self._sinks):
            self.remove_sink(sink)

    def stats(self) -> dict[str, int]:
        """Counters for the room's stats()."""
        return {
            "frames_in": self.frames_in,
            "keyframes_in": self.keyframes_in,
            "keyframes_requested": self.requester.sent,
            "losses": self.losses,
            "subscribers": len(self._tracks),
            "frames_forwarded": sum(t.frames_forwarded for t in self._tracks),
        }


def _frame_step(kind: str, time_base: fractions.Fraction) -> int:
    """One frame's duration in ``time_base`` units (30 fps video, 20 ms audio)."""
    seconds = fractions.Fraction(1, 30) if kind == "video" else fractions.Fraction(1, 50)
    return max(1, int(seconds / time_base))


def _end_sink(sink: FrameSink) -> None:
    try:
        sink.on_end()
    except Exception:
        logger.exception("frame sink %r failed on end", sink)

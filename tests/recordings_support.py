"""Shared set-up of the recordings tests: users, a booking and finished recordings."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from panda import keys
from panda.media.recorder import SessionRecorder, recover_recording
from panda.media.recording_compose import compose_recording
from panda.media.recording_service import COMBINED_NAME, RECORDINGS
from panda.store import recordings as store
from panda.store.models import Booking, Recording, User
from panda.store.types import utcnow
from tests.media.recorder_media import (
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    encode_opus,
    encode_vp8,
    make_packet,
    schedule,
)

START = 100.0


def record_session(directory: Path, tutor_id: int, student_id: int, *, seconds: float = 2.0,
            remux: bool = True) -> None:
    recorder = SessionRecorder(directory, start=START, remux_on_stop=remux)
    recorder.describe_participant(str(tutor_id), name="T", role="tutor")
    recorder.describe_participant(str(student_id), name="S", role="student")
    plan = [
        (str(tutor_id), "video", "camera", encode_vp8((200, 30, 30), seconds), VIDEO_TIME_BASE),
        (str(tutor_id), "audio", "microphone", encode_opus(440.0, seconds), AUDIO_TIME_BASE),
        (str(student_id), "video", "camera", encode_vp8((30, 30, 200), seconds), VIDEO_TIME_BASE),
        (str(student_id), "audio", "microphone", encode_opus(1000.0, seconds), AUDIO_TIME_BASE),
    ]
    sinks = [recorder.sink_factory(p, k, s, "video/VP8" if k == "video" else "audio/opus")
             for p, k, s, _, _ in plan]
    for d in schedule([(frames, tb, 0.0) for *_, frames, tb in plan], start=START):
        sink = sinks[d.sink_index]
        assert sink is not None
        sink.on_frame(make_packet(d.frame, d.time_base, 7), keyframe=d.frame.keyframe,
                      arrival=d.arrival)
    for sink in sinks:
        assert sink is not None
        sink.on_end()
    recorder.stop_blocking()


class World:
    """Users, a booking and helpers to make recordings for the tests."""

    def __init__(self, client: TestClient, admin: User, tutor: User, other_tutor: User,
                 student: User, booking: Booking) -> None:
        self.client = client
        self.admin = admin
        self.tutor = tutor
        self.other_tutor = other_tutor
        self.student = student
        self.booking = booking
        self.seconds = 2.0  # length of the recordings `recording()` makes

    @property
    def app(self) -> Any:
        return self.client.app

    async def recording(self, *, combined: bool = True, age_days: float = 0,
                        status: str = "ready") -> Recording:
        service = self.app[RECORDINGS]
        async with self.app[keys.sessionmaker]() as db:
            booking = await db.get(Booking, self.booking.id)
            assert booking is not None
            name = f"test-{utcnow().timestamp()}-{id(object())}"
            recording = await store.create_recording(db, booking, started_by_id=self.tutor.id,
                                                     directory=name)
            directory = service.directory_of(recording)
            await asyncio.to_thread(record_session, directory, self.tutor.id, self.student.id,
                                    seconds=self.seconds)
            if combined:
                await asyncio.to_thread(compose_recording, directory, directory / COMBINED_NAME,
                                        width=320, height=180, fps=5)
                recording.combined_status = "ready"
                recording.combined_size = (directory / COMBINED_NAME).stat().st_size
            result = await asyncio.to_thread(recover_recording, directory)
            await store.save_result(db, recording, result, status=status)
            recording.started_at = utcnow() - timedelta(days=age_days)
            await db.commit()
            return recording


@pytest.fixture
async def world(client: TestClient, make_user: Callable[..., Awaitable[User]]) -> World:
    admin = await make_user("admin")
    tutor = await make_user("tutor")
    other = await make_user("tutor")
    student = await make_user("student")
    async with client.app[keys.sessionmaker]() as db:
        now = utcnow()
        booking = Booking(student_id=student.id, tutor_id=tutor.id, start_at=now,
                          end_at=now + timedelta(hours=1), subject="Algebra", status="completed")
        db.add(booking)
        await db.commit()
    service = client.app[RECORDINGS]
    service.compose_size = (320, 180)
    service.compose_fps = 5
    service.compose_nice = 5
    return World(client, admin, tutor, other, student, booking)



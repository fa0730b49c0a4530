"""Recordings in the running application: start/stop from a call, recovery, combined files,
retention.

The calls area connects it to the media rooms and to the people in the call:
``service.room_lookup = lambda booking_id: registry.get(room_key(booking_id))`` and
``service.add_listener(fn)`` where ``fn(booking_id, message)`` sends ``message`` (a
``{"type": "recording", ...}`` dict) to everyone in that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from panda import keys
from panda.config import ConfigError
from panda.errors import Conflict, Forbidden, NotFound, PandaError
from panda.media.recorder import RecordingError, SessionRecorder, recover_recording
from panda.media.recording_compose import read_progress, start_compose_worker
from panda.store import recordings as store
from panda.store.models import Booking, Recording, User

__all__ = [
    "RECORDINGS",
    "ActiveRecording",
    "RecordingService",
    "RecordingUnavailable",
    "combined_options",
    "recordings_ctx",
]

log = logging.getLogger(__name__)

COMBINED_NAME = "combined.webm"
PROGRESS_NAME = "combined-progress.json"
RETENTION_INTERVAL = 3600.0
ROOM_CHECK_INTERVAL = 2.0
# A recording is taken for abandoned when its files have not changed for this long.
RECOVER_IDLE = 30.0
RECOVER_INTERVAL = 60.0
# ... and a combined file when its progress file has not changed for this long.
COMBINED_IDLE = 300.0

Listener = Callable[[int, dict[str, Any]], Awaitable[None]]
RoomLookup = Callable[[int], Any]


class RecordingUnavailable(PandaError):
    """Recording cannot run right now (the server cannot write files)."""

    status = 503


@dataclass
class ActiveRecording:
    """A recording running in a call."""

    recording_id: int
    booking_id: int
    recorder: SessionRecorder
    room: Any
    factory: Callable[..., Any]
    started_by: str
    stopping: bool = False


@dataclass
class RecordingService:
    """Owns every running recording and the background work after them."""

    recordings_dir: Path
    sessionmaker: async_sessionmaker[AsyncSession]
    compose_size: tuple[int, int] = (1280, 720)
    compose_fps: int = 15
    compose_nice: int = 10
    room_lookup: RoomLookup | None = None
    _active: dict[int, ActiveRecording] = field(default_factory=dict)
    _listeners: list[Listener] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _building: set[int] = field(default_factory=set)

    # ----- helpers -------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(booking_id, message)`` on every recording event of a call."""
        self._listeners.append(listener)

    def is_recording(self, booking_id: int) -> bool:
        """True while a recording of this session runs."""
        return booking_id in self._active

    def directory_of(self, recording: Recording) -> Path:
        """Where a recording's files live."""
        return self.recordings_dir / recording.directory

    def _spawn(
        self, coro: Coroutine[Any, Any, Any], name: str = "recording-work"
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_background(self) -> None:
        """Wait until the background work started so far (stops, combined files) is done."""
        loops = ("recording-retention", "recording-rooms", "recording-recover")
        while pending := [t for t in self._tasks if t.get_name() not in loops]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _notify(self, booking_id: int, message: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                await listener(booking_id, message)
            except Exception:
                log.exception("recording listener failed")

    # ----- start / stop ----------------------------------------------------------------------

    async def start(self, booking_id: int, user: User) -> Recording:
        """Start recording a running call; the session's tutor or an admin may."""
        async with self._lock:
            async with self.sessionmaker() as db:
                booking = await db.get(Booking, booking_id)
                if booking is None:
                    raise NotFound("There is no such session.")
                if not (user.is_admin or booking.tutor_id == user.id):
                    raise Forbidden("Only the session's tutor or an admin can record it.")
                if booking_id in self._active:
                    raise Conflict("This session is already being recorded.")
                room = self.room_lookup(booking_id) if self.room_lookup is not None else None
                if room is None:
                    raise Conflict("The call is not running.")
                directory = f"{booking_id}-{secrets.token_hex(8)}"
                recording = await store.create_recording(
                    db, booking, started_by_id=user.id, directory=directory
                )
                await store.audit(db, user.id, "recording.started", recording.id,
                                  {"booking_id": booking_id})
                await db.commit()
            def on_error(error: RecordingError) -> None:
                self._spawn(self._stop_after_error(booking_id, str(error)))

            try:
                recorder = SessionRecorder(self.recordings_dir / directory, on_error=on_error)
            except OSError as exc:
                async with self.sessionmaker() as db:
                    row = await db.get(Recording, recording.id)
                    if row is not None:
                        row.status = "failed"
                        row.error = f"could not start writing: {exc}"
                        row.ended_at = row.started_at
                        await db.commit()
                raise RecordingUnavailable(
                    "The recording could not start: the server cannot write its files.") from exc

            def factory(participant_id: str, kind: str, source: str, codec: str) -> Any:
                participant = getattr(room, "participants", {}).get(participant_id)
                if participant is not None:
                    recorder.describe_participant(
                        participant_id, name=str(getattr(participant, "name", "")),
                        role=str(getattr(participant, "role", "")))
                return recorder.sink_factory(participant_id, kind, source, codec)

            active = ActiveRecording(recording.id, booking_id, recorder, room, factory, user.name)
            self._active[booking_id] = active
            room.add_sink_factory(factory)
        await self._notify(booking_id, {"type": "recording", "state": "started",
                                        "recording_id": recording.id, "by": user.name})
        return recording

    async def stop(self, booking_id: int, user: User | None, *, reason: str = "stopped") -> int:
        """Stop a session's recording; returns the recording id. The tutor or an admin may."""
        active = self._active.get(booking_id)
        if active is None or active.stopping:
            raise Conflict("This session is not being recorded.")
        if user is not None and not user.is_admin:
            async with self.sessionmaker() as db:
                booking = await db.get(Booking, booking_id)
                if booking is None or booking.tutor_id != user.id:
                    raise Forbidden("Only the session's tutor or an admin can stop recording.")
        return await asyncio.shield(self._finish(active, user, reason))

    async def _finish(self, active: ActiveRecording, user: User | None, reason: str) -> int:
        active.stopping = True
        with contextlib.suppress(Exception):
            active.room.remove_sink_factory(active.factory)
        result = await active.recorder.stop()
        self._active.pop(active.booking_id, None)
        if not result.files and not result.error:
            result.error = "Nothing was recorded: no audio or video reached the server."
        status = "failed" if result.error else "processing"
        async with self.sessionmaker() as db:
            recording = await db.get(Recording, active.recording_id)
            if recording is not None:
                await store.save_result(db, recording, result, status=status)
                await store.audit(db, user.id if user else None, "recording.stopped",
                                  recording.id, {"reason": reason, "error": result.error})
                await db.commit()
        message: dict[str, Any] = {"type": "recording", "state": "stopped",
                                   "recording_id": active.recording_id, "reason": reason}
        if result.error:
            message["state"] = "failed"
            message["message"] = ("Recording stopped: the server could not write it "
                                  f"({result.error}). What was recorded is kept.")
        await self._notify(active.booking_id, message)
        if result.files:
            async with self.sessionmaker() as db:
                recording = await db.get(Recording, active.recording_id)
                if recording is not None:
                    recording.combined_status = "pending"
                    await db.commit()
            self._spawn(self.build_combined(active.recording_id), "recording-combined")
        return active.recording_id

    async def _stop_after_error(self, booking_id: int, error: str) -> None:
        active = self._active.get(booking_id)
        if active is not None and not active.stopping:
            log.error("recording of session %s failed: %s", booking_id, error)
            await asyncio.shield(self._finish(active, None, "error"))

    async def stop_for_room(self, booking_id: int, reason: str = "call ended") -> None:
        """The call ended: stop its recording if one runs (no permission check)."""
        active = self._active.get(booking_id)
        if active is not None and not active.stopping:
            await asyncio.shield(self._finish(active, None, reason))

    # ----- after the recording -----------------------------------------------------------------

    async def build_combined(self, recording_id: int) -> None:
        """Build the combined file in a low-priority worker process, tracking its progress."""
        if recording_id in self._building:
            return
        self._building.add(recording_id)
        try:
            async with self.sessionmaker() as db:
                recording = await db.get(Recording, recording_id)
                if recording is None:
                    return
                directory = self.directory_of(recording)
                recording.combined_status = "running"
                recording.combined_progress = 0.0
                await db.commit()
            await self._build_combined(recording_id, directory)
        finally:
            self._building.discard(recording_id)

    async def _build_combined(self, recording_id: int, directory: Path) -> None:
        progress_file = directory / PROGRESS_NAME
        width, height = self.compose_size
        process = await start_compose_worker(
            directory, directory / COMBINED_NAME, progress_file, nice=self.compose_nice,
            width=width, height=height, fps=self.compose_fps)
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(process.wait()), 1.0)
                    break
                except TimeoutError:
                    state = read_progress(progress_file)
                    if state is not None:
                        await self._set_progress(recording_id, float(state.get("progress", 0)))
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        state = read_progress(progress_file) or {}
        async with self.sessionmaker() as db:
            recording = await db.get(Recording, recording_id)
            if recording is None:
                return
            if process.returncode == 0 and state.get("state") == "done":
                recording.combined_status = "ready"
                recording.combined_progress = 1.0
                recording.combined_size = int(state.get("result", {}).get("size", 0))
                recording.combined_error = None
            else:
                recording.combined_status = "failed"
                recording.combined_error = str(state.get("error") or
                                               f"worker exited with {process.returncode}")
            if recording.status == "processing":
                recording.status = "ready"
            await db.commit()

    async def _set_progress(self, recording_id: int, progress: float) -> None:
        async with self.sessionmaker() as db:
            recording = await db.get(Recording, recording_id)
            if recording is not None:
                recording.combined_progress = max(0.0, min(1.0, progress))
                await db.commit()

    async def recover(self, *, min_idle: float = RECOVER_IDLE) -> list[int]:
        """Recordings left ``recording`` by a crash are checked, remuxed and marked
        ``interrupted`` with their real duration; their combined file is built.

        Runs at start and then now and again. A recording whose files changed in the last
        ``min_idle`` seconds is left alone: another server process may be writing it.
        """
        running = {a.recording_id for a in self._active.values()}
        async with self.sessionmaker() as db:
            left = await store.active_recordings(db)
            recovered: list[int] = []
            for recording in left:
                directory = self.directory_of(recording)
                if recording.id in running or _recently_changed(directory, min_idle):
                    continue
                if directory.exists():
                    result = await asyncio.to_thread(recover_recording, directory)
                    # It ended when its last file did, not now.
                    recording.ended_at = recording.started_at + timedelta(seconds=result.duration)
                    await store.save_result(db, recording, result, status="interrupted")
                else:
                    recording.status = "interrupted"
                    recording.error = "the recording's files are missing"
                await store.audit(db, None, "recording.recovered", recording.id,
                                  {"duration": recording.duration_seconds})
                recovered.append(recording.id)
            # Combined files a stopped server never finished are built again (unless a worker
            # of another process is still reporting progress on it).
            unfinished = [
                r for r in await store.unfinished_combined(db)
                if r.id not in recovered and r.id not in self._building
                and not _recently_changed(self.directory_of(r), COMBINED_IDLE, PROGRESS_NAME)
            ]
            for row in unfinished:
                row.combined_status = "pending"
            await db.commit()
        for recording_id in [*recovered, *(r.id for r in unfinished)]:
            self._spawn(self.build_combined(recording_id), "recording-combined")
        return recovered

    async def _recover_loop(self) -> None:
        while True:
            await asyncio.sleep(RECOVER_INTERVAL)
            try:
                await self.recover()
            except Exception:
                log.exception("recovering recordings failed")

    async def delete(self, recording: Recording, *, actor_id: int | None, reason: str) -> None:
        """Delete a recording's files and row, and log it (the caller commits)."""
        if recording.status == "recording":
            raise Conflict("Stop the recording before deleting it.")
        directory = self.directory_of(recording)
        await asyncio.to_thread(shutil.rmtree, directory, True)
        recording_id = recording.id
        async with self.sessionmaker() as db:
            row = await db.get(Recording, recording_id)
            if row is not None:
                await store.delete_recording(db, row)
            await store.audit(db, actor_id, "recording.deleted", recording_id,
                              {"reason": reason})
            await db.commit()

    async def purge_expired(self) -> int:
        """Delete recordings older than the retention setting; returns how many."""
        async with self.sessionmaker() as db:
            settings = await store.get_settings(db)
            await db.commit()
            if not settings.retention_days:
                return 0
            expired = await store.expired_recordings(db, settings.retention_days)
        for recording in expired:
            await self.delete(recording, actor_id=None, reason="retention")
        return len(expired)

    async def check_rooms(self) -> None:
        """Stop recordings whose call is over (its media room closed or replaced)."""
        for active in list(self._active.values()):
            if active.stopping or self.room_lookup is None:
                continue
            try:
                room = self.room_lookup(active.booking_id)
            except Exception:
                log.exception("room lookup failed")
                continue
            if room is not active.room:
                await asyncio.shield(self._finish(active, None, "call ended"))

    async def _watch_rooms(self) -> None:
        while True:
            await asyncio.sleep(ROOM_CHECK_INTERVAL)
            try:
                await self.check_rooms()
            except Exception:
                log.exception("checking recorded rooms failed")

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.purge_expired()
            except Exception:
                log.exception("recording retention run failed")
            await asyncio.sleep(RETENTION_INTERVAL)

    async def close(self) -> None:
        """Shutdown: stop running recordings (files finalised), cancel background work."""
        for active in list(self._active.values()):
            if not active.stopping:
                with contextlib.suppress(Exception):
                    await self._finish(active, None, "server stopping")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def combined_options(env: Mapping[str, str]) -> tuple[tuple[int, int], int]:
    """Picture size and frame rate of combined files: PANDA_RECORDING_COMBINED_SIZE
    ("1280x720") and PANDA_RECORDING_COMBINED_FPS (15); ConfigError on bad values."""
    raw_size = env.get("PANDA_RECORDING_COMBINED_SIZE", "").strip() or "1280x720"
    match = re.fullmatch(r"(\d{2,4})x(\d{2,4})", raw_size)
    if match is None or int(match[1]) % 2 or int(match[2]) % 2 or min(
            int(match[1]), int(match[2])) < 64:
        raise ConfigError("PANDA_RECORDING_COMBINED_SIZE must look like 1280x720 "
                          f"(even numbers, at least 64), not {raw_size!r}")
    raw_fps = env.get("PANDA_RECORDING_COMBINED_FPS", "").strip() or "15"
    if not raw_fps.isdigit() or not 1 <= int(raw_fps) <= 60:
        raise ConfigError(f"PANDA_RECORDING_COMBINED_FPS must be 1 to 60, not {raw_fps!r}")
    return (int(match[1]), int(match[2])), int(raw_fps)


def _recently_changed(directory: Path, seconds: float, name: str | None = None) -> bool:
    """True if a file in ``directory`` (or just ``name``) changed in the last ``seconds``."""
    if seconds <= 0 or not directory.is_dir():
        return False
    now = time.time()
    paths = [directory / name] if name else list(directory.iterdir())
    for path in paths:
        try:
            if now - path.stat().st_mtime < seconds:
                return True
        except OSError:
            continue
    return False


RECORDINGS: web.AppKey[RecordingService] = web.AppKey("recordings", RecordingService)


async def recordings_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the service, crash recovery at start, the retention loop."""
    settings = app[keys.settings]
    size, fps = combined_options(os.environ)
    service = RecordingService(settings.recordings_dir, app[keys.sessionmaker],
                               compose_size=size, compose_fps=fps)
    settings.recordings_dir.mkdir(parents=True, exist_ok=True)
    app[RECORDINGS] = service
    try:
        await service.recover()
    except Exception:
        log.exception("recording recovery failed")
    service._spawn(service._retention_loop(), "recording-retention")
    service._spawn(service._watch_rooms(), "recording-rooms")
    service._spawn(service._recover_loop(), "recording-recover")
    yield
    await service.close()

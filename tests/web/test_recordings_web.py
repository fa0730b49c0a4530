"""Recordings in the web UI and API: lists, the page, Range-served media, access, deletion,
retention, start/stop from a call, recovery after a crash."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from typing import Any

import pytest
from sqlalchemy import select

from panda import keys
from panda.errors import Conflict, Forbidden, NotFound
from panda.media.recorder import MANIFEST_NAME
from panda.media.recording_service import COMBINED_NAME, RECORDINGS
from panda.store import recordings as store
from panda.store.models import AuditEntry, Booking, Recording, RecordingFile
from panda.store.types import utcnow
from tests.helpers import login, post_form
from tests.media.recorder_media import (
    AUDIO_TIME_BASE,
    VIDEO_TIME_BASE,
    encode_opus,
    encode_vp8,
    make_packet,
    schedule,
)
from tests.recordings_support import World, record_session, world

__all__ = ["world"]  # the fixture, imported for pytest


async def _audit_actions(world: World, recording_id: int) -> list[str]:
    async with world.app[keys.sessionmaker]() as db:
        rows = await db.execute(select(AuditEntry.action).where(
            AuditEntry.target_type == "recording", AuditEntry.target_id == str(recording_id)
        ).order_by(AuditEntry.id))
        return list(rows.scalars())


async def test_tutor_views_page_and_seeks_media_with_range(world: World) -> None:
    recording = await world.recording()
    client = world.client
    await login(client, world.tutor.email)
    page = await client.get(f"/recordings/{recording.id}")
    assert page.status == 200
    html = await page.text()
    assert f'src="/recordings/{recording.id}/combined"' in html
    assert html.count('data-testid="file-player"') == 2
    assert "Delete this recording" not in html  # tutors cannot delete

    async with world.app[keys.sessionmaker]() as db:
        files = await store.recording_files(db, recording.id)
    assert len(files) == 2 and {f.user_id for f in files} == {world.tutor.id, world.student.id}
    url = f"/recordings/{recording.id}/files/{files[0].id}"
    full = await client.get(url)
    assert full.status == 200 and full.headers["Content-Type"] == "video/webm"
    body = await full.read()
    assert body[:4] == b"\x1a\x45\xdf\xa3"  # EBML header
    part = await client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(body)}"
    assert await part.read() == body[100:200]
    assert "Content-Disposition" not in full.headers

    download = await client.get(f"/recordings/{recording.id}/combined?download=1")
    assert download.status == 200
    assert download.headers["Content-Disposition"].startswith("attachment;")
    assert download.headers["Content-Type"] == "video/webm"
    assert await _audit_actions(world, recording.id) == ["recording.viewed",
                                                        "recording.downloaded"]


async def test_recording_urls_refuse_everyone_else(world: World) -> None:
    recording = await world.recording()
    client = world.client
    async with world.app[keys.sessionmaker]() as db:
        file_id = (await store.recording_files(db, recording.id))[0].id
    urls = [f"/recordings/{recording.id}", f"/recordings/{recording.id}/files/{file_id}",
            f"/recordings/{recording.id}/combined", f"/recordings/{recording.id}/progress",
            f"/api/recordings/{recording.id}"]

    # Logged out: media 404, API 401, pages send to the login form.
    for url in urls:
        resp = await client.get(url, allow_redirects=False)
        if url.startswith("/api/"):
            assert resp.status == 401
        elif "/files/" in url or url.endswith("/combined"):
            assert resp.status == 404
        else:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
    for who in (world.other_tutor, world.student):
        await login(client, who.email)
        for url in urls:
            resp = await client.get(url, allow_redirects=False)
            expected = {404} if who is world.other_tutor or not url.startswith("/api/") else {403}
            assert resp.status in expected, (who.role, url, resp.status)
        listing = await client.get("/admin/recordings")
        assert listing.status == 403
        await client.post("/logout", data={"csrf_token": ""})
        client.session.cookie_jar.clear()
    # Unknown or malformed ids.
    await login(client, world.admin.email)
    assert (await client.get("/recordings/999999")).status == 404
    assert (await client.get("/recordings/abc")).status == 404
    assert (await client.get(f"/recordings/{recording.id}/files/999999")).status == 404
    assert (await client.get("/api/recordings/99999999999999999999")).status == 404


async def test_students_see_their_recordings_only_when_allowed(world: World) -> None:
    recording = await world.recording()
    client = world.client
    await login(client, world.admin.email)
    resp = await post_form(client, "/admin/recordings/settings",
                           {"retention_days": "", "students_can_view": "on"},
                           page="/admin/recordings", allow_redirects=False)
    assert resp.status == 303
    client.session.cookie_jar.clear()
    await login(client, world.student.email)
    assert (await client.get(f"/recordings/{recording.id}")).status == 200
    listing = await client.get("/recordings")
    assert listing.status == 200 and f'data-recording-id="{recording.id}"' in await listing.text()
    assert (await client.get(f"/api/recordings/{recording.id}")).status == 403


async def test_admin_list_filters_and_bad_filters(world: World) -> None:
    first = await world.recording(combined=False)
    second = await world.recording(combined=False, status="interrupted")
    client = world.client
    await login(client, world.admin.email)
    page = await client.get("/admin/recordings")
    assert page.status == 200
    html = await page.text()
    assert f'data-recording-id="{first.id}"' in html and f'data-recording-id="{second.id}"' in html
    assert "0:00:02" in html  # durations shown
    only = await client.get("/admin/recordings?status=interrupted")
    text = await only.text()
    assert f'data-recording-id="{second.id}"' in text
    assert f'data-recording-id="{first.id}"' not in text
    none = await client.get(f"/admin/recordings?tutor={world.other_tutor.id}")
    assert "data-recording-id" not in await none.text()
    today = utcnow().strftime("%Y-%m-%d")
    dated = await client.get(f"/admin/recordings?from={today}&to={today}")
    assert f'data-recording-id="{first.id}"' in await dated.text()
    for bad in ("status=bogus", "tutor=abc", "from=2026-13-45", "from=yesterday", "page=0"):
        resp = await client.get(f"/admin/recordings?{bad}")
        assert resp.status == 400, bad
    api_bad = await client.get("/api/recordings?status=bogus")
    assert api_bad.status == 400 and "error" in await api_bad.json()


async def test_api_lists_recordings_with_file_urls(world: World) -> None:
    recording = await world.recording()
    client = world.client
    await login(client, world.tutor.email)
    listing = await client.get("/api/recordings")
    assert listing.status == 200
    data = await listing.json()
    assert data["total"] == 1
    item = data["recordings"][0]
    assert item["id"] == recording.id and item["session_id"] == world.booking.id
    assert item["status"] == "ready" and 1.9 < item["duration_seconds"] < 2.2
    assert item["combined"]["url"] == f"/recordings/{recording.id}/combined"
    assert len(item["files"]) == 2
    media = await client.get(item["files"][0]["url"])
    assert media.status == 200
    one = await client.get(f"/api/recordings/{recording.id}")
    assert (await one.json())["files"] == item["files"]
    client.session.cookie_jar.clear()
    await login(client, world.other_tutor.email)
    assert (await (await client.get("/api/recordings")).json())["total"] == 0
    doc = await (await client.get("/api/openapi.json")).json()
    assert "/api/recordings" in doc["paths"] and "/api/recordings/{recording_id}" in doc["paths"]
    assert "Recording" in doc["components"]["schemas"]


async def test_admin_deletes_with_confirmation(world: World) -> None:
    recording = await world.recording(combined=False)
    directory = world.app[RECORDINGS].directory_of(recording)
    assert directory.exists()
    client = world.client
    await login(client, world.tutor.email)
    resp = await post_form(client, f"/recordings/{recording.id}/delete", {"confirm": "yes"},
                           page="/recordings")
    assert resp.status == 403
    client.session.cookie_jar.clear()
    await login(client, world.admin.email)
    confirm = await client.get(f"/recordings/{recording.id}/delete")
    assert confirm.status == 200 and "cannot be undone" in await confirm.text()
    unconfirmed = await post_form(client, f"/recordings/{recording.id}/delete", {},
                                  allow_redirects=False)
    assert unconfirmed.status == 422 and directory.exists()
    done = await post_form(client, f"/recordings/{recording.id}/delete", {"confirm": "yes"},
                           allow_redirects=False)
    assert done.status == 303
    assert not directory.exists()
    async with world.app[keys.sessionmaker]() as db:
        assert await db.get(Recording, recording.id) is None
        files = (await db.execute(select(RecordingFile).where(
            RecordingFile.recording_id == recording.id))).scalars().all()
        assert files == []
    assert "recording.deleted" in await _audit_actions(world, recording.id)
    assert (await client.get(f"/recordings/{recording.id}")).status == 404


async def test_retention_deletes_old_recordings(world: World) -> None:
    old = await world.recording(combined=False, age_days=40)
    recent = await world.recording(combined=False, age_days=5)
    client = world.client
    await login(client, world.admin.email)
    bad = await post_form(client, "/admin/recordings/settings", {"retention_days": "0"},
                          page="/admin/recordings")
    assert bad.status == 422
    resp = await post_form(client, "/admin/recordings/settings", {"retention_days": "30"},
                           page="/admin/recordings", allow_redirects=False)
    assert resp.status == 303
    async with world.app[keys.sessionmaker]() as db:
        assert await db.get(Recording, old.id) is None
        assert await db.get(Recording, recent.id) is not None
    assert not world.app[RECORDINGS].directory_of(old).exists()
    assert "recording.deleted" in await _audit_actions(world, old.id)


class FakeRoom:
    """The part of panda.media.room.Room the recorder uses."""

    def __init__(self) -> None:
        self.factories: list[Any] = []
        self.participants: dict[str, Any] = {}

    def add_sink_factory(self, factory: Any) -> None:
        self.factories.append(factory)

    def remove_sink_factory(self, factory: Any) -> None:
        self.factories.remove(factory)


async def test_start_and_stop_from_the_call(world: World) -> None:
    service = world.app[RECORDINGS]
    room = FakeRoom()
    rooms: dict[int, FakeRoom] = {}
    service.room_lookup = rooms.get
    events: list[dict[str, Any]] = []

    async def listener(booking_id: int, message: dict[str, Any]) -> None:
        events.append({"booking": booking_id, **message})

    service.add_listener(listener)
    client = world.client
    url = f"/api/sessions/{world.booking.id}/recording"
    await login(client, world.tutor.email)
    csrf = (await (await client.get("/recordings")).text()).split('name="csrf_token" value="')[1]
    headers = {"X-CSRF-Token": csrf.split('"')[0]}
    not_running = await client.post(url, json={"action": "start"}, headers=headers)
    assert not_running.status == 409
    rooms[world.booking.id] = room
    assert (await client.post(url, json={"action": "fly"}, headers=headers)).status == 422
    assert (await client.post(url, data=b"{", headers=headers)).status == 400
    started = await client.post(url, json={"action": "start"}, headers=headers)
    assert started.status == 200
    recording_id = (await started.json())["recording_id"]
    assert (await client.post(url, json={"action": "start"}, headers=headers)).status == 409
    assert service.is_recording(world.booking.id) and len(room.factories) == 1

    # The relay hands the recorder one sink per published track.
    factory = room.factories[0]
    video = encode_vp8((200, 30, 30), 1.0)
    audio = encode_opus(440.0, 1.0)
    sinks = [factory(str(world.tutor.id), "video", "camera", "video/VP8"),
             factory(str(world.tutor.id), "audio", "microphone", "audio/opus")]
    now = time.monotonic()
    for d in schedule([(video, VIDEO_TIME_BASE, 0.0), (audio, AUDIO_TIME_BASE, 0.0)],
                      start=now):
        sinks[d.sink_index].on_frame(make_packet(d.frame, d.time_base, 3),
                                     keyframe=d.frame.keyframe, arrival=d.arrival)
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording_id)
        assert row is not None and row.status == "recording"

    client.session.cookie_jar.clear()
    await login(client, world.student.email)
    csrf2 = (await (await client.get("/dashboard")).text()).split('name="csrf_token" value="')[1]
    refused = await client.post(url, json={"action": "stop"},
                                headers={"X-CSRF-Token": csrf2.split('"')[0]})
    assert refused.status == 403
    client.session.cookie_jar.clear()
    await login(client, world.tutor.email)
    csrf3 = (await (await client.get("/recordings")).text()).split('name="csrf_token" value="')[1]
    stopped = await client.post(url, json={"action": "stop"},
                                headers={"X-CSRF-Token": csrf3.split('"')[0]})
    assert stopped.status == 200
    assert room.factories == [] and not service.is_recording(world.booking.id)
    assert [e["state"] for e in events] == ["started", "stopped"]

    # The combined file is built in the background by the worker process.
    await asyncio.wait_for(service.wait_background(), 120)
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording_id)
        assert row is not None
        assert row.status == "ready" and row.combined_status == "ready"
        assert row.combined_progress == 1.0 and row.combined_size > 0
        assert row.started_by_id == world.tutor.id
        files = await store.recording_files(db, recording_id)
        assert [f.user_id for f in files] == [world.tutor.id]
        assert 0.9 < files[0].duration_seconds < 1.2
        # The recording runs from its start to the end of its last file.
        assert row.duration_seconds >= files[0].start_offset + files[0].duration_seconds - 0.01
    assert (service.directory_of(row) / COMBINED_NAME).exists()


async def test_recover_marks_crashed_recordings_interrupted(world: World) -> None:
    service = world.app[RECORDINGS]
    async with world.app[keys.sessionmaker]() as db:
        booking = await db.get(Booking, world.booking.id)
        assert booking is not None
        recording = await store.create_recording(db, booking, started_by_id=world.tutor.id,
                                                 directory="crashed-1")
        await db.commit()
    directory = service.directory_of(recording)
    await asyncio.to_thread(record_session, directory, world.tutor.id, world.student.id,
                            remux=False)
    # What a killed server leaves: live-written files and a manifest still saying "recording".
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    manifest["state"] = "recording"
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))

    # Files that changed a moment ago may belong to another server process: left alone.
    assert await service.recover() == []
    recovered = await service.recover(min_idle=0)
    assert recovered == [recording.id]
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording.id)
        assert row is not None and row.status == "interrupted"
        assert 1.9 < row.duration_seconds < 2.2
        assert row.ended_at is not None
        assert abs((row.ended_at - row.started_at).total_seconds() - row.duration_seconds) < 0.01
        assert len(await store.recording_files(db, recording.id)) == 2
    await asyncio.wait_for(service.wait_background(), 120)
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording.id)
        assert row is not None and row.combined_status == "ready"
        assert row.status == "interrupted"  # stays interrupted once the combined file is built
    shutil.rmtree(directory, ignore_errors=True)


async def test_combined_files_left_unfinished_are_built_at_start(world: World) -> None:
    service = world.app[RECORDINGS]
    recording = await world.recording(combined=False, status="processing")
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording.id)
        assert row is not None
        row.combined_status = "running"  # the server stopped while the worker ran
        row.combined_progress = 0.4
        await db.commit()
    assert await service.recover() == []
    await asyncio.wait_for(service.wait_background(), 120)
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording.id)
        assert row is not None
        assert (row.status, row.combined_status, row.combined_progress) == ("ready", "ready", 1.0)


async def test_stopping_with_nothing_recorded_fails_clearly(world: World) -> None:
    service = world.app[RECORDINGS]
    room = FakeRoom()
    service.room_lookup = {world.booking.id: room}.get
    recording = await service.start(world.booking.id, world.tutor)
    assert await service.stop(world.booking.id, world.admin) == recording.id
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording.id)
        assert row is not None and row.status == "failed"
        assert row.error is not None and "Nothing was recorded" in row.error
    with pytest.raises(Conflict):
        await service.stop(world.booking.id, world.admin)
    with pytest.raises(Forbidden):
        await service.start(world.booking.id, world.student)
    with pytest.raises(NotFound):
        await service.start(999_999, world.admin)


async def test_recording_stops_when_the_call_ends(world: World) -> None:
    service = world.app[RECORDINGS]
    rooms: dict[int, FakeRoom] = {world.booking.id: FakeRoom()}
    service.room_lookup = rooms.get
    await service.start(world.booking.id, world.tutor)
    await service.check_rooms()
    assert service.is_recording(world.booking.id)
    del rooms[world.booking.id]  # the call ended: its media room is gone
    await service.check_rooms()
    assert not service.is_recording(world.booking.id)


def test_combined_options_from_the_environment() -> None:
    from panda.config import ConfigError
    from panda.media.recording_service import combined_options

    assert combined_options({}) == ((1280, 720), 15)
    assert combined_options({"PANDA_RECORDING_COMBINED_SIZE": "640x360",
                             "PANDA_RECORDING_COMBINED_FPS": "10"}) == ((640, 360), 10)
    for env in ({"PANDA_RECORDING_COMBINED_SIZE": "big"},
                {"PANDA_RECORDING_COMBINED_SIZE": "641x360"},
                {"PANDA_RECORDING_COMBINED_FPS": "0"},
                {"PANDA_RECORDING_COMBINED_FPS": "x"}):
        with pytest.raises(ConfigError):
            combined_options(env)


async def test_write_error_stops_the_recording_and_tells_the_call(world: World) -> None:
    service = world.app[RECORDINGS]
    room = FakeRoom()
    service.room_lookup = {world.booking.id: room}.get
    events: list[dict[str, Any]] = []
    told = asyncio.Event()

    async def listener(booking_id: int, message: dict[str, Any]) -> None:
        events.append(message)
        if message["state"] != "started":
            told.set()

    service.add_listener(listener)
    recording = await service.start(world.booking.id, world.tutor)
    # The disk goes away under the recording: its directory is no longer a directory.
    directory = service.directory_of(recording)
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    sink = room.factories[0](str(world.tutor.id), "audio", "microphone", "audio/opus")
    for frame in encode_opus(440.0, 0.5):
        sink.on_frame(make_packet(frame, AUDIO_TIME_BASE, 0), keyframe=True,
                      arrival=time.monotonic())
    await asyncio.wait_for(told.wait(), 30)
    assert not service.is_recording(world.booking.id)
    assert events[-1]["state"] == "failed"
    assert "could not write" in events[-1]["message"]
    async with world.app[keys.sessionmaker]() as db:
        row = await db.get(Recording, recording.id)
        assert row is not None and row.status == "failed" and row.error
    directory.unlink()


async def test_recording_that_cannot_start_is_a_clear_503(world: World) -> None:
    service = world.app[RECORDINGS]
    service.room_lookup = {world.booking.id: FakeRoom()}.get
    blocked = service.recordings_dir
    service.recordings_dir = blocked / "not-a-dir"
    service.recordings_dir.write_text("")  # where the files should go is a plain file
    try:
        client = world.client
        await login(client, world.tutor.email)
        page = await (await client.get("/recordings")).text()
        token = page.split('name="csrf_token" value="')[1].split('"')[0]
        resp = await client.post(f"/api/sessions/{world.booking.id}/recording",
                                 json={"action": "start"}, headers={"X-CSRF-Token": token})
        assert resp.status == 503 and "could not start" in (await resp.json())["error"]
        assert not service.is_recording(world.booking.id)
        async with world.app[keys.sessionmaker]() as db:
            rows = (await db.execute(select(Recording))).scalars().all()
            assert [r.status for r in rows] == ["failed"]
    finally:
        service.recordings_dir.unlink()
        service.recordings_dir = blocked


async def test_call_record_control_renders_for_tutor_and_others(world: World) -> None:
    from panda.web.recordings import call_recording_context

    app = world.app
    template = app[keys.templates].get_template("recordings/_call_record_control.html")
    tutor_ctx = call_recording_context(app, world.tutor.id, world.booking.id, world.tutor)
    assert tutor_ctx == {"recording_active": False, "can_record": True}
    html = template.render(tutor_ctx)
    assert 'data-action="record"' in html and 'aria-pressed="false"' in html
    assert "data-recording-indicator" in html and " hidden" in html
    student_ctx = call_recording_context(app, world.tutor.id, world.booking.id, world.student)
    assert student_ctx["can_record"] is False
    assert 'data-action="record"' not in template.render(student_ctx)
    script = await world.client.get("/static/recordings/call_record.js")
    assert script.status == 200

"""Fixtures for the media relay tests: cached pre-encoded media, a room registry, and a
guard that fails any test in which aiortc decodes anything."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from panda.media.ice import RELAY_PATHS, MediaConfig
from panda.media.room import RoomRegistry
from tests.media import mediagen


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def vp8(media_dir: Path) -> mediagen.EncodedMedia:
    return mediagen.cached(media_dir, "vp8", mediagen.encode_video)


@pytest.fixture(scope="session")
def h264(media_dir: Path) -> mediagen.EncodedMedia:
    return mediagen.cached(media_dir, "h264", lambda: mediagen.encode_video("libx264"))


@pytest.fixture(scope="session")
def opus(media_dir: Path) -> mediagen.EncodedMedia:
    return mediagen.cached(media_dir, "opus", mediagen.encode_opus)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail the test if aiortc creates a decoder or starts a decoder thread."""
    import aiortc.rtcrtpreceiver as receiver_module

    calls: list[str] = []

    def forbidden_decoder(*args: Any, **kwargs: Any) -> Any:
        calls.append("get_decoder")
        raise AssertionError("aiortc created a decoder")

    def forbidden_worker(*args: Any, **kwargs: Any) -> None:
        calls.append("decoder_worker")
        raise AssertionError("aiortc started a decoder thread")

    monkeypatch.setattr(receiver_module, "get_decoder", forbidden_decoder)
    monkeypatch.setattr(receiver_module, "decoder_worker", forbidden_worker)
    yield calls
    threads = [t.name for t in threading.enumerate() if t.name.endswith("-decoder")]
    assert not calls, f"decoding happened: {calls}"
    assert not threads, f"decoder threads running: {threads}"


@pytest.fixture(params=RELAY_PATHS)
def relay_path(request: pytest.FixtureRequest) -> str:
    """Each relay test runs on both forwarding paths (frames and packets)."""
    return str(request.param)


@pytest.fixture
async def registry(no_decoding: list[str], relay_path: str) -> AsyncIterator[RoomRegistry]:
    # Clients always offer first here (receive-only ones offer recvonly m-lines), so the
    # server's fallback initial offer is pushed out of the way: no glare on a slow machine.
    reg = RoomRegistry(MediaConfig(ice_loopback=True, relay_path=relay_path),
                       initial_offer_delay=3600)
    yield reg
    await reg.close()

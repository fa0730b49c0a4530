"""Room placement across server processes: leases, redirects, lapses and forwarded commands.

Each test runs with the in-process bus (two placements sharing it stand for two processes) and
with real Redis (one bus per "process").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from panda.bus import Bus
from panda.bus.memory import MemoryBus
from panda.bus.redisbus import RedisBus
from panda.errors import Conflict
from panda.web.call_placement import (
    LOCAL,
    RoomPlacement,
    call_socket_url,
    lease_key,
    owner_url,
)
from panda.web.call_remote import OwnerUnavailable, RemoteError, RoomCommands

pytestmark = pytest.mark.timeout(60)

A_URL = "http://127.0.0.1:8080"
B_URL = "http://127.0.0.1:8081"
MakePlacement = Callable[..., Awaitable[RoomPlacement]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[MakePlacement]:
    """`await make(node_url, ttl=…)`: the placement of one more "process"."""
    shared = MemoryBus(node_id="memory") if request.param == "memory" else None
    buses: list[Bus] = []
    placements: list[RoomPlacement] = []

    async def factory(node_url: str, ttl: float = 12.0) -> RoomPlacement:
        bus: Bus
        if shared is not None:
            bus = shared
        else:
            bus = RedisBus(request.getfixturevalue("fresh_redis_url"), node_id=node_url)
            await bus.start()
            buses.append(bus)
        placement = RoomPlacement(bus, node_url, enabled=True, ttl=ttl)
        placement.start()
        placements.append(placement)
        return placement

    yield factory
    for placement in placements:
        await placement.close()
    for bus in buses:
        await bus.close()


async def eventually(check: Callable[[], Awaitable[bool]], limit: float = 20.0) -> None:
    """Wait for a lease to lapse (a timer in the store: there is no event to await)."""
    deadline = time.monotonic() + limit
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_first_join_takes_the_room_and_others_are_redirected(make: MakePlacement) -> None:
    a, b = await make(A_URL), await make(B_URL)
    assert await a.claim(7, "alice") == LOCAL
    assert a.holds(7)
    where = await b.claim(7, "bob")
    assert not where.local and not where.unavailable
    assert where.url == "ws://127.0.0.1:8080/ws/sessions/7/call"
    assert where.owner == a.owner
    assert await b.owner_of(7) == a.owner
    assert not b.holds(7)
    # Another room is independent, and the owner itself keeps answering locally.
    assert await b.claim(8, "bob") == LOCAL
    assert await a.claim(7, "alice-again") == LOCAL


async def test_the_last_one_out_releases_the_room(make: MakePlacement) -> None:
    a, b = await make(A_URL), await make(B_URL)
    await a.claim(7, "alice")
    await a.claim(7, "tom")
    await a.leave(7, "alice")
    assert (await b.claim(7, "bob")).url is not None  # tom is still in
    await a.leave(7, "tom")
    assert not a.holds(7)
    assert await a.owner_of(7) is None
    assert await b.claim(7, "bob") == LOCAL
    assert (await a.claim(7, "alice")).url == "ws://127.0.0.1:8081/ws/sessions/7/call"
    # Leaving twice, or a room never held, changes nothing.
    await a.leave(7, "alice")
    await a.leave(99, "nobody")
    assert await a.owner_of(7) == b.owner


async def test_the_owner_keeps_renewing_its_lease(make: MakePlacement) -> None:
    a, b = await make(A_URL, ttl=1.5), await make(B_URL, ttl=1.5)
    await a.claim(7, "alice")
    await asyncio.sleep(4)  # well past the TTL: only renewals keep it
    assert a.holds(7)
    assert (await b.claim(7, "bob")).owner == a.owner


async def test_a_dead_owners_lease_lapses_and_the_next_join_takes_the_room(
    make: MakePlacement,
) -> None:
    a, b = await make(A_URL, ttl=1.0), await make(B_URL, ttl=1.0)
    await a.claim(7, "alice")
    await a.close(release=False)  # dies: no renewal, no release
    assert (await b.claim(7, "bob")).owner == a.owner  # until the lease lapses

    async def lapsed() -> bool:
        return await b.owner_of(7) is None

    await eventually(lapsed)
    assert await b.claim(7, "bob") == LOCAL
    assert await b.owner_of(7) == b.owner


async def test_a_graceful_stop_hands_the_room_over_at_once(make: MakePlacement) -> None:
    a, b = await make(A_URL), await make(B_URL)
    await a.claim(7, "alice")
    await a.close()
    assert await b.claim(7, "bob") == LOCAL


async def test_a_room_taken_over_during_an_outage_is_handed_on(make: MakePlacement) -> None:
    a, b = await make(A_URL, ttl=0.6), await make(B_URL, ttl=0.6)
    moved: asyncio.Queue[int] = asyncio.Queue()

    async def on_lost(booking_id: int) -> None:
        await moved.put(booking_id)

    a.on_lost = on_lost
    await a.claim(7, "alice")
    await a.claim(8, "alice")
    # As if the store had lost A's leases (a long outage): B takes room 7 meanwhile.
    await a.bus.release(lease_key(7), a.owner)
    await a.bus.release(lease_key(8), a.owner)
    assert await b.claim(7, "bob") == LOCAL
    assert await asyncio.wait_for(moved.get(), 10) == 7
    assert not a.holds(7)
    # Room 8, which nobody took, is simply held again.
    await eventually(lambda: _holds(a, 8))
    assert await b.owner_of(8) == a.owner
    assert moved.empty()


async def _holds(placement: RoomPlacement, booking_id: int) -> bool:
    return placement.holds(booking_id) and await placement.owner_of(booking_id) == placement.owner


async def test_sibling_origins_are_known(make: MakePlacement) -> None:
    a, b = await make(A_URL), await make(B_URL)

    async def both_known() -> bool:
        return await a.known_origin(B_URL) and await b.known_origin(A_URL)

    await eventually(both_known, limit=5)
    assert not await a.known_origin("http://127.0.0.1:9999")
    assert not await a.known_origin("https://evil.example")


async def test_one_process_needs_no_lease() -> None:
    bus = MemoryBus()
    placement = RoomPlacement(bus, A_URL)
    assert not placement.enabled
    assert await placement.claim(7, "alice") == LOCAL
    assert await bus.get_owner(lease_key(7)) is None
    assert not await placement.known_origin(B_URL)
    await placement.leave(7, "alice")
    await placement.close()


async def test_without_redis_nobody_can_place_a_room() -> None:
    bus = RedisBus("redis://127.0.0.1:1/0", node_id="x")
    placement = RoomPlacement(bus, A_URL)
    try:
        where = await placement.claim(7, "alice")
        assert where.unavailable and where.url is None
        assert not await placement.known_origin(B_URL)
    finally:
        await placement.close()
        await bus.close()


def test_addresses() -> None:
    assert owner_url("https://tutor.example.org:8443#1234") == "https://tutor.example.org:8443"
    assert call_socket_url("https://tutor.example.org:8443", 5) == (
        "wss://tutor.example.org:8443/ws/sessions/5/call"
    )
    assert call_socket_url("http://[::1]:8081", 5) == "ws://[::1]:8081/ws/sessions/5/call"


# -- commands forwarded to the owner -------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def two_nodes(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[RoomCommands, RoomCommands]]:
    """Command endpoints of two processes, "a" and "b"."""
    buses: list[Bus] = []
    if request.param == "memory":
        shared = MemoryBus()
        buses = [shared]
        pair = (RoomCommands(shared, "a", timeout=1), RoomCommands(shared, "b", timeout=1))
    else:
        url = request.getfixturevalue("fresh_redis_url")
        buses = [RedisBus(url, node_id="a"), RedisBus(url, node_id="b")]
        for bus in buses:
            await bus.start()
        pair = (RoomCommands(buses[0], "a", timeout=1), RoomCommands(buses[1], "b", timeout=1))
    for node in pair:
        await node.start()
    yield pair
    for node in pair:
        await node.close()
    for bus in buses:
        await bus.close()


async def test_a_command_runs_on_the_owner_and_its_answer_comes_back(
    two_nodes: tuple[RoomCommands, RoomCommands],
) -> None:
    a, b = two_nodes
    seen: list[dict[str, Any]] = []

    async def stats(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        return {"live": True, "participants": {"1": {"bitrate_in": 5}}}

    async def refuse(args: dict[str, Any]) -> dict[str, Any]:
        raise Conflict("This session is already being recorded.")

    async def crash(args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    a.register("stats", stats)
    a.register("record", refuse)
    a.register("crash", crash)
    answers = await asyncio.gather(*(b.ask("a", "stats", booking_id=n) for n in range(5)))
    assert answers == [{"live": True, "participants": {"1": {"bitrate_in": 5}}}] * 5
    assert sorted(s["booking_id"] for s in seen) == [0, 1, 2, 3, 4]
    with pytest.raises(RemoteError) as refused:
        await b.ask("a", "record", booking_id=1)
    assert (refused.value.status, refused.value.message) == (
        409,
        "This session is already being recorded.",
    )
    with pytest.raises(RemoteError) as crashed:
        await b.ask("a", "crash")
    assert crashed.value.status == 500 and "boom" not in crashed.value.message
    with pytest.raises(RemoteError) as unknown:
        await b.ask("a", "format-disk")
    assert unknown.value.status == 400


async def test_a_silent_owner_is_a_503(two_nodes: tuple[RoomCommands, RoomCommands]) -> None:
    _, b = two_nodes
    with pytest.raises(OwnerUnavailable) as exc:
        await b.ask("gone-process#42", "stats", booking_id=1)
    assert exc.value.status == 503

"""The bus: the same behaviour from the in-process and the Redis implementation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from panda.bus import RESYNC_TYPE, Bus, BusUnavailable, LeaseKeeper, create_bus, run_once
from panda.bus.memory import MemoryBus
from panda.bus.redisbus import RedisBus

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """Each test runs against both implementations (the test Redis is emptied first)."""
    if request.param == "memory":
        instance: Bus = MemoryBus(node_id="n1")
    else:
        instance = RedisBus(request.getfixturevalue("fresh_redis_url"), node_id="n1")
    await instance.start()
    yield instance
    await instance.close()


def test_create_bus_picks_the_implementation() -> None:
    assert isinstance(create_bus(None), MemoryBus)
    assert isinstance(create_bus("redis://127.0.0.1:1/0"), RedisBus)


async def test_publish_reaches_every_subscriber_in_order(bus: Bus) -> None:
    first = await bus.subscribe("room")
    second = await bus.subscribe("room", "other")
    for n in range(20):
        await bus.publish("room", {"n": n})
    await bus.publish("other", {"n": "x"})
    got_first = [(await asyncio.wait_for(first.get(), 5))["n"] for _ in range(20)]
    got_second = [(await asyncio.wait_for(second.get(), 5))["n"] for _ in range(21)]
    assert got_first == list(range(20))
    assert got_second == [*range(20), "x"]
    await first.close()
    await bus.publish("room", {"n": "after"})
    assert (await asyncio.wait_for(second.get(), 5))["n"] == "after"
    assert first.get_nowait() is None
    await second.close()


async def test_closed_subscription_gets_nothing(bus: Bus) -> None:
    async with await bus.subscribe("c") as sub:
        pass
    await bus.publish("c", {"x": 1})
    probe = await bus.subscribe("c")
    await bus.publish("c", {"x": 2})
    assert (await asyncio.wait_for(probe.get(), 5)) == {"x": 2}
    assert sub.get_nowait() is None
    await probe.close()


async def test_key_value_with_expiry(bus: Bus) -> None:
    assert await bus.get("k") is None
    await bus.set("k", "v")
    assert await bus.get("k") == "v"
    assert await bus.set_if_absent("k", "w") is False
    assert await bus.set_if_absent("k2", "w", ttl=0.2) is True
    assert await bus.get("k2") == "w"
    await bus.delete("k")
    assert await bus.get("k") is None
    await bus.set("short", "x", ttl=0.05)
    for _ in range(100):
        if await bus.get("short") is None:
            break
        await asyncio.sleep(0.02)
    assert await bus.get("short") is None


async def test_incr_is_a_fixed_window_counter(bus: Bus) -> None:
    assert [await bus.incr("rate", ttl=30) for _ in range(3)] == [1, 2, 3]
    remaining = await bus.ttl("rate")
    assert remaining is not None and 0 < remaining <= 30


async def test_capped_list_keeps_newest(bus: Bus) -> None:
    for n in range(8):
        await bus.push_capped("hist", str(n), cap=5)
    assert await bus.list_range("hist") == ["3", "4", "5", "6", "7"]
    assert await bus.list_range("nothing") == []


async def test_presence_counts_live_members(bus: Bus) -> None:
    assert await bus.presence_add("p", "conn1", ttl=30) == 1
    assert await bus.presence_add("p", "conn2", ttl=30) == 2
    assert await bus.presence_add("p", "conn2", ttl=30) == 2
    assert await bus.presence_remove("p", "conn1") == 1
    assert await bus.presence_count("p") == 1
    await bus.presence_add("p", "ghost", ttl=0.05)
    for _ in range(100):
        if await bus.presence_count("p") == 1:
            break
        await asyncio.sleep(0.02)
    assert await bus.presence_count("p") == 1


async def test_leases(bus: Bus) -> None:
    assert await bus.acquire_lease("room:1", "a", ttl=30)
    assert not await bus.acquire_lease("room:1", "b", ttl=30)
    assert await bus.acquire_lease("room:1", "a", ttl=30)  # re-acquire extends
    assert await bus.get_owner("room:1") == "a"
    assert not await bus.renew("room:1", "b", ttl=30)
    assert await bus.renew("room:1", "a", ttl=30)
    assert not await bus.release("room:1", "b")
    assert await bus.release("room:1", "a")
    assert await bus.get_owner("room:1") is None
    # A lease that is not renewed lapses and someone else gets it.
    assert await bus.acquire_lease("room:2", "a", ttl=0.05)
    for _ in range(100):
        if await bus.acquire_lease("room:2", "b", ttl=30):
            break
        await asyncio.sleep(0.02)
    assert await bus.get_owner("room:2") == "b"


async def test_run_once_excludes_a_second_runner(bus: Bus) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()
    runs: list[str] = []

    async def work() -> None:
        runs.append("x")
        started.set()
        await finish.wait()

    first = asyncio.create_task(run_once(bus, "reminders", work, ttl=5))
    await asyncio.wait_for(started.wait(), 5)
    # A second process (another owner) is refused while the first holds the lease.
    keeper = LeaseKeeper(bus, "once:reminders", "someone-else", 5)
    assert not await keeper.acquire()
    finish.set()
    assert await first is True
    assert runs == ["x"]
    assert await bus.get_owner("once:reminders") is None


@pytest.mark.redis
async def test_two_redis_buses_share_everything(fresh_redis_url: str) -> None:
    a = RedisBus(fresh_redis_url, node_id="a")
    b = RedisBus(fresh_redis_url, node_id="b")
    await a.start()
    await b.start()
    try:
        sub = await b.subscribe("user:1")
        await a.publish("user:1", {"type": "message", "id": 7})
        assert await asyncio.wait_for(sub.get(), 5) == {"type": "message", "id": 7}
        assert await a.acquire_lease("room:9", "a", 30)
        assert await b.get_owner("room:9") == "a"
        assert not await b.acquire_lease("room:9", "b", 30)
        await sub.close()
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
async def test_redis_restart_resyncs_subscribers(redis_server_factory: Any) -> None:
    server = redis_server_factory()
    bus = RedisBus(server.url, node_id="n")
    await bus.start()
    try:
        sub = await bus.subscribe("user:5")
        await bus.publish("user:5", {"n": 1})
        assert await asyncio.wait_for(sub.get(), 5) == {"n": 1}
        server.kill()
        # While Redis is down: publishing reports failure, key/value raises BusUnavailable.
        assert await bus.publish("user:5", {"n": "lost"}) is False
        with pytest.raises(BusUnavailable):
            await bus.acquire_lease("x", "n", 5)
        server.start()
        # The reader reconnects, resubscribes and tells the subscriber to resynchronise.
        msg = await asyncio.wait_for(sub.get(), 15)
        assert msg["type"] == RESYNC_TYPE
        await bus.publish("user:5", {"n": 2})
        assert await asyncio.wait_for(sub.get(), 5) == {"n": 2}
        await sub.close()
    finally:
        await bus.close()


@pytest.mark.redis
async def test_periodic_work_runs_in_one_process_at_a_time(fresh_redis_url: str) -> None:
    from aiohttp import web

    from panda.bus import _ONCE_TASKS, BUS, every

    runs: list[tuple[str, float, float]] = []
    active: list[str] = []
    overlaps: list[tuple[str, str]] = []
    enough = asyncio.Event()
    apps = []
    for name in ("a", "b"):
        app = web.Application()
        bus = RedisBus(fresh_redis_url, node_id=name)
        await bus.start()
        app[BUS] = bus
        app[_ONCE_TASKS] = []
        apps.append(app)

    def job(name: str) -> Any:
        async def work(app: web.Application) -> None:
            if active:
                overlaps.append((active[0], name))
            active.append(name)
            start = asyncio.get_running_loop().time()
            await asyncio.sleep(0.05)
            active.remove(name)
            runs.append((name, start, asyncio.get_running_loop().time()))
            if len(runs) >= 6:
                enough.set()

        return work

    try:
        for app, name in zip(apps, ("a", "b"), strict=True):
            every(app, "reminders", 0.1, job(name))
        await asyncio.wait_for(enough.wait(), 30)
        assert overlaps == []
    finally:
        for app in apps:
            for task in app[_ONCE_TASKS]:
                task.cancel()
            await asyncio.gather(*app[_ONCE_TASKS], return_exceptions=True)
            await app[BUS].close()


async def test_bus_rate_limiter(bus: Bus) -> None:
    from panda.bus.ratelimit import BusRateLimiter

    limiter = BusRateLimiter(bus)
    assert await limiter.peek("login:a", 60) == (0, 60)
    assert (await limiter.hit("login:a", 60))[0] == 1
    count, left = await limiter.hit("login:a", 60)
    assert count == 2 and 1 <= left <= 60
    assert (await limiter.peek("login:a", 60))[0] == 2
    await limiter.clear("login:a")
    assert await limiter.peek("login:a", 60) == (0, 60)
    await limiter.close()

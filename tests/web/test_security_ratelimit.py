"""The throttle counters: the same behaviour from memory, the database (SQLite and PostgreSQL,
shared by processes) and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from panda import ratelimit
from panda.errors import RateLimited
from panda.ratelimit import (
    DatabaseRateLimiter,
    MemoryRateLimiter,
    RateLimiter,
    Rule,
)
from panda.store.db import create_engine, create_sessionmaker
from panda.store.models import RateCounter
from panda.store.types import utcnow

RULE = Rule("test", 3, 60)


async def exercise(limiter: RateLimiter) -> None:
    """Counting, the limit, isolation between keys, clearing."""
    assert await limiter.peek("test:a", 60) == (0, 60)
    for expected in (1, 2, 3):
        count, left = await limiter.hit("test:a", 60)
        assert count == expected and 0 < left <= 60
    await ratelimit.check(limiter, Rule("test", 4, 60), "a", "fine")
    with pytest.raises(RateLimited) as info:
        await ratelimit.check(limiter, RULE, "a", "slow down")
    assert 0 < info.value.retry_after <= 60 and info.value.message == "slow down"
    with pytest.raises(RateLimited):
        await ratelimit.consume(limiter, RULE, "a", "slow down")
    assert (await limiter.peek("test:b", 60))[0] == 0
    assert await ratelimit.hit(limiter, RULE, "b")
    await limiter.clear("test:a")
    assert (await limiter.peek("test:a", 60))[0] == 0


async def test_memory_limiter() -> None:
    limiter = MemoryRateLimiter()
    await exercise(limiter)
    await limiter.close()


@pytest.fixture
async def sessionmaker_for(database_url: str) -> AsyncIterator[object]:
    engine = create_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def test_database_limiter_is_shared_and_windows_expire(sessionmaker_for) -> None:  # type: ignore[no-untyped-def]
    first = DatabaseRateLimiter(sessionmaker_for)
    await exercise(first)
    # A second limiter (another process) sees the same counts.
    second = DatabaseRateLimiter(sessionmaker_for)
    await first.hit("test:shared", 60)
    assert (await second.hit("test:shared", 60))[0] == 2
    # An old window starts over.
    async with sessionmaker_for() as db:
        await db.execute(update(RateCounter).values(window_start=utcnow() - timedelta(seconds=61)))
        await db.commit()
    assert (await second.peek("test:shared", 60))[0] == 0
    assert (await second.hit("test:shared", 60))[0] == 1
    # Day-old counters are pruned.
    async with sessionmaker_for() as db:
        await db.execute(update(RateCounter).values(window_start=utcnow() - timedelta(days=2)))
        await db.commit()
    assert await second.prune() >= 2
    assert (await second.peek("test:shared", 60))[0] == 0


async def test_redis_limiter_through_the_bus(fresh_redis_url: str) -> None:
    from panda.bus import create_bus
    from panda.bus.ratelimit import BusRateLimiter

    buses = [create_bus(fresh_redis_url), create_bus(fresh_redis_url)]
    for bus in buses:
        await bus.start()
    try:
        await exercise(BusRateLimiter(buses[0]))
        # Two processes (two buses) share the counts.
        first, second = BusRateLimiter(buses[0]), BusRateLimiter(buses[1])
        await first.hit("test:shared", 60)
        assert (await second.hit("test:shared", 60))[0] == 2
    finally:
        for bus in buses:
            await bus.close()


def test_limiter_choice(settings) -> None:  # type: ignore[no-untyped-def]
    from aiohttp import web

    from panda.bus.ratelimit import BusRateLimiter

    assert isinstance(ratelimit.create_limiter(settings, None), DatabaseRateLimiter)  # type: ignore[arg-type]
    redis_settings = settings.with_(redis_url="redis://127.0.0.1:1/0")
    limiter = ratelimit.create_limiter(redis_settings, None, web.Application())  # type: ignore[arg-type]
    assert isinstance(limiter, BusRateLimiter)
    memory = settings.with_(extra={"ratelimit": "memory"})
    assert isinstance(ratelimit.create_limiter(memory, None), MemoryRateLimiter)  # type: ignore[arg-type]


async def test_login_throttle_counts_in_redis_when_configured(
    aiohttp_client,
    settings,
    fresh_redis_url: str,  # type: ignore[no-untyped-def]
) -> None:
    from panda.app import create_app
    from panda.bus.ratelimit import BusRateLimiter
    from tests.helpers import get_csrf

    client = await aiohttp_client(create_app(settings.with_(redis_url=fresh_redis_url)))
    assert isinstance(ratelimit.get_limiter(client.app), BusRateLimiter)
    for _ in range(10):
        token = await get_csrf(client, "/login")
        resp = await client.post(
            "/login",
            data={"email": "r@example.test", "password": "wrong pw!!", "csrf_token": token},
        )
        assert resp.status == 400
    token = await get_csrf(client, "/login")
    resp = await client.post(
        "/login", data={"email": "r@example.test", "password": "wrong pw!!", "csrf_token": token}
    )
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    import redis.asyncio as aioredis

    direct = aioredis.from_url(fresh_redis_url)
    try:
        assert any([key async for key in direct.scan_iter(match="*login-account*")])
    finally:
        await direct.aclose()

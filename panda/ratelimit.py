"""Fixed-window attempt counters (login throttling, mail resends) behind one small interface.

Three stores: memory (one process only), the `rate_counters` table (the default: every process
sharing the database sees the same counts) and Redis through the bus (when `settings.redis_url`
is set; `panda.bus.ratelimit.BusRateLimiter` implements this same interface).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from aiohttp import web
from sqlalchemy import case, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from panda import keys
from panda.config import Settings
from panda.errors import RateLimited
from panda.store.models import RateCounter
from panda.store.types import utcnow


@dataclass(frozen=True)
class Rule:
    """At most `limit` events per `window` seconds for one key prefix."""

    name: str
    limit: int
    window: int


# Failed logins (or token requests) per account and per client address.
LOGIN_PER_ACCOUNT = Rule("login-account", 10, 15 * 60)
LOGIN_PER_IP = Rule("login-ip", 10, 15 * 60)
VERIFY_RESEND = Rule("verify-resend", 3, 60 * 60)
RESET_PER_ACCOUNT = Rule("reset-account", 3, 60 * 60)
RESET_PER_IP = Rule("reset-ip", 20, 60 * 60)
SIGNUP_PER_IP = Rule("signup-ip", 30, 60 * 60)


class RateLimiter(Protocol):
    """Counts events per key in fixed windows."""

    async def hit(self, key: str, window: int) -> tuple[int, int]:
        """Count one event; return (count in the current window, seconds until it resets)."""
        ...

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        """(count in the current window, seconds until it resets) without counting."""
        ...

    async def clear(self, key: str) -> None:
        """Forget the key (after a successful login)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class MemoryRateLimiter:
    """Counters in this process's memory: right for a single process and for tests."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}

    def _current(self, key: str, window: int) -> tuple[float, int]:
        now = time.monotonic()
        start, count = self._counts.get(key, (now, 0))
        if now - start >= window:
            start, count = now, 0
        return start, count

    async def hit(self, key: str, window: int) -> tuple[int, int]:
        start, count = self._current(key, window)
        count += 1
        self._counts[key] = (start, count)
        if len(self._counts) > 100_000:
            self._prune(window)
        return count, _remaining(start + window - time.monotonic())

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        start, count = self._current(key, window)
        return count, _remaining(start + window - time.monotonic())

    async def clear(self, key: str) -> None:
        self._counts.pop(key, None)

    async def close(self) -> None:
        self._counts.clear()

    def _prune(self, window: int) -> None:
        now = time.monotonic()
        for key in [k for k, (s, _) in self._counts.items() if now - s >= window]:
            del self._counts[key]


class DatabaseRateLimiter:
    """Counters in the `rate_counters` table: one atomic upsert per event."""

    # Every so many events, rows whose window ended a day ago are deleted.
    PRUNE_EVERY = 1000
    PRUNE_AFTER = timedelta(days=1)

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._events = 0

    async def prune(self) -> int:
        """Delete stale counters; how many went."""
        async with self._sessionmaker() as db:
            result = await db.execute(
                delete(RateCounter).where(RateCounter.window_start < utcnow() - self.PRUNE_AFTER)
            )
            await db.commit()
        return int(getattr(result, "rowcount", 0) or 0)

    async def hit(self, key: str, window: int) -> tuple[int, int]:
        now = utcnow()
        cutoff = now - timedelta(seconds=window)
        async with self._sessionmaker() as db:
            dialect = db.get_bind().dialect.name
            insert: Any = pg_insert if dialect == "postgresql" else sqlite_insert
            table: Any = RateCounter.__table__
            expired = table.c.window_start <= cutoff
            stmt = insert(table).values(key=key, window_start=now, count=1)
            stmt = stmt.on_conflict_do_update(
                index_elements=[table.c.key],
                set_={
                    "count": case((expired, 1), else_=table.c.count + 1),
                    "window_start": case((expired, now), else_=table.c.window_start),
                },
            ).returning(table.c.count, table.c.window_start)
            row = (await db.execute(stmt)).one()
            await db.commit()
        self._events += 1
        if self._events % self.PRUNE_EVERY == 0:
            await self.prune()
        count, start = int(row[0]), row[1]
        return count, _remaining((start - now).total_seconds() + window)

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        now = utcnow()
        async with self._sessionmaker() as db:
            counter = (
                await db.execute(select(RateCounter).where(RateCounter.key == key))
            ).scalar_one_or_none()
        if counter is None:
            return 0, window
        left = (counter.window_start - now).total_seconds() + window
        if left <= 0:
            return 0, window
        return counter.count, _remaining(left)

    async def clear(self, key: str) -> None:
        async with self._sessionmaker() as db:
            await db.execute(delete(RateCounter).where(RateCounter.key == key))
            await db.commit()

    async def close(self) -> None:
        return None


def _remaining(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def create_limiter(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    app: web.Application | None = None,
) -> RateLimiter:
    """The bus's Redis when configured, else the database; `extra["ratelimit"]="memory"` for one
    process. Redis is reached through `panda.bus` (the one module that talks to Redis)."""
    choice = settings.extra.get("ratelimit")
    if choice == "memory":
        return MemoryRateLimiter()
    if settings.redis_url and choice != "database" and app is not None:
        from panda.bus.ratelimit import BusRateLimiter

        return BusRateLimiter(app)
    return DatabaseRateLimiter(sessionmaker)


LIMITER: web.AppKey[RateLimiter] = web.AppKey("rate_limiter")


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    """Create the application's limiter after the database (cleanup_ctx)."""
    limiter = create_limiter(app[keys.settings], app[keys.sessionmaker], app)
    app[LIMITER] = limiter
    yield
    await limiter.close()


def get_limiter(app: web.Application) -> RateLimiter:
    """The application's limiter."""
    return app[LIMITER]


async def check(limiter: RateLimiter, rule: Rule, subject: str, message: str) -> None:
    """RateLimited when `subject` has used up `rule` (without counting a new event)."""
    count, left = await limiter.peek(f"{rule.name}:{subject}", rule.window)
    if count >= rule.limit:
        raise RateLimited(message, retry_after=left)


async def hit(limiter: RateLimiter, rule: Rule, subject: str) -> bool:
    """Count one event for `subject`; True while it stays within the rule."""
    count, _ = await limiter.hit(f"{rule.name}:{subject}", rule.window)
    return count <= rule.limit


async def consume(limiter: RateLimiter, rule: Rule, subject: str, message: str) -> None:
    """Count one event and raise RateLimited when it goes over the rule."""
    count, left = await limiter.hit(f"{rule.name}:{subject}", rule.window)
    if count > rule.limit:
        raise RateLimited(message, retry_after=left)


async def clear(limiter: RateLimiter, rule: Rule, subject: str) -> None:
    """Forget `subject`'s events for `rule`."""
    await limiter.clear(f"{rule.name}:{subject}")

"""Fixed-window rate-limit counters on the bus (memory or Redis), for any area that counts.

Same interface as `panda.ratelimit.RateLimiter` (hit / peek / clear / close), so the accounts
limiter can count in the bus instead of holding its own Redis connection.
"""

from __future__ import annotations

import math

from aiohttp import web

from panda.bus import BUS, Bus

PREFIX = "rl:"


class BusRateLimiter:
    """Counters in the application's bus; looked up at call time (the bus starts with the app)."""

    def __init__(self, app_or_bus: web.Application | Bus) -> None:
        self._source = app_or_bus

    @property
    def bus(self) -> Bus:
        """The bus counting for us."""
        if isinstance(self._source, Bus):
            return self._source
        return self._source[BUS]

    async def hit(self, key: str, window: int) -> tuple[int, int]:
        """Count one event; (count in the current window, seconds until it resets)."""
        count = await self.bus.incr(PREFIX + key, ttl=window)
        left = await self.bus.ttl(PREFIX + key)
        return count, max(1, math.ceil(left if left else window))

    async def peek(self, key: str, window: int) -> tuple[int, int]:
        """(count in the current window, seconds until it resets) without counting."""
        raw = await self.bus.get(PREFIX + key)
        if raw is None:
            return 0, window
        left = await self.bus.ttl(PREFIX + key)
        return int(raw), max(1, math.ceil(left if left else window))

    async def clear(self, key: str) -> None:
        """Forget the key."""
        await self.bus.delete(PREFIX + key)

    async def close(self) -> None:
        """Nothing to close: the bus belongs to the application."""

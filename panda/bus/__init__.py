"""Publish/subscribe plus a small key/value store with leases, shared by every server process.

Two implementations behind one interface: `MemoryBus` (one process, nothing to install) and
`RedisBus` (several processes, when `PANDA_REDIS_URL` is set). Nothing else in the project imports
`redis`: ask the bus. Channel and key names are plain strings; implementations add a namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

# Delivered to every subscription when messages may have been missed (the Redis connection was
# re-established, or a slow consumer overflowed its queue): consumers re-read their source of truth.
RESYNC_TYPE = "_resync"
_MAX_QUEUE = 10_000


class BusUnavailable(RuntimeError):
    """The shared store cannot be reached right now (Redis down); the caller decides what to do."""


class Subscription:
    """Messages published on some channels, in arrival order; close it (or `async with`)."""

    def __init__(self, bus: Bus, channels: set[str]) -> None:
        self._bus = bus
        self.channels = channels
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._overflowed = False
        self.closed = False

    def _deliver(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= _MAX_QUEUE:
            # A stuck consumer must not eat the process's memory: drop what is queued and tell
            # the consumer to resynchronise from the database instead.
            if not self._overflowed:
                self._overflowed = True
                while not self._queue.empty():
                    self._queue.get_nowait()
                self._queue.put_nowait({"type": RESYNC_TYPE, "reason": "overflow"})
            return
        self._overflowed = False
        self._queue.put_nowait(message)

    async def get(self) -> dict[str, Any]:
        """The next message (waits)."""
        return await self._queue.get()

    def get_nowait(self) -> dict[str, Any] | None:
        """The next message if one is queued, else None."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while not self.closed:
            yield await self._queue.get()

    async def close(self) -> None:
        """Stop receiving; idempotent."""
        if not self.closed:
            self.closed = True
            await self._bus._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Bus(ABC):
    """Publish/subscribe, key/value with expiry, capped lists, presence sets and leases."""

    def __init__(self, node_id: str | None = None) -> None:
        self.node_id = node_id or default_node_id()
        self._subs: dict[str, set[Subscription]] = {}

    # -- publish/subscribe -------------------------------------------------------------------
    @abstractmethod
    async def publish(self, channel: str, message: dict[str, Any]) -> bool:
        """Send `message` (JSON-able dict) to every subscriber of `channel` in every process.

        Returns False (and logs) when it could not be sent: the bus is best effort, the
        database is the source of truth.
        """

    async def subscribe(self, *channels: str) -> Subscription:
        """A subscription to `channels`; once this returns, later publishes are received."""
        sub = Subscription(self, set(channels))
        new = []
        for channel in channels:
            holders = self._subs.setdefault(channel, set())
            if not holders:
                new.append(channel)
            holders.add(sub)
        if new:
            await self._listen(new)
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        gone = []
        for channel in sub.channels:
            holders = self._subs.get(channel)
            if holders is None:
                continue
            holders.discard(sub)
            if not holders:
                del self._subs[channel]
                gone.append(channel)
        if gone:
            await self._unlisten(gone)

    def _dispatch(self, channel: str, message: dict[str, Any]) -> None:
        for sub in list(self._subs.get(channel, ())):
            sub._deliver(message)

    def _dispatch_resync(self, reason: str) -> None:
        seen: set[int] = set()
        for holders in list(self._subs.values()):
            for sub in list(holders):
                if id(sub) not in seen:
                    seen.add(id(sub))
                    sub._deliver({"type": RESYNC_TYPE, "reason": reason})

    async def _listen(self, channels: list[str]) -> None:  # noqa: B027 - optional hook
        """Start receiving `channels` from the shared transport (Redis); no-op in memory."""

    async def _unlisten(self, channels: list[str]) -> None:  # noqa: B027 - optional hook
        """Stop receiving `channels` from the shared transport."""

    # -- key/value ---------------------------------------------------------------------------
    @abstractmethod
    async def get(self, key: str) -> str | None:
        """The value under `key`, or None."""

    @abstractmethod
    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """Store `value` under `key`, expiring after `ttl` seconds when given."""

    @abstractmethod
    async def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        """Store `value` only when `key` holds nothing; True if stored."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove `key`."""

    @abstractmethod
    async def incr(self, key: str, ttl: float) -> int:
        """Add one to the counter under `key` and return it; a new counter expires after `ttl`.

        This is a fixed-window rate-limit counter: the window starts at the first increment.
        """

    @abstractmethod
    async def ttl(self, key: str) -> float | None:
        """Seconds until `key` expires (None when it does not exist or never expires)."""

    # -- capped lists (recent history caches) ---------------------------------------------------
    @abstractmethod
    async def push_capped(self, key: str, value: str, cap: int, ttl: float | None = None) -> None:
        """Append `value` to the list under `key`, keeping only the newest `cap` items."""

    @abstractmethod
    async def list_range(self, key: str) -> list[str]:
        """Every item of the list under `key`, oldest first."""

    # -- presence ------------------------------------------------------------------------------
    @abstractmethod
    async def presence_add(self, key: str, member: str, ttl: float) -> int:
        """Mark `member` (one connection) present under `key` for `ttl` seconds; live count."""

    @abstractmethod
    async def presence_remove(self, key: str, member: str) -> int:
        """Remove `member` from `key`; the number of members still present."""

    @abstractmethod
    async def presence_count(self, key: str) -> int:
        """How many members of `key` are present (not expired)."""

    # -- leases --------------------------------------------------------------------------------
    @abstractmethod
    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lease `key` for `owner` for `ttl` seconds; True if `owner` now holds it.

        Re-acquiring a lease one already holds extends it. Raises BusUnavailable when the
        shared store is down (nobody can be sure who owns it then).
        """

    @abstractmethod
    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        """Extend the lease if `owner` still holds it; False when it lapsed or moved."""

    @abstractmethod
    async def release(self, key: str, owner: str) -> bool:
        """Give the lease up if `owner` holds it; True if released."""

    @abstractmethod
    async def get_owner(self, key: str) -> str | None:
        """Who holds the lease `key` now, or None."""

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect (Redis); called once by the cleanup context."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and tasks."""

    @property
    def shared(self) -> bool:
        """True when other processes see the same bus (Redis)."""
        return False


def default_node_id() -> str:
    """A name for this process, unique across machines: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def create_bus(redis_url: str | None, node_id: str | None = None) -> Bus:
    """The Redis bus when a URL is given, else the in-process one."""
    if redis_url:
        from panda.bus.redisbus import RedisBus

        return RedisBus(redis_url, node_id=node_id)
    from panda.bus.memory import MemoryBus

    return MemoryBus(node_id=node_id)


BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
_ONCE_TASKS: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("bus_once_tasks", list)


async def bus_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: create the bus from settings.redis_url, start it, close it at the end."""
    from panda import keys

    settings = app[keys.settings]
    bus = create_bus(settings.redis_url, node_id=f"{settings.base_url}#{os.getpid()}")
    await bus.start()
    app[BUS] = bus
    app[_ONCE_TASKS] = []
    try:
        yield
    finally:
        for task in app[_ONCE_TASKS]:
            task.cancel()
        for task in app[_ONCE_TASKS]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await bus.close()


def setup_bus(app: web.Application) -> None:
    """Add the bus cleanup context once (safe to call from several areas)."""
    if bus_ctx not in app.cleanup_ctx:
        app.cleanup_ctx.append(bus_ctx)


def get_bus(app: web.Application) -> Bus:
    """The application's bus (after startup)."""
    return app[BUS]


class LeaseKeeper:
    """Hold a lease while a block runs, renewing it in the background.

    `held` turns False if the lease was lost (store down long enough, or taken over); long
    work should check it between steps.
    """

    def __init__(self, bus: Bus, key: str, owner: str, ttl: float) -> None:
        self.bus, self.key, self.owner, self.ttl = bus, key, owner, ttl
        self.held = False
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> bool:
        """Try to take the lease; start renewing it when taken."""
        try:
            self.held = await self.bus.acquire_lease(self.key, self.owner, self.ttl)
        except BusUnavailable:
            self.held = False
        if self.held:
            self._task = asyncio.create_task(self._renew_loop())
        return self.held

    async def _renew_loop(self) -> None:
        while self.held:
            await asyncio.sleep(self.ttl / 3)
            try:
                self.held = await self.bus.renew(self.key, self.owner, self.ttl)
            except BusUnavailable:
                # Keep trying until the lease would have lapsed anyway.
                continue

    async def release(self, give_up: bool = True) -> None:
        """Stop renewing and (unless `give_up` is False: let it lapse) give the lease up."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.held and not give_up:
            self.held = False
        if self.held:
            self.held = False
            with contextlib.suppress(BusUnavailable):
                await self.bus.release(self.key, self.owner)


async def run_once(
    bus: Bus, name: str, work: Callable[[], Awaitable[None]], *, ttl: float = 60.0
) -> bool:
    """Run `work` here unless another process holds the lease `once:<name>`; True if it ran."""
    keeper = LeaseKeeper(bus, f"once:{name}", bus.node_id, ttl)
    if not await keeper.acquire():
        return False
    try:
        await work()
    finally:
        await keeper.release()
    return True


def every(
    app: web.Application,
    name: str,
    interval: float,
    work: Callable[[web.Application], Awaitable[None]],
    *,
    ttl: float | None = None,
) -> None:
    """Run `work(app)` every `interval` seconds in exactly one process of the deployment.

    Call from your area's cleanup context after the bus started (or from `on_startup`); the task
    is kept and cancelled with the bus. Each round takes the lease `once:<name>` for `interval`
    seconds (renewed while the work runs) and lets it lapse rather than releasing it, so no other
    process starts the same round; a process that does not get it skips the round.
    """
    bus = app[BUS]

    async def loop() -> None:
        while True:
            keeper = LeaseKeeper(bus, f"once:{name}", bus.node_id, ttl or interval)
            try:
                if await keeper.acquire():
                    await work(app)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic job %s failed", name)
            finally:
                await keeper.release(give_up=False)
            await asyncio.sleep(interval)

    app[_ONCE_TASKS].append(asyncio.create_task(loop(), name=f"every:{name}"))


__all__ = [
    "BUS",
    "RESYNC_TYPE",
    "Bus",
    "BusUnavailable",
    "LeaseKeeper",
    "Subscription",
    "bus_ctx",
    "create_bus",
    "every",
    "get_bus",
    "run_once",
    "setup_bus",
]

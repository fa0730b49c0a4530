"""Which server process holds a call's media room, when several processes share one Redis.

A room lives on one process. The room's lease `call-room:<session id>` names its owner (the
owner's own address and pid); the owner renews it while anyone is in (or joining) the call and
gives it up when the last one leaves. A participant who reaches another process is redirected
to the owner's signalling websocket. When the owner dies its lease lapses within `LEASE_TTL`
seconds and the next join creates the room wherever it lands.

With the in-process bus (one process) placement is off: every room is local, at no cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from panda.bus import Bus, BusUnavailable, LeaseKeeper

log = logging.getLogger(__name__)

LEASE_TTL = 12.0  # renewed every LEASE_TTL / 3 by the owner
ORIGIN_TTL = 60.0  # how long a process's address is remembered without a refresh


def lease_key(booking_id: int) -> str:
    """The lease naming the process that holds a session's media room."""
    return f"call-room:{booking_id}"


def owner_url(owner: str) -> str:
    """The address part of a lease owner (`<url>#<pid>`)."""
    return owner.rsplit("#", 1)[0]


def call_socket_url(node_url: str, booking_id: int) -> str:
    """The signalling websocket of a session on the process at `node_url`."""
    parts = urlsplit(node_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws/sessions/{booking_id}/call"


def origin_of(url: str) -> str:
    """scheme://host[:port] of an http(s) URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Placement:
    """Where a join must go: here (`local`), to `url` (another process), or nowhere yet."""

    local: bool
    url: str | None = None
    owner: str | None = None

    @property
    def unavailable(self) -> bool:
        """The shared store is down: nobody can tell who holds the room."""
        return not self.local and self.url is None


LOCAL = Placement(local=True)
UNAVAILABLE = Placement(local=False)


class RoomPlacement:
    """Rooms this process holds, by lease; decides local or redirect for each join."""

    def __init__(
        self,
        bus: Bus,
        node_url: str,
        *,
        enabled: bool | None = None,
        ttl: float = LEASE_TTL,
        owner: str | None = None,
    ) -> None:
        self.bus = bus
        self.node_url = node_url.rstrip("/")
        self.enabled = bus.shared if enabled is None else enabled
        self.ttl = ttl
        self.owner = owner or f"{self.node_url}#{os.getpid()}"
        self._keepers: dict[int, LeaseKeeper] = {}
        # Who (signalling sessions) keeps each room here: the lease goes when the last one does.
        self._holders: dict[int, set[object]] = {}
        self._origin_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        # Called with a session id when another process took over a room held here (after a
        # long Redis outage): the calls area sends its participants on.
        self.on_lost: Callable[[int], Awaitable[None]] | None = None

    # -- joins ---------------------------------------------------------------------------------
    async def claim(self, booking_id: int, holder: object) -> Placement:
        """Hold the room here for `holder`, or say where it lives."""
        if not self.enabled:
            return LOCAL
        keeper = self._keepers.get(booking_id)
        if keeper is not None and keeper.held:
            self._holders.setdefault(booking_id, set()).add(holder)
            return LOCAL
        if keeper is not None:  # lost (store down too long, or taken over): start again
            await self._drop(booking_id)
        key = lease_key(booking_id)
        for _ in range(3):
            keeper = LeaseKeeper(self.bus, key, self.owner, self.ttl)
            if await keeper.acquire():
                self._keepers[booking_id] = keeper
                self._holders.setdefault(booking_id, set()).add(holder)
                return LOCAL
            try:
                owner = await self.bus.get_owner(key)
            except BusUnavailable:
                return UNAVAILABLE
            if owner is not None and owner != self.owner:
                url = call_socket_url(owner_url(owner), booking_id)
                return Placement(local=False, url=url, owner=owner)
            # The lease lapsed between the two calls (or the store is down): try again.
        return UNAVAILABLE

    async def leave(self, booking_id: int, holder: object) -> None:
        """`holder` is gone; the last one out gives the room's lease up."""
        holders = self._holders.get(booking_id)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            await self._drop(booking_id)

    async def _drop(self, booking_id: int) -> None:
        self._holders.pop(booking_id, None)
        keeper = self._keepers.pop(booking_id, None)
        if keeper is not None:
            await keeper.release()

    # -- questions from other areas ------------------------------------------------------------
    def holds(self, booking_id: int) -> bool:
        """True when this process holds the room's lease."""
        keeper = self._keepers.get(booking_id)
        return keeper is not None and keeper.held

    async def owner_of(self, booking_id: int) -> str | None:
        """The process holding a room (`<url>#<pid>`), None when nobody does.

        Raises BusUnavailable when the shared store is down.
        """
        if not self.enabled:
            return self.owner
        if self.holds(booking_id):
            return self.owner
        return await self.bus.get_owner(lease_key(booking_id))

    async def check_leases(self) -> list[int]:
        """Take back lapsed leases of rooms in use here; report (`on_lost`) those taken over."""
        lost = []
        for booking_id, keeper in list(self._keepers.items()):
            if keeper.held or not self._holders.get(booking_id):
                continue
            fresh = LeaseKeeper(self.bus, lease_key(booking_id), self.owner, self.ttl)
            if await fresh.acquire():
                self._keepers[booking_id] = fresh
                continue
            try:
                owner = await self.bus.get_owner(lease_key(booking_id))
            except BusUnavailable:
                continue  # try again next round
            if owner is None:
                continue
            log.warning("the room of session %s moved to %s", booking_id, owner_url(owner))
            lost.append(booking_id)
            await self._drop(booking_id)
            if self.on_lost is not None:
                try:
                    await self.on_lost(booking_id)
                except Exception:
                    log.exception("handing the room of session %s over failed", booking_id)
        return lost

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.check_leases()

    # -- origins of sibling processes ----------------------------------------------------------
    async def known_origin(self, origin: str) -> bool:
        """True when `origin` is the address of a live process of this deployment."""
        if not self.enabled:
            return False
        try:
            return await self.bus.get(f"call-node-origin:{origin}") is not None
        except BusUnavailable:
            return False

    async def _advertise(self) -> None:
        key = f"call-node-origin:{origin_of(self.node_url)}"
        while True:
            with contextlib.suppress(BusUnavailable):
                await self.bus.set(key, self.owner, ttl=ORIGIN_TTL)
            await asyncio.sleep(ORIGIN_TTL / 3)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Advertise this process's address to its siblings; watch the leases held."""
        if self.enabled and self._origin_task is None:
            self._origin_task = asyncio.create_task(self._advertise(), name="call-node-origin")
            self._watch_task = asyncio.create_task(self._watch(), name="call-room-leases")

    async def close(self, *, release: bool = True) -> None:
        """Stop renewing; give every lease up (`release=False` lets them lapse, like a crash)."""
        for task in (self._origin_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._origin_task = self._watch_task = None
        keepers = list(self._keepers.values())
        self._keepers.clear()
        self._holders.clear()
        for keeper in keepers:
            await keeper.release(give_up=release)


PLACEMENT: web.AppKey[RoomPlacement] = web.AppKey("call_placement", RoomPlacement)

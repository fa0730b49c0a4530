"""The in-process bus: everything lives in this process's memory (the default; one process)."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from panda.bus import Bus


class MemoryBus(Bus):
    """Publish/subscribe and key/value for a single process; nothing to install."""

    def __init__(self, node_id: str | None = None) -> None:
        super().__init__(node_id)
        # key -> (value, expires_at monotonic or None)
        self._values: dict[str, tuple[str, float | None]] = {}
        self._lists: dict[str, deque[str]] = {}
        self._presence: dict[str, dict[str, float]] = {}

    def _live(self, key: str) -> str | None:
        item = self._values.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and expires <= time.monotonic():
            del self._values[key]
            return None
        return value

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        return None if ttl is None else time.monotonic() + ttl

    async def publish(self, channel: str, message: dict[str, Any]) -> bool:
        self._dispatch(channel, message)
        return True

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._values[key] = (value, self._expiry(ttl))

    async def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        if self._live(key) is not None:
            return False
        self._values[key] = (value, self._expiry(ttl))
        return True

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)
        self._lists.pop(key, None)
        self._presence.pop(key, None)

    async def incr(self, key: str, ttl: float) -> int:
        current = self._live(key)
        if current is None:
            self._values[key] = ("1", self._expiry(ttl))
            return 1
        value = int(current) + 1
        self._values[key] = (str(value), self._values[key][1])
        return value

    async def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        expires = self._values[key][1]
        return None if expires is None else max(0.0, expires - time.monotonic())

    async def push_capped(self, key: str, value: str, cap: int, ttl: float | None = None) -> None:
        items = self._lists.get(key)
        if items is None or items.maxlen != cap:
            items = deque(items or (), maxlen=cap)
            self._lists[key] = items
        items.append(value)

    async def list_range(self, key: str) -> list[str]:
        return list(self._lists.get(key, ()))

    def _prune(self, key: str) -> dict[str, float]:
        members = self._presence.setdefault(key, {})
        now = time.monotonic()
        for member, expires in list(members.items()):
            if expires <= now:
                del members[member]
        return members

    async def presence_add(self, key: str, member: str, ttl: float) -> int:
        members = self._prune(key)
        members[member] = time.monotonic() + ttl
        return len(members)

    async def presence_remove(self, key: str, member: str) -> int:
        members = self._prune(key)
        members.pop(member, None)
        return len(members)

    async def presence_count(self, key: str) -> int:
        return len(self._prune(key))

    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        holder = self._live(f"lease:{key}")
        if holder is not None and holder != owner:
            return False
        self._values[f"lease:{key}"] = (owner, self._expiry(ttl))
        return True

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        if self._live(f"lease:{key}") != owner:
            return False
        self._values[f"lease:{key}"] = (owner, self._expiry(ttl))
        return True

    async def release(self, key: str, owner: str) -> bool:
        if self._live(f"lease:{key}") != owner:
            return False
        del self._values[f"lease:{key}"]
        return True

    async def get_owner(self, key: str) -> str | None:
        return self._live(f"lease:{key}")

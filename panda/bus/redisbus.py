"""The Redis bus: every server process sees the same channels, keys, presence and leases.

One pub/sub connection per process carries every local subscription; it reconnects with backoff
when Redis goes away and then sends RESYNC to every subscriber (messages published meanwhile were
lost by Redis, so consumers re-read the database, which is the source of truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from panda.bus import Bus, BusUnavailable

log = logging.getLogger(__name__)
PREFIX = "panda:"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_ACQUIRE = """
local holder = redis.call('get', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisBus(Bus):
    """Bus over Redis (PANDA_REDIS_URL); commands fail fast with BusUnavailable when it is down."""

    def __init__(self, url: str, node_id: str | None = None) -> None:
        super().__init__(node_id)
        self.url = url
        self._client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
        # The subscriber connection surfaces every error to us (no silent internal reconnect):
        # a reconnect must be followed by a RESYNC.
        self._sub_client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
        )
        self._control = f"{PREFIX}node:{self.node_id}"
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._confirms: dict[str, list[asyncio.Future[None]]] = {}
        self._closing = False
        self._acquire = self._client.register_script(_ACQUIRE)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)

    @property
    def shared(self) -> bool:
        return True

    @staticmethod
    def _k(key: str) -> str:
        return PREFIX + key

    @staticmethod
    def _ch(channel: str) -> str:
        return f"{PREFIX}ch:{channel}"

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="bus-reader")
        self._pinger = asyncio.create_task(self._ping_loop(), name="bus-pinger")
        try:
            await asyncio.wait_for(self._connected.wait(), timeout=5)
        except TimeoutError:
            log.warning("Redis at %s is not reachable yet; the bus keeps retrying", self.url)

    async def close(self) -> None:
        self._closing = True
        for task in (self._reader, self._pinger):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._resolve_confirms()
        with contextlib.suppress(Exception):
            await self._client.aclose()
        with contextlib.suppress(Exception):
            await self._sub_client.aclose()

    def _resolve_confirms(self, channel: str | None = None) -> None:
        names = [channel] if channel is not None else list(self._confirms)
        for name in names:
            for fut in self._confirms.pop(name, []):
                if not fut.done():
                    fut.set_result(None)

    async def _read_loop(self) -> None:
        backoff = 0.05
        first = True
        while not self._closing:
            pubsub = self._sub_client.pubsub()
            try:
                channels = [self._ch(c) for c in self._subs]
                if channels:
                    await pubsub.subscribe(*channels)
                # Redis answers in order: once our control channel is confirmed, every
                # subscription above is in effect and a resync cannot miss anything.
                await pubsub.subscribe(self._control)
                self._pubsub = pubsub
                async for msg in pubsub.listen():
                    kind = msg.get("type")
                    channel = msg.get("channel")
                    if kind == "message" and isinstance(channel, str):
                        self._on_message(channel, msg.get("data"))
                    elif kind == "subscribe" and channel == self._control:
                        backoff = 0.05
                        self._connected.set()
                        if not first:
                            log.info("bus reconnected to Redis; resynchronising subscribers")
                            self._dispatch_resync("reconnected")
                        first = False
                    elif kind == "subscribe" and isinstance(channel, str):
                        self._resolve_confirms(channel)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._connected.is_set():
                    log.warning("bus lost Redis (%s); reconnecting", exc)
            finally:
                self._pubsub = None
                self._connected.clear()
                self._resolve_confirms()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if not self._closing:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def _ping_loop(self) -> None:
        # Keeps the subscriber connection honest: a dead peer shows up as an error on send.
        while True:
            await asyncio.sleep(10)
            pubsub = self._pubsub
            if pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.ping()

    def _on_message(self, channel: str, data: Any) -> None:
        prefix = f"{PREFIX}ch:"
        if not channel.startswith(prefix) or not isinstance(data, str):
            return
        try:
            message = json.loads(data)
        except ValueError:
            log.warning("bus dropped a malformed message on %s", channel)
            return
        if isinstance(message, dict):
            self._dispatch(channel[len(prefix) :], message)

    async def _listen(self, channels: list[str]) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return  # the reader subscribes everything when it reconnects, then resyncs
        loop = asyncio.get_running_loop()
        futures = []
        for channel in channels:
            fut: asyncio.Future[None] = loop.create_future()
            self._confirms.setdefault(self._ch(channel), []).append(fut)
            futures.append(fut)
        try:
            await pubsub.subscribe(*[self._ch(c) for c in channels])
            await asyncio.wait_for(asyncio.gather(*futures), timeout=5)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("bus could not subscribe yet (%s); will on reconnect", exc)

    async def _unlisten(self, channels: list[str]) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await pubsub.unsubscribe(*[self._ch(c) for c in channels])

    # -- publish -------------------------------------------------------------------------------
    async def publish(self, channel: str, message: dict[str, Any]) -> bool:
        try:
            await self._client.publish(self._ch(channel), json.dumps(message))
            return True
        except (RedisError, OSError) as exc:
            log.warning("bus could not publish on %s: %s", channel, exc)
            return False

    # -- key/value -----------------------------------------------------------------------------
    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise BusUnavailable(str(exc)) from exc

    async def get(self, key: str) -> str | None:
        value = await self._call(self._client.get(self._k(key)))
        return None if value is None else str(value)

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        px = _ms(ttl) if ttl is not None else None
        await self._call(self._client.set(self._k(key), value, px=px))

    async def set_if_absent(self, key: str, value: str, ttl: float | None = None) -> bool:
        px = _ms(ttl) if ttl is not None else None
        return bool(await self._call(self._client.set(self._k(key), value, px=px, nx=True)))

    async def delete(self, key: str) -> None:
        await self._call(self._client.delete(self._k(key)))

    async def incr(self, key: str, ttl: float) -> int:
        async def run() -> int:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incr(self._k(key))
                pipe.pexpire(self._k(key), _ms(ttl), nx=True)
                value, _ = await pipe.execute()
            return int(value)

        return int(await self._call(run()))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._call(self._client.pttl(self._k(key))))
        return None if ms < 0 else ms / 1000

    async def push_capped(self, key: str, value: str, cap: int, ttl: float | None = None) -> None:
        async def run() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.rpush(self._k(key), value)
                pipe.ltrim(self._k(key), -cap, -1)
                if ttl is not None:
                    pipe.pexpire(self._k(key), _ms(ttl))
                await pipe.execute()

        await self._call(run())

    async def list_range(self, key: str) -> list[str]:
        return [str(v) for v in await self._call(self._client.lrange(self._k(key), 0, -1))]

    # -- presence (a sorted set of members scored by their expiry time) -----------------------
    async def presence_add(self, key: str, member: str, ttl: float) -> int:
        now = time.time()

        async def run() -> int:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(self._k(key), "-inf", now)
                pipe.zadd(self._k(key), {member: now + ttl})
                pipe.pexpire(self._k(key), _ms(ttl * 2))
                pipe.zcard(self._k(key))
                *_, count = await pipe.execute()
            return int(count)

        return int(await self._call(run()))

    async def presence_remove(self, key: str, member: str) -> int:
        now = time.time()

        async def run() -> int:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._k(key), member)
                pipe.zcount(self._k(key), now, "+inf")
                _, count = await pipe.execute()
            return int(count)

        return int(await self._call(run()))

    async def presence_count(self, key: str) -> int:
        return int(await self._call(self._client.zcount(self._k(key), time.time(), "+inf")))

    # -- leases --------------------------------------------------------------------------------
    async def acquire_lease(self, key: str, owner: str, ttl: float) -> bool:
        lease = self._k(f"lease:{key}")
        got = await self._call(self._acquire(keys=[lease], args=[owner, _ms(ttl)]))
        return bool(got)

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        got = await self._call(self._renew(keys=[self._k(f"lease:{key}")], args=[owner, _ms(ttl)]))
        return bool(got)

    async def release(self, key: str, owner: str) -> bool:
        got = await self._call(self._release(keys=[self._k(f"lease:{key}")], args=[owner]))
        return bool(got)

    async def get_owner(self, key: str) -> str | None:
        value = await self._call(self._client.get(self._k(f"lease:{key}")))
        return None if value is None else str(value)

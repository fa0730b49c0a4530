"""Chat logic between the handlers and the store: validation, rate limit, fan-out, history cache.

A message is committed to the database first; only then is anyone told (bus fan-out to each
member's `user:<id>` channel) and the recent-history cache in the bus updated. The database stays
the source of truth: the cache is checked for gaps and rebuilt from it, and websocket consumers
fill gaps from it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from panda import keys
from panda.bus import BUS, Bus, BusUnavailable
from panda.errors import BadRequest, RateLimited, TooLarge, ValidationError
from panda.store import chat as store
from panda.store.models import User

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 4000
RECENT_CAP = 50
RECENT_TTL = 7 * 24 * 3600.0
PAGE_SIZE = 50
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Characters that make text render misleadingly (bidi overrides) or invisibly (controls).
_STRIP_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class RateLimit:
    """At most `count` messages per `window` seconds per user."""

    count: int = 120
    window: float = 60.0


RATE_LIMIT: web.AppKey[RateLimit] = web.AppKey("chat_rate_limit", RateLimit)


def user_channel(user_id: int) -> str:
    """The bus channel every live connection of a user listens to."""
    return f"user:{user_id}"


def clean_text(raw: Any) -> str:
    """The message text as we store it, or a clear error (422 empty, 413 too long)."""
    if not isinstance(raw, str):
        raise ValidationError("A message needs some text.", fields={"text": "Write a message."})
    text = _STRIP_RE.sub("", raw.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise ValidationError("A message needs some text.", fields={"text": "Write a message."})
    if len(text) > MAX_MESSAGE_CHARS:
        raise TooLarge(f"Messages are limited to {MAX_MESSAGE_CHARS} characters.")
    return text


def clean_client_id(raw: Any) -> str | None:
    """An optional idempotency key chosen by the client (letters, digits, - and _)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not _CLIENT_ID_RE.match(raw):
        raise BadRequest("client_id must be 1-64 letters, digits, - or _.")
    return raw


async def check_rate(app: web.Application, user_id: int) -> None:
    """Raise RateLimited when the user sent too many messages in the current window."""
    limit = app.get(RATE_LIMIT) or RateLimit()
    bus = app[BUS]
    key = f"rate:chat:{user_id}"
    try:
        count = await bus.incr(key, ttl=limit.window)
        if count > limit.count:
            remaining = await bus.ttl(key)
            raise RateLimited(
                "You are sending messages too quickly. Please wait a moment.",
                retry_after=max(1, int(remaining or limit.window) + 1),
            )
    except BusUnavailable:
        # Without the shared counter we cannot count fairly; let messages through rather than
        # block chat while Redis restarts.
        log.warning("chat rate limit skipped: bus unavailable")


async def publish_to_members(bus: Bus, members: list[int], event: dict[str, Any]) -> None:
    """Send the same event to every member's channel."""
    await asyncio.gather(*(bus.publish(user_channel(uid), event) for uid in members))


def _cache_key(conversation_id: int) -> str:
    return f"chat:recent:{conversation_id}"


async def _cache_append(bus: Bus, message: dict[str, Any]) -> None:
    try:
        await bus.push_capped(
            _cache_key(message["conversation_id"]), json.dumps(message), RECENT_CAP, RECENT_TTL
        )
    except BusUnavailable:
        pass


async def forget_cache(app: web.Application, conversation_id: int) -> None:
    """Drop the recent-history cache of a conversation (after moderation changed a message)."""
    try:
        await app[BUS].delete(_cache_key(conversation_id))
    except BusUnavailable:
        pass


async def send_message(
    app: web.Application, user: User, conversation_id: int, raw_text: Any, raw_client_id: Any
) -> tuple[dict[str, Any], bool]:
    """Validate, rate-limit, store, then fan out a message; (message JSON, newly created)."""
    text = clean_text(raw_text)
    client_id = clean_client_id(raw_client_id)
    sessionmaker = app[keys.sessionmaker]
    async with sessionmaker() as db:
        await store.conversation_for(db, conversation_id, user.id)
        if client_id is not None:
            existing = await store.find_by_client_id(db, user.id, client_id)
            if existing is not None:
                if existing.conversation_id != conversation_id:
                    raise BadRequest("That client_id was used for another conversation.")
                return store.message_json(existing, user.name), False
    await check_rate(app, user.id)
    # Shielded: once the write starts, a client that hangs up must not cut it (or the fan-out)
    # in half.
    return await asyncio.shield(_store_and_fan_out(app, user, conversation_id, text, client_id))


async def _store_and_fan_out(
    app: web.Application, user: User, conversation_id: int, text: str, client_id: str | None
) -> tuple[dict[str, Any], bool]:
    from sqlalchemy.exc import IntegrityError

    async with app[keys.sessionmaker]() as db:
        try:
            message, unread = await store.add_message(db, conversation_id, user.id, text, client_id)
        except IntegrityError:
            # The same client_id raced in twice: the other request stored it.
            await db.rollback()
            if client_id is None:
                raise
            existing = await store.find_by_client_id(db, user.id, client_id)
            if existing is None:
                raise
            return store.message_json(existing, user.name), False
        totals = await store.unread_totals(db, list(unread))
    payload = store.message_json(message, user.name)
    bus = app[BUS]
    await asyncio.gather(
        *(
            bus.publish(
                user_channel(uid),
                {
                    "type": "message",
                    "conversation_id": conversation_id,
                    "message": payload,
                    "unread": count,
                    "unread_total": totals[uid],
                },
            )
            for uid, count in unread.items()
        ),
        _cache_append(bus, payload),
    )
    return payload, True


def _contiguous(items: list[dict[str, Any]]) -> bool:
    return all(b["seq"] == a["seq"] + 1 for a, b in itertools.pairwise(items))


async def history(
    app: web.Application,
    conversation_id: int,
    last_seq: int,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = PAGE_SIZE,
) -> list[dict[str, Any]]:
    """Messages of a conversation as JSON, oldest first (see `store.messages_page`).

    The newest page comes from the bus cache when it is complete and ends at `last_seq` (read
    from the database by the caller); anything else comes from the database, which then
    refills the cache.
    """
    bus = app[BUS]
    newest_page = before is None and after is None
    if newest_page and last_seq > 0:
        try:
            raw = await bus.list_range(_cache_key(conversation_id))
            cached = [json.loads(item) for item in raw]
        except (BusUnavailable, ValueError):
            cached = []
        if (
            cached
            and cached[-1]["seq"] == last_seq
            and _contiguous(cached)
            and (len(cached) >= min(limit, last_seq) or cached[0]["seq"] == 1)
        ):
            return cached[-limit:]
    async with app[keys.sessionmaker]() as db:
        rows = await store.messages_page(
            db, conversation_id, before=before, after=after, limit=limit
        )
    messages = [store.message_json(m, name) for m, name in rows]
    if newest_page and messages:
        await _refill_cache(bus, conversation_id, messages[-RECENT_CAP:])
    return messages


async def _refill_cache(bus: Bus, conversation_id: int, messages: list[dict[str, Any]]) -> None:
    key = _cache_key(conversation_id)
    try:
        await bus.delete(key)
        for message in messages:
            await bus.push_capped(key, json.dumps(message), RECENT_CAP, RECENT_TTL)
    except BusUnavailable:
        pass


async def mark_read(
    app: web.Application, user: User, conversation_id: int, seq: int
) -> dict[str, Any]:
    """Move the user's read position and tell both members (read receipt + unread counts)."""
    async with app[keys.sessionmaker]() as db:
        read_seq = await store.mark_read(db, conversation_id, user.id, seq)
        members = await store.member_ids(db, conversation_id)
        conversation, _ = await store.conversation_for(db, conversation_id, user.id)
        total = await store.unread_total(db, user.id)
    unread = max(0, conversation.last_seq - read_seq)
    bus = app[BUS]
    receipt = {
        "type": "read",
        "conversation_id": conversation_id,
        "user_id": user.id,
        "seq": read_seq,
    }
    await asyncio.gather(
        *(
            bus.publish(
                user_channel(uid),
                {**receipt, "unread": unread, "unread_total": total} if uid == user.id else receipt,
            )
            for uid in members
        )
    )
    return {
        "conversation_id": conversation_id,
        "last_read_seq": read_seq,
        "unread": unread,
        "unread_total": total,
    }


async def announce_hidden(app: web.Application, message_id: int) -> None:
    """Tell both members' open tabs that a message was hidden by a moderator."""
    async with app[keys.sessionmaker]() as db:
        message = await store.get_message(db, message_id)
        if message is None:
            return
        members = await store.member_ids(db, message.conversation_id)
    await publish_to_members(
        app[BUS],
        members,
        {
            "type": "message_update",
            "conversation_id": message.conversation_id,
            "message": store.message_json(message, ""),
        },
    )


async def is_online(app: web.Application, user_id: int) -> bool:
    """True when the user has a live connection in any process."""
    try:
        return await app[BUS].presence_count(f"presence:user:{user_id}") > 0
    except BusUnavailable:
        return False

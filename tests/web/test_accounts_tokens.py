"""Mailed tokens: random, stored hashed, single-use under concurrency, expiring, per purpose."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from panda import keys
from panda.store.accounts import consume_token, create_token, hash_token, peek_token
from panda.store.models import OneTimeToken
from panda.store.types import utcnow


async def test_tokens_are_single_use_under_concurrency(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    maker = client.app[keys.sessionmaker]
    async with maker() as db:
        row = await db.get(type(user), user.id)
        raw = await create_token(db, row, "reset")
        await db.commit()

    async def use() -> bool:
        async with maker() as db:
            got = await consume_token(db, raw, "reset")
            await db.commit()
            return got is not None

    results = await asyncio.gather(*(use() for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]


async def test_token_purpose_expiry_and_hashing(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    async with client.app[keys.sessionmaker]() as db:
        row = await db.get(type(user), user.id)
        raw = await create_token(db, row, "verify")
        await db.commit()
        stored = await db.get(OneTimeToken, 1)
        assert stored is not None and stored.token_hash == hash_token(raw) != raw
        assert len(raw) >= 40
        # Another purpose does not accept it.
        assert await peek_token(db, raw, "reset") is None
        assert await consume_token(db, raw, "invite") is None
        assert (await peek_token(db, raw, "verify")) is not None
        stored.expires_at = utcnow() - timedelta(seconds=1)
        await db.commit()
        assert await consume_token(db, raw, "verify") is None
        for junk in ("", "short", "x" * 5000, "'; DROP TABLE one_time_tokens; --"):
            assert await consume_token(db, junk, "verify") is None


async def test_new_token_replaces_older_ones(client, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user("student")
    async with client.app[keys.sessionmaker]() as db:
        row = await db.get(type(user), user.id)
        first = await create_token(db, row, "reset")
        verify = await create_token(db, row, "verify")
        second = await create_token(db, row, "reset")
        await db.commit()
        assert await peek_token(db, first, "reset") is None
        assert await peek_token(db, second, "reset") is not None
        # Other purposes are untouched.
        assert await peek_token(db, verify, "verify") is not None

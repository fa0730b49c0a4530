"""The PostgreSQL and Redis test fixtures give real, isolated servers."""

from __future__ import annotations

import asyncpg
import pytest
import redis
from sqlalchemy import text

from panda import keys
from panda.store.db import create_engine
from tests.services import RedisServer, asyncpg_dsn

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_postgres_url_answers(postgres_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(postgres_url))
    try:
        assert await conn.fetchval("SELECT 1 + 1") == 2
    finally:
        await conn.close()


async def test_fresh_postgres_databases_are_migrated_and_separate(
    fresh_postgres_url: str, postgres_databases
) -> None:  # type: ignore[no-untyped-def]
    other = postgres_databases.create_migrated()
    assert other != fresh_postgres_url
    engine = create_engine(fresh_postgres_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE scratch (x integer)"))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            assert version
    finally:
        await engine.dispose()
    engine = create_engine(other)
    try:
        async with engine.connect() as conn:
            found = (await conn.execute(text("SELECT to_regclass('scratch')"))).scalar()
            assert found is None
    finally:
        await engine.dispose()
    postgres_databases.drop(other)
    assert other.rsplit("/", 1)[-1] not in postgres_databases.created


def test_fresh_redis_url_is_empty(fresh_redis_url: str) -> None:
    client = redis.Redis.from_url(fresh_redis_url)
    try:
        assert client.dbsize() == 0
        client.set("panda:test", "1")
        assert client.get("panda:test") == b"1"
    finally:
        client.close()


def test_private_redis_can_be_killed_and_restarted(redis_server_factory) -> None:  # type: ignore[no-untyped-def]
    server: RedisServer = redis_server_factory()
    port = server.port
    client = redis.Redis.from_url(server.url)
    client.set("k", "v")
    server.kill()
    assert not server.running
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.start()
    assert server.port == port
    assert client.ping()
    # Nothing is persisted: a restart loses the data, as a real crash of a cache would.
    assert client.get("k") is None
    client.close()


@pytest.mark.parametrize("settings", ["sqlite", "postgresql"], indirect=True)
async def test_app_runs_on_either_database(client, request: pytest.FixtureRequest) -> None:  # type: ignore[no-untyped-def]
    """`settings` can be parametrised indirectly to run an HTTP test on PostgreSQL too."""
    assert client.app[keys.engine].dialect.name == request.node.callspec.params["settings"]
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["database"] == "ok"

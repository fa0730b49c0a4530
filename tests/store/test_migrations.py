"""Migrations build the schema the models describe, and take it down again, on both databases."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from panda.store.db import create_engine
from panda.store.migrate import alembic_config, upgrade_async
from panda.store.models import Base

EXPECTED_CHAIN = ["0001", "0002", "0003", "0004", "0005", "0006"]


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await engine.dispose()


def test_revision_chain_is_linear_and_in_order() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
    assert len(script.get_heads()) == 1, "migrations must form one chain (one head)"
    chain = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert chain[: len(EXPECTED_CHAIN)] == EXPECTED_CHAIN


async def test_upgrade_to_head_then_downgrade_to_base(empty_database_url: str) -> None:
    url = empty_database_url
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    await upgrade_async(url)
    assert await _current_revision(url) == head
    model_tables = set(Base.metadata.tables)
    assert model_tables <= await _tables(url)

    # Downgrade runs Alembic's own event loop: keep it off ours, as upgrade_async does.
    import asyncio

    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
    assert await _current_revision(url) is None
    assert await _tables(url) <= {"alembic_version"}

    # And back up again: a downgrade must leave nothing behind that blocks the next upgrade.
    await upgrade_async(url)
    assert await _current_revision(url) == head
    assert model_tables <= await _tables(url)


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "render_as_batch": connection.dialect.name == "sqlite"},
    )
    return list(compare_metadata(context, Base.metadata))


async def test_models_and_migrations_agree(store_engine: AsyncEngine) -> None:
    """Autogenerate against a database migrated to head finds nothing to do."""
    async with store_engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == [], (
        "the models differ from the migrations; write the missing operations into your "
        f"area's migration file: {diff}"
    )

"""Bring a replay store's schema to the newest Alembic revision.

Runs on every open: a store at head is a no-op (idempotent), an older store is
upgraded before the first write. The migration scripts ship inside the package
(replay/migrations), so an installed wheel can migrate without a source tree.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from dispatchloop.replay.schema import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it serialises concurrent migrators on one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x64_6C_72_65_70_6C_61_79  # "dlreplay"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision shipped with this version of dispatchloop."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "replay migrations have no head revision"
    return head


def current_revision(conn: sa.Connection) -> str | None:
    """The revision a database is at, None for an empty database."""
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade_to_head(engine: sa.Engine) -> None:
    """Apply missing migrations in one locked transaction (PostgreSQL: an advisory lock;
    SQLite: BEGIN IMMEDIATE, the database's writer lock)."""
    head = head_revision()
    with engine.connect() as conn:
        if current_revision(conn) == head:
            return
    with engine.begin() as conn:
        # Two processes opening a new store at once (daemon + CLI) must not both run
        # the DDL: take the writer lock first; the loser then finds the store at head.
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        config = _config()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")

"""Alembic environment of the replay store.

The store passes an open connection in `config.attributes["connection"]`
(dispatchloop.replay.migrate); run by hand, the URL from alembic.ini is used.
The version table has its own name so that other Alembic users of the same
database (Optuna's RDB storage uses `alembic_version`) never collide with us.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

VERSION_TABLE = "replay_alembic_version"


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


_main()

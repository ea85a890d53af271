"""PostgreSQL: keep rows up to ~8 KB inline and uncompressed.

Events are ~1.9 KB, right at PostgreSQL's default TOAST threshold (~2 KB), so
many rows were pglz-compressed on the write path. toast_tuple_target = 8160
keeps typical events inline (larger ones are still TOASTed); measured faster
write_batch in benchmarks/store.py. SQLite has no TOAST: nothing to do.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE replay_events SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE replay_events RESET (toast_tuple_target)")

"""Create replay_events: one row per distinct event_id, raw bytes kept unchanged.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "replay_events",
        # INTEGER PRIMARY KEY on SQLite is the rowid: appends in arrival order.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        # Native uuid on PostgreSQL, 16 bytes on SQLite: a compact random-key index.
        sa.Column("event_id", sa.Uuid().with_variant(sa.LargeBinary(16), "sqlite"), nullable=False),
        sa.Column("episode_id", sa.Text(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("decided_at_us", sa.BigInteger(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
    )
    op.create_index("uq_replay_events_event_id", "replay_events", ["event_id"], unique=True)
    op.create_index("ix_replay_events_episode_step", "replay_events", ["episode_id", "step"])
    op.create_index("ix_replay_events_decided_at", "replay_events", ["decided_at_us"])


def downgrade() -> None:
    op.drop_table("replay_events")

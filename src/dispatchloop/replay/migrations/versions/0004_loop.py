"""The `run` loop's state: cycles, operator retrain requests, the leadership epoch.

- `loop_cycles`: one row per cycle (scope `*` for now; per-company later) with
  its trigger, current stage, outcome, registered version, reasons and per-stage
  timings (JSON), the leader (id and epoch) that ran it, and what the triggers
  need next time: the store's event count and the training window.
- `loop_retrain_requests`: `dispatchloop retrain` writes one; whichever instance
  leads consumes it (marks it with the cycle it started), so a request made
  against any instance reaches the leader.
- `loop_leadership`: one row per leadership term; its id is the fencing epoch a
  leader's cycles carry (a stale leader's epoch is lower than the current one).

Revision ID: 0004
Revises: 0002 (0003 after the merge with the registry)
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "loop_cycles",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("scope", sa.Text(), nullable=False, server_default="*"),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("leader_id", sa.Text(), nullable=False),
        sa.Column("leader_epoch", sa.BigInteger(), nullable=False),
        sa.Column("events_seen", sa.BigInteger(), nullable=True),
        sa.Column("window_start", _TS, nullable=True),
        sa.Column("window_end", _TS, nullable=True),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("finished_at", _TS, nullable=True),
    )
    op.create_index("ix_loop_cycles_outcome", "loop_cycles", ["outcome"])
    op.create_table(
        "loop_retrain_requests",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("cycle_id", sa.BigInteger(), nullable=True),
        sa.Column("consumed_at", _TS, nullable=True),
    )
    op.create_table(
        "loop_leadership",
        sa.Column("epoch", _ID, primary_key=True),
        sa.Column("leader_id", sa.Text(), nullable=False),
        sa.Column("acquired_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("loop_leadership")
    op.drop_table("loop_retrain_requests")
    op.drop_index("ix_loop_cycles_outcome", table_name="loop_cycles")
    op.drop_table("loop_cycles")

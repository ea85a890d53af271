"""Model registry: versions, scoped aliases, append-only alias history, decision
records and the transactional outbox of promotion events.

Lives in the replay store's database and migration chain so that one URL (SQLite by
default, PostgreSQL when shared) holds everything the daemon's leader writes, and
an alias move and its outbox row can commit in one transaction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "registry_versions",
        sa.Column("seq", _ID, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Text(), nullable=False, unique=True),
        sa.Column("content_sha256", sa.Text(), nullable=False, unique=True),
        sa.Column("model_id", sa.Text(), nullable=False),
        sa.Column("trainer", sa.Text(), nullable=False),
        sa.Column("featurizer_version", sa.Integer(), nullable=False),
        sa.Column("weights_sha256", sa.Text(), nullable=False),
        sa.Column("onnx_sha256", sa.Text(), nullable=True),
        sa.Column("card_json", sa.Text(), nullable=False),
        sa.Column("registered_at_us", sa.BigInteger(), nullable=False),
        sa.Column("registered_by", sa.Text(), nullable=False),
    )
    op.create_table(
        "registry_aliases",
        sa.Column("scope", sa.Text(), primary_key=True),
        sa.Column("alias", sa.Text(), primary_key=True),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("traffic_share", sa.Float(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "registry_alias_history",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("from_version", sa.Text(), nullable=True),
        sa.Column("to_version", sa.Text(), nullable=False),
        sa.Column("traffic_share", sa.Float(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decision_record_id", sa.Text(), nullable=True),
        sa.Column("override", sa.Boolean(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False, unique=True),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "ix_registry_alias_history_scope_alias", "registry_alias_history", ["scope", "alias", "id"]
    )
    op.create_table(
        "registry_decisions",
        sa.Column("record_id", sa.Text(), primary_key=True),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("record_json", sa.Text(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_registry_decisions_version", "registry_decisions", ["version"])
    op.create_table(
        "registry_outbox",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("event_id", sa.Text(), nullable=False, unique=True),
        sa.Column("topic_key", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at_us", sa.BigInteger(), nullable=False),
        sa.Column("published_at_us", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_index("ix_registry_outbox_unpublished", "registry_outbox", ["published_at_us", "id"])
    # Append-only history: on PostgreSQL a trigger refuses UPDATE and DELETE outright.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_APPEND_ONLY)
        op.execute(
            "CREATE TRIGGER registry_alias_history_append_only BEFORE UPDATE OR DELETE "
            "ON registry_alias_history FOR EACH ROW EXECUTE FUNCTION registry_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER registry_alias_history_no_{action.lower()} BEFORE {action} "
                "ON registry_alias_history BEGIN "
                "SELECT RAISE(ABORT, 'registry_alias_history is append-only'); END"
            )


_PG_APPEND_ONLY = """
CREATE FUNCTION registry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'registry_alias_history is append-only';
END $$
"""


def downgrade() -> None:
    for table in (
        "registry_outbox",
        "registry_decisions",
        "registry_alias_history",
        "registry_aliases",
        "registry_versions",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS registry_append_only()")

"""The registry's tables as SQLAlchemy Core metadata (the DDL is migration 0003).

Times are integer epoch microseconds as in the replay store, so both backends
compare and order them the same way.
"""

from __future__ import annotations

import sqlalchemy as sa

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

versions = sa.Table(
    "registry_versions",
    metadata,
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

aliases = sa.Table(
    "registry_aliases",
    metadata,
    sa.Column("scope", sa.Text(), primary_key=True),
    sa.Column("alias", sa.Text(), primary_key=True),
    sa.Column("version", sa.Text(), nullable=False),
    sa.Column("traffic_share", sa.Float(), nullable=False),
    sa.Column("generation", sa.BigInteger(), nullable=False),
    sa.Column("updated_at_us", sa.BigInteger(), nullable=False),
)

history = sa.Table(
    "registry_alias_history",
    metadata,
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

decisions = sa.Table(
    "registry_decisions",
    metadata,
    sa.Column("record_id", sa.Text(), primary_key=True),
    sa.Column("version", sa.Text(), nullable=False),
    sa.Column("verdict", sa.Text(), nullable=False),
    sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("record_json", sa.Text(), nullable=False),
    sa.Column("created_at_us", sa.BigInteger(), nullable=False),
)

outbox = sa.Table(
    "registry_outbox",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("event_id", sa.Text(), nullable=False, unique=True),
    sa.Column("topic_key", sa.Text(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Column("created_at_us", sa.BigInteger(), nullable=False),
    sa.Column("published_at_us", sa.BigInteger(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
)

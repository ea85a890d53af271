"""Throwaway PostgreSQL databases for tests and benchmarks, so runs never see each
other's rows. The admin URL comes from DISPATCHLOOP_TEST_PG_URL or the local default."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get("DISPATCHLOOP_TEST_PG_URL", DEFAULT_ADMIN_URL)


@contextmanager
def scratch_database(prefix: str = "dl_scratch") -> Iterator[str]:
    """Create a fresh database, yield its URL, drop it (even with connections left open)."""
    admin = admin_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with engine.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()

"""What `dispatchloop store stats` shows: the store's counts, time range and size.

Kept out of cli.py so the command stays a thin shell and the JSON shape has one
owner. Timestamps are ISO-8601 UTC with a `Z`, like the wire events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dispatchloop.replay.base import StoreStats
from dispatchloop.replay.engine import StoreMissingError, open_store


def read_stats(url: str) -> StoreStats:
    """Stats of the store (all zero if none was created yet); never creates one.

    Raises StoreUnavailableError when the database cannot be reached.
    """
    try:
        store = open_store(url, create=False)
    except StoreMissingError:
        return StoreStats(0, 0, None, None, 0)
    try:
        return store.stats()
    finally:
        store.close()


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def stats_document(stats: StoreStats) -> dict[str, Any]:
    """The `--json` output."""
    return {
        "events": stats.events,
        "episodes": stats.episodes,
        "first_decided_at": iso_utc(stats.first_decided_at),
        "last_decided_at": iso_utc(stats.last_decided_at),
        "size_bytes": stats.size_bytes,
    }


def stats_lines(stats: StoreStats) -> list[str]:
    """The human output: one fact per line."""
    size = "unknown" if stats.size_bytes is None else f"{stats.size_bytes / 2**20:,.1f} MiB"
    return [
        f"events:   {stats.events:,}",
        f"episodes: {stats.episodes:,}",
        f"first decided at: {iso_utc(stats.first_decided_at) or '-'}",
        f"last decided at:  {iso_utc(stats.last_decided_at) or '-'}",
        f"size on disk: {size}",
    ]

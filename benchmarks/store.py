"""Replay-store write path: `write_batch` throughput on SQLite and PostgreSQL.

Writes --events realistic events (dispatchloop.testing.events, ~1.9 KB each) in
batches of --batch, as the Kafka ingest loop does once per poll, then writes the
first 10 % again (all duplicates: the redelivery path). The peer measured in the
same run is the naive store: SQLite WAL, `INSERT OR IGNORE` on a TEXT UUID key,
ISO-8601 TEXT timestamps, same indexes, one durable commit per batch.
PostgreSQL runs twice: multi-row INSERTs (the SQLite path), and the COPY bulk path the store uses.

    .venv/bin/python benchmarks/store.py                    # 200k events, both backends
    .venv/bin/python benchmarks/store.py --events 20000 --no-postgresql   # smoke test
    .venv/bin/python benchmarks/store.py --no-postgresql --sqlite-page-sizes 4096,16384

Prints a Markdown table (copy it into benchmarks/BENCHMARKS.md with the load average).
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from dispatchloop.events import DispatchOutcomeEvent, parse_outcome
from dispatchloop.progress import progress
from dispatchloop.replay import IncomingEvent, engine, open_store
from dispatchloop.replay.sql_store import SqlReplayStore
from dispatchloop.testing.events import encode, event_stream
from dispatchloop.testing.postgres import scratch_database

NAIVE_DDL = (
    "CREATE TABLE events (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,"
    " episode_id TEXT NOT NULL, step INTEGER NOT NULL, decided_at TEXT NOT NULL,"
    " raw BLOB NOT NULL)",
    "CREATE INDEX ix_episode ON events (episode_id, step)",
    "CREATE INDEX ix_decided ON events (decided_at)",
)
Writer = Callable[[Sequence[IncomingEvent]], int]


def make_raws(n: int) -> list[bytes]:
    with progress("generating events", total=n) as bar:
        raws = []
        for event in event_stream(2026, n):
            raws.append(encode(event))
            bar.update()
    return raws


def parse_batch(raws: Sequence[bytes]) -> list[IncomingEvent]:
    """Validated as the ingest loop does; done outside the timed part, per batch, so
    200k parsed events are never all in memory (~4 GB)."""
    batch = []
    for raw in raws:
        parsed = parse_outcome(raw, 65_536)
        assert isinstance(parsed, DispatchOutcomeEvent)
        batch.append(IncomingEvent(parsed, raw))
    return batch


def timed_writes(writer: Writer, raws: Sequence[bytes], batch: int) -> tuple[int, float]:
    """Rows inserted and seconds spent inside the writer only."""
    inserted, elapsed = 0, 0.0
    with progress("writing", total=len(raws)) as bar:
        for index in range(0, len(raws), batch):
            events = parse_batch(raws[index : index + batch])
            started = time.perf_counter()
            inserted += writer(events)
            elapsed += time.perf_counter() - started
            bar.update(len(events))
    return inserted, elapsed


def naive_writer(path: Path) -> tuple[Writer, Callable[[], None]]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    for statement in NAIVE_DDL:
        conn.execute(statement)

    def write(batch: Sequence[IncomingEvent]) -> int:
        rows = [
            (str(e.event_id), e.episode_id, e.step, e.decided_at.isoformat(), raw)
            for e, raw in batch
        ]
        conn.execute("BEGIN")
        cursor = conn.executemany(
            "INSERT OR IGNORE INTO events (event_id, episode_id, step, decided_at, raw)"
            " VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
        return cursor.rowcount

    return write, conn.close


def store_writer(url: str, *, pg_copy: bool = True) -> tuple[Writer, Callable[[], None]]:
    opened = open_store(url)
    assert isinstance(opened, SqlReplayStore)
    store = SqlReplayStore(opened.engine, "benchmark", pg_copy=pg_copy)
    return (lambda batch: store.write_batch(batch).inserted), store.close


def measure(name: str, writer: Writer, raws: list[bytes], batch: int) -> dict[str, object]:
    inserted, elapsed = timed_writes(writer, raws, batch)
    redelivered = raws[: len(raws) // 10]
    again, dup_elapsed = timed_writes(writer, redelivered, batch)
    assert (inserted, again) == (len(raws), 0), f"{name}: {inserted}+{again} of {len(raws)}"
    return {
        "path": name,
        "new events/s": len(raws) / elapsed,
        "duplicates/s": len(redelivered) / dup_elapsed,
        "seconds": elapsed,
    }


def with_pg_database(run: Callable[[str], dict[str, object]]) -> dict[str, object]:
    with scratch_database("dl_bench") as url:
        return run(url)


def run_all(args: argparse.Namespace) -> list[dict[str, object]]:
    events = make_raws(args.events)
    results = []
    with tempfile.TemporaryDirectory(prefix="dl-store-bench-") as tmp:
        naive, close = naive_writer(Path(tmp) / "naive.db")
        results.append(measure("naive SQLite (TEXT key, OR IGNORE)", naive, events, args.batch))
        close()
        for page_size in args.sqlite_page_sizes:
            engine.SQLITE_PAGE_SIZE = page_size  # takes effect when the file is created
            store, close = store_writer(f"sqlite:///{tmp}/replay-{page_size}.db")
            name = f"store SQLite ({page_size // 1024} KiB pages)"
            results.append(measure(name, store, events, args.batch))
            close()
    if not args.postgresql:
        return results
    for pg_copy in (False, True):

        def run_pg(url: str, pg_copy: bool = pg_copy) -> dict[str, object]:
            writer, close_pg = store_writer(url, pg_copy=pg_copy)
            try:
                name = "COPY + INSERT SELECT" if pg_copy else "multi-row INSERT"
                return measure(f"store PostgreSQL ({name})", writer, events, args.batch)
            finally:
                close_pg()

        results.append(with_pg_database(run_pg))
    return results


def table(results: list[dict[str, object]]) -> str:
    lines = ["| path | new events/s | duplicates/s | seconds |", "|---|---|---|---|"]
    for row in results:
        lines.append(
            f"| {row['path']} | {row['new events/s']:,.0f} | {row['duplicates/s']:,.0f} "
            f"| {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--no-postgresql", dest="postgresql", action="store_false")
    parser.add_argument(
        "--sqlite-page-sizes",
        type=lambda text: [int(size) for size in text.split(",")],
        default=[engine.SQLITE_PAGE_SIZE],
        help="Comma-separated page sizes to compare, e.g. 4096,16384 (default: the store's).",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = run_all(args)
    load_after = os.getloadavg()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"{args.events:,} events in batches of {args.batch:,}, load average "
        f"{load_before[0]:.2f} before / {load_after[0]:.2f} after"
    )
    print(table(results))


if __name__ == "__main__":
    main()

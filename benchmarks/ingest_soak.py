"""Ingest soak: 100,000 events with 1 % hostile records, the real process SIGKILLed repeatedly.

For each store (SQLite, PostgreSQL): one 3-partition topic holding N valid events and
N/100 records drawn from the hostile zoo (`testing.events.HOSTILE_KINDS`: 20 kinds, each
at least twice, including records too large for the DLQ), then `dispatchloop ingest`
(the real CLI, a child process) is SIGKILLed at random moments K times and finally run
with --idle-exit. Checks: every valid event stored exactly once, every hostile record
dead-lettered exactly once with its reason, no run exited on its own (no crash), the
final run exits 0 with nothing unresolved. Prints a table; record it in BENCHMARKS.md.

    .venv/bin/python benchmarks/ingest_soak.py [--events 100000] [--kills 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from ingest_support import (
    create_topic,
    expected_identity,
    ingest_env,
    letter_identity,
    produce_hostile,
    read_dlq,
    start_ingest,
    stop,
    wait_until,
)

from dispatchloop.replay import open_store
from dispatchloop.testing.broker import start_broker
from dispatchloop.testing.events import HOSTILE_KINDS
from dispatchloop.testing.postgres import scratch_database


def store_count(url: str) -> int:
    store = open_store(url)
    try:
        return store.count_events()
    finally:
        store.close()


def soak(
    bootstrap: str, url: str, name: str, *, n: int, kills: int, work: Path
) -> dict[str, object]:
    """One store: produce, kill `kills` times, finish, verify; the row of the table."""
    rng = np.random.default_rng(7)
    topic = f"soak.{name}"
    create_topic(bootstrap, topic, 3)
    create_topic(bootstrap, f"{topic}.dlq", 3)
    n_bad = n // 100
    stream = produce_hostile(
        bootstrap,
        topic,
        n,
        seed=71,
        per_kind=2,
        extra_bad=max(0, n_bad - 2 * len(HOSTILE_KINDS)),
        partitions=3,
    )
    env = ingest_env(
        bootstrap, topic, url, f"g-{topic}", {"DISPATCHLOOP_KAFKA__MAX_POLL_RECORDS": "500"}
    )
    log_path = work / f"{name}.log"
    started = time.monotonic()
    crashed = 0
    for _ in range(kills):
        process = start_ingest(env, log_path)
        before = store_count(url)
        wait_until(lambda b=before: store_count(url) > b, timeout_s=120, what="progress")
        time.sleep(float(rng.uniform(0.5, 4.0)))
        crashed += stop(process, signal.SIGKILL) != -signal.SIGKILL
    final = start_ingest(env, log_path, "--idle-exit", "8")
    out, _ = final.communicate(timeout=1_800)
    wall = time.monotonic() - started
    summary = json.loads(out or b"{}")
    dead = read_dlq(bootstrap, f"{topic}.dlq")
    got = Counter(letter_identity(d.value, d.headers) for d in dead)
    want = Counter(expected_identity(value) for value, _ in stream.invalid)
    sources = [d.source for d in dead]
    store = open_store(url)
    try:
        ids = {str(e.event_id) for e in store.iter_events()}
        count = store.count_events()
    finally:
        store.close()
    return {
        "store": name,
        "events": n,
        "hostile": f"{len(stream.invalid)} ({len(HOSTILE_KINDS)} kinds)",
        "kills": kills,
        "crashes": crashed,
        "stored": f"{count:,} (expected {n:,})",
        "ids equal": ids == stream.valid_ids,
        "dead letters": f"{len(dead):,} (expected {len(stream.invalid):,}, "
        f"{'same records' if got == want else 'DIFFER'})",
        "DLQ copies": len(sources) - len(set(sources)),
        "reasons ok": Counter(d.reason for d in dead) == Counter(r for _, r in stream.invalid),
        "truncated": sum(d.headers.get("dlq.truncated") == b"true" for d in dead),
        "final exit": final.returncode,
        "unresolved": summary.get("unresolved"),
        "wall s": round(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dispatchloop-soak-"))
    load_before = os.getloadavg()
    broker = start_broker(log_dir=work)
    rows = []
    try:
        rows.append(
            soak(
                broker.bootstrap,
                f"sqlite:///{work / 'replay.db'}",
                "sqlite",
                n=args.events,
                kills=args.kills,
                work=work,
            )
        )
        if not args.skip_postgres:
            with scratch_database("dl_soak") as url:
                rows.append(
                    soak(
                        broker.bootstrap,
                        url,
                        "postgresql",
                        n=args.events,
                        kills=args.kills,
                        work=work,
                    )
                )
    finally:
        broker.stop()
    load_after = os.getloadavg()
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
        f"{load_before[0]:.2f} before / {load_after[0]:.2f} after"
    )
    columns = list(rows[0])
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()

"""What one canary look costs: running totals (the daemon) against a recount from the start.

A canary runs for up to a day and is looked at every five minutes. Since 2026-12-06 a
look reads only the events stored since the last look and adds them to each arm's
totals (`pipeline.canary.RegistryCanary`); the peer, measured in the same run, is a
fresh `RegistryCanary` per look: a recount of every event since the start, which is
what each look cost before (the old code read the same events through `iter_events`).

A scratch SQLite store and registry: champion v1, challenger v2 at 10 %, `--events`
outcome events since the canary's start (90 % v1), then `--new` more between looks.

    .venv/bin/python benchmarks/canary_looks.py [--events 100000] [--new 1000]

Prints a Markdown table (copy it into BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.pipeline.canary import CanaryConfig, RegistryCanary
from dispatchloop.registry import open_registry
from dispatchloop.registry.base import ModelRegistry
from dispatchloop.replay import open_store
from dispatchloop.replay.base import IncomingEvent, ReplayStore
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.settings import LoopSettings, RewardSettings
from dispatchloop.testing.events import make_event

LOOP = LoopSettings(canary_share=0.1, canary_min_decisions=10_000_000)  # never decisive


def _version(registry: ModelRegistry, root: Path, seed: int) -> str:
    torch.manual_seed(seed)
    config = DQNConfig(hidden_size=8, n_layers=1)
    network = CandidateQNetwork(config.hidden_size, config.n_layers)
    save_model(root / f"m{seed}", network, config, CardDraft(trainer="dqn"))
    return registry.register(root / f"m{seed}", actor="bench").version


def _write(
    store: ReplayStore, versions: tuple[str, str], n: int, start: datetime, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    batch: list[IncomingEvent] = []
    for index in range(n):
        doc: dict[str, Any] = make_event(rng, f"bench-{seed}-{index // 19}", index % 19, start)
        doc["decided_at"] = (start + timedelta(microseconds=index)).isoformat()
        version = versions[1] if rng.random() < 0.1 else versions[0]
        doc["action"].update(policy="dqn", model_version=version, propensity=0.9)
        raw = json.dumps(doc).encode()
        batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        if len(batch) == 5_000:
            store.write_batch(batch)
            batch.clear()
    store.write_batch(batch)


def _look(canary: RegistryCanary) -> tuple[float, int]:
    began = time.perf_counter()
    check = canary.check(lambda: True)
    assert check.action == "continue" and check.result is not None
    return time.perf_counter() - began, check.result.n_champion + check.result.n_challenger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'replay.db'}"
        registry, store = open_registry(url, root / "registry"), open_store(url)
        v1, v2 = _version(registry, root, 1), _version(registry, root, 2)
        registry.promote(v1, actor="bench", reason="champion", force=True)
        registry.promote(v2, actor="bench", reason="canary", alias="challenger",
                         traffic_share=0.1, force=True)  # fmt: skip
        started = registry.history("challenger")[-1].at
        _write(store, (v1, v2), args.events, started, seed=1)

        def canary() -> RegistryCanary:
            config = CanaryConfig.from_settings(LOOP)
            return RegistryCanary(
                registry, store, RewardSettings(), config, clock=lambda: datetime.now(UTC)
            )

        kept = canary()
        rows = [("first look (counts everything since the start)", *_look(kept))]
        for look in range(3):
            _write(store, (v1, v2), args.new, started, seed=10 + look)
            rows.append((f"look {look + 2}, running totals (+{args.new:,} events)", *_look(kept)))
            rows.append((f"look {look + 2}, recount from the start [peer]", *_look(canary())))
        registry.close()
        store.close()
    print(f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} "
          f"CPUs, Python {platform.python_version()}, SQLite; {args.events:,} events since the "
          f"canary's start, {args.new:,} more before each later look.\n")  # fmt: skip
    print("| look | seconds | decisions counted |")
    print("|---|---:|---:|")
    for name, seconds, counted in rows:
        print(f"| {name} | {seconds:.3f} | {counted:,} |")


if __name__ == "__main__":
    main()

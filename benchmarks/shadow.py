"""Live shadow scoring: coverage of the window's SNIPS interval, and the cost of a tick.

1. Coverage. Epsilon-greedy loggers (known propensities) play default-world
   episodes in the simulator, where every driver's reward is known exactly
   (`VecDispatchEnv.preview_rewards`). The shadowed model is deterministic: greedy
   (agrees with the logger most of the time) or an untrained candidate network
   (agrees rarely: large weights, small ESS). For each window of N consecutive
   logged decisions the truth is the model's exact mean reward on those same
   situations; the row reports how often the 95 % delta-method interval covers
   it, the mean width, the mean ESS, and the agreement. The unit test
   (tests/unit/evaluation/test_shadow.py) is a small synthetic version.
2. Cost. A real SQLite store of simulated events and two served models
   (champion + challenger): seconds per event of a tick (read + parse + featurize
   + score both + update) with the vectorised `greedy_choices`, against serving's
   per-request `decide` on the same events (the peer, measured in the same run).

    .venv/bin/python benchmarks/shadow.py           # ~1-2 min on 2 loaded cores
    .venv/bin/python benchmarks/shadow.py --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dispatchloop.daemon.shadow import LoggedDecision
from dispatchloop.decisions.featurizer import situation_from_event
from dispatchloop.evaluation.logged import simulate_logs
from dispatchloop.evaluation.shadow import ShadowWindow
from dispatchloop.events import DecideRequest, DispatchOutcomeEvent
from dispatchloop.replay import IncomingEvent, open_store
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import masked_argmax, numpy_scorer
from dispatchloop.serving.dispatcher import Routing, ServedModel, decide, greedy_choices
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import EpsilonGreedyPolicy, GreedyPolicy, LoggingPolicy
from dispatchloop.sim.producer import simulated_events
from dispatchloop.sim.scenario import Scenario


def _untrained(seed: int) -> CandidateQNetwork:
    torch.manual_seed(seed)
    return CandidateQNetwork(32, 2)


def coverage(windows: tuple[int, ...], repetitions: int) -> list[dict[str, object]]:
    scenario, reward = Scenario.default(), RewardSettings()
    rows = []
    network = numpy_scorer(_untrained(5))
    for epsilon in (0.3, 0.1):
        logger = EpsilonGreedyPolicy(GreedyPolicy(), epsilon, seed=1)
        episodes = max(windows) * repetitions // scenario.bookings_per_episode + 1
        sample = simulate_logs(logger, scenario, reward, list(range(1_000, 1_000 + episodes)))
        obs, logged = sample.observations, sample.decisions
        mask = obs["action_mask"].astype(bool)
        assert sample.true_rewards is not None
        targets = {
            "greedy": GreedyPolicy().act_batch(obs),
            "untrained net": masked_argmax(
                network.ranking_scores(obs["candidates"], obs["context"]), mask
            ),
        }
        for name, choices in targets.items():
            truth = sample.true_rewards[np.arange(len(choices)), choices]
            agree = choices == logged.actions
            for size in windows:
                covered, reported, widths, ess, agreement = 0, 0, [], [], []
                raw_covered = 0
                for rep in range(repetitions):
                    part = slice(rep * size, (rep + 1) * size)
                    window = ShadowWindow(size, confidence=0.95)
                    window.add(agree[part], logged.propensities[part], logged.rewards[part])
                    s = window.snapshot()
                    if np.isfinite(s.snips):  # reported (ESS >= min_ess)
                        reported += 1
                        covered += s.snips_ci.contains(float(truth[part].mean()))
                        widths.append(s.snips_ci.high - s.snips_ci.low)
                    raw = ShadowWindow(size, confidence=0.95, min_ess=2.0)
                    raw.add(agree[part], logged.propensities[part], logged.rewards[part])
                    r = raw.snapshot()
                    raw_covered += r.snips_ci.contains(float(truth[part].mean()))
                    ess.append(s.ess)
                    agreement.append(s.agreement)
                rows.append(
                    {
                        "logger": f"eps-greedy {epsilon}",
                        "model": name,
                        "window": size,
                        "reported": reported / repetitions,
                        "coverage": covered / reported if reported else float("nan"),
                        "raw coverage": raw_covered / repetitions,
                        "width": float(np.mean(widths)) if widths else float("nan"),
                        "ess": float(np.mean(ess)),
                        "agreement": float(np.mean(agreement)),
                    }
                )
    return rows


def cost(n_events: int, n_drivers: int) -> dict[str, object]:
    scenario = dataclasses.replace(Scenario.default(), n_drivers=n_drivers)
    models = [
        ServedModel(f"v{i}", "dqn", numpy_scorer(_untrained(i)), scenario.arrays.demand)
        for i in (1, 2)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'replay.db'}")
        docs = simulated_events(
            scenario, RewardSettings(), LoggingPolicy(GreedyPolicy(), "greedy"), n_events, seed=3
        )
        batch = []
        for doc in docs:
            raw = json.dumps(doc).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        store.write_batch(batch)
        reward = RewardSettings()
        started = time.perf_counter()  # the scorer's read: streamed, each event dropped
        stored = itertools.islice(store.iter_events_after(0, n_events), n_events)
        logged = [LoggedDecision.of(s.event, reward) for s in stored]
        streamed = time.perf_counter() - started
        started = time.perf_counter()  # the same from a list of parsed events (before 12-06)
        events = [s.event for s in store.events_after(0, n_events)]
        listed = [LoggedDecision.of(e, reward) for e in events]
        read = time.perf_counter() - started
        assert [x.action_index for x in listed] == [x.action_index for x in logged]
        situations = [situation_from_event(e) for e in events]
        masks = [s.eligible for s in situations]
        started = time.perf_counter()
        for model in models:
            greedy_choices(model, situations, masks)
        vectorised = time.perf_counter() - started
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for model in models:
            routing = Routing(champion=model)
            for e in events:
                request = DecideRequest(
                    decided_at=e.decided_at, booking=e.booking, candidates=e.candidates
                )
                decide(request, routing, 0.0, rng)
        per_request = time.perf_counter() - started
        store.close()
    return {
        "drivers": n_drivers,
        "events": n_events,
        "read+parse+situation us/event, streamed (the scorer)": 1e6 * streamed / n_events,
        "the same from a list (events_after)": 1e6 * read / n_events,
        "score 2 models us/event (greedy_choices)": 1e6 * vectorised / n_events,
        "score 2 models us/event (decide, peer)": 1e6 * per_request / n_events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    windows, repetitions = ((200, 500), 40) if args.quick else ((200, 500, 2_000), 100)
    print(
        "| logger | model | window | mean ESS | agreement | reported (ESS >= 30) "
        "| coverage when reported | coverage if always reported | mean width |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in coverage(windows, repetitions):
        print(
            f"| {row['logger']} | {row['model']} | {row['window']} | {row['ess']:.0f} "
            f"| {row['agreement']:.2f} | {row['reported']:.2f} | {row['coverage']:.2f} "
            f"| {row['raw coverage']:.2f} | {row['width']:.3f} |"
        )
    print()
    n_events = 1_000 if args.quick else 2_000
    rows = [cost(n_events, n) for n in (9, 40)]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print(
            "| "
            + " | ".join(
                f"{row[k]:.0f}" if isinstance(row[k], float) else str(row[k]) for k in keys
            )
            + " |"
        )


if __name__ == "__main__":
    main()

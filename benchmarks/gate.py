"""Promotion gate: estimator coverage, type-I error, sabotage, sequential savings, wall time.

Five checks, each the full version of a smaller unit test (tests/unit/evaluation):

1. OPE coverage: 50 repetitions; each logs 200 default-world episodes with an
   epsilon-greedy (0.3) logger of known propensities, then estimates greedy,
   greedy mixed with random on half the decisions, and random. The truth is the
   exact per-decision value on 10,000 other logged episodes (every action's
   reward is known in the simulator). Coverage of the 95 % intervals, their
   widths, and the spread of the point estimates over repetitions (DR vs IPS).
   Plus: a logger that never explores must leave the OPE gate undecided.
2. Type-I error on simulator episodes: 200 gates of a candidate identical in
   distribution to the champion (greedy mixing random on 5 % of decisions, other
   exploration seed), at the configured settings; promote rate vs alpha / 2.
3. Sabotage: champion = greedy mixing random on 5 % of decisions; 10 worse
   candidates mix more (6.2-25 %), 10 better or equal mix less (0-5 %). Each
   candidate's true gap is measured on 3,000 paired VALIDATION episodes (never
   TEST). All 20 are gated on TEST seeds with OPE on 500 logged episodes.
   3b. The same with a trained DQN: champion = the policy-quality DQN with Gaussian
   noise (0.3 of each tensor's std) added to its weights; 10 candidates with less
   (0-0.25) or more (0.6-2.0) noise, classed by their measured VALIDATION gap.
4. Sequential vs fixed design: synthetic normal differences at the measured
   per-episode sd; the power and mean episodes of the 5-look design, and the
   fixed sample size with the same power at the same alpha.
5. Wall time of one full gate with a trained DQN candidate against greedy:
   default world, and store-calibrated (scenario fit + logs featurized + judge).

    .venv/bin/python benchmarks/gate.py            # everything (~12 min on 2 loaded cores)
    .venv/bin/python benchmarks/gate.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from copy import deepcopy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from dispatchloop.evaluation.gate import GateThresholds, support_problem
from dispatchloop.evaluation.gate_run import run_gate
from dispatchloop.evaluation.judge import Contender, judge
from dispatchloop.evaluation.logged import action_probabilities, simulate_logs, true_value
from dispatchloop.evaluation.offpolicy import compare_policies, fit_reward_model, reward_features
from dispatchloop.evaluation.sequential import make_design, sequential_test
from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay import IncomingEvent, open_store
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft
from dispatchloop.rl.dqn import train_dispatch
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import GateSettings, RewardSettings, Settings
from dispatchloop.sim.policies import EpsilonGreedyPolicy, GreedyPolicy, RandomPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.rollout import run_episodes, train_seeds, validation_seeds
from dispatchloop.sim.scenario import Scenario

WORLD, REWARD = Scenario.default(), RewardSettings()
THRESHOLDS = GateThresholds.from_settings(GateSettings())
CHAMPION_EPSILON = 0.05
WORSE = (0.062, 0.065, 0.07, 0.075, 0.08, 0.09, 0.10, 0.12, 0.16, 0.25)
BETTER = (0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05)


def mixed(epsilon: float, seed: int) -> EpsilonGreedyPolicy:
    return EpsilonGreedyPolicy(GreedyPolicy(), epsilon, seed=seed)


REFERENCE_EPISODES = 10_000
"""Logged episodes the truth is computed on: its own error (~0.02 per decision) must be
small against the estimators' (~0.14), or it eats into the measured coverage (with 2,000
episodes, the first run of 2026-12-02, it cost about 1.5 points)."""


def reference_truth(targets: dict[str, Any], episodes: int) -> dict[str, float]:
    """Exact per-decision value of each target on `episodes` other logged episodes (chunked)."""
    chunk = 2_000
    values: dict[str, list[float]] = {name: [] for name in targets}
    for start in range(0, episodes, chunk):
        seeds = validation_seeds(min(chunk, episodes - start), 900_000 + start)
        reference = simulate_logs(mixed(0.3, 99 + start), WORLD, REWARD, seeds)
        for name, policy in targets.items():
            values[name].append(true_value(policy, reference))
    return {name: float(np.mean(v)) for name, v in values.items()}  # equal-sized chunks


def coverage(reps: int, episodes: int) -> dict[str, Any]:
    targets = {"greedy": GreedyPolicy(), "greedy-eps0.5": mixed(0.5, 7), "random": RandomPolicy(7)}
    truth = reference_truth(targets, REFERENCE_EPISODES)
    keys = ("ips", "snips", "dr")
    hits = {t: dict.fromkeys(keys, 0) for t in targets}
    widths: dict[str, dict[str, list[float]]] = {t: {k: [] for k in keys} for t in targets}
    values: dict[str, dict[str, list[float]]] = {t: {k: [] for k in keys} for t in targets}
    started = time.perf_counter()
    for rep in range(reps):
        sample = simulate_logs(
            mixed(0.3, rep), WORLD, REWARD, train_seeds(episodes, episodes * rep)
        )
        rng = np.random.default_rng(rep)
        obs = sample.observations
        q_hat = fit_reward_model(
            reward_features(obs["candidates"].astype(float), obs["context"].astype(float)),
            sample.decisions,
            rng,
        )
        probs = {name: action_probabilities(p, obs) for name, p in targets.items()}
        for name in targets:
            result = compare_policies(
                probs[name],
                probs["greedy"],
                sample.decisions,
                q_hat,
                rng,
                confidence=0.95,
                n_bootstrap=1_000,
            )
            for key in keys:
                estimate = getattr(result.candidate, key)
                hits[name][key] += estimate.ci.contains(truth[name])
                widths[name][key].append(estimate.ci.high - estimate.ci.low)
                values[name][key].append(estimate.value)
    never = simulate_logs(GreedyPolicy(), WORLD, REWARD, train_seeds(200, 5_000_000))
    target = action_probabilities(RandomPolicy(0), never.observations)
    greedy = action_probabilities(GreedyPolicy(), never.observations)
    no_explore = compare_policies(
        target,
        greedy,
        never.decisions,
        np.zeros(target.shape),
        np.random.default_rng(0),
        confidence=0.99,
        n_bootstrap=200,
    )
    return {
        "reps": reps,
        "episodes_per_rep": episodes,
        "truth": truth,
        "coverage": {t: {k: hits[t][k] / reps for k in keys} for t in targets},
        "mean_width": {t: {k: float(np.mean(widths[t][k])) for k in keys} for t in targets},
        "sd_of_estimates": {t: {k: float(np.std(values[t][k])) for k in keys} for t in targets},
        "no_exploration_logger": support_problem(no_explore.candidate, THRESHOLDS),
        "seconds": time.perf_counter() - started,
    }


def type_one(reps: int) -> dict[str, Any]:
    promoted, verdicts, episodes = 0, {}, []
    started = time.perf_counter()
    for rep in range(reps):
        record = judge(
            Contender("same", mixed(CHAMPION_EPSILON, 10_000 + rep)),
            Contender("champion", mixed(CHAMPION_EPSILON, rep)),
            WORLD,
            REWARD,
            THRESHOLDS,
            seed_offset=rep * THRESHOLDS.max_episodes,
        ).record
        promoted += record.verdict == "promote"
        verdicts[record.verdict] = verdicts.get(record.verdict, 0) + 1
        episodes.append(record.metrics["sim_episodes"])
    alpha_side = (1 - THRESHOLDS.confidence) / 2
    return {
        "reps": reps,
        "promote_rate": promoted / reps,
        "one_sided_alpha": alpha_side,
        "binomial_95_upper_if_true_rate_is_alpha": float(
            stats.binom.ppf(0.95, reps, alpha_side) / reps
        ),
        "verdicts": verdicts,
        "mean_episodes": float(np.mean(episodes)),
        "seconds": time.perf_counter() - started,
    }


def true_gap(epsilon: float, episodes: int) -> tuple[float, float, float]:
    """Candidate minus champion mean reward on VALIDATION seeds, its 99 % t half-width,
    and the champion's mean (paired, so the gap is sharp)."""
    seeds = validation_seeds(episodes, offset=2_000_000)
    champion = run_episodes(mixed(CHAMPION_EPSILON, 1), WORLD, REWARD, seeds).returns
    candidate = run_episodes(mixed(epsilon, 2), WORLD, REWARD, seeds).returns
    diff = candidate - champion
    half = float(stats.t.ppf(0.995, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
    return float(diff.mean()), half, float(champion.mean())


def sabotage(truth_episodes: int, log_episodes: int) -> dict[str, Any]:
    logs = simulate_logs(mixed(0.2, 9), WORLD, REWARD, train_seeds(log_episodes, 6_000_000))
    champion = Contender(f"eps{CHAMPION_EPSILON}", mixed(CHAMPION_EPSILON, 1))
    rows = []
    started = time.perf_counter()
    for index, epsilon in enumerate(WORSE + BETTER):
        gap, half, champion_mean = true_gap(epsilon, truth_episodes)
        judgement = judge(
            Contender(f"eps{epsilon}", mixed(epsilon, 100 + index)),
            champion,
            WORLD,
            REWARD,
            THRESHOLDS,
            logged=logs,
            seed_offset=index * THRESHOLDS.max_episodes,
        )
        record = judgement.record
        rows.append(
            {
                "epsilon": epsilon,
                "class": "worse" if epsilon in WORSE else "better_or_equal",
                "true_gap": gap,
                "true_gap_99ci_half": half,
                "true_gap_pct_of_champion": 100 * gap / abs(champion_mean),
                "verdict": record.verdict,
                "episodes": record.metrics.get("sim_episodes"),
                "looks": record.metrics.get("sim_looks"),
                "ope_dr_delta": record.metrics.get("ope_dr_delta"),
                "reasons": list(record.reasons),
                "seconds": judgement.seconds,
            }
        )
    worse = [r for r in rows if r["class"] == "worse"]
    better = [r for r in rows if r["class"] == "better_or_equal"]
    strictly_better = [r for r in better if r["true_gap"] - r["true_gap_99ci_half"] > 0]
    return {
        "rows": rows,
        "worse_promoted": sum(r["verdict"] == "promote" for r in worse),
        "worse_all_at_least_2pct": all(r["true_gap_pct_of_champion"] <= -2 for r in worse),
        "better_promoted": sum(r["verdict"] == "promote" for r in better),
        "strictly_better": len(strictly_better),
        "strictly_better_promoted": sum(r["verdict"] == "promote" for r in strictly_better),
        "mean_episodes": float(np.mean([r["episodes"] for r in rows])),
        "seconds": time.perf_counter() - started,
    }


def trained_dqn(train_steps: int) -> tuple[Any, DQNConfig]:
    """The policy-quality DQN configuration trained in the default world (training seed 0)."""
    overrides = json.loads(Path(__file__).with_name("policy_quality_dqn.json").read_text())
    config = DQNConfig.from_dict(
        {k: v for k, v in overrides.items() if k not in ("distill", "worlds")}
    )
    return train_dispatch(config, WORLD, REWARD, train_steps, seed=0).q_network, config


def noisy(network: Any, scale: float, seed: int) -> DQNPolicy:
    """A copy of the network with N(0, (scale * std of each tensor)^2) added to every weight."""
    copy = deepcopy(network)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copy.parameters():
            spread = float(parameter.std()) if parameter.numel() > 1 else 0.0
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * spread)
    return DQNPolicy(copy, name=f"dqn-noise{scale:g}")


def sabotage_dqn(train_steps: int, truth_episodes: int) -> dict[str, Any]:
    """Champion: a trained DQN with weight noise 0.3; candidates: less noise or more.

    Classes come from the measured gap on VALIDATION seeds (noise draws differ, so
    the scale alone does not order them): worse = at least 2 % of the champion's mean
    reward below it, better = above it by its 99 % interval, the rest `neither`.
    """
    network, _ = trained_dqn(train_steps)
    champion_policy = noisy(network, 0.3, seed=0)
    seeds = validation_seeds(truth_episodes, offset=3_000_000)
    champion_returns = run_episodes(champion_policy, WORLD, REWARD, seeds).returns
    logs = simulate_logs(mixed(0.2, 9), WORLD, REWARD, train_seeds(500, 6_000_000))
    rows = []
    for index, scale in enumerate((0.0, 0.1, 0.15, 0.2, 0.25, 0.6, 0.8, 1.0, 1.5, 2.0)):
        candidate = noisy(network, scale, seed=index + 1)
        diff = run_episodes(candidate, WORLD, REWARD, seeds).returns - champion_returns
        half = float(stats.t.ppf(0.995, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
        pct = 100 * float(diff.mean()) / abs(float(champion_returns.mean()))
        kind = "worse" if pct <= -2 else "better" if diff.mean() - half > 0 else "neither"
        judgement = judge(
            Contender(candidate.name, candidate),
            Contender("dqn-noise0.3", champion_policy),
            WORLD,
            REWARD,
            THRESHOLDS,
            logged=logs,
            seed_offset=(40 + index) * 2_000,
        )
        record = judgement.record
        rows.append(
            {
                "noise": scale,
                "class": kind,
                "true_gap": float(diff.mean()),
                "true_gap_99ci_half": half,
                "true_gap_pct_of_champion": pct,
                "verdict": record.verdict,
                "episodes": record.metrics.get("sim_episodes"),
                "seconds": judgement.seconds,
                "reasons": list(record.reasons),
            }
        )
    return {
        "rows": rows,
        "worse": sum(r["class"] == "worse" for r in rows),
        "worse_promoted": sum(r["class"] == "worse" and r["verdict"] == "promote" for r in rows),
        "better": sum(r["class"] == "better" for r in rows),
        "better_promoted": sum(r["class"] == "better" and r["verdict"] == "promote" for r in rows),
        "neither_promoted": sum(
            r["class"] == "neither" and r["verdict"] == "promote" for r in rows
        ),
    }


def sequential_vs_fixed(sd: float, reps: int) -> list[dict[str, Any]]:
    """Power and mean episodes of the 5-look design vs the fixed n with the same power."""
    design = make_design(THRESHOLDS.max_episodes, THRESHOLDS.looks, THRESHOLDS.confidence)
    rng = np.random.default_rng(0)
    out = []
    z_alpha = stats.norm.ppf(1 - design.alpha / 2)
    for effect in (1.0, 1.5, 2.0, 3.0, 5.0):
        promoted, used = 0, []
        for _ in range(reps):
            result = sequential_test(rng.normal(effect, sd, design.looks[-1]), design, 0.0)
            promoted += result.outcome == "clears"
            used.append(result.final.episodes)
        power = promoted / reps
        # A power of 1 in `reps` runs is taken as 1 - 1/(2 reps), so the fixed n stays finite.
        target = min(power, 1.0 - 0.5 / reps)
        fixed = int(np.ceil(((z_alpha + stats.norm.ppf(target)) * sd / effect) ** 2))
        out.append(
            {
                "effect": effect,
                "power": power,
                "sequential_mean_episodes": float(np.mean(used)),
                "fixed_episodes_same_power": fixed,
            }
        )
    return out


def _fill_store(url: str, events: int) -> None:
    store = open_store(url)
    try:
        logger = LoggingPolicy(GreedyPolicy(), "greedy")
        batch = []
        for event in simulated_events(WORLD, REWARD, logger, events, seed=21, epsilon=0.2):
            raw = json.dumps(event).encode()
            batch.append(IncomingEvent(DispatchOutcomeEvent.model_validate_json(raw), raw))
        store.write_batch(batch)
    finally:
        store.close()


def wall_time(train_steps: int, store_events: int) -> dict[str, Any]:
    network, config = trained_dqn(train_steps)
    out: dict[str, Any] = {"train_steps": train_steps, "store_events": store_events}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "dqn-candidate"
        save_model(model, network, config, CardDraft(model_version="dqn-candidate"))
        url = f"sqlite:///{tmp}/replay.db"
        _fill_store(url, store_events)
        settings = Settings(data_dir=Path(tmp), store_url=url)  # type: ignore[arg-type]
        for scenario in ("default", "store"):
            started = time.perf_counter()
            judgement = run_gate(
                settings,
                candidate=str(model),
                champion="greedy",
                scenario=scenario,
                max_episodes=None,
                show_bar=False,
            )
            record = judgement.record
            out[scenario] = {
                "seconds": time.perf_counter() - started,
                "verdict": record.verdict,
                "episodes": record.metrics.get("sim_episodes"),
                "looks": record.metrics.get("sim_looks"),
                "sim_reward_delta": record.metrics.get("sim_reward_delta"),
                "ci": [
                    record.metrics.get("sim_reward_delta_low"),
                    record.metrics.get("sim_reward_delta_high"),
                ],
                "reasons": list(record.reasons),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller repetitions (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON results here")
    parser.add_argument(
        "--only", default="coverage,typeone,sabotage,sabotage_dqn,sequential,walltime"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    quick, only = args.quick, set(args.only.split(","))
    result: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_at_start": os.getloadavg(),
        "gate_settings": GateSettings().model_dump(),
    }
    if "coverage" in only:
        result["coverage"] = coverage(reps=8 if quick else 50, episodes=200)
        print(json.dumps(result["coverage"], indent=1), flush=True)
    if "typeone" in only:
        result["type_one"] = type_one(reps=20 if quick else 200)
        print(json.dumps(result["type_one"], indent=1), flush=True)
    if "sabotage" in only:
        result["sabotage"] = sabotage(1_000 if quick else 3_000, 500)
        print(json.dumps({k: v for k, v in result["sabotage"].items() if k != "rows"}), flush=True)
        for row in result["sabotage"]["rows"]:
            print({k: row[k] for k in ("epsilon", "true_gap", "verdict", "episodes", "looks")})
    if "sabotage_dqn" in only:
        result["sabotage_dqn"] = sabotage_dqn(5_000 if quick else 30_000, 1_000 if quick else 3_000)
        print(json.dumps({k: v for k, v in result["sabotage_dqn"].items() if k != "rows"}))
        for row in result["sabotage_dqn"]["rows"]:
            print({k: row[k] for k in ("noise", "class", "true_gap", "verdict", "episodes")})
    if "sequential" in only:
        sd = 19.0
        result["sequential"] = {"sd": sd, "rows": sequential_vs_fixed(sd, 500 if quick else 4_000)}
        print(json.dumps(result["sequential"], indent=1), flush=True)
    if "walltime" in only:
        result["wall_time"] = wall_time(5_000 if quick else 30_000, 2_000 if quick else 19_000)
        print(json.dumps(result["wall_time"], indent=1), flush=True)
    result["load_at_end"] = os.getloadavg()
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

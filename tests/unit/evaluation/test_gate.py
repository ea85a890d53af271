"""The gate: decision rules on hand-made evidence, and judgements of policies in the simulator.

The full sabotage suite (20 candidates) and the 200-repetition type-I check on
simulator episodes are in benchmarks/gate.py; here a smaller version of each.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from dispatchloop.evaluation.gate import (
    Evidence,
    GateThresholds,
    Guardrail,
    Sanity,
    decide,
)
from dispatchloop.evaluation.judge import Contender, JudgementInterruptedError, judge
from dispatchloop.evaluation.logged import simulate_logs
from dispatchloop.evaluation.paired import Interval
from dispatchloop.evaluation.sequential import make_design, sequential_test
from dispatchloop.events import DecisionRecord
from dispatchloop.rl.networks import CandidateQNetwork
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import GateSettings, RewardSettings
from dispatchloop.sim.policies import EpsilonGreedyPolicy, GreedyPolicy
from dispatchloop.sim.rollout import train_seeds
from dispatchloop.sim.scenario import Scenario

THRESHOLDS = GateThresholds.from_settings(GateSettings(max_episodes=600, looks=3))


def _evidence(effect: float, late_rise: float = 0.0, sane: bool = True) -> Evidence:
    design = make_design(600, 3, 0.99)
    diffs = np.random.default_rng(0).normal(effect, 5.0, 600)
    guardrails = tuple(
        Guardrail(name, rise, Interval(rise - 0.001, rise + 0.001), 0.02)
        for name, rise in (
            ("late_rate", late_rise),
            ("cancel_rate", 0.0),
            ("mean_pickup_delay", 0.0),
            ("empty_km", 0.0),
        )
    )
    return Evidence(
        record_id=str(uuid.uuid4()),
        created_at=datetime.now(UTC),
        candidate="v2",
        champion="v1",
        sanity=Sanity(sane, "checked" if sane else "the candidate gave NaN probabilities"),
        paired=sequential_test(diffs, design, 0.0),
        guardrails=guardrails,
        ope=None,
        ope_note="no logged events were given",
        scenario=None,
    )


def _reasons_match(record: DecisionRecord) -> None:
    undecided_or_failed = [g for g in record.gates if g.passed is not True]
    assert len(record.reasons) == max(1, len(undecided_or_failed))
    for gate in undecided_or_failed:
        assert any(reason.startswith(gate.name) for reason in record.reasons)


@pytest.mark.parametrize(
    ("effect", "late_rise", "sane", "verdict"),
    [
        (3.0, 0.0, True, "promote"),  # OPE undecided (no logs) does not block: reported
        (-3.0, 0.0, True, "reject"),
        (3.0, 0.02, True, "reject"),  # a guardrail regression beyond its margin
        (3.0, 0.0045, True, "insufficient_evidence"),  # guardrail interval reaches the margin
        (0.0, 0.0, True, "insufficient_evidence"),
        (3.0, 0.0, False, "reject"),
    ],
)
def test_decision_rules(effect: float, late_rise: float, sane: bool, verdict: str) -> None:
    record = decide(_evidence(effect, late_rise, sane), THRESHOLDS)
    assert record.verdict == verdict
    _reasons_match(record)
    assert {g.name for g in record.gates} >= {"paired_sim", "ope.dr", "guardrail.empty_km"}
    assert all(g.passed is None for g in record.gates if g.name.startswith("ope."))
    DecisionRecord.model_validate_json(record.model_dump_json())  # round-trips the contract


WORLD, REWARD = Scenario.default(), RewardSettings()


def _judge(candidate: Contender, champion: Contender, **kwargs: object) -> DecisionRecord:
    return judge(candidate, champion, WORLD, REWARD, THRESHOLDS, **kwargs).record  # type: ignore[arg-type]


def test_a_nan_network_is_rejected_with_a_reason_and_never_played() -> None:
    network = CandidateQNetwork(16, 1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.fill_(float("nan"))
    record = _judge(Contender("nan", DQNPolicy(network)), Contender("greedy", GreedyPolicy()))
    assert record.verdict == "reject"
    assert record.gates[0].name == "candidate.sane" and record.gates[0].passed is False
    assert "non-finite" in record.reasons[0]


def test_an_identical_candidate_is_not_promoted() -> None:
    record = _judge(Contender("greedy", GreedyPolicy()), Contender("greedy", GreedyPolicy()))
    assert record.verdict == "insufficient_evidence"
    assert record.metrics["sim_episodes"] == 600


@pytest.mark.slow
def test_sabotaged_candidates_are_never_promoted_and_a_clearly_better_one_is() -> None:
    """Champion: greedy mixed with random on 5 % of decisions; candidates by construction.

    Worse: more random decisions (10 %, 20 %: >= 2 % of mean reward worse, see
    benchmarks/gate.py for the measured gaps); better: pure greedy.
    """
    champion = Contender("eps0.05", EpsilonGreedyPolicy(GreedyPolicy(), 0.05, seed=1))
    logs = simulate_logs(
        EpsilonGreedyPolicy(GreedyPolicy(), 0.2, seed=9), WORLD, REWARD, train_seeds(300)
    )
    for epsilon in (0.1, 0.2):
        worse = Contender(f"eps{epsilon}", EpsilonGreedyPolicy(GreedyPolicy(), epsilon, seed=2))
        assert _judge(worse, champion, logged=logs).verdict == "reject"
    better = _judge(Contender("greedy", GreedyPolicy()), champion, logged=logs)
    assert better.verdict == "promote", better.reasons
    assert next(g for g in better.gates if g.name == "ope.dr").passed is True


def test_the_stop_flag_abandons_between_looks() -> None:
    with pytest.raises(JudgementInterruptedError, match="look 1"):
        _judge(
            Contender("greedy", GreedyPolicy()), Contender("g", GreedyPolicy()), stop=lambda: True
        )

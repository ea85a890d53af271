"""`judge`: gather the evidence on one candidate against the champion and decide.

The library call behind `dispatchloop gate` and the daemon's judge stage. It
takes policies, a scenario, optional logged decisions and thresholds (never
`Settings`), changes no process-wide state, and returns the decision record
with the evidence behind it (for the report). Steps:

1. sanity: the candidate's probabilities on probe situations (TEST seeds) must be
   finite and on eligible drivers only; a diverged or NaN network stops here;
2. paired simulator A/B on TEST seeds with common random numbers (same seed, same
   bookings, fleet and cancellation dice for both), look by look: each look plays
   only the episodes it adds, in vectorised batches; stop when the reward test is
   decided and, if it clears, every guardrail is decided too (the intervals hold
   simultaneously over looks, so any stopping rule keeps the error rate);
3. off-policy estimates of both policies on the logged decisions (when given);
4. `gate.decide`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from dispatchloop.errors import TransientError
from dispatchloop.evaluation.gate import (
    Evidence,
    GateThresholds,
    Guardrail,
    Sanity,
    decide,
)
from dispatchloop.evaluation.logged import LoggedSample, action_probabilities
from dispatchloop.evaluation.offpolicy import (
    OffPolicyComparison,
    compare_policies,
    fit_reward_model,
    reward_features,
    with_propensity,
)
from dispatchloop.evaluation.paired import FloatArray, Interval
from dispatchloop.evaluation.report import RETURN
from dispatchloop.evaluation.sequential import (
    SequentialResult,
    analyse_look,
    make_design,
)
from dispatchloop.evaluation.simulated import GUARDRAILS, episode_metrics
from dispatchloop.events import DecisionRecord, ScenarioRef
from dispatchloop.progress import Progress
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy, Policy, ProbabilisticPolicy
from dispatchloop.sim.rollout import run_episodes, test_seeds
from dispatchloop.sim.scenario import Scenario
from dispatchloop.sim.vector import VecDispatchEnv

PROBE_EPISODES = 16
StopFlag = Callable[[], bool]
"""Returns True when the caller wants the judgement abandoned (e.g. `threading.Event.is_set`)."""


class JudgementInterruptedError(TransientError):
    """The stop flag was raised between looks: no verdict, nothing to record; retry later."""


class Contender(NamedTuple):
    """A policy with the name the decision record gives it."""

    label: str
    """Version, directory name or baseline name (`greedy`)."""
    policy: Policy
    """What plays the episodes (a `ProbabilisticPolicy` for off-policy estimates)."""


class Judgement(NamedTuple):
    """The decision record and what it was decided on (the report draws from it)."""

    record: DecisionRecord
    """The record to store, whatever its verdict."""
    evidence: Evidence
    """What `gate.decide` read."""
    differences: FloatArray
    """Per-episode candidate minus champion reward, in TEST-seed order (empty if not played)."""
    seconds: float
    """Wall time of the judgement."""


def judge(
    candidate: Contender,
    champion: Contender,
    scenario: Scenario,
    reward: RewardSettings,
    thresholds: GateThresholds,
    *,
    logged: LoggedSample | None = None,
    logged_note: str = "no logged events were given",
    window: tuple[datetime, datetime] | None = None,
    seed_offset: int = 0,
    stop: StopFlag | None = None,
    progress: Progress | None = None,
) -> Judgement:
    """Judge `candidate` against `champion` in `scenario` (see the module docstring)."""
    started = datetime.now(UTC)
    clock = _Clock()
    sanity = check_sanity(candidate, scenario, reward, seed_offset)
    paired: SequentialResult | None = None
    guardrails: tuple[Guardrail, ...] = ()
    differences: FloatArray = np.zeros(0)
    if sanity.passed:
        try:
            paired, guardrails, differences = _paired_test(
                candidate,
                champion,
                scenario,
                reward,
                thresholds,
                seed_offset=seed_offset,
                stop=stop,
                progress=progress,
            )
        except (ValueError, ArithmeticError) as exc:
            sanity = Sanity(False, f"the candidate failed while playing TEST episodes: {exc}")
    ope, note = _off_policy(candidate, champion, logged, thresholds, seed_offset)
    if logged is None:
        note = logged_note
    evidence = Evidence(
        record_id=str(uuid.uuid4()),
        created_at=started,
        candidate=candidate.label,
        champion=champion.label,
        sanity=sanity,
        paired=paired,
        guardrails=guardrails,
        ope=ope,
        ope_note=note,
        scenario=ScenarioRef(fingerprint=scenario.fingerprint(), window=window),
    )
    return Judgement(decide(evidence, thresholds), evidence, differences, clock.seconds())


class _Clock:
    def __init__(self) -> None:
        self._start = datetime.now(UTC)

    def seconds(self) -> float:
        return (datetime.now(UTC) - self._start).total_seconds()


def check_sanity(
    candidate: Contender, scenario: Scenario, reward: RewardSettings, seed_offset: int
) -> Sanity:
    """Probe the candidate on the situations greedy meets in the first TEST episodes.

    Its probabilities must be finite, sum to 1 and stay on eligible drivers, and its
    choices must be eligible: a diverged network (NaN weights) would otherwise still
    "choose" (NumPy's argmax picks the first NaN) and be judged on noise.
    """
    seeds = test_seeds(PROBE_EPISODES, offset=seed_offset)
    env = VecDispatchEnv(scenario, reward, len(seeds))
    obs, greedy = env.reset(seeds), GreedyPolicy()
    policy, checked = candidate.policy, 0
    for _ in range(scenario.bookings_per_episode):
        try:
            problem = _probe(policy, obs)
        except (ValueError, ArithmeticError) as exc:
            return Sanity(False, f"the candidate failed on a probe situation: {exc}")
        if problem is not None:
            return Sanity(False, f"the candidate {problem} on probe situations")
        checked += len(seeds)
        obs, _, _, _ = env.step(greedy.act_batch(obs))
    return Sanity(True, f"finite probabilities on eligible drivers in {checked} probe situations")


def _probe(policy: Policy, obs: dict[str, np.ndarray]) -> str | None:
    mask = np.asarray(obs["action_mask"]).astype(bool)
    chosen = policy.act_batch(obs)
    if not mask[np.arange(len(chosen)), chosen].all():
        return "chose an ineligible driver"
    if not isinstance(policy, ProbabilisticPolicy):
        return None
    probs = policy.action_probs(obs)
    bad: NDArray[np.bool_] = np.asarray(~np.isfinite(probs).all(axis=1))
    if bad.any():
        return f"gave non-finite probabilities (NaN or inf) in {int(bad.sum())} of {len(bad)}"
    if (np.abs(probs.sum(axis=1) - 1.0) > 1e-6).any() or (probs[~mask] > 0).any():
        return "gave probabilities that do not sum to 1 over eligible drivers"
    return None


def _paired_test(
    candidate: Contender,
    champion: Contender,
    scenario: Scenario,
    reward: RewardSettings,
    thresholds: GateThresholds,
    *,
    seed_offset: int,
    stop: StopFlag | None,
    progress: Progress | None,
) -> tuple[SequentialResult, tuple[Guardrail, ...], FloatArray]:
    design = make_design(thresholds.max_episodes, thresholds.looks, thresholds.confidence)
    played: dict[str, list[dict[str, FloatArray]]] = {"candidate": [], "champion": []}
    looks = []
    for index, episodes in enumerate(design.looks, start=1):
        if stop is not None and stop():
            raise JudgementInterruptedError(f"stopped before look {index} of {len(design.looks)}")
        done = design.looks[index - 2] if index > 1 else 0
        seeds = test_seeds(episodes - done, offset=seed_offset + done)
        for role, contender in (("candidate", candidate), ("champion", champion)):
            results = run_episodes(contender.policy, scenario, reward, seeds)
            played[role].append(episode_metrics(results))
        if progress is not None:
            progress.update(2 * len(seeds), look=index)
        runs = {role: _joined(parts) for role, parts in played.items()}
        differences = runs["candidate"][RETURN] - runs["champion"][RETURN]
        look = analyse_look(differences, design, index, thresholds.reward_margin)
        looks.append(look)
        guardrails = _guardrails(runs, design.spend[index - 1])
        if _can_stop(look.outcome, guardrails, thresholds):
            break
    result = SequentialResult(tuple(looks), design, thresholds.reward_margin)
    return result, guardrails, differences


def _joined(parts: list[dict[str, FloatArray]]) -> dict[str, FloatArray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _guardrails(runs: dict[str, dict[str, FloatArray]], level: float) -> tuple[Guardrail, ...]:
    """Rise of each lower-is-better figure with a t interval at the look's spent level."""
    out = []
    for name in GUARDRAILS:
        rise = runs["candidate"][name] - runs["champion"][name]
        n = rise.size
        sem = float(rise.std(ddof=1)) / math.sqrt(n)
        half = float(stats.t.ppf(1.0 - level / 2.0, df=n - 1)) * sem if sem > 0 else 0.0
        mean = float(rise.mean())
        out.append(
            Guardrail(
                name, mean, Interval(mean - half, mean + half), float(runs["champion"][name].mean())
            )
        )
    return tuple(out)


def _can_stop(outcome: str, guardrails: tuple[Guardrail, ...], thresholds: GateThresholds) -> bool:
    """Decided reward test, and (if it clears) every guardrail decided as well."""
    if outcome == "falls_short":
        return True
    if outcome != "clears":
        return False
    for guardrail in guardrails:
        margin = thresholds.guardrail_margins[guardrail.name]
        if not (guardrail.ci.high < margin or guardrail.rise > margin):
            return False
    return True


def _off_policy(
    candidate: Contender,
    champion: Contender,
    logged: LoggedSample | None,
    thresholds: GateThresholds,
    seed_offset: int,
) -> tuple[OffPolicyComparison | None, str]:
    """Both policies estimated on the same logged decisions, or None with the reason."""
    if logged is None:
        return None, "no logged events were given"
    usable, excluded = with_propensity(logged.decisions)
    if usable.size == 0:
        return None, f"none of the {excluded} logged decisions has a propensity"
    keep = np.isfinite(logged.decisions.propensities) & (logged.decisions.propensities > 0)
    observations = {key: value[keep] for key, value in logged.observations.items()}
    try:
        probs = [action_probabilities(c.policy, observations) for c in (candidate, champion)]
    except ValueError as exc:
        return None, str(exc)
    if not all(np.isfinite(p).all() for p in probs):
        return None, "a policy gave non-finite probabilities on the logged situations"
    rng = np.random.default_rng([seed_offset, 12])
    features = reward_features(
        observations["candidates"].astype(np.float64), observations["context"].astype(np.float64)
    )
    try:
        q_hat = fit_reward_model(features, usable, rng)
    except ValueError as exc:
        return None, f"the reward model cannot be cross-fitted: {exc}"
    comparison = compare_policies(
        probs[0],
        probs[1],
        usable,
        q_hat,
        rng,
        confidence=thresholds.confidence,
        n_bootstrap=thresholds.ope_bootstrap,
        excluded=excluded,
    )
    return comparison, f"{usable.size} logged decisions used, {excluded} without propensity"

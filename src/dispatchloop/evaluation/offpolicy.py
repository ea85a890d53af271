"""Off-policy estimates on logged decisions: what would another policy have earned here?

The simulator answers that question in a model of the world; these estimators
answer it on the real logged outcomes, re-weighting each logged decision by how
much more (or less) likely the target policy was to take the logged action than
the logging policy that did (its `propensity`, recorded with every event).

Horizon, stated in every result: **per decision (one step)**. The estimand is the
mean immediate reward per decision the target policy would earn in the logged
situations, V(pi) = E_{s ~ logged}[sum_a pi(a|s) r(s, a)]. Full-episode importance
weights multiply 19-28 per-step ratios and leave a handful of usable episodes;
the per-decision estimand stays estimable, at the price of ignoring what a
decision does to later situations (the simulator test measures that part).

Estimators, all per decision, with the weight w = pi(a|s) / mu(a|s):
- IPS: mean(w r), unbiased, high variance;
- SNIPS: sum(w r) / sum(w), self-normalised (weighted IS), small bias, lower variance;
- DR: mean(sum_a pi(a|s) q(s, a) + w (r - q(s, a))) with a reward model q fitted
  on other episodes than the ones it corrects (cross-fitting, `fit_reward_model`).

Intervals: percentile bootstrap over whole episodes (decisions of one episode are
correlated, so an episode is the resampling unit); candidate and champion are
resampled together, so their difference is paired. Support diagnostics say
whether the logs can speak about the target at all (`Support`); the gate treats
thin support as "undecided", never as a pass. Pure NumPy, no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from dispatchloop.evaluation.paired import FloatArray, Interval

HORIZON = "per-decision (one-step) value on the logged situations"
ESTIMATORS = ("ips", "snips", "dr")


class LoggedDecisions(NamedTuple):
    """Logged decisions as arrays (leading axis = decisions, A = candidate slots)."""

    episodes: NDArray[np.int64]
    """(N,) episode index of each decision (0..E-1): the bootstrap's resampling unit."""
    actions: NDArray[np.int64]
    """(N,) slot of the logged action."""
    rewards: FloatArray
    """(N,) realised reward of the logged action (the shared reward function)."""
    propensities: FloatArray
    """(N,) logging probability of the logged action; NaN where the log has none."""
    masks: NDArray[np.bool_]
    """(N, A) slots a policy may choose (eligible, or the logged action)."""

    @property
    def size(self) -> int:
        """Number of decisions (not `len`: a NamedTuple's length is its field count)."""
        return len(self.actions)

    def subset(self, keep: NDArray[np.bool_]) -> LoggedDecisions:
        """The decisions where `keep` is True, episodes renumbered 0..E'-1."""
        _, episodes = np.unique(self.episodes[keep], return_inverse=True)
        return LoggedDecisions(
            episodes.astype(np.int64),
            self.actions[keep],
            self.rewards[keep],
            self.propensities[keep],
            self.masks[keep],
        )


class Support(NamedTuple):
    """Can the logs speak about this target policy? (diagnostics of its weights)"""

    decisions: int
    """Decisions used (with a propensity)."""
    ess: float
    """Kish effective sample size (sum w)^2 / sum w^2: decisions the estimate is worth."""
    max_weight: float
    """Largest single importance weight."""
    top_share: float
    """Share of the total weight carried by the top 1 % of decisions."""
    unsupported_share: float
    """Mean target probability on actions the logger provably never takes: the other
    actions of decisions logged with propensity 1 (a deterministic logger there)."""


class Estimate(NamedTuple):
    """A value with its bootstrap interval."""

    value: float
    """Point estimate (reward per decision)."""
    ci: Interval
    """Percentile bootstrap interval over whole episodes."""


class PolicyEstimates(NamedTuple):
    """The three estimators for one target policy, and its support."""

    ips: Estimate
    """Importance sampling (unbiased, high variance)."""
    snips: Estimate
    """Self-normalised importance sampling."""
    dr: Estimate
    """Doubly robust with the cross-fitted reward model."""
    support: Support
    """Weight diagnostics."""
    weights: FloatArray
    """(N,) importance weights (for the report's histogram)."""


class OffPolicyComparison(NamedTuple):
    """Candidate and champion estimated on the same logged decisions, and their difference."""

    candidate: PolicyEstimates
    """Estimates of the candidate."""
    champion: PolicyEstimates
    """Estimates of the champion."""
    difference: dict[str, Estimate]
    """Candidate minus champion per estimator (paired: the same bootstrap resamples)."""
    excluded: int
    """Decisions left out because their event had no propensity."""
    confidence: float
    """Level of every interval."""
    horizon: str = HORIZON
    """What is estimated (see the module docstring)."""


def with_propensity(decisions: LoggedDecisions) -> tuple[LoggedDecisions, int]:
    """Decisions usable for importance weighting, and how many were excluded (no propensity)."""
    keep = np.isfinite(decisions.propensities) & (decisions.propensities > 0)
    return decisions.subset(keep), int((~keep).sum())


def importance_weights(target: FloatArray, decisions: LoggedDecisions) -> FloatArray:
    """pi(a|s) / mu(a|s) of each logged action; `target` is (N, A) probabilities."""
    rows = np.arange(decisions.size)
    return np.asarray(target[rows, decisions.actions] / decisions.propensities, dtype=np.float64)


def support_of(target: FloatArray, decisions: LoggedDecisions, weights: FloatArray) -> Support:
    """Kish ESS, the largest weight, top-1 % weight share and unsupported probability mass."""
    total = float(weights.sum())
    squares = float((weights**2).sum())
    ess = total * total / squares if squares > 0 else 0.0
    top = max(1, int(np.ceil(0.01 * weights.size)))
    top_share = float(np.sort(weights)[-top:].sum() / total) if total > 0 else 1.0
    rows = np.arange(decisions.size)
    off_action = target.sum(axis=1) - target[rows, decisions.actions]
    deterministic = decisions.propensities >= 1.0 - 1e-9
    unsupported = float(np.where(deterministic, off_action, 0.0).mean()) if len(rows) else 1.0
    return Support(
        decisions=decisions.size,
        ess=ess,
        max_weight=float(weights.max(initial=0.0)),
        top_share=top_share,
        unsupported_share=unsupported,
    )


class _PerEpisode(NamedTuple):
    """Per-episode sums the bootstrap resamples: sum w r, sum w, sum dr, decisions."""

    wr: FloatArray
    w: FloatArray
    dr: FloatArray
    n: FloatArray


def _per_episode(
    target: FloatArray, decisions: LoggedDecisions, q_hat: FloatArray, weights: FloatArray
) -> _PerEpisode:
    rows = np.arange(decisions.size)
    q_logged = q_hat[rows, decisions.actions]
    direct = (np.nan_to_num(target) * np.where(decisions.masks, q_hat, 0.0)).sum(axis=1)
    dr_terms = direct + weights * (decisions.rewards - q_logged)
    episodes = int(decisions.episodes.max(initial=-1)) + 1

    def per(values: FloatArray) -> FloatArray:
        return np.asarray(
            np.bincount(decisions.episodes, weights=values, minlength=episodes), np.float64
        )

    return _PerEpisode(
        per(weights * decisions.rewards), per(weights), per(dr_terms), per(np.ones(len(rows)))
    )


def _ratios(sums: _PerEpisode, index: NDArray[np.int64] | None) -> dict[str, FloatArray]:
    """IPS, SNIPS and DR from (resampled) episode sums; index None: the original sample."""

    def total(values: FloatArray) -> FloatArray:
        summed = values.sum(axis=-1) if index is None else values[index].sum(axis=1)
        return np.asarray(summed, dtype=np.float64)

    n, w = total(sums.n), total(sums.w)
    wr = total(sums.wr)
    snips = np.divide(wr, w, out=np.full_like(wr, np.nan), where=w > 0)
    return {"ips": wr / n, "snips": snips, "dr": total(sums.dr) / n}


def _interval(samples: FloatArray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2.0
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return Interval(float("nan"), float("nan"))
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(float(low), float(high))


def compare_policies(
    candidate: FloatArray,
    champion: FloatArray,
    decisions: LoggedDecisions,
    q_hat: FloatArray,
    rng: np.random.Generator,
    *,
    confidence: float,
    n_bootstrap: int,
    excluded: int = 0,
) -> OffPolicyComparison:
    """IPS, SNIPS and DR of both policies and of their difference, on decisions with propensity.

    `candidate` and `champion` are (N, A) action probabilities on the logged
    situations, `q_hat` the cross-fitted reward model's (N, A) predictions.
    """
    if decisions.size == 0:
        raise ValueError("no logged decision with a propensity to estimate from")
    sums, estimates = {}, {}
    for name, target in (("candidate", candidate), ("champion", champion)):
        weights = importance_weights(target, decisions)
        sums[name] = _per_episode(target, decisions, q_hat, weights)
        estimates[name] = (weights, support_of(target, decisions, weights))
    episodes = len(sums["candidate"].n)
    index = rng.integers(0, episodes, size=(n_bootstrap, episodes))
    point = {name: _ratios(s, None) for name, s in sums.items()}
    boot = {name: _ratios(s, index) for name, s in sums.items()}

    def policy(name: str) -> PolicyEstimates:
        weights, support = estimates[name]
        results = {
            key: Estimate(float(point[name][key]), _interval(boot[name][key], confidence))
            for key in ESTIMATORS
        }
        return PolicyEstimates(**results, support=support, weights=weights)

    difference = {
        key: Estimate(
            float(point["candidate"][key] - point["champion"][key]),
            _interval(boot["candidate"][key] - boot["champion"][key], confidence),
        )
        for key in ESTIMATORS
    }
    return OffPolicyComparison(
        policy("candidate"), policy("champion"), difference, excluded, confidence
    )


PRIORITY_COLUMNS = 3
"""The context's first columns are the priority one-hots (decisions.featurizer)."""


def reward_features(candidates: FloatArray, context: FloatArray) -> FloatArray:
    """(N, A, F) regressors of the reward model.

    Candidate features per priority class (the reward weighs delay by priority, so
    a linear model needs the interaction), their squares, and the context. The
    plain features alone left DR's spread over repetitions 20 % wider for a target
    far from the logger (scratch run, benchmarks/gate.py's coverage setting).
    """
    n, slots, _ = candidates.shape
    priority = context[:, :PRIORITY_COLUMNS]
    by_priority = (candidates[:, :, :, None] * priority[:, None, None, :]).reshape(n, slots, -1)
    ctx = np.broadcast_to(context[:, None, :], (n, slots, context.shape[1]))
    parts = [by_priority, candidates**2, ctx, np.ones((n, slots, 1))]
    return np.concatenate(parts, axis=2).astype(np.float64)


def fit_reward_model(
    features: FloatArray,
    decisions: LoggedDecisions,
    rng: np.random.Generator,
    *,
    folds: int = 2,
    ridge: float = 1.0,
) -> FloatArray:
    """Cross-fitted ridge predictions q(s, a) for every slot, (N, A).

    Episodes are split into `folds` groups at random; each group's predictions come
    from a model fitted on the other groups only, so no decision is corrected by a
    model that has seen its own reward (the bias cross-fitting removes).
    """
    n_episodes = int(decisions.episodes.max(initial=-1)) + 1
    if n_episodes < folds:
        raise ValueError(f"cross-fitting needs at least {folds} episodes, got {n_episodes}")
    group = rng.permutation(n_episodes) % folds
    fold_of = group[decisions.episodes]
    rows = np.arange(decisions.size)
    taken = features[rows, decisions.actions]  # (N, F)
    q_hat = np.zeros(features.shape[:2])
    for fold in range(folds):
        train = fold_of != fold
        x, y = taken[train], decisions.rewards[train]
        scale = np.maximum(x.std(axis=0), 1e-6)
        scale[-1] = 1.0  # the intercept column
        xs = x / scale
        beta = np.linalg.solve(xs.T @ xs + ridge * np.eye(xs.shape[1]), xs.T @ y)
        test = fold_of == fold
        q_hat[test] = (features[test] / scale) @ beta
    return q_hat

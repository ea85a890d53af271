"""Decisions for a dispatch system, each with the exact probability of the chosen driver.

Guarantees, in the order a decision is made:
- **One snapshot per decision.** A decision reads one immutable `Routing` (which
  models serve a scope, and the challenger's traffic share). Swapping models
  replaces the reference between decisions, so no decision is ever made by a
  half-loaded model, and every decision names the version that made it.
- **Scope resolution.** A company resolves to its own routing, else scope `*`'s.
- **The serving policy** is a mixture: the challenger's arm with probability
  `challenger_share`, the champion's otherwise; within an arm, with probability
  `epsilon` a uniformly random eligible driver, else the arm's greedy choice
  (masked argmax of its scores, ties to the lower index, exactly as the
  training-time policy `rl.policy.DQNPolicy` chooses).
- **The propensity** logged with the decision is the marginal probability of
  the chosen driver under that whole mixture (both arms are scored), so
  off-policy estimates on logged events are unbiased.
- **Greedy fallback.** With no model for a scope, the earliest-ETA heuristic
  (the featurizer's `eta_h`) decides, labelled `greedy` with no model_version.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from dispatchloop.decisions.featurizer import (
    CANDIDATE_FEATURES,
    DemandMap,
    Features,
    Situation,
    demand_map,
    featurize,
    featurize_batch,
    situation_from_request,
    stack_situations,
)
from dispatchloop.decisions.scorer import CandidateScorer
from dispatchloop.events import DecideRequest
from dispatchloop.screening import ScreenedDecideRequest

ServingRequest = DecideRequest | ScreenedDecideRequest
"""A request validated by the models, or screened by `screen_decide_request` (the same
attributes, and the same situation: `situation_from_request`)."""
GLOBAL_SCOPE = "*"
GREEDY_POLICY = "greedy"
ETA_COLUMN = CANDIDATE_FEATURES.index("eta_h")


class ServedModel(NamedTuple):
    """A loaded, verified model version, ready to score."""

    version: str
    """Registry version (`v7`); copied into the outcome event's `action.model_version`."""
    policy: str
    """Label for `action.policy` (the trainer: `dqn` or `distill`)."""
    scorer: CandidateScorer
    """The network's NumPy forward pass."""
    demand: DemandMap
    """The demand map of the world the model was trained for (featurizer v2 input)."""


class Routing(NamedTuple):
    """Which models serve one scope; replaced whole, never mutated."""

    champion: ServedModel | None = None
    """Serves `1 - challenger_share` of decisions; None: the greedy fallback does."""
    challenger: ServedModel | None = None
    """The canary, if any."""
    challenger_share: float = 0.0
    """Share of decisions the challenger makes (0 without a challenger)."""


class Decision(NamedTuple):
    """The serving API's answer; the caller logs `policy`, `model_version`, `propensity`."""

    driver_id: str
    candidate_index: int
    """Position of the chosen driver in the request's candidates."""
    policy: str
    model_version: str | None
    propensity: float
    """P(this driver | situation) under the serving policy (split and exploration)."""
    scores: tuple[float | None, ...]
    """The deciding arm's ranking score per candidate (None where not eligible)."""


class Arm(NamedTuple):
    """One policy of the mixture, scored on the request."""

    share: float
    policy: str
    version: str | None
    scores: NDArray[np.float64]


def choice_probabilities(
    shares: NDArray[np.float64], greedy: NDArray[np.int64], mask: NDArray[np.bool_], epsilon: float
) -> NDArray[np.float64]:
    """P(driver) under a mixture of arms, each greedy with 1 - epsilon, else uniform eligible.

    shares (A,) sum to 1; greedy (A,) the arms' choices; mask (n,) the eligible drivers.
    """
    uniform = mask / mask.sum()
    probabilities = epsilon * uniform
    for share, choice in zip(shares, greedy, strict=True):
        probabilities[choice] += share * (1.0 - epsilon)
    return np.asarray(probabilities, dtype=np.float64)


def propensity_of(
    index: int,
    shares: Sequence[float],
    greedy: Sequence[int],
    mask: NDArray[np.bool_],
    epsilon: float,
) -> float:
    """`choice_probabilities(...)[index]`, bit for bit, in plain floats.

    A decision logs one propensity; building the whole vector cost a tenth of a
    decision in NumPy call overhead. Same operations in the same order (1/count,
    times epsilon, then each arm's share added in turn), so the same float."""
    probability = epsilon * (1.0 / int(np.count_nonzero(mask)) if mask[index] else 0.0)
    for share, choice in zip(shares, greedy, strict=True):
        if choice == index:
            probability += share * (1.0 - epsilon)
    return probability


def _greedy(scores: NDArray[np.float64], mask: NDArray[np.bool_]) -> int:
    return int(np.where(mask, scores, -np.inf).argmax())


class _Featurized:
    """Features of one request, computed once per demand map however many arms use it."""

    def __init__(self, request: ServingRequest) -> None:
        self.request = request
        self.situation = situation_from_request(request)
        self._by_map: dict[int, Features] = {}

    def features(self, demand: DemandMap) -> Features:
        key = id(demand)
        if key not in self._by_map:
            self._by_map[key] = featurize(self.situation, demand)
        return self._by_map[key]

    def model_scores(self, model: ServedModel) -> NDArray[np.float64]:
        features = self.features(model.demand)
        scores = model.scorer.ranking_scores(features.candidates[None], features.context[None])
        return np.asarray(scores[0], dtype=np.float64)

    def greedy_scores(self) -> NDArray[np.float64]:
        """Minus the ETA: the heuristic's ranking. It reads no coverage feature, so the
        booking's own pickup serves as the demand map."""
        pickup = self.request.booking.pickup
        eta = featurize(self.situation, demand_map([[pickup.lat, pickup.lon]])).candidates
        return -np.asarray(eta[:, ETA_COLUMN], dtype=np.float64)


def greedy_choices(
    model: ServedModel, situations: Sequence[Situation], masks: Sequence[NDArray[np.bool_]]
) -> NDArray[np.int64]:
    """The model's greedy choice in each situation: what `decide` picks with epsilon 0.

    For followers of logged decisions (live shadow scoring), vectorised: situations
    with the same number of candidates are featurized together (`featurize_batch`
    gives `featurize`'s numbers row by row) and scored in one forward pass; the
    masked argmax breaks ties to the lower index as `_greedy` does."""
    choices = np.zeros(len(situations), dtype=np.int64)
    by_size: dict[int, list[int]] = {}
    for row, situation in enumerate(situations):
        by_size.setdefault(len(situation.driver_lat), []).append(row)
    for rows in by_size.values():
        features = featurize_batch(stack_situations([situations[i] for i in rows]), model.demand)
        scores = model.scorer.ranking_scores(features.candidates, features.context)
        mask = np.stack([masks[i] for i in rows])
        choices[rows] = np.where(mask, scores, -np.inf).argmax(axis=1)
    return choices


def score_arms(request: ServingRequest, routing: Routing) -> list[Arm]:
    """The routing's arms with their scores on `request` (features computed once per map)."""
    return _score_arms(_Featurized(request), routing)


def _score_arms(featurized: _Featurized, routing: Routing) -> list[Arm]:
    challenger_share = routing.challenger_share if routing.challenger is not None else 0.0
    arms: list[Arm] = []
    for model, share in (
        (routing.champion, 1.0 - challenger_share),
        (routing.challenger, challenger_share),
    ):
        if share <= 0.0:
            continue
        if model is None:
            arms.append(Arm(share, GREEDY_POLICY, None, featurized.greedy_scores()))
        else:
            arms.append(Arm(share, model.policy, model.version, featurized.model_scores(model)))
    return arms


def decide(
    request: ServingRequest, routing: Routing, epsilon: float, rng: np.random.Generator
) -> Decision:
    """One decision and its exact propensity under `routing` and `epsilon`."""
    featurized = _Featurized(request)
    arms = _score_arms(featurized, routing)
    return sample_decision(request, arms, featurized.situation.eligible, epsilon, rng)


def sample_decision(
    request: ServingRequest,
    arms: list[Arm],
    mask: NDArray[np.bool_],
    epsilon: float,
    rng: np.random.Generator,
) -> Decision:
    """Draw the arm, then exploration or the arm's greedy choice; log the mixture's P.

    Plain floats where NumPy would only add call overhead: the shares' sum and
    quotients and `propensity_of` are the same operations as their array forms."""
    total = sum(arm.share for arm in arms)
    shares = [arm.share / total for arm in arms]
    greedy = [_greedy(arm.scores, mask) for arm in arms]
    chosen = len(arms) - 1 if len(arms) > 1 and rng.random() < shares[-1] else 0
    if epsilon > 0.0 and rng.random() < epsilon:
        eligible = np.flatnonzero(mask)
        index = int(eligible[rng.integers(len(eligible))])
    else:
        index = greedy[chosen]
    arm = arms[chosen]
    # tolist() converts in C; iterating the arrays builds 2n NumPy scalars (a third of a decision)
    values, eligible = arm.scores.tolist(), mask.tolist()
    scores = tuple(
        values
        if all(eligible)
        else [s if ok else None for s, ok in zip(values, eligible, strict=True)]
    )
    return Decision(
        driver_id=request.candidates[index].driver_id,
        candidate_index=index,
        policy=arm.policy,
        model_version=arm.version,
        propensity=propensity_of(index, shares, greedy, mask, epsilon),
        scores=scores,
    )


class Dispatcher:
    """Thread-safe decisions over swappable per-scope routings (see the module docstring)."""

    def __init__(self, epsilon: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must be within [0, 1), got {epsilon}")
        self.epsilon = epsilon
        self._routings: Mapping[str, Routing] = {}
        self._swap_lock = threading.Lock()
        self._seeds = np.random.SeedSequence(seed)
        self._local = threading.local()

    def routing_for(self, company_id: str | None) -> Routing:
        """The company's own routing, else scope `*`'s, else the greedy fallback."""
        routings = self._routings  # one snapshot: a concurrent swap cannot split it
        if company_id is not None and company_id in routings:
            return routings[company_id]
        return routings.get(GLOBAL_SCOPE, Routing())

    def swap(self, scope: str, routing: Routing) -> None:
        """Serve `routing` for `scope` from the next decision on."""
        with self._swap_lock:
            self._routings = {**self._routings, scope: routing}

    def routings(self) -> Mapping[str, Routing]:
        """Every scope's current routing (a snapshot)."""
        return self._routings

    def decide(self, request: ServingRequest) -> Decision:
        return decide(request, self.routing_for(request.company_id), self.epsilon, self._rng())

    def _rng(self) -> np.random.Generator:
        """One generator per thread (a Generator is not thread-safe), spawned from the seed."""
        rng: np.random.Generator | None = getattr(self._local, "rng", None)
        if rng is None:
            with self._swap_lock:
                child = self._seeds.spawn(1)[0]
            rng = np.random.default_rng(child)
            self._local.rng = rng
        return rng

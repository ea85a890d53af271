"""`LoggedDataset`: production's logged decisions as padded arrays for offline DQN.

Each stored transition (event, next event of the same episode or None, done)
becomes one row: both states go through the same `featurize(situation_from_event(...))`
as the simulator, the reward through the shared `event_reward`, the action is
the logged `action_index`. Rows are padded to `max_candidates` (padding is
masked out). The mask of the logged state is "eligible OR the taken action":
the dispatcher's choice is a fact even when it overrode eligibility, and the
loss must be able to score it. The logging policy's `propensity` is kept (NaN
where absent) for the off-policy estimators.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from dispatchloop.decisions.featurizer import (
    N_CANDIDATE_FEATURES,
    N_CONTEXT_FEATURES,
    DemandMap,
    Features,
    featurize,
    situation_from_event,
)
from dispatchloop.decisions.reward import event_reward
from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay.base import ReplayStore, TimeWindow
from dispatchloop.replay.transitions import iter_transitions
from dispatchloop.rl.buffer import Transitions
from dispatchloop.settings import RewardSettings


class LoggedTransition(Protocol):
    """What `replay.transitions.iter_transitions` yields (only these fields are read).

    `next_event=None` with `done=False` marks a gap in the logged steps: the next
    state is unknown, so the transition is left out (counted in `gaps`) rather
    than pretending the episode ended there.
    """

    @property
    def event(self) -> DispatchOutcomeEvent: ...

    @property
    def next_event(self) -> DispatchOutcomeEvent | None: ...

    @property
    def done(self) -> bool: ...


@dataclass(frozen=True)
class LoggedDataset:
    """Padded one-step transitions from logged events (leading dimension = transitions)."""

    candidates: NDArray[np.float32]  # (N, max_candidates, F_c)
    context: NDArray[np.float32]  # (N, F_ctx)
    masks: NDArray[np.bool_]  # (N, max_candidates): eligible or taken
    actions: NDArray[np.int64]  # (N,)
    rewards: NDArray[np.float32]  # (N,)
    next_candidates: NDArray[np.float32]
    next_context: NDArray[np.float32]
    next_masks: NDArray[np.bool_]  # eligible in the next state (zeros when done)
    dones: NDArray[np.float32]  # (N,)
    propensities: NDArray[np.float64]  # (N,) NaN where the log has none
    event_ids: tuple[str, ...]
    max_candidates: int
    skipped: int = 0
    """Transitions left out because they had more candidates than max_candidates."""
    gaps: int = 0
    """Transitions left out because the next logged step is missing (unknown s')."""
    episode_ids: tuple[str, ...] = ()
    """`episode_id` of each row (off-policy intervals resample whole episodes)."""

    def __len__(self) -> int:
        return len(self.actions)

    def transitions(self, gamma: float) -> Transitions:
        """The rows as replay-buffer transitions with one-step discount gamma."""
        return Transitions(
            observations={"candidates": self.candidates, "context": self.context},
            masks=self.masks,
            actions=self.actions,
            rewards=self.rewards,
            next_observations={"candidates": self.next_candidates, "context": self.next_context},
            next_masks=self.next_masks,
            dones=self.dones,
            discounts=np.full(len(self), gamma, np.float32),
        )

    @classmethod
    def from_store(
        cls,
        store: ReplayStore,
        window: TimeWindow,
        reward: RewardSettings,
        demand: DemandMap,
        max_candidates: int | None = None,
    ) -> LoggedDataset:
        """All logged transitions decided within the window, featurized on `demand`."""
        return cls.from_transitions(iter_transitions(store, window), reward, demand, max_candidates)

    @classmethod
    def from_transitions(
        cls,
        transitions: Iterable[LoggedTransition],
        reward: RewardSettings,
        demand: DemandMap,
        max_candidates: int | None = None,
    ) -> LoggedDataset:
        """Featurize and pad; with max_candidates None, pad to the largest candidate list."""
        rows, gaps = [], 0
        for transition in transitions:
            if transition.next_event is None and not transition.done:
                gaps += 1
                continue
            rows.append(_Row.of(transition, reward, demand))
        width = max_candidates or max((row.width for row in rows), default=1)
        kept = [row for row in rows if row.width <= width]
        return cls._stack(kept, width, skipped=len(rows) - len(kept), gaps=gaps)

    @classmethod
    def _stack(cls, rows: list[_Row], width: int, skipped: int, gaps: int) -> LoggedDataset:
        n = len(rows)
        candidates, context, masks = _zeros(n, width)
        next_candidates, next_context, next_masks = _zeros(n, width)
        for i, row in enumerate(rows):
            k, k_next = len(row.features.mask), len(row.next_features.mask)
            candidates[i, :k] = row.features.candidates
            context[i] = row.features.context
            masks[i, :k] = row.features.mask
            masks[i, row.action] = True
            if not row.done:
                next_candidates[i, :k_next] = row.next_features.candidates
                next_context[i] = row.next_features.context
                next_masks[i, :k_next] = row.next_features.mask
        return cls(
            candidates=candidates,
            context=context,
            masks=masks,
            actions=np.array([row.action for row in rows], np.int64),
            rewards=np.array([row.reward for row in rows], np.float32),
            next_candidates=next_candidates,
            next_context=next_context,
            next_masks=next_masks,
            dones=np.array([float(row.done) for row in rows], np.float32),
            propensities=np.array([row.propensity for row in rows], np.float64),
            event_ids=tuple(row.event_id for row in rows),
            episode_ids=tuple(row.episode_id for row in rows),
            max_candidates=width,
            skipped=skipped,
            gaps=gaps,
        )


def _zeros(
    n: int, width: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """Zeroed (candidates, context, mask) arrays: padding stays zero and masked."""
    return (
        np.zeros((n, width, N_CANDIDATE_FEATURES), np.float32),
        np.zeros((n, N_CONTEXT_FEATURES), np.float32),
        np.zeros((n, width), np.bool_),
    )


@dataclass(frozen=True)
class _Row:
    features: Features
    next_features: Features
    action: int
    reward: float
    done: bool
    propensity: float
    event_id: str
    episode_id: str

    @property
    def width(self) -> int:
        return max(len(self.features.mask), len(self.next_features.mask))

    @classmethod
    def of(cls, transition: LoggedTransition, reward: RewardSettings, demand: DemandMap) -> _Row:
        event = transition.event
        features = featurize(situation_from_event(event), demand)
        nxt = transition.next_event
        done = transition.done
        next_features = features if nxt is None else featurize(situation_from_event(nxt), demand)
        propensity = event.action.propensity
        return cls(
            features=features,
            next_features=next_features,
            action=event.action_index,
            reward=event_reward(event, reward),
            done=done,
            propensity=float("nan") if propensity is None else propensity,
            event_id=str(event.event_id),
            episode_id=event.episode_id,
        )

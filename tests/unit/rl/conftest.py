"""One torch thread and one BLAS thread in RL tests: the machine is shared and these networks
are tiny (the NumPy learner step runs on BLAS; idle OpenBLAS threads spin under load)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay.transitions import LoggedTransition
from dispatchloop.settings import RewardSettings
from dispatchloop.sim.policies import GreedyPolicy
from dispatchloop.sim.producer import LoggingPolicy, simulated_events
from dispatchloop.sim.scenario import Scenario

LoggedFactory = Callable[[int], list[LoggedTransition]]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(previous)


def _logged_transitions(n_events: int) -> list[LoggedTransition]:
    events = [
        DispatchOutcomeEvent.model_validate(e)
        for e in simulated_events(
            Scenario.default(),
            RewardSettings(),
            LoggingPolicy(GreedyPolicy(), "greedy"),
            n_events,
            seed=0,
            epsilon=0.3,
        )
    ]
    out = []
    for event, nxt in zip(events, [*events[1:], None], strict=True):
        same = nxt is not None and nxt.episode_id == event.episode_id
        out.append(LoggedTransition(event, nxt if same else None, not same))
    return out


@pytest.fixture
def logged_transitions() -> LoggedFactory:
    """n logged transitions of an epsilon-greedy (0.3) logging policy in the default world."""
    return _logged_transitions

"""Logged transitions (s, a, r, s') for training from what production did.

An episode's consecutive steps form a trajectory (DESIGN.md). Episodes are read
one at a time, so memory holds one shift, never the whole store.

Edge cases, decided here once:
- `done` is True at the episode's last *stored* step: that shift is over as far
  as the data knows (a shift still being ingested ends early; it is re-read whole
  on the next training run).
- A gap in the steps (step 7 then step 9: step 8 was lost or is late) truncates
  the trajectory: step 7 gets `next_event=None, done=False`, which a learner
  must treat as "bootstrap unknown" and drop or bootstrap from nothing. The
  trajectory resumes at step 9. Gaps are counted in `TransitionCounts.gaps`.
- Two stored events for one (episode, step) (distinct event_ids): the earlier
  stored one is used, the other is skipped and counted in `duplicate_steps`.
- With a window, transitions start at decisions inside the window; the next
  step may lie after the window's end (it is still the true s').
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay.base import ReplayStore, TimeWindow


class LoggedTransition(NamedTuple):
    """One logged decision, the decision that followed it, and whether the episode ended."""

    event: DispatchOutcomeEvent
    next_event: DispatchOutcomeEvent | None
    done: bool


@dataclass
class TransitionCounts:
    """What `iter_transitions` saw; export these as metrics where they matter."""

    episodes: int = 0
    transitions: int = 0
    gaps: int = 0
    duplicate_steps: int = 0


def _in_window(event: DispatchOutcomeEvent, window: TimeWindow) -> bool:
    if window.start is not None and event.decided_at < window.start:
        return False
    return window.end is None or event.decided_at < window.end


def _distinct_steps(
    steps: list[DispatchOutcomeEvent], counts: TransitionCounts
) -> list[DispatchOutcomeEvent]:
    """Steps in order with a repeated step number dropped (the store orders ties by arrival)."""
    kept: list[DispatchOutcomeEvent] = []
    for event in steps:
        if kept and kept[-1].step == event.step:
            counts.duplicate_steps += 1
            continue
        kept.append(event)
    return kept


def episode_transitions(
    steps: list[DispatchOutcomeEvent],
    window: TimeWindow = TimeWindow(),  # noqa: B008 - frozen dataclass, safe default
    counts: TransitionCounts | None = None,
) -> Iterator[LoggedTransition]:
    """Transitions of one episode's stored steps (ordered by step, as `ReplayStore.episode`)."""
    counts = counts if counts is not None else TransitionCounts()
    ordered = _distinct_steps(steps, counts)
    for index, event in enumerate(ordered):
        following = ordered[index + 1] if index + 1 < len(ordered) else None
        is_last = following is None
        if not _in_window(event, window):
            continue
        gap = following is not None and following.step != event.step + 1
        counts.gaps += int(gap)
        counts.transitions += 1
        yield LoggedTransition(event, None if gap else following, is_last)


def iter_transitions(
    store: ReplayStore,
    window: TimeWindow = TimeWindow(),  # noqa: B008 - frozen dataclass, safe default
    counts: TransitionCounts | None = None,
) -> Iterator[LoggedTransition]:
    """Every logged transition of episodes with a decision in the window, episode by episode."""
    counts = counts if counts is not None else TransitionCounts()
    for episode_id in store.episode_ids(window):
        counts.episodes += 1
        yield from episode_transitions(store.episode(episode_id), window, counts)

"""Pure logic of the replay package: timestamp encoding and transition building."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from dispatchloop.events import DispatchOutcomeEvent
from dispatchloop.replay.base import TimeWindow
from dispatchloop.replay.schema import from_epoch_us, to_epoch_us
from dispatchloop.replay.transitions import TransitionCounts, episode_transitions
from dispatchloop.testing.events import event_stream

START = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5))]


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.sampled_from(ZONES),
    )
)
def test_epoch_microseconds_round_trip_to_the_same_utc_instant(moment: datetime) -> None:
    back = from_epoch_us(to_epoch_us(moment))
    assert back == moment
    assert back.utcoffset() == timedelta(0)


def test_epoch_microseconds_keep_order_and_precision() -> None:
    assert to_epoch_us(START + timedelta(microseconds=1)) - to_epoch_us(START) == 1
    assert to_epoch_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0


def _steps(n: int) -> list[DispatchOutcomeEvent]:
    return [DispatchOutcomeEvent.model_validate(e) for e in event_stream(3, n, steps_per_episode=n)]


def test_episode_transitions_link_steps_and_mark_the_end() -> None:
    steps = _steps(4)
    got = [
        (t.event.step, t.next_event and t.next_event.step, t.done)
        for t in episode_transitions(steps)
    ]
    assert got == [(0, 1, False), (1, 2, False), (2, 3, False), (3, None, True)]


def test_gap_truncates_and_is_counted() -> None:
    steps = _steps(5)
    counts = TransitionCounts()
    got = [
        (t.event.step, t.next_event and t.next_event.step, t.done)
        for t in episode_transitions([steps[0], steps[1], steps[4]], counts=counts)
    ]
    assert got == [(0, 1, False), (1, None, False), (4, None, True)]
    assert (counts.transitions, counts.gaps) == (3, 1)


def test_repeated_step_keeps_the_first_copy() -> None:
    steps = _steps(3)
    counts = TransitionCounts()
    got = list(episode_transitions([steps[0], steps[1], steps[1], steps[2]], counts=counts))
    assert [t.event.step for t in got] == [0, 1, 2]
    assert counts.duplicate_steps == 1


def test_window_selects_decisions_but_keeps_the_true_next_step() -> None:
    steps = _steps(4)  # decided 3 minutes apart from START
    window = TimeWindow(START + timedelta(minutes=3), START + timedelta(minutes=6))
    got = list(episode_transitions(steps, window))
    assert [(t.event.step, t.next_event and t.next_event.step) for t in got] == [(1, 2)]


def test_empty_episode_has_no_transitions() -> None:
    assert list(episode_transitions([])) == []

"""Offsets to commit and to rewind to, and the backoff schedule: pure logic."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from kafka.structs import TopicPartition

from dispatchloop.consumers.backoff import Backoff
from dispatchloop.consumers.offsets import commit_offsets, lag, rewind_positions


class Rec(NamedTuple):
    offset: int


P0, P1, P2 = (TopicPartition("t", p) for p in range(3))


def test_commit_is_last_offset_plus_one_per_partition() -> None:
    batch = {P0: [Rec(5), Rec(6), Rec(9)], P1: [Rec(0)]}
    offsets = commit_offsets(batch, {P0, P1})
    assert {tp: om.offset for tp, om in offsets.items()} == {P0: 10, P1: 1}


def test_commit_skips_partitions_no_longer_assigned_and_empty_lists() -> None:
    batch = {P0: [Rec(3)], P1: [Rec(7)], P2: []}
    assert set(commit_offsets(batch, {P0, P2})) == {P0}


def test_rewind_goes_to_first_offset_of_each_partition() -> None:
    batch = {P0: [Rec(4), Rec(5)], P1: [Rec(11), Rec(12)], P2: []}
    assert rewind_positions(batch) == {P0: 4, P1: 11}


def test_lag_is_never_negative_and_ignores_unknown_positions() -> None:
    assert lag({P0: 100, P1: 5, P2: 9}, {P0: 40, P1: 8}) == {0: 60, 1: 0}


def test_backoff_doubles_up_to_the_cap_with_jitter_in_range() -> None:
    backoff = Backoff(0.5, 4.0, np.random.default_rng(1))
    delays = [backoff.next_delay() for _ in range(8)]
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap * 0.5 <= delay < cap
    assert backoff.attempt == 8


def test_backoff_reset_starts_over_and_is_reproducible() -> None:
    first = Backoff(1.0, 30.0, np.random.default_rng(7))
    second = Backoff(1.0, 30.0, np.random.default_rng(7))
    assert [first.next_delay() for _ in range(3)] == [second.next_delay() for _ in range(3)]
    first.reset()
    assert first.next_delay() < 1.0


def test_backoff_rejects_non_positive_delays() -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(0.0, 1.0, np.random.default_rng(0))

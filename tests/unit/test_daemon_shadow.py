"""The shadow scorer's error paths (fakes: the real store and registry are in
tests/integration/test_shadow_scoring.py): every error is counted, none stops the loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dispatchloop.daemon.run import _shadow_main
from dispatchloop.daemon.shadow import ShadowMetrics, ShadowScorer
from dispatchloop.registry.base import RegistryUnavailableError
from dispatchloop.replay.base import StoreUnavailableError
from dispatchloop.settings import RewardSettings, ShadowSettings


class _Alias:
    version = "v1"


class FakeRegistry:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.closed = False

    def alias(self, _alias: str, **_: Any) -> _Alias | None:
        if self.error is not None:
            raise self.error
        return None

    def close(self) -> None:
        self.closed = True


class FakeStore:
    closed = False

    def close(self) -> None:
        self.closed = True


def _scorer(registry: Any, prom: CollectorRegistry) -> ShadowScorer:
    return ShadowScorer(
        store=FakeStore(),  # type: ignore[arg-type]
        registry=registry,
        settings=ShadowSettings(interval_s=0.01),
        reward=RewardSettings(),
        metrics=ShadowMetrics(prom),
    )


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (RegistryUnavailableError("the registry database is down"), "registry"),
        (StoreUnavailableError("the store is down"), "store"),
    ],
)
def test_an_unreachable_database_is_counted_and_the_next_tick_tries_again(
    error: Exception, kind: str
) -> None:
    prom = CollectorRegistry()
    registry = FakeRegistry(error)
    scorer = _scorer(registry, prom)
    assert scorer.tick() == 0 and scorer.tick() == 0
    assert prom.get_sample_value("dispatchloop_shadow_errors_total", {"kind": kind}) == 2
    registry.error = None
    assert scorer.tick() == 0 and scorer.watched == () and scorer.record_metrics() == {}
    assert prom.get_sample_value("dispatchloop_shadow_errors_total", {"kind": kind}) == 2


def test_an_unexpected_failure_is_counted_and_never_ends_the_shadow_thread() -> None:
    prom = CollectorRegistry()
    registry = FakeRegistry(RuntimeError("a bug"))
    scorer = _scorer(registry, prom)
    stop = threading.Event()
    thread = threading.Thread(target=_shadow_main, args=(scorer, stop))
    thread.start()
    try:
        for _ in range(200):
            failures = prom.get_sample_value(
                "dispatchloop_shadow_errors_total", {"kind": "scoring"}
            )
            if failures and failures >= 2:
                break
            stop.wait(0.01)
        assert thread.is_alive() and failures is not None and failures >= 2
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    scorer.close()
    assert registry.closed

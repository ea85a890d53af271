"""Stage `fit`: calibrate the simulated world from the store's window."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dispatchloop.errors import InputError, TransientError
from dispatchloop.replay.base import ReplayStore, StoreUnavailableError, TimeWindow
from dispatchloop.sim.calibration import ScenarioFitError
from dispatchloop.sim.scenario import Scenario


class NotEnoughDataError(InputError):
    """The window holds fewer events than a cycle needs; the cycle is skipped, not failed."""


@dataclass(frozen=True)
class ScenarioFit:
    """The fitted scenario and what it was fitted on."""

    scenario: Scenario
    """The simulated world calibrated from the window (fleet, demand, speeds …)."""
    window: TimeWindow
    """The half-open [start, end) on decided_at the scenario was fitted on."""
    events: int
    """Stored events in the window when it was fitted."""
    fingerprint: str
    """sha256 (16 hex) of the scenario's JSON: the same data gives the same fingerprint."""

    @classmethod
    def of(
        cls, scenario: Scenario, window: TimeWindow | None = None, events: int = 0
    ) -> ScenarioFit:
        """A fit of `scenario` (events 0, all time: a world not calibrated from data)."""
        digest = hashlib.sha256(scenario.to_json().encode()).hexdigest()[:16]
        return cls(scenario, window or TimeWindow(), events, digest)


def fit_scenario(
    store: ReplayStore, window: TimeWindow, min_events: int = 1, base: Scenario | None = None
) -> ScenarioFit:
    """Fit the scenario on `window`, refusing windows with fewer than `min_events`.

    Why the minimum is checked here: every consumer of a fit (train, judge) is
    only as good as the data under it, and the skip reason belongs to the stage
    that saw the data.
    """
    try:
        events = store.count_events(window)
        if events < min_events:
            raise NotEnoughDataError(
                f"the window holds {events} stored events, fewer than the {min_events} a "
                "cycle needs"
            )
        scenario = Scenario.fit(store, window, base)
    except StoreUnavailableError as exc:
        raise TransientError(f"cannot read the store to fit the scenario: {exc}") from exc
    except ScenarioFitError as exc:
        raise NotEnoughDataError(str(exc)) from exc
    return ScenarioFit.of(scenario, window, events)

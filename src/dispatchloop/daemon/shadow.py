"""Live shadow scoring in `dispatchloop run`: what would champion and challenger have chosen?

On its own thread (never the ingest thread, never the scheduler's tick), every
`shadow.interval_s`:
1. read where the registry's `champion` and `challenger` aliases (scope `*`) point;
   load a version not seen before through serving's loader (hashes and featurizer
   checked; cached by version). A refused version is logged, counted once and
   skipped for the life of the process (a version's files never legitimately
   change); it never stops the daemon;
2. follow the store in store order from an in-memory cursor: on start, and
   whenever an alias moves, the windows restart from the last `shadow.window`
   stored events (so a new challenger has figures at once); then at most
   `shadow.batch` new events per tick. Falling behind by more than a window
   skips ahead to the last window (counted);
3. score each event's logged situation with serving's own vectorised greedy
   choice (`serving.dispatcher.greedy_choices`, the same featurizer and network
   as `decide`) and feed `evaluation.shadow.ShadowWindow`: agreement with the
   logged driver, SNIPS of the model's reward with its interval, the Kish ESS,
   and the logged policy's mean reward as the reference;
4. export the figures per model_version and alias (the series of a version that
   left both aliases are removed, so label cardinality stays bounded) and keep
   an immutable snapshot that the cycle copies into its next decision record
   (`record_metrics`).

Every instance with the registry plugged in runs it (followers export the same
figures for their own dashboards; the leader's go into decision records): it is
a few vectorised forward passes per tick. It uses a store and a registry handle
of its own (one thread per store instance, as the store contract asks).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, Counter, Gauge

from dispatchloop.decisions.featurizer import Situation, situation_from_event
from dispatchloop.decisions.reward import event_reward
from dispatchloop.errors import InputError, TransientError
from dispatchloop.evaluation.paired import Interval
from dispatchloop.evaluation.shadow import ShadowSnapshot, ShadowWindow
from dispatchloop.events import AliasName, DispatchOutcomeEvent
from dispatchloop.registry.base import ModelRegistry
from dispatchloop.replay.base import ReplayStore, StoreUnavailableError
from dispatchloop.serving.dispatcher import ServedModel, greedy_choices
from dispatchloop.serving.loader import ModelRefusedError, load_from_registry
from dispatchloop.settings import RewardSettings, ShadowSettings

log = logging.getLogger(__name__)

ALIASES: tuple[AliasName, ...] = ("champion", "challenger")
ERROR_KINDS = ("store", "registry", "refused", "scoring")
BOUNDS = ("estimate", "low", "high")


class ShadowMetrics:
    """The shadow figures on the process's one CollectorRegistry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["model_version", "alias"]
        self.agreement = Gauge(
            "dispatchloop_shadow_agreement",
            "Share of the window's logged decisions where the model would have chosen the "
            "logged driver (bound: estimate, or the Wilson interval's low/high).",
            [*labels, "bound"],
            registry=registry,
        )
        self.snips = Gauge(
            "dispatchloop_shadow_snips_reward",
            "SNIPS estimate of the model's mean reward per decision over the window "
            "(bound: estimate, or the delta-method interval's low/high).",
            [*labels, "bound"],
            registry=registry,
        )
        self.ess = Gauge(
            "dispatchloop_shadow_ess",
            "Kish effective sample size of the model's importance weights over the window.",
            labels,
            registry=registry,
        )
        self.window_events = Gauge(
            "dispatchloop_shadow_window_events",
            "Logged decisions in the model's window (those without a propensity included).",
            labels,
            registry=registry,
        )
        self.logged = Gauge(
            "dispatchloop_shadow_logged_reward",
            "The logged policy's realised mean reward over the same window (the reference).",
            ["bound"],
            registry=registry,
        )
        self.scored = Counter(
            "dispatchloop_shadow_events_scored",
            "Logged decisions scored by each watched model.",
            labels,
            registry=registry,
        )
        self.skips = Counter(
            "dispatchloop_shadow_skips",
            "Times shadow scoring fell over a window behind and skipped to the last window.",
            registry=registry,
        )
        self.errors = Counter(
            "dispatchloop_shadow_errors",
            "Shadow scoring errors: store or registry unreachable, a model refused at load, "
            "a batch that could not be scored.",
            ["kind"],
            registry=registry,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self._series: set[tuple[str, str]] = set()

    def export(self, watched: Sequence[Watched]) -> None:
        """Set every watched model's series; remove those of models no longer watched."""
        current = {(w.version, w.alias) for w in watched}
        for version, alias in self._series - current:
            for gauge in (self.agreement, self.snips):
                for bound in BOUNDS:
                    gauge.remove(version, alias, bound)
            for metric in (self.ess, self.window_events, self.scored):
                metric.remove(version, alias)
        self._series = current
        for w in watched:
            s = w.snapshot
            _set_bounds(self.agreement, (w.version, w.alias), s.agreement, s.agreement_ci)
            _set_bounds(self.snips, (w.version, w.alias), s.snips, s.snips_ci)
            self.ess.labels(w.version, w.alias).set(s.ess)
            self.window_events.labels(w.version, w.alias).set(s.events)
            self.scored.labels(w.version, w.alias)
        if watched:
            s = watched[0].snapshot
            _set_bounds(self.logged, (), s.logged_mean, s.logged_ci)


def _set_bounds(gauge: Gauge, labels: tuple[str, ...], value: float, ci: Interval) -> None:
    for bound, figure in zip(BOUNDS, (value, ci.low, ci.high), strict=True):
        gauge.labels(*labels, bound).set(figure)


class Watched(NamedTuple):
    """One watched model's latest figures (immutable; replaced whole each tick)."""

    alias: str
    """`champion` or `challenger`."""
    version: str
    """The registry version the alias pointed at."""
    seq: int
    """The version's number (`v<seq>`): a float-valued record metric can name it."""
    snapshot: ShadowSnapshot
    """Its window's figures."""


class _Model(NamedTuple):
    """A watched model: its scorer and its window (the window is mutated by the scorer)."""

    alias: str
    seq: int
    served: ServedModel
    window: ShadowWindow


class ShadowScorer:
    """Champion and challenger scored on incoming logged decisions (module docstring)."""

    def __init__(
        self,
        *,
        store: ReplayStore,
        registry: ModelRegistry,
        settings: ShadowSettings,
        reward: RewardSettings,
        metrics: ShadowMetrics,
    ) -> None:
        """`store` and `registry` are this scorer's own (it closes them, `close`)."""
        self._store = store
        self._registry = registry
        self._settings = settings
        self._reward = reward
        self._metrics = metrics
        self._aliases: dict[str, str] = {}  # alias -> version, as last read
        self._models: dict[str, _Model] = {}  # alias -> the loaded model and its window
        self._refused: set[str] = set()
        self._cursor: int | None = None  # None: restart from the last window
        self._latest: tuple[Watched, ...] = ()

    # --- what others read -------------------------------------------------------------

    @property
    def watched(self) -> tuple[Watched, ...]:
        """The latest figures of every watched model (champion first)."""
        return self._latest

    def record_metrics(self) -> dict[str, float]:
        """The latest figures as decision-record metrics (finite values only).

        `shadow.<alias>.{version_seq, events, excluded, agreement[_lo|_hi], snips[_lo|_hi],
        ess}` per watched model, `shadow.logged.mean_reward[_lo|_hi]` (the reference over
        the same window), `shadow.confidence`. Called from the cycle's worker thread: it
        reads one immutable tuple, no I/O."""
        watched = self._latest
        figures: dict[str, float] = {}
        for w in watched:
            s = w.snapshot
            prefix = f"shadow.{w.alias}."
            figures |= {
                prefix + "version_seq": w.seq,
                prefix + "events": s.events,
                prefix + "excluded": s.excluded,
                prefix + "agreement": s.agreement,
                prefix + "agreement_lo": s.agreement_ci.low,
                prefix + "agreement_hi": s.agreement_ci.high,
                prefix + "snips": s.snips,
                prefix + "snips_lo": s.snips_ci.low,
                prefix + "snips_hi": s.snips_ci.high,
                prefix + "ess": s.ess,
            }
        if watched:
            s = watched[0].snapshot
            figures |= {
                "shadow.logged.mean_reward": s.logged_mean,
                "shadow.logged.mean_reward_lo": s.logged_ci.low,
                "shadow.logged.mean_reward_hi": s.logged_ci.high,
                "shadow.confidence": s.confidence,
            }
        return {key: float(value) for key, value in figures.items() if math.isfinite(value)}

    # --- the loop -----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Tick every `interval_s` until `stop`; an error is counted and retried next tick."""
        while not stop.is_set():
            self.tick()
            stop.wait(self._settings.interval_s)

    def tick(self) -> int:
        """One round: aliases, new events, figures. Returns the events scored."""
        try:
            self._follow_aliases()
            scored = self._score_new_events()
        except StoreUnavailableError as exc:
            self._metrics.errors.labels("store").inc()
            log.warning("shadow scoring: %s", exc)
            return 0
        except TransientError as exc:  # the registry's database
            self._metrics.errors.labels("registry").inc()
            log.warning("shadow scoring: %s", exc)
            return 0
        self._latest = tuple(
            Watched(alias, self._aliases[alias], model.seq, model.window.snapshot())
            for alias, model in self._models.items()
        )
        self._metrics.export(self._latest)
        return scored

    @property
    def interval_s(self) -> float:
        """Seconds between ticks."""
        return self._settings.interval_s

    def count_error(self, kind: str) -> None:
        """Count an error the caller caught (one of ERROR_KINDS)."""
        self._metrics.errors.labels(kind).inc()

    def close(self) -> None:
        self._store.close()
        self._registry.close()

    # --- models -------------------------------------------------------------------------

    def _follow_aliases(self) -> None:
        aliases: dict[str, str] = {}
        for name in ALIASES:
            state = self._registry.alias(name)
            if state is not None:
                aliases[name] = state.version
        if aliases == self._aliases:
            return
        loaded = {model.served.version: model for model in self._models.values()}
        models: dict[str, _Model] = {}
        for alias, version in aliases.items():
            found = loaded.get(version)
            served = (found.seq, found.served) if found is not None else self._load(version)
            if served is not None:
                window = ShadowWindow(
                    self._settings.window, self._settings.confidence, self._settings.min_ess
                )
                models[alias] = _Model(alias, served[0], served[1], window)
        log.info("shadow scoring follows %s", aliases or "no model")
        self._aliases, self._models = aliases, models
        self._cursor = None  # new windows: start again from the last window's events

    def _load(self, version: str) -> tuple[int, ServedModel] | None:
        """The version's number and scorer, or None (refused: logged, counted, remembered)."""
        if version in self._refused:
            return None
        try:
            seq = self._registry.get(version).seq
            return seq, load_from_registry(self._registry, version)
        except ModelRefusedError as exc:
            self._refuse(version, f"{exc} ({exc.reason})")
        except InputError as exc:  # the version is gone from the registry
            self._refuse(version, str(exc))
        return None

    def _refuse(self, version: str, why: str) -> None:
        self._refused.add(version)
        self._metrics.errors.labels("refused").inc()
        log.error("shadow scoring skips version %s: %s", version, why)

    # --- events -------------------------------------------------------------------------

    def _score_new_events(self) -> int:
        if not self._models:
            return 0
        limit = self._settings.batch
        if self._cursor is None:
            self._cursor = self._store.tail_start(self._settings.window)
        last, batch = self._read(self._cursor, limit)
        if len(batch) == limit:
            start = self._store.tail_start(self._settings.window)
            if start > last:  # over a window behind: those would only pass through
                self._metrics.skips.inc()
                log.warning("shadow scoring fell a window behind: skipping to the last window")
                last, batch = self._read(start, limit)
        if not batch:
            return 0
        self._cursor = last
        self._score(batch)
        return len(batch)

    def _read(self, position: int, limit: int) -> tuple[int, list[LoggedDecision]]:
        """Up to `limit` events stored after `position`, as what scoring needs of each,
        and the last position read. Streamed, each event dropped once read: a list of
        thousands of parsed events alive at once cost the garbage collector more than
        the parsing (benchmarks/shadow.py)."""
        batch: list[LoggedDecision] = []
        for stored in itertools.islice(self._store.iter_events_after(position, limit), limit):
            position = stored.position
            batch.append(LoggedDecision.of(stored.event, self._reward))
        return position, batch

    def _score(self, batch: Sequence[LoggedDecision]) -> None:
        situations = [item.situation for item in batch]
        logged = np.array([item.action_index for item in batch], dtype=np.int64)
        masks = [
            _mask(situation, index) for situation, index in zip(situations, logged, strict=True)
        ]
        propensities = np.array([item.propensity for item in batch])
        rewards = np.array([item.reward for item in batch])
        for alias, model in self._models.items():
            try:
                choices = greedy_choices(model.served, situations, masks)
            except (ValueError, FloatingPointError) as exc:
                self._metrics.errors.labels("scoring").inc()
                log.error("shadow scoring of %s (%s) failed: %s", model.served.version, alias, exc)
                continue
            model.window.add(choices == logged, propensities, rewards)
            self._metrics.scored.labels(model.served.version, alias).inc(len(batch))


class LoggedDecision(NamedTuple):
    """What shadow scoring needs of one logged decision."""

    situation: Situation
    """The situation it was taken in (`situation_from_event`)."""
    action_index: int
    """The candidate the dispatch system chose."""
    propensity: float
    """Its logged probability; NaN when none was logged."""
    reward: float
    """The realised reward (the one reward function)."""

    @classmethod
    def of(cls, event: DispatchOutcomeEvent, reward: RewardSettings) -> LoggedDecision:
        propensity = math.nan if event.action.propensity is None else event.action.propensity
        return cls(
            situation_from_event(event), event.action_index, propensity, event_reward(event, reward)
        )


def _mask(situation: Situation, logged: int) -> NDArray[np.bool_]:
    """The drivers serving may choose (eligible); with none eligible, the logged one (the
    dispatch system's forced choice: the model could only have agreed)."""
    if situation.eligible.any():
        return situation.eligible
    mask = np.zeros_like(situation.eligible)
    mask[logged] = True
    return mask

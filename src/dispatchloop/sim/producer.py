"""`dispatchloop simulate`: the simulator acting as a dispatch system that publishes events.

Each decision becomes one schema-v1 dispatch outcome event, exactly as a real
dispatch system would log it: the candidates it saw, the driver it chose, the
probability its (epsilon-greedy) logging policy gave that choice, and what
happened. Timestamps come from the simulator's clock: episode e is the day
`start + e days`, so hours of day (which the featurizer sees) are preserved.

Events are deterministic for a seed, event ids included (uuid5 of episode and
step): re-running the same command produces the same events, which the store
keeps once. Use another `--seed` for new events.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from dispatchloop.decisions.featurizer import Situation
from dispatchloop.events import DecideRequest, DispatchOutcomeEvent
from dispatchloop.progress import progress
from dispatchloop.settings import KafkaSettings, RewardSettings, Settings
from dispatchloop.sim.dynamics import EpisodePlan
from dispatchloop.sim.env import DispatchEnv
from dispatchloop.sim.policies import NAMED_POLICIES, LoggingPolicy, Policy, ProbabilisticPolicy
from dispatchloop.sim.scenario import Scenario

logger = logging.getLogger(__name__)
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
EVENT_NAMESPACE = uuid.UUID("6f1d2c1e-1a52-4d0c-9a8e-5b0f0c1d2e3f")
Observation = dict[str, NDArray[Any]]


class SimulateInputError(ValueError):
    """A bad option of `simulate` (unknown policy, unreadable model or scenario): exit 2."""


class ProduceError(RuntimeError):
    """Kafka did not acknowledge every event."""


class ServedChoice(NamedTuple):
    """A decision made outside the simulator (by `serving`), as the event logs it."""

    candidate_index: int
    """Position of the chosen driver among the request's candidates."""
    propensity: float
    policy: str
    model_version: str | None


ServedDecider = Callable[[DecideRequest], ServedChoice]
"""Decides a request as a real dispatch system would (`simulate --follow` passes the
serving dispatcher, injected by the CLI: the simulator does not import `serving`)."""

ModelPolicyLoader = Callable[[Path], LoggingPolicy]
"""Loads a model directory as a logging policy (raises ValueError with one sentence).

Injected by the caller: the simulator does not import the trainer's package (`rl`)."""


def resolve_policy(
    spec: str, seed: int, load_model_policy: ModelPolicyLoader | None = None
) -> LoggingPolicy:
    """`greedy`, `random`, `hindsight`, `rollout`, or a model directory (loaded and verified)."""
    if spec in NAMED_POLICIES:
        return LoggingPolicy(NAMED_POLICIES[spec](seed), spec)
    directory = Path(spec)
    if not directory.is_dir() or load_model_policy is None:
        names = ", ".join(NAMED_POLICIES)
        raise SimulateInputError(f"--policy {spec!r} is neither {names} nor a model directory")
    try:
        return load_model_policy(directory)
    except ValueError as exc:
        raise SimulateInputError(f"cannot load the model in {spec!r}: {exc}") from exc


def load_scenario(path: Path | None) -> Scenario:
    """The default scenario, or one saved as JSON (e.g. by Scenario.fit)."""
    if path is None:
        return Scenario.default()
    try:
        return Scenario.from_json_file(path)
    except OSError as exc:
        raise SimulateInputError(f"cannot read scenario {str(path)!r}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise SimulateInputError(f"scenario {str(path)!r} is not valid: {exc}") from exc


def simulated_events(
    scenario: Scenario,
    reward: RewardSettings,
    logging_policy: LoggingPolicy,
    n_events: int,
    *,
    seed: int,
    epsilon: float = 0.0,
    start: datetime = DEFAULT_START,
    company_id: str = "sim",
    served: ServedDecider | None = None,
) -> Iterator[dict[str, Any]]:
    """n_events validated schema-v1 events (JSON-able dicts), episode after episode.

    With `served`, every decision is taken by it (the logging policy and epsilon are
    then its business) and the event logs its policy, model_version and propensity."""
    if not 0.0 <= epsilon <= 1.0:
        raise SimulateInputError(f"epsilon must be within [0, 1], got {epsilon}")
    day0 = datetime(start.year, start.month, start.day, tzinfo=UTC)
    label = logging_policy.label if epsilon == 0 else f"{logging_policy.label}-eps{epsilon:g}"
    if served is not None:
        label = "served"
    env = DispatchEnv(scenario, reward)
    explore_rng = np.random.default_rng([seed, 1])
    obs, _ = env.reset(seed=seed)
    episode, plan = 0, env.plan
    logging_policy.policy.begin_episode(plan)
    for _ in range(n_events):
        decision = Decision(
            episode_id=f"{company_id}/{label}/s{seed}/e{episode:05d}",
            day=day0 + timedelta(days=episode),
            plan=plan,
            step=env.step_index,
            situation=env.situation(),
            action=-1,
            propensity=0.0,
            info={},
        )
        if served is None:
            action, propensity = _choose(logging_policy.policy, obs, epsilon, explore_rng)
            policy, version = label, logging_policy.model_version
        else:
            choice = served(DecideRequest.model_validate(decision.request(company_id)))
            action, propensity = choice.candidate_index, choice.propensity
            policy, version = choice.policy, choice.model_version
        next_obs, _, terminated, _, info = env.step(action)
        decision = decision._replace(action=action, propensity=propensity, info=info)
        event = decision.event(company_id, policy, version)
        DispatchOutcomeEvent.model_validate(event)  # a failure here is a simulator bug
        yield event
        obs = next_obs
        if terminated:
            episode += 1
            obs, _ = env.reset()
            plan = env.plan
            logging_policy.policy.begin_episode(plan)


def _choose(
    policy: Policy, obs: Observation, epsilon: float, rng: np.random.Generator
) -> tuple[int, float]:
    """Epsilon-greedy over eligible drivers; returns the action and its probability."""
    proposed = policy.act(obs)
    mask = obs["action_mask"].astype(bool)
    if isinstance(policy, ProbabilisticPolicy):
        base = policy.action_probs({key: np.asarray(value)[None] for key, value in obs.items()})[0]
    else:
        base = np.zeros(len(mask))
        base[proposed] = 1.0
    action = proposed
    if epsilon > 0 and rng.random() < epsilon:
        action = int(rng.choice(np.flatnonzero(mask)))
    propensity = (1.0 - epsilon) * base[action] + epsilon / int(mask.sum())
    return action, float(min(propensity, 1.0))


class Decision(NamedTuple):
    """One simulated decision with everything its logged event needs."""

    episode_id: str
    day: datetime
    plan: EpisodePlan
    step: int
    situation: Situation
    action: int
    propensity: float
    info: dict[str, Any]

    def request(self, company_id: str) -> dict[str, Any]:
        """The decision to take, as a dispatch system asks `serve` (DecideRequest's fields)."""
        plan, k, s = self.plan, self.step, self.situation
        return {
            "company_id": company_id,
            "decided_at": self._at(plan.decided_s[k]),
            "booking": {
                "booking_id": f"{self.episode_id}/b{k}",
                "pickup": {"lat": s.pickup_lat, "lon": s.pickup_lon},
                "dropoff": {"lat": s.dropoff_lat, "lon": s.dropoff_lon},
                "window_start": self._at(plan.window_start_s[k]),
                "window_end": self._at(plan.window_end_s[k]),
                "priority": s.priority,
            },
            "candidates": [
                {
                    "driver_id": f"d-{i}",
                    "lat": float(s.driver_lat[i]),
                    "lon": float(s.driver_lon[i]),
                    "available_in_min": float(s.available_in_min[i]),
                    "queue_len": int(s.queue_len[i]),
                    "eligible": bool(s.eligible[i]),
                }
                for i in range(len(s.driver_lat))
            ],
        }

    def event(self, company_id: str, policy: str, model_version: str | None) -> dict[str, Any]:
        """The outcome event of the decision taken (`action`) and what came of it (`info`)."""
        k, info = self.step, self.info
        return {
            "schema_version": 1,
            "event_id": str(uuid.uuid5(EVENT_NAMESPACE, f"{self.episode_id}/{k}")),
            "episode_id": self.episode_id,
            "step": k,
            **self.request(company_id),
            "occurred_at": self._at(info["occurred_s"]),
            "action": {
                "driver_id": f"d-{self.action}",
                "policy": policy,
                "model_version": model_version,
                "propensity": self.propensity,
            },
            "outcome": {
                "status": info["outcome_status"],
                "pickup_delay_min": info["pickup_delay_min"],
                "empty_km": info["empty_km"],
                "total_km": info["total_km"],
            },
            "reward": None,
        }

    def _at(self, seconds: float) -> str:
        moment = self.day + timedelta(seconds=int(seconds))
        return moment.isoformat().replace("+00:00", "Z")


class ProduceResult(NamedTuple):
    events: int
    seconds: float


def produce(
    events: Iterable[dict[str, Any]],
    kafka: KafkaSettings,
    *,
    total: int,
    rate: float = 0.0,
    show_progress: bool | None = None,
    stop: threading.Event | None = None,
) -> ProduceResult:
    """Send events to `kafka.topic` keyed by episode_id (acks=all) at `rate` per second.

    `stop` set: no further event is drawn; those sent are flushed and counted (a SIGTERM
    to `simulate` ends it cleanly, e.g. when `demo` stops its dispatch system)."""
    import json  # noqa: PLC0415 - only the Kafka path serialises

    from kafka import KafkaProducer  # noqa: PLC0415 - the simulator itself needs no Kafka
    from kafka.errors import KafkaError  # noqa: PLC0415

    producer = KafkaProducer(**kafka.client_options(), acks="all", linger_ms=5)
    failures: list[BaseException] = []
    started = time.monotonic()
    sent = 0
    try:
        with progress("simulate → kafka", total, show_bar=show_progress) as bar:
            for event in events:
                if stop is not None and stop.is_set():
                    break
                _pace(started, sent, rate)
                future = producer.send(
                    kafka.topic,
                    key=event["episode_id"].encode(),
                    value=json.dumps(event, separators=(",", ":")).encode(),
                )
                future.add_errback(failures.append)
                sent += 1
                bar.update(1)
            producer.flush()
    except KafkaError as exc:
        raise ProduceError(f"Kafka refused events after {sent} sent: {exc}") from exc
    finally:
        producer.close()
    if failures:
        raise ProduceError(f"{len(failures)} of {sent} events were not acknowledged: {failures[0]}")
    return ProduceResult(sent, time.monotonic() - started)


def _pace(started: float, sent: int, rate: float) -> None:
    if rate <= 0:
        return
    delay = started + sent / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def simulate_to_kafka(
    settings: Settings,
    *,
    n_events: int,
    rate: float,
    policy: str,
    epsilon: float,
    seed: int,
    scenario_path: Path | None = None,
    company_id: str = "sim",
    start: datetime = DEFAULT_START,
    load_model_policy: ModelPolicyLoader | None = None,
    served: ServedDecider | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """What `dispatchloop simulate` does; returns the summary it prints.

    `served` (simulate --follow) decides instead of `policy` and `epsilon`; `stop` ends
    production early (the summary counts what was sent)."""
    scenario = load_scenario(scenario_path)
    logging_policy = resolve_policy(policy, seed, load_model_policy)
    events = simulated_events(
        scenario,
        settings.reward,
        logging_policy,
        n_events,
        seed=seed,
        epsilon=epsilon,
        start=start,
        company_id=company_id,
        served=served,
    )
    result = produce(events, settings.kafka, total=n_events, rate=rate, stop=stop)
    logger.info("produced %d simulated events in %.1f s", result.events, result.seconds)
    return {
        "events": result.events,
        "seconds": round(result.seconds, 3),
        "topic": settings.kafka.topic,
        "policy": "served" if served is not None else logging_policy.label,
        "model_version": None if served is not None else logging_policy.model_version,
        "epsilon": epsilon,
        "seed": seed,
    }

"""One way to assemble serving: a dispatcher, its metrics, and (optionally) its follower.

`serve` and `simulate --follow` both start here, so the sidecar and the simulated
dispatch system serve exactly the same way.
"""

from __future__ import annotations

from typing import NamedTuple

from dispatchloop.registry.base import ModelRegistry
from dispatchloop.serving.dispatcher import Dispatcher
from dispatchloop.serving.follower import ModelFollower, make_models_consumer
from dispatchloop.serving.metrics import ServingMetrics
from dispatchloop.settings import KafkaSettings


class ServingStack(NamedTuple):
    """What a dispatch system embeds: decide with `dispatcher`; stop `follower` at exit."""

    dispatcher: Dispatcher
    metrics: ServingMetrics
    follower: ModelFollower | None
    """Following `dispatch.models` in a background thread; None when not following."""
    seeded: int
    """Aliases loaded from the registry at start (0 without a registry)."""


def start_serving(
    kafka: KafkaSettings,
    *,
    epsilon: float,
    follow: bool,
    registry: ModelRegistry | None = None,
    seed: int | None = None,
) -> ServingStack:
    """Seed the dispatcher from the registry's aliases when given, then follow the topic."""
    dispatcher = Dispatcher(epsilon=epsilon, seed=seed)
    metrics = ServingMetrics()
    follower = ModelFollower(
        dispatcher,
        topic=kafka.models_topic,
        consumer_factory=lambda: make_models_consumer(kafka),
        metrics=metrics,
    )
    seeded = follower.seed_from_registry(registry) if registry is not None else 0
    if not follow:
        return ServingStack(dispatcher, metrics, None, seeded)
    return ServingStack(dispatcher, metrics, follower.start(), seeded)

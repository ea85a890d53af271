"""`dispatchloop simulate`: the simulator as a dispatch system producing events."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatchloop.cli.app import EXIT_FAILURE, app, fail_config, one_blas_thread, settings_of

if TYPE_CHECKING:
    from dispatchloop.events import DecideRequest
    from dispatchloop.settings import Settings
    from dispatchloop.sim.policies import LoggingPolicy
    from dispatchloop.sim.producer import ServedChoice

logger = logging.getLogger(__name__)
CATCH_UP_TIMEOUT_S = 30


@app.command("simulate")
def simulate(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    events: Annotated[int, typer.Option("--events", min=1, help="Events to produce.")] = 1_000,
    rate: Annotated[
        float, typer.Option("--rate", min=0.0, help="Events per second; 0 = as fast as possible.")
    ] = 0.0,
    policy: Annotated[
        str,
        typer.Option(
            help="Dispatcher: greedy, random, hindsight, rollout, or a trained model directory."
        ),
    ] = "greedy",
    epsilon: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Chance of a uniformly random eligible driver."),
    ] = 0.0,
    seed: Annotated[
        int | None, typer.Option(help="Seed (default: random); the same seed, the same events.")
    ] = None,
    scenario: Annotated[
        Path | None, typer.Option(help="Scenario JSON file (default: the built-in scenario).")
    ] = None,
    company_id: Annotated[str, typer.Option(help="company_id of the events.")] = "sim",
    start: Annotated[
        str | None,
        typer.Option(help="UTC day of the first episode, YYYY-MM-DD (default: 2026-01-01)."),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            help="Decide through serving, following dispatch.models (champion, canary, "
            "--epsilon); each event logs the deciding version and its propensity.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Act as a dispatch system: simulate decisions and produce their outcome events to Kafka.

    SIGTERM stops it cleanly: the events sent so far are flushed and summarised (exit 0)."""
    import secrets  # noqa: PLC0415 - keep `--help` fast
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415
    from datetime import UTC, datetime  # noqa: PLC0415

    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.sim.producer import (  # noqa: PLC0415
        DEFAULT_START,
        ProduceError,
        SimulateInputError,
        simulate_to_kafka,
    )

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        first_day = DEFAULT_START if start is None else datetime.strptime(start, "%Y-%m-%d")
    except ValueError:
        raise fail_config(f"--start {start!r} is not a date like 2026-11-23.") from None
    if seed is None:
        seed = secrets.randbits(31)  # reported in the summary, so the run can be repeated
    if follow and policy != "greedy":
        raise fail_config("--follow decides with what dispatch.models promotes; drop --policy.")
    if follow and epsilon >= 1.0:
        raise fail_config("--follow needs --epsilon below 1.")
    served = _FollowingDispatcher(settings, epsilon, seed) if follow else None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    try:
        with one_blas_thread():
            summary = simulate_to_kafka(
                settings,
                n_events=events,
                rate=rate,
                policy=policy,
                epsilon=0.0 if follow else epsilon,
                seed=seed,
                scenario_path=scenario,
                company_id=company_id,
                start=first_day.replace(tzinfo=UTC),
                load_model_policy=_load_model_policy,
                served=served,
                stop=stop,
            )
    except SimulateInputError as exc:
        raise fail_config(f"{exc}.") from None
    except ProduceError as exc:
        typer.echo(f"dispatchloop: simulate failed: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if served is not None:
            served.close()
    if served is not None:
        summary.update(epsilon=epsilon, decisions_by_version=dict(served.counts))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"produced {summary['events']} events to {summary['topic']} "
            f"({summary['policy']}, seed {seed}) in {summary['seconds']} s"
        )


def _load_model_policy(directory: Path) -> LoggingPolicy:
    """`simulate --policy DIR`; imported on use, since `rl` pulls torch."""
    from dispatchloop.rl.policy import load_logging_policy  # noqa: PLC0415

    return load_logging_policy(directory)


class _FollowingDispatcher:
    """`simulate --follow`: the serving dispatcher (seeded from the registry when there is
    one, following dispatch.models) as the simulator's decider; counts decisions per version."""

    def __init__(self, settings: Settings, epsilon: float, seed: int) -> None:
        from dispatchloop.cli.serve import open_registry_if_present  # noqa: PLC0415
        from dispatchloop.serving.service import start_serving  # noqa: PLC0415

        self._registry = open_registry_if_present(settings)
        self._stack = start_serving(
            settings.kafka, epsilon=epsilon, follow=True, registry=self._registry, seed=seed
        )
        self.counts: Counter[str] = Counter()
        follower = self._stack.follower
        assert follower is not None
        if not follower.caught_up.wait(CATCH_UP_TIMEOUT_S):
            logger.warning(
                "dispatch.models not read to its end within %d s; deciding with what is loaded",
                CATCH_UP_TIMEOUT_S,
            )

    def __call__(self, request: DecideRequest) -> ServedChoice:
        from dispatchloop.sim.producer import ServedChoice  # noqa: PLC0415

        decision = self._stack.dispatcher.decide(request)
        self.counts[decision.model_version or decision.policy] += 1
        return ServedChoice(
            decision.candidate_index, decision.propensity, decision.policy, decision.model_version
        )

    def close(self) -> None:
        if self._stack.follower is not None:
            self._stack.follower.stop()
        if self._registry is not None:
            self._registry.close()

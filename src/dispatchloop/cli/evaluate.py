"""`dispatchloop evaluate`: paired A/B of policies on the same seeded TEST episodes."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from dispatchloop.cli.app import app, fail_config, fail_store, settings_of
from dispatchloop.settings import Settings


@app.command("evaluate")
def evaluate(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    policies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: random, greedy, hindsight, rollout and/or model directories "
            "[default: random,greedy,hindsight; random with --env]."
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Policy the others are paired against [default: greedy; random with --env]."
        ),
    ] = None,
    env: Annotated[
        str | None,
        typer.Option("--env", help="A Gymnasium env id instead of the dispatch simulator."),
    ] = None,
    scenario: Annotated[str, typer.Option(help="default, or store (fitted to stored events).")] = (
        "default"
    ),
    episodes: Annotated[int, typer.Option(help="Paired TEST episodes per policy.")] = 100,
    seed: Annotated[int, typer.Option(help="Offset into the TEST seeds; seeds random too.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ope: Annotated[
        bool,
        typer.Option(
            "--ope",
            help="Off-policy estimates (IPS, SNIPS, DR) on the store's logged events instead.",
        ),
    ] = False,
) -> None:
    """Run policies on the same seeded TEST episodes and pair them against a baseline (99 % CI)."""
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415
    from dispatchloop.evaluation.report import render_table  # noqa: PLC0415
    from dispatchloop.evaluation.run import run_evaluation  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    if ope:
        _ope(
            settings,
            policies=policies,
            baseline=baseline,
            scenario=scenario,
            seed=seed,
            as_json=as_json,
        )
        return
    try:
        report = run_evaluation(
            settings,
            policies=policies,
            baseline=baseline,
            env_id=env,
            scenario=scenario,
            episodes=episodes,
            seed=seed,
        )
    except EvaluationInputError as exc:
        raise fail_config(f"{exc}.") from None
    except StoreUnavailableError as exc:
        raise fail_store(exc) from None
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else render_table(report))


def _ope(
    settings: Settings,
    *,
    policies: str | None,
    baseline: str | None,
    scenario: str,
    seed: int,
    as_json: bool,
) -> None:
    from dispatchloop.evaluation.ope_run import render_ope, run_ope  # noqa: PLC0415
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415

    try:
        document = run_ope(
            settings, policies=policies, baseline=baseline, scenario=scenario, seed=seed
        )
    except EvaluationInputError as exc:
        raise fail_config(f"{exc}.") from None
    typer.echo(json.dumps(document, indent=2) if as_json else render_ope(document))

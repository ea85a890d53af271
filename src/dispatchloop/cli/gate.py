"""`dispatchloop gate`: judge a candidate against the champion and print the decision record.

Exit codes: 0 promote, 3 reject, 4 insufficient evidence, 2 bad input (one
sentence), 1 any other failure. The record is printed whatever the verdict.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import typer

from dispatchloop.cli.app import app, fail_config, settings_of


@app.command("gate")
def gate(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    candidate: Annotated[
        str, typer.Option(help="Model directory (or registry VERSION) to judge; or greedy/random.")
    ],
    champion: Annotated[
        str, typer.Option(help="greedy, a model directory, or a registry VERSION.")
    ] = "greedy",
    scenario: Annotated[
        str, typer.Option(help="store (fitted to stored events) or default.")
    ] = "store",
    max_episodes: Annotated[
        int | None, typer.Option(help="Paired TEST episodes at the last look [settings].")
    ] = None,
    html_path: Annotated[
        str | None, typer.Option("--html", help="Also write an HTML report with figures.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Paired simulator A/B with sequential stopping, guardrails and off-policy estimates."""
    from dispatchloop.errors import InputError  # noqa: PLC0415
    from dispatchloop.evaluation.gate_run import EXIT_CODES, render_record, run_gate  # noqa: PLC0415
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    with ExitStack() as opened:
        registry: list[Any] = []  # opened on the first VERSION or alias to look up
        versions: dict[str, str] = {}

        def lookup(ref: str) -> Path:
            """A registry VERSION or alias (`champion`) to its verified directory."""
            from dispatchloop.cli.models import registry_of  # noqa: PLC0415

            if not registry:
                registry.append(opened.enter_context(registry_of(settings)))
            found = registry[0].get(ref)
            registry[0].verify(found.version)
            versions[ref] = found.version
            return Path(found.directory)

        try:
            judgement = run_gate(
                settings,
                candidate=candidate,
                champion=champion,
                scenario=scenario,
                max_episodes=max_episodes,
                lookup=lookup,
            )
        except (EvaluationInputError, InputError) as exc:
            raise fail_config(f"{str(exc).rstrip('.')}.") from None
        record = judgement.record
        judged = versions.get(candidate.strip())
        if judged is not None:  # the record is kept with the version it judged
            uri = registry[0].attach_decision(judged, record)
            typer.echo(f"decision record stored with {judged}: {uri}", err=True)
    typer.echo(record.model_dump_json(indent=2) if as_json else render_record(record))
    if html_path is not None:
        from dispatchloop.evaluation.gate_report import write_html  # noqa: PLC0415

        try:
            write_html(judgement, html_path)
        except OSError as exc:
            typer.echo(f"dispatchloop: cannot write {html_path!r}: {exc.strerror}", err=True)
            sys.exit(1)
    raise typer.Exit(EXIT_CODES[record.verdict])

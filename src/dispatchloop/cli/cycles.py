"""`dispatchloop cycles list|show` and `dispatchloop retrain`: the loop's history and requests.

Both read and write the database every instance shares, so they work from any
host: `retrain` writes a request row that whichever instance leads picks up at
its next trigger check.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from dispatchloop.cli.app import app, fail_config, settings_of

if TYPE_CHECKING:
    from dispatchloop.daemon.cycles import Cycle, CycleStore

cycles_app = typer.Typer(help="History of the loop's cycles.", no_args_is_help=True)
app.add_typer(cycles_app, name="cycles")


@contextmanager
def _cycle_store(ctx: typer.Context) -> Iterator[CycleStore]:
    """The shared store's loop tables; a missing or unreachable store exits 2 in one sentence."""
    from dispatchloop.daemon.cycles import CycleStore, engine_of  # noqa: PLC0415 - fast --help
    from dispatchloop.errors import TransientError  # noqa: PLC0415
    from dispatchloop.replay import StoreUnavailableError, open_store  # noqa: PLC0415

    try:
        store = open_store(settings_of(ctx).resolved_store_url, create=False)
    except StoreUnavailableError as exc:
        raise fail_config(f"{str(exc).rstrip('.')} (check DISPATCHLOOP_STORE_URL).") from None
    try:
        yield CycleStore(engine_of(store))
    except TransientError as exc:
        raise fail_config(f"{str(exc).rstrip('.')} (check DISPATCHLOOP_STORE_URL).") from None
    finally:
        store.close()


def _line(cycle: Cycle) -> str:
    version = cycle.version or "-"
    reasons = "; ".join(cycle.reasons)
    started = cycle.started_at.strftime("%Y-%m-%d %H:%M:%S")
    text = (
        f"{cycle.id:>5}  {started}  {cycle.trigger:<10}  {cycle.stage:<9}  "
        f"{cycle.outcome:<21}  {version:<6}"
    )
    return f"{text}  {reasons}" if reasons else text


@cycles_app.command("list")
def cycles_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The newest cycles: trigger, stage reached, outcome, version, reasons."""
    with _cycle_store(ctx) as cycles:
        recent = cycles.recent(limit)
    if as_json:
        typer.echo(json.dumps({"cycles": [cycle.to_json() for cycle in recent]}))
        return
    if not recent:
        typer.echo("no cycles yet")
    for cycle in recent:
        typer.echo(_line(cycle))


@cycles_app.command("show")
def cycles_show(
    ctx: typer.Context,
    cycle_id: Annotated[int, typer.Argument(help="The cycle's id (see `cycles list`).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One cycle with its per-stage timings."""
    with _cycle_store(ctx) as cycles:
        cycle = cycles.get(cycle_id)
    if cycle is None:
        raise fail_config(f"There is no cycle {cycle_id}.")
    if as_json:
        typer.echo(json.dumps(cycle.to_json()))
        return
    document = cycle.to_json()
    for key in ("id", "scope", "trigger", "stage", "outcome", "version", "started_at"):
        typer.echo(f"{key:<12} {document[key]}")
    typer.echo(f"{'finished_at':<12} {document['finished_at']}")
    typer.echo(f"{'leader':<12} {cycle.leader_id} (epoch {cycle.leader_epoch})")
    for stage, seconds in cycle.timings.items():
        typer.echo(f"{'timing':<12} {stage}: {seconds:.1f} s")
    for reason in cycle.reasons:
        typer.echo(f"{'reason':<12} {reason}")


@app.command("retrain")
def retrain(
    ctx: typer.Context,
    reason: Annotated[
        str, typer.Option("--reason", help="Why; shown in the cycle's history.")
    ] = "operator request",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Ask the loop's leader (any instance) to run a cycle at its next trigger check."""
    from dispatchloop.daemon.cycles import requester  # noqa: PLC0415

    with _cycle_store(ctx) as cycles:
        request_id = cycles.request_retrain(reason, requester())
    if as_json:
        typer.echo(json.dumps({"request_id": request_id, "reason": reason}))
    else:
        typer.echo(
            f"retrain request {request_id} queued: the leader starts a cycle at its next check"
        )

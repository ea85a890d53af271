"""`dispatchloop models ...`: list, show, register, promote, roll back, history, publish.

Thin: every command opens the registry (`registry.open_registry`) in the store
database and root from settings (`--registry-root` overrides), calls one library
function and prints the result (`--json` for machines). `promote` and `rollback`
commit the alias move and its outbox row together, then try to publish for
`REGISTRY__PUBLISH_TIMEOUT_S`; when the broker is down the event stays queued and
the command still succeeds (`models publish` or the daemon sends it later).

`DISPATCHLOOP_TEST_CRASH_AT=name[:n]` (tests only; `registry.base.crash_checkpoint`)
SIGKILLs the process the n-th time the registry passes the named checkpoint: how the
crash-safety test stops a real promotion between staging and publication.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from dispatchloop.cli.app import app, fail_config, settings_of
from dispatchloop.events import ALL_COMPANIES, AliasName
from dispatchloop.settings import Settings

models_app = typer.Typer(
    name="models",
    help="Model registry: versions, champion/challenger aliases, promotion events.",
    no_args_is_help=True,
)
app.add_typer(models_app)

RootOption = Annotated[
    Path | None,
    typer.Option("--registry-root", help="Version files [default: REGISTRY__ROOT]."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
ScopeOption = Annotated[str, typer.Option("--scope", help="* (every company) or one company_id.")]
AliasOption = Annotated[str, typer.Option("--alias", help="champion or challenger.")]
ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who is acting [default: user@host].")
]


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def registry_of(settings: Settings, root: Path | None = None) -> Iterator[Any]:
    """The registry in the store database; an unreachable store is exit 2 in one sentence."""
    from dispatchloop.registry import open_registry  # noqa: PLC0415 - keep --help fast
    from dispatchloop.registry.base import CRASH_ENV, crash_checkpoint  # noqa: PLC0415
    from dispatchloop.replay import StoreUnavailableError  # noqa: PLC0415

    try:
        registry = open_registry(
            settings.resolved_store_url,
            root or settings.resolved_registry_root,
            clock=_now,
            checkpoint=crash_checkpoint(os.environ.get(CRASH_ENV)),
        )
    except StoreUnavailableError as exc:
        raise fail_config(f"{str(exc).rstrip('.')} (check DISPATCHLOOP_STORE_URL).") from None
    try:
        yield registry
    finally:
        registry.close()


def _alias(value: str) -> AliasName:
    if value == "champion":
        return "champion"
    if value == "challenger":
        return "challenger"
    raise fail_config(f"--alias must be champion or challenger, not {value!r}.")


def _actor(value: str | None) -> str:
    return value or f"{getpass.getuser()}@{socket.gethostname()}"


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _version_json(version: Any, aliases: dict[str, list[str]]) -> dict[str, Any]:
    card = version.card
    return {
        "version": version.version,
        "sha256": card.weights_sha256,
        "onnx_sha256": card.onnx_sha256,
        "content_sha256": version.content_sha256,
        "model_id": card.model_id,
        "trainer": card.trainer,
        "featurizer_version": card.featurizer_version,
        "registered_at": version.registered_at.isoformat(),
        "registered_by": version.registered_by,
        "directory": str(version.directory),
        "aliases": aliases.get(version.version, []),
    }


@models_app.command("list")
def list_models(
    ctx: typer.Context,
    scope: ScopeOption = ALL_COMPANIES,
    registry_root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Versions, and the aliases a scope is served (a company falls back to *)."""
    with registry_of(settings_of(ctx), registry_root) as registry:
        resolved = {
            name: registry.resolve(name, company=scope) for name in ("champion", "challenger")
        }
        versions = registry.list_versions()
        backlog = registry.outbox_backlog()
    tags: dict[str, list[str]] = {}
    for name, state in resolved.items():
        if state is not None:
            tags.setdefault(state.version, []).append(f"{name}@{state.scope}")
    data = {
        "scope": scope,
        "aliases": {name: state and state.version for name, state in resolved.items()},
        "traffic": {name: state and state.traffic_share for name, state in resolved.items()},
        "versions": [_version_json(v, tags) for v in versions],
        "outbox_backlog": backlog,
    }
    if as_json:
        _echo_json(data)
        return
    for name, state in resolved.items():
        where = "" if state is None or state.scope == scope else f" (from scope {state.scope})"
        shown = "-" if state is None else f"{state.version} share {state.traffic_share:g}"
        typer.echo(f"{name:<11} {shown}{where}")
    typer.echo(f"{'version':<8} {'trainer':<8} {'sha256':<14} {'registered':<26} aliases")
    for item in data["versions"]:
        typer.echo(
            f"{item['version']:<8} {item['trainer']:<8} {item['sha256'][:12]:<14} "
            f"{item['registered_at'][:25]:<26} {' '.join(item['aliases'])}"
        )
    if backlog:
        typer.echo(f"{backlog} promotion event(s) not yet published (dispatchloop models publish)")


@models_app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="A version (v3) or an alias (champion).")],
    scope: ScopeOption = ALL_COMPANIES,
    registry_root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """The card, the verification result and the decision records of one version."""
    from dispatchloop.registry import VersionIntegrityError  # noqa: PLC0415

    with registry_of(settings_of(ctx), registry_root) as registry:
        version = registry.get(ref, company=None if scope == ALL_COMPANIES else scope)
        try:
            report = registry.verify(version.version)
            verification = {"ok": True, "stray_files": list(report.stray_files)}
        except VersionIntegrityError as exc:
            verification = {"ok": False, "error": str(exc)}
        records = registry.decisions(version.version)
    data = {
        **_version_json(version, {}),
        "card": version.card.model_dump(mode="json"),
        "verification": verification,
        "decisions": [record.model_dump(mode="json") for record in records],
    }
    if as_json:
        _echo_json(data)
        return
    typer.echo(json.dumps(data["card"], indent=2, sort_keys=True))
    ok = "verified" if verification["ok"] else f"REFUSED: {verification['error']}"
    typer.echo(f"{version.version}: {ok}")
    for record in records:
        typer.echo(
            f"decision {record.record_id} {record.kind} {record.verdict} "
            f"at {record.created_at.isoformat()}: {' '.join(record.reasons)}"
        )


@models_app.command("register")
def register(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="A model directory (dispatchloop train).")],
    actor: ActorOption = None,
    registry_root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy a verified model directory into the registry as a new immutable version."""
    with registry_of(settings_of(ctx), registry_root) as registry:
        before = {v.version for v in registry.list_versions()}
        version = registry.register(model_dir, actor=_actor(actor))
    data = {
        "version": version.version,
        "sha256": version.card.weights_sha256,
        "onnx_sha256": version.card.onnx_sha256,
        "content_sha256": version.content_sha256,
        "created": version.version not in before,
        "directory": str(version.directory),
    }
    if as_json:
        _echo_json(data)
    else:
        how = "registered as" if data["created"] else "already registered as"
        typer.echo(f"{model_dir} {how} {version.version} (sha256 {data['sha256'][:12]})")


@models_app.command("promote")
def promote(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version to promote (v3).")],
    alias: AliasOption = "champion",
    scope: ScopeOption = ALL_COMPANIES,
    traffic_share: Annotated[
        float | None,
        typer.Option(help="Share of decisions [default: 1 - challenger share; 0.1 challenger]."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote without a passing decision record.")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why (required with --force).")] = None,
    actor: ActorOption = None,
    registry_root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point an alias at a verified version with a passing decision record, then publish."""
    if force and not (reason or "").strip():
        raise fail_config("--force needs --reason TEXT (recorded in the history).")
    settings = settings_of(ctx)
    with registry_of(settings, registry_root) as registry:
        move = registry.promote(
            version, actor=_actor(actor), reason=reason or "decision record passed",
            alias=_alias(alias), scope=scope, traffic_share=traffic_share, force=force,
        )  # fmt: skip
        backlog = _publish(settings, registry, settings.registry.publish_timeout_s)
    _report_move(move, backlog, as_json)


@models_app.command("rollback")
def rollback(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    reason: Annotated[str, typer.Option(help="Why (recorded in the history and the event).")],
    alias: AliasOption = "champion",
    scope: ScopeOption = ALL_COMPANIES,
    actor: ActorOption = None,
    registry_root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move an alias back to the version it served before, then publish."""
    if not reason.strip():
        raise fail_config("--reason must not be empty.")
    settings = settings_of(ctx)
    with registry_of(settings, registry_root) as registry:
        move = registry.rollback(_alias(alias), actor=_actor(actor), reason=reason, scope=scope)
        backlog = _publish(settings, registry, settings.registry.publish_timeout_s)
    _report_move(move, backlog, as_json)


@models_app.command("history")
def history(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    alias: Annotated[str | None, typer.Option("--alias", help="One alias [default: both].")] = None,
    scope: ScopeOption = ALL_COMPANIES,
    at: Annotated[
        datetime | None,
        typer.Option(
            "--at",
            formats=[
                "%Y-%m-%dT%H:%M:%S.%f%z",
                "%Y-%m-%dT%H:%M:%S%z",
                "%Y-%m-%dT%H:%M%z",
                "%Y-%m-%dT%H:%M:%S",
            ],
            help="What was serving at this time (UTC unless it has an offset).",
        ),
    ] = None,
    registry_root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every alias move of a scope, oldest first: who, when, from, to, why, which record.

    With --at TIME: only the move in force then, per alias, with its decision record."""
    if at is not None:
        _serving_at(ctx, at, alias=alias, scope=scope, registry_root=registry_root, as_json=as_json)
        return
    with registry_of(settings_of(ctx), registry_root) as registry:
        entries = registry.history(None if alias is None else _alias(alias), scope=scope)
    if as_json:
        _echo_json([entry.model_dump(mode="json") for entry in entries])
        return
    for e in entries:
        forced = " FORCED" if e.override else ""
        typer.echo(
            f"{e.at.isoformat()} {e.scope}/{e.alias} {e.from_version or '-'} -> {e.to_version} "
            f"{e.event_type}{forced} share {e.traffic_share:g} by {e.actor}: {e.reason} "
            f"(decision {e.decision_record_id or '-'}, event {e.event_id})"
        )


def _serving_at(
    ctx: typer.Context,
    at: datetime,
    *,
    alias: str | None,
    scope: str,
    registry_root: Path | None,
    as_json: bool,
) -> None:
    moment = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    names: list[AliasName] = ["champion", "challenger"] if alias is None else [_alias(alias)]
    company = None if scope == ALL_COMPANIES else scope
    found: dict[str, Any] = {}
    with registry_of(settings_of(ctx), registry_root) as registry:
        for name in names:
            entry = registry.serving_at(name, moment, company=company)
            records = [] if entry is None else registry.decisions(entry.to_version)
            record = next((r for r in records if r.record_id == entry.decision_record_id), None)
            found[name] = None if entry is None else {
                **entry.model_dump(mode="json"),
                "decision": None if record is None else record.model_dump(mode="json"),
            }  # fmt: skip
    if as_json:
        _echo_json({"at": moment.isoformat(), "scope": scope, "serving": found})
        return
    for label, item in found.items():
        if item is None:
            typer.echo(f"{label}: nothing was set at {moment.isoformat()}")
            continue
        why = item["decision"]["reasons"] if item["decision"] else []
        typer.echo(
            f"{label}: {item['to_version']} (scope {item['scope']}) since {item['at']}, "
            f"{item['event_type']} by {item['actor']}: {item['reason']}; "
            f"decision {item['decision_record_id'] or '-'}: {' '.join(why) or '-'}"
        )


@models_app.command("publish")
def publish(
    ctx: typer.Context,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep publishing until SIGTERM/SIGINT.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to try [default: REGISTRY__PUBLISH_TIMEOUT_S].")
    ] = None,
    registry_root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish queued promotion events to the models topic (exit 1 if some stay queued)."""
    settings = settings_of(ctx)
    with registry_of(settings, registry_root) as registry:
        if follow:
            _follow(settings, registry)
        backlog = _publish(settings, registry, timeout or settings.registry.publish_timeout_s)
    if as_json:
        _echo_json({"backlog": backlog})
    else:
        typer.echo(f"{backlog} promotion event(s) still queued")
    if backlog:
        raise typer.Exit(1)


def _publisher(settings: Settings, registry: Any) -> Any:
    from dispatchloop.registry.base import CRASH_ENV, crash_checkpoint  # noqa: PLC0415
    from dispatchloop.registry.outbox import publisher_from_settings  # noqa: PLC0415

    return publisher_from_settings(
        registry,
        settings.kafka,
        settings.registry,
        clock=_now,
        checkpoint=crash_checkpoint(os.environ.get(CRASH_ENV)),
    )


def _publish(settings: Settings, registry: Any, timeout_s: float) -> int:
    """Drain the outbox for at most `timeout_s`; return what is still queued."""
    publisher = _publisher(settings, registry)
    try:
        return int(publisher.drain(timeout_s).backlog)
    finally:
        publisher.close()


def _follow(settings: Settings, registry: Any) -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    publisher = _publisher(settings, registry)
    try:
        publisher.run(stop)
    finally:
        publisher.close()


def _report_move(move: Any, backlog: int, as_json: bool) -> None:
    entry, event = move.entry, move.event
    data = {
        "scope": entry.scope,
        "alias": entry.alias,
        "version": entry.to_version,
        "previous": entry.from_version,
        "event_type": entry.event_type,
        "event_id": entry.event_id,
        "traffic_share": entry.traffic_share,
        "override": entry.override,
        "decision_record_id": entry.decision_record_id,
        "record_uri": None if event.decision is None else event.decision.record_uri,
        "published": backlog == 0,
    }
    if as_json:
        _echo_json(data)
        return
    typer.echo(
        f"{entry.scope}/{entry.alias}: {entry.from_version or '-'} -> {entry.to_version} "
        f"({entry.event_type}, event {entry.event_id})"
    )
    if backlog:
        typer.echo(
            "the broker did not acknowledge in time: the event is queued in the outbox and "
            "will be published by `dispatchloop models publish` or the daemon"
        )

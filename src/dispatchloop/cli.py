"""`dispatchloop ...`: the operator's entry point (Typer).

`main()` builds the one Settings object and turns configuration problems into
exit code 2 with one sentence; each command receives the settings through the
Typer context. Long work shows a progress bar on a terminal; `--json` prints
machine-readable results on stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dispatchloop.settings import ConfigError, Settings, load_settings, masked_dump

if TYPE_CHECKING:
    from dispatchloop.sim.policies import LoggingPolicy

EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2

app = typer.Typer(
    name="dispatchloop",
    help="Closes the learning loop of a reinforcement-learning dispatcher.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (env DISPATCHLOOP_CONFIG)."),
    ] = None,
) -> None:
    ctx.obj = load_settings(config)


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    assert isinstance(settings, Settings)
    return settings


def fail_config(message: str) -> typer.Exit:
    """Report a configuration problem in one sentence; the caller raises the result."""
    typer.echo(f"dispatchloop: configuration error: {message}", err=True)
    return typer.Exit(EXIT_BAD_CONFIG)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective configuration with secrets masked."""
    data = masked_dump(settings_of(ctx))
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for line in _flatten(data):
        typer.echo(line)


def _flatten(data: dict[str, object], prefix: str = "") -> list[str]:
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            lines.extend(_flatten(value, f"{prefix}{key}."))
        else:
            lines.append(f"{prefix}{key} = {json.dumps(value)}")
    return lines


# --- store commands (replay/) ---

store_app = typer.Typer(help="Inspect the replay store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("stats")
def store_stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Events, episodes, decided_at range and size on disk of the replay store."""
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415 - fast --help
    from dispatchloop.replay.report import read_stats, stats_document, stats_lines  # noqa: PLC0415

    try:
        stats = read_stats(settings_of(ctx).resolved_store_url)
    except StoreUnavailableError as exc:
        raise fail_config(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(stats_document(stats)))
        return
    for line in stats_lines(stats):
        typer.echo(line)


# --- ingest commands (consumers/) ---


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    max_events: Annotated[
        int | None, typer.Option("--max-events", min=1, help="Stop after N records processed.")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", min=0.1, help="Stop after this many seconds without records."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Consume dispatch outcome events into the replay store (dead letters to the DLQ)."""
    from dispatchloop.daemon.ingest import run_ingest  # noqa: PLC0415 - keep `--help` fast
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.replay.base import StoreUnavailableError  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        totals = run_ingest(settings, max_events=max_events, idle_exit_s=idle_exit)
    except StoreUnavailableError as exc:
        reason = str(exc).rstrip(".")
        raise fail_config(f"{reason} (check DISPATCHLOOP_STORE_URL).") from None
    summary = {
        "processed": totals.processed,
        "stored": totals.stored,
        "duplicates": totals.duplicates,
        "dead_letters": totals.dead_letters,
        "partitions": sorted(totals.partitions),
        "unresolved": totals.unresolved,
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"processed {totals.processed}: stored {totals.stored}, "
            f"duplicates {totals.duplicates}, dead letters {totals.dead_letters}"
        )
    if totals.unresolved:
        typer.echo(
            f"dispatchloop: stopped with {totals.unresolved} records neither stored nor "
            "dead-lettered (not committed; the next run reads them again).",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)


# --- simulator commands (sim/) ---
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
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Act as a dispatch system: simulate decisions and produce their outcome events to Kafka."""
    import secrets  # noqa: PLC0415 - keep `--help` fast
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
    try:
        summary = simulate_to_kafka(
            settings,
            n_events=events,
            rate=rate,
            policy=policy,
            epsilon=epsilon,
            seed=seed,
            scenario_path=scenario,
            company_id=company_id,
            start=first_day.replace(tzinfo=UTC),
            load_model_policy=_load_model_policy,
        )
    except SimulateInputError as exc:
        raise fail_config(f"{exc}.") from None
    except ProduceError as exc:
        typer.echo(f"dispatchloop: simulate failed: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"produced {summary['events']} events to {summary['topic']} "
            f"({summary['policy']}, seed {seed}) in {summary['seconds']} s"
        )


# --- training commands (rl/) ---


def _load_model_policy(directory: Path) -> LoggingPolicy:
    """`simulate --policy DIR`; imported on use, since `rl` pulls torch."""
    from dispatchloop.rl.policy import load_logging_policy  # noqa: PLC0415

    return load_logging_policy(directory)


@app.command("train")
def train(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="New model directory to write.")],
    from_store: Annotated[
        bool, typer.Option("--from-store", help="Pre-train offline on the store's logged data.")
    ] = False,
    sim_steps: Annotated[
        int | None,
        typer.Option(
            "--sim-steps",
            min=0,
            help="Env steps in the simulator (default 50000; 0 with --from-store).",
        ),
    ] = None,
    env: Annotated[
        str | None,
        typer.Option("--env", help="Train on a Gymnasium env id instead (e.g. CartPole-v1)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", min=1, help="Gradient steps with --from-store, env steps with --env."
        ),
    ] = None,
    params: Annotated[
        Path | None, typer.Option("--params", help="DQN params JSON or an optimal_config.json.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of networks, exploration and episodes.")] = 0,
    scenario: Annotated[
        str, typer.Option(help="default, or store (calibrated from stored events).")
    ] = "default",
    distill: Annotated[
        bool,
        typer.Option(
            "--distill",
            help="Teach the scorer to choose as the rollout planner does (DAgger) "
            "instead of Q-learning: a better dispatcher, minutes of planning to train.",
        ),
    ] = False,
    distill_episodes: Annotated[
        int | None,
        typer.Option(
            "--distill-episodes", min=1, help="Episodes per DAgger round with --distill (1000)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train a DQN and write a verified model directory (safetensors, metadata, ONNX)."""
    from dispatchloop.logs import configure_logging  # noqa: PLC0415 - keep `--help` fast
    from dispatchloop.rl.dqn import TrainingDivergedError  # noqa: PLC0415
    from dispatchloop.rl.run import TrainInputError, TrainRequest, run_training  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    if scenario not in ("default", "store"):
        raise fail_config(f"--scenario must be default or store, not {scenario!r}.")
    if env is not None and from_store:
        raise fail_config("--env and --from-store cannot be combined.")
    if distill and (env is not None or from_store or sim_steps is not None or steps is not None):
        raise fail_config(
            "--distill trains in the simulator by its own budget (--distill-episodes); "
            "it takes none of --env, --from-store, --sim-steps or --steps."
        )
    if distill_episodes is not None and not distill:
        raise fail_config("--distill-episodes needs --distill.")
    request = TrainRequest(
        out=out,
        env_id=env,
        from_store=from_store,
        steps=steps,
        sim_steps=sim_steps,
        params=params,
        seed=seed,
        scenario="store" if scenario == "store" else "default",
        distill=distill,
        distill_episodes=distill_episodes,
    )
    try:
        summary = run_training(settings, request)
    except TrainInputError as exc:
        raise fail_config(f"{exc}.") from None
    except TrainingDivergedError as exc:
        typer.echo(f"dispatchloop: training failed, no model written: {exc}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"model {summary['model_id']} written to {summary['model_dir']} "
            f"({summary['env_steps']} env steps, {summary['gradient_steps']} gradient steps, "
            f"final loss {summary['final_loss']:.4g}, {summary['wall_seconds']:.1f} s)"
        )


# --- evaluation commands (evaluation/) ---


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
) -> None:
    """Run policies on the same seeded TEST episodes and pair them against a baseline (99 % CI)."""
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415
    from dispatchloop.evaluation.report import render_table  # noqa: PLC0415
    from dispatchloop.evaluation.run import run_evaluation  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
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
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else render_table(report))


# --- tuning commands (tuning/) ---


@app.command("tune")
def tune(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    trials: Annotated[
        int | None, typer.Option(help="Total trials for the study, across all workers.")
    ] = 50,
    timeout: Annotated[
        float | None, typer.Option(help="Stop starting trials after S seconds.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna RDB URL; default sqlite:///<data_dir>/tuning.db."),
    ] = None,
    study: Annotated[str, typer.Option(help="Study name; workers with one name share it.")] = (
        "dispatch-dqn"
    ),
    scenario: Annotated[str, typer.Option(help="default, or store (fitted to events).")] = (
        "default"
    ),
    output: Annotated[
        Path | None, typer.Option(help="optimal_config.json; default under data_dir.")
    ] = None,
    steps_per_trial: Annotated[int, typer.Option(help="Env steps of training per trial.")] = 20_000,
    validation_episodes: Annotated[int, typer.Option(help="Validation episodes per score.")] = 20,
    evaluations: Annotated[int, typer.Option(help="Scores reported per trial (pruning).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of sampler and training.")] = 0,
    pruner: Annotated[str, typer.Option(help="median, hyperband or none.")] = "median",
    heartbeat: Annotated[
        int, typer.Option(help="Heartbeat seconds; a dead worker's trial reruns after 2x.")
    ] = 30,
    warm_start: Annotated[
        Path | None, typer.Option(help="Params or optimal_config.json to try first.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Tune DQN hyperparameters with Optuna (TPE + pruning) on validation episodes."""
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415
    from dispatchloop.evaluation.simulated import load_scenario  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.tuning import command  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        world, _label = load_scenario(
            command.scenario_source(scenario), settings.resolved_store_url
        )
        result = command.run_tune(
            settings,
            world,
            trials=trials,
            timeout_s=timeout,
            storage=storage,
            study=study,
            output=output,
            steps_per_trial=steps_per_trial,
            validation_episodes=validation_episodes,
            evaluations=evaluations,
            seed=seed,
            pruner=pruner,
            heartbeat_s=heartbeat,
            warm_start=warm_start,
        )
    except (command.TuneInputError, EvaluationInputError) as exc:
        raise fail_config(f"{exc}.") from None
    typer.echo(json.dumps(command.result_json(result)) if as_json else command.summary(result))


@app.command("compare")
def compare(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    baseline: Annotated[Path, typer.Option(help="Params JSON or model directory.")],
    candidate: Annotated[Path, typer.Option(help="Params JSON or model directory.")],
    episodes: Annotated[int, typer.Option(help="Paired TEST episodes.")] = 100,
    seeds: Annotated[int, typer.Option(help="Training runs per params file.")] = 1,
    steps: Annotated[int, typer.Option(help="Env steps per training run.")] = 20_000,
    scenario: Annotated[str, typer.Option(help="default, or store.")] = "default",
    seed: Annotated[int, typer.Option(help="First test seed offset / training seed.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Candidate vs baseline configuration on the same TEST seeds, with a paired 99 % CI."""
    from dispatchloop.evaluation.policies import EvaluationInputError  # noqa: PLC0415
    from dispatchloop.evaluation.report import render_table  # noqa: PLC0415
    from dispatchloop.evaluation.simulated import load_scenario  # noqa: PLC0415
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.tuning import command  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    request = command.CompareRequest(baseline, candidate, episodes, seeds, steps, seed)
    try:
        world, _label = load_scenario(
            command.scenario_source(scenario), settings.resolved_store_url
        )
        result = command.compare(request, world, settings.reward)
    except (command.CompareInputError, EvaluationInputError) as exc:
        raise fail_config(f"{exc}.") from None
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else render_table(result.report))


# --- demo ---


@app.command("demo")
def demo(  # noqa: PLR0917 - Typer maps one parameter per option
    ctx: typer.Context,
    events: Annotated[int, typer.Option(help="Logged decisions to simulate and ingest.")] = 3_000,
    workdir: Annotated[
        Path | None, typer.Option(help="Empty or new directory for store, model, broker log.")
    ] = None,
    episodes: Annotated[int, typer.Option(help="Paired TEST episodes in the final A/B.")] = 100,
    offline_steps: Annotated[int, typer.Option(help="Offline gradient steps.")] = 2_000,
    finetune_steps: Annotated[int, typer.Option(help="Simulator steps of fine-tuning.")] = 12_000,
    seed: Annotated[int, typer.Option(help="Seed of simulation, training and evaluation.")] = 0,
) -> None:
    """Everything on one machine: local broker → simulate → ingest → train → evaluate."""
    from dispatchloop.demo import (  # noqa: PLC0415
        DemoFailedError,
        DemoInputError,
        DemoOptions,
        run_demo,
        verdict,
    )
    from dispatchloop.logs import configure_logging  # noqa: PLC0415
    from dispatchloop.testing.broker import BrokerStartError  # noqa: PLC0415

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        options = DemoOptions(
            events=events,
            episodes=episodes,
            offline_steps=offline_steps,
            finetune_steps=finetune_steps,
            seed=seed,
        )
        summary = run_demo(settings, options, workdir, say=typer.echo)
    except DemoInputError as exc:
        raise fail_config(f"{exc}.") from None
    except (BrokerStartError, DemoFailedError) as exc:
        typer.echo(f"dispatchloop: demo failed: {str(exc).rstrip('.')}.", err=True)
        raise typer.Exit(EXIT_FAILURE) from None
    typer.echo(verdict(summary))


def main() -> None:
    """Console entry point. Usage errors exit 2 (click); so does a bad configuration."""
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"dispatchloop: configuration error: {exc}", err=True)
        sys.exit(EXIT_BAD_CONFIG)


if __name__ == "__main__":
    main()

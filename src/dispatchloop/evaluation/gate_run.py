"""`dispatchloop gate` behind its thin CLI command: specs in, judgement out.

`resolve_contender` is the one place a command-line spec (`greedy`, a model
directory, or a registry VERSION) becomes a policy; the registry plugs in there
as a `VersionLookup`. The world is the scenario fitted to the store's events (or
the default one) and the logs are the store's events, featurized with that
world's demand map (no simulator object is needed for it).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple

from dispatchloop.evaluation.gate import GateThresholds
from dispatchloop.evaluation.judge import Contender, Judgement, judge
from dispatchloop.evaluation.logged import LoggedSample, from_dataset
from dispatchloop.evaluation.policies import EvaluationInputError
from dispatchloop.evaluation.run import scenario_source
from dispatchloop.evaluation.simulated import load_scenario
from dispatchloop.events import DecisionRecord
from dispatchloop.progress import progress
from dispatchloop.replay import TimeWindow, open_store
from dispatchloop.replay.base import StoreUnavailableError
from dispatchloop.rl.artifacts import ArtifactError, load_model
from dispatchloop.rl.logged import LoggedDataset
from dispatchloop.rl.policy import DQNPolicy
from dispatchloop.settings import Settings
from dispatchloop.sim.policies import GreedyPolicy, RandomPolicy
from dispatchloop.sim.scenario import Scenario

VersionLookup = Callable[[str], Path]
"""The registry's read side: a model VERSION to its verified directory (InputError if unknown)."""
Role = Literal["candidate", "champion"]
BASELINE_CONTENDERS = ("greedy", "random")
EXIT_CODES = {"promote": 0, "reject": 3, "insufficient_evidence": 4}


def resolve_contender(spec: str, role: Role, lookup: VersionLookup | None = None) -> Contender:
    """`greedy`/`random`, a model directory, or (with the registry's `lookup`) a VERSION."""
    name = spec.strip()
    if name in BASELINE_CONTENDERS:
        return Contender(name, GreedyPolicy() if name == "greedy" else RandomPolicy(0))
    directory = Path(name)
    if not directory.is_dir():
        if lookup is None:
            raise EvaluationInputError(
                f"--{role} {name!r} is neither greedy, random nor a model directory "
                "(registry versions resolve only with the registry's lookup)"
            )
        directory = lookup(name)  # the registry's read side (cli/gate.py passes it)
    try:
        loaded = load_model(directory)
    except (ArtifactError, OSError) as exc:
        raise EvaluationInputError(f"cannot load model {str(directory)!r}: {exc}") from exc
    card = loaded.card
    label = card.version or card.model_version or directory.name  # registry version first
    return Contender(label, DQNPolicy(loaded.q_network, name=label))


class GateInputs(NamedTuple):
    """The world and logs a judgement runs on."""

    scenario: Scenario
    """The simulated world (fitted to the store, or the default)."""
    window: tuple[datetime, datetime] | None
    """The store window the world was fitted from (None: the default world)."""
    logged: LoggedSample | None
    """The store's logged decisions (None: no store, or no events)."""
    note: str
    """How the logs were found (or why there are none)."""


def _unreachable(exc: StoreUnavailableError) -> str:
    return f"{str(exc).rstrip('.')} (check DISPATCHLOOP_STORE_URL)"


def gate_inputs(settings: Settings, scenario: str) -> GateInputs:
    """Scenario and logs for `gate --scenario store|default`."""
    source = scenario_source(scenario)
    try:
        world, _ = load_scenario(source, settings.resolved_store_url)
    except StoreUnavailableError as exc:
        raise EvaluationInputError(_unreachable(exc)) from None
    try:
        store = open_store(settings.resolved_store_url, create=False)
    except StoreUnavailableError as exc:
        if source == "store":
            raise EvaluationInputError(_unreachable(exc)) from None
        return GateInputs(world, None, None, f"no replay store ({_unreachable(exc)})")
    try:
        stats = store.stats()
        window = None
        if source == "store" and stats.first_decided_at and stats.last_decided_at:
            window = (stats.first_decided_at, stats.last_decided_at)
        if stats.events == 0:
            return GateInputs(world, window, None, "the replay store has no events")
        dataset = LoggedDataset.from_store(
            store, TimeWindow(), settings.reward, world.arrays.demand
        )
    finally:
        store.close()
    note = f"{len(dataset)} logged transitions from the store"
    return GateInputs(world, window, from_dataset(dataset), note)


def run_gate(
    settings: Settings,
    *,
    candidate: str,
    champion: str,
    scenario: str,
    max_episodes: int | None,
    lookup: VersionLookup | None = None,
    show_bar: bool | None = None,
) -> Judgement:
    """What `dispatchloop gate` does: resolve, load the world and logs, judge."""
    gate = settings.gate
    if max_episodes is not None:
        if max_episodes < 2 * gate.looks:
            raise EvaluationInputError(
                f"--max-episodes must be at least {2 * gate.looks} for {gate.looks} looks"
            )
        gate = gate.model_copy(update={"max_episodes": max_episodes})
    thresholds = GateThresholds.from_settings(gate)
    contenders = (
        resolve_contender(candidate, "candidate", lookup),
        resolve_contender(champion, "champion", lookup),
    )
    inputs = gate_inputs(settings, scenario)
    with progress("gate", 2 * thresholds.max_episodes, show_bar=show_bar) as bar:
        return judge(
            *contenders,
            inputs.scenario,
            settings.reward,
            thresholds,
            logged=inputs.logged,
            logged_note=inputs.note,
            window=inputs.window,
            progress=bar,
        )


def render_record(record: DecisionRecord) -> str:
    """A readable table of the record for a terminal."""
    symbol = {True: "pass", False: "FAIL", None: "undecided"}
    lines = [
        f"candidate {record.candidate} vs champion {record.champion}: "
        f"{record.verdict.upper().replace('_', ' ')}",
        "",
        f"{'gate':<28} {'result':<10} {'value':>11} {'interval':>25}  threshold",
    ]
    for gate in record.gates:
        value = "" if gate.value is None else f"{gate.value:+.4g}"
        ci = "" if gate.ci is None else f"[{gate.ci[0]:+.4g}, {gate.ci[1]:+.4g}]"
        threshold = "" if gate.threshold is None else f"{gate.threshold:g}"
        lines.append(f"{gate.name:<28} {symbol[gate.passed]:<10} {value:>11} {ci:>25}  {threshold}")
    lines += ["", "reasons:", *(f"  - {reason}" for reason in record.reasons)]
    if record.scenario is not None:
        lines.append(f"scenario {record.scenario.fingerprint[:16]}…, seeds {record.seeds}")
    return "\n".join(lines)

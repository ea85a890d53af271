"""What an evaluation is asked: policies by name or model directory, seeds, baseline.

Shared by the simulator path (`simulated.py`) and the Gymnasium path (`gym.py`)
so both refuse bad input with the same one-sentence messages (exit code 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dispatchloop.rl.artifacts import ArtifactError, load_model
from dispatchloop.rl.networks import QNetwork
from dispatchloop.sim.rollout import test_seeds

BASELINES = ("random", "greedy", "hindsight", "rollout")
"""Simulator baselines; `hindsight` sees the whole episode and is a ceiling, not a rival;
`rollout` plans without foresight (tens of ms a decision), a reference for what is reachable."""
GYM_BASELINES = ("random",)


class EvaluationInputError(ValueError):
    """A policy name, model directory or option the evaluation cannot use (exit code 2)."""


@dataclass(frozen=True)
class PolicySpec:
    """A policy as named on the command line: a baseline, or a model directory."""

    name: str
    model_dir: Path | None = None

    @property
    def is_model(self) -> bool:
        return self.model_dir is not None


@dataclass(frozen=True)
class EvaluationRequest:
    """What `dispatchloop evaluate` was asked, already parsed and checked."""

    policies: tuple[PolicySpec, ...]
    baseline: str
    episodes: int
    seed: int

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.policies]
        if self.baseline not in names:
            raise EvaluationInputError(
                f"baseline {self.baseline!r} is not among the policies {', '.join(names)}"
            )
        if self.episodes < 2:
            raise EvaluationInputError(
                f"--episodes must be at least 2 for an interval, got {self.episodes}"
            )
        if self.seed < 0:
            raise EvaluationInputError(f"--seed must be non-negative, got {self.seed}")

    @property
    def seeds(self) -> list[int]:
        """`episodes` TEST seeds, starting `seed` places into the test range.

        Test seeds only: tuning selects on validation seeds, so a model is never
        judged on the episodes it was chosen on.
        """
        return test_seeds(self.episodes, offset=self.seed)

    @property
    def model_names(self) -> list[str]:
        return [spec.name for spec in self.policies if spec.is_model]


def parse_policies(names: Sequence[str], baselines: Sequence[str] = BASELINES) -> list[PolicySpec]:
    """Baseline names stay names; anything else must be an existing model directory."""
    specs: list[PolicySpec] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in baselines:
            specs.append(PolicySpec(name))
        elif Path(name).is_dir():
            specs.append(PolicySpec(name, Path(name)))
        else:
            known = ", ".join(baselines)
            raise EvaluationInputError(
                f"policy {name!r} is neither a baseline ({known}) nor a model directory"
            )
    if len({spec.name for spec in specs}) != len(specs):
        raise EvaluationInputError("a policy is listed twice in --policies")
    if not specs:
        raise EvaluationInputError("no policy to evaluate (use --policies greedy,random,...)")
    return specs


def load_q_network(model_dir: Path) -> QNetwork:
    """The model's network, verified against its recorded sha256 (never torch.load)."""
    try:
        return load_model(model_dir).q_network
    except (ArtifactError, OSError) as exc:
        raise EvaluationInputError(f"cannot load model {str(model_dir)!r}: {exc}") from exc

"""Serving's whole surface stays torch-free, its answer reads back exactly, and its settings
come from the environment."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from dispatchloop.serving.dispatcher import Decision
from dispatchloop.serving.http import decision_json
from dispatchloop.settings import ConfigError, load_settings


def test_no_serving_module_imports_torch() -> None:
    modules = "loader, follower, http, service, metrics, dispatcher"
    code = (
        f"import sys\nfrom dispatchloop.serving import {modules}\n"
        "import dispatchloop.cli.serve\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_serving_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings().serving
    assert (defaults.host, defaults.epsilon, defaults.follow) == ("127.0.0.1", 0.0, True)
    monkeypatch.setenv("DISPATCHLOOP_SERVING__PORT", "9000")
    monkeypatch.setenv("DISPATCHLOOP_SERVING__EPSILON", "0.05")
    monkeypatch.setenv("DISPATCHLOOP_SERVING__FOLLOW", "false")
    serving = load_settings().serving
    assert (serving.port, serving.epsilon, serving.follow) == (9000, 0.05, False)
    monkeypatch.setenv("DISPATCHLOOP_SERVING__EPSILON", "1.0")
    with pytest.raises(ConfigError, match="DISPATCHLOOP_SERVING__EPSILON"):
        load_settings()


def test_the_answer_reads_back_as_exactly_the_decisions_numbers() -> None:
    """Every float a client parses from `POST /v1/decide` is the float `decide` returned."""
    rng = np.random.default_rng(1)
    awkward = [0.0, -0.0, 1e-05, 1e16, 5e-324, 1.7976931348623157e308, 0.1 + 0.2, 1 / 3]
    random = (rng.standard_normal(4_000) * 10.0 ** rng.integers(-12, 12, 4_000)).tolist()
    values = awkward + random
    for start in range(0, len(values), 40):
        scores = tuple(v if k % 7 else None for k, v in enumerate(values[start : start + 40]))
        propensity = float(rng.random())
        decision = Decision("d-1", 0, "dqn", "v3", propensity, scores)
        answer = json.loads(decision_json(decision))
        assert answer == {
            "driver_id": "d-1",
            "policy": "dqn",
            "model_version": "v3",
            "propensity": propensity,
            "scores": list(scores),
        }
        signs = [math.copysign(1, s) for s in answer["scores"] if s is not None]
        assert signs == [math.copysign(1, s) for s in scores if s is not None]
    greedy = json.loads(decision_json(Decision("d-2", 1, "greedy", None, 1.0, (None, -2.5))))
    assert greedy["model_version"] is None

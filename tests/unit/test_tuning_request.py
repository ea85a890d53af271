"""Operator options → TuneConfig/ObjectiveSpec: defaults under data_dir, warm start, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dispatchloop.settings import Settings
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning.request import TuneInputError, build_request


def settings_at(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def test_defaults_live_under_data_dir_and_nothing_is_warm_started(tmp_path: Path) -> None:
    config, spec = build_request(settings_at(tmp_path), Scenario.default())
    assert config.storage_url == f"sqlite:///{(tmp_path / 'data' / 'tuning.db').resolve()}"
    assert config.output == tmp_path / "data" / "optimal_config.json"
    assert config.warm_start is None
    assert config.n_trials == 50
    assert config.pruner == "median"
    assert spec.scenario == Scenario.default()


def test_a_previous_report_warm_starts_the_next_run(tmp_path: Path) -> None:
    output = tmp_path / "data" / "optimal_config.json"
    output.parent.mkdir(parents=True)
    output.write_text(json.dumps({"best_params": {"learning_rate": 1e-3}, "best_value": -90.0}))
    config, _ = build_request(settings_at(tmp_path), Scenario.default())
    assert config.warm_start == {"learning_rate": 1e-3}


def test_an_explicit_warm_start_file_wins_and_must_be_readable(tmp_path: Path) -> None:
    explicit = tmp_path / "params.json"
    explicit.write_text(json.dumps({"gamma": 0.95}))
    config, _ = build_request(settings_at(tmp_path), Scenario.default(), warm_start=explicit)
    assert config.warm_start == {"gamma": 0.95}
    explicit.write_text("{not json")
    with pytest.raises(TuneInputError, match="--warm-start"):
        build_request(settings_at(tmp_path), Scenario.default(), warm_start=explicit)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trials": 0}, "--trials"),
        ({"trials": None, "timeout_s": None}, "--timeout"),
        ({"pruner": "asha"}, "--pruner"),
        ({"storage": "mysql://x"}, "--storage"),
        ({"steps_per_trial": 3, "evaluations": 5}, "--steps-per-trial"),
        ({"validation_episodes": 0}, "--validation-episodes"),
    ],
)
def test_unusable_options_are_refused_in_one_sentence(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(TuneInputError, match=message):
        build_request(settings_at(tmp_path), Scenario.default(), **options)  # type: ignore[arg-type]

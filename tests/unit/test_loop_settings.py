"""The loop settings section: documented defaults, env and TOML overrides, one-sentence errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatchloop.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DISPATCHLOOP_") and not key.startswith("DISPATCHLOOP_TEST_"):
            monkeypatch.delenv(key)


def test_loop_defaults_are_the_documented_ones():
    loop = load_settings().loop
    assert loop.interval_s == 6 * 3600
    assert loop.new_events == 50_000
    assert loop.min_events == 3_000
    assert loop.trainer == "dqn"
    assert loop.drift_metric == "psi"
    assert 0 < loop.drift_threshold < 1


def test_loop_settings_come_from_env_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "c.toml"
    config.write_text('[loop]\ntrainer = "distill"\ninterval_s = 60\n')
    monkeypatch.setenv("DISPATCHLOOP_LOOP__NEW_EVENTS", "500")
    loop = load_settings(config).loop
    assert (loop.trainer, loop.interval_s, loop.new_events) == ("distill", 60, 500)


def test_a_bad_loop_setting_is_one_sentence(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DISPATCHLOOP_LOOP__TRAINER", "ppo")
    with pytest.raises(ConfigError, match=r"^Invalid setting DISPATCHLOOP_LOOP__TRAINER: "):
        load_settings()
    monkeypatch.setenv("DISPATCHLOOP_LOOP__TRAINER", "dqn")
    monkeypatch.setenv("DISPATCHLOOP_LOOP__MIN_EVENTS", "0")
    with pytest.raises(ConfigError, match="DISPATCHLOOP_LOOP__MIN_EVENTS"):
        load_settings()

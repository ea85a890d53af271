"""Serving's whole surface stays torch-free, and its settings come from the environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

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

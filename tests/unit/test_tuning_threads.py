"""A tune worker is one core: NumPy's BLAS pool is limited to one thread while it tunes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from dispatchloop.settings import Settings
from dispatchloop.sim.scenario import Scenario
from dispatchloop.tuning import tune as tune_module
from dispatchloop.tuning.request import build_request


def _blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_blas_runs_one_thread_during_tuning_and_is_restored_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.ones((4, 4)) @ np.ones((4, 4))  # make sure NumPy's BLAS is loaded
    assert _blas_threads(), "NumPy should expose a BLAS thread pool"
    before = _blas_threads()
    seen: dict[str, Any] = {}

    def recording_objective(*args: Any, **kwargs: Any) -> str:
        seen["threads"] = _blas_threads()
        return "result"

    monkeypatch.setattr(tune_module, "tune_objective", recording_objective)
    config, spec = build_request(Settings(data_dir=tmp_path), Scenario.default())
    assert tune_module.tune(config, spec) == "result"  # type: ignore[comparison-overlap]
    assert seen["threads"] and all(threads == 1 for threads in seen["threads"])
    assert _blas_threads() == before

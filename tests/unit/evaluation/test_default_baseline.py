"""`evaluate --policies DIR` alone pairs the model against the path's default baseline."""

from __future__ import annotations

from pathlib import Path

from dispatchloop.evaluation.policies import PolicySpec
from dispatchloop.evaluation.run import with_default_baseline


def test_one_model_gets_the_default_baseline_first() -> None:
    model = PolicySpec("m", Path("m"))
    assert with_default_baseline([model], None, "random") == [PolicySpec("random"), model]


def test_listed_default_is_not_added_twice() -> None:
    specs = [PolicySpec("greedy"), PolicySpec("m", Path("m"))]
    assert with_default_baseline(specs, None, "greedy") == specs


def test_an_explicit_baseline_is_never_added() -> None:
    specs = [PolicySpec("m", Path("m"))]
    assert with_default_baseline(specs, "hindsight", "greedy") == specs

"""One torch thread and one BLAS thread in RL tests: the machine is shared and these networks
are tiny (the NumPy learner step runs on BLAS; idle OpenBLAS threads spin under load)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(previous)

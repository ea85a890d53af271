"""Helpers of the registry tests: tiny real model directories and decision records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import torch

from dispatchloop.events import DecisionRecord, GateResult
from dispatchloop.rl.artifacts import save_model
from dispatchloop.rl.card import CardDraft, DataWindow
from dispatchloop.rl.hyperparams import DQNConfig
from dispatchloop.rl.networks import CandidateQNetwork

TINY = DQNConfig(hidden_size=8, n_layers=1)
START = datetime(2026, 11, 30, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def make_model(directory: Path, seed: int, *, onnx: bool = False) -> Path:
    """A real (untrained) candidate scorer saved as a model directory; seed sets its weights."""
    torch.manual_seed(seed)
    network = CandidateQNetwork(TINY.hidden_size, TINY.n_layers)
    draft = CardDraft(
        trainer="dqn",
        training={"mode": "sim", "seed": seed},
        data_window=DataWindow(start=START, end=END, events=1200 + seed),
        parent_version=None,
        tuning_study="nightly-test",
        metrics={"final_loss": 0.5},
    )
    save_model(directory, network, TINY, draft, export_onnx=onnx)
    return directory


def passing_record(candidate: str, champion: str | None = None) -> DecisionRecord:
    """A gate's decision record with verdict promote."""
    return DecisionRecord(
        record_id=str(uuid.uuid4()),
        candidate=candidate,
        champion=champion,
        verdict="promote",
        gates=(GateResult(name="paired_sim", passed=True, value=3.2, ci=(1.1, 5.3),
                          confidence=0.99, threshold=0.0, detail="400 paired episodes"),),
        reasons=("all gates passed",),
        metrics={"sim_reward_delta": 3.2},
        created_at=datetime.now(UTC),
    )  # fmt: skip


def rejecting_record(candidate: str) -> DecisionRecord:
    return passing_record(candidate).model_copy(
        update={"verdict": "reject", "reasons": ("paired_sim failed",)}
    )

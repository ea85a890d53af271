"""`CandidateScorer`: the candidate network's forward pass in NumPy, without torch.

One implementation for training-time evaluation (`rl.policy.DQNPolicy`) and for
serving (which must not import torch): a model scores the same situation the
same way wherever it runs. It is built from the plain arrays of a
`model.safetensors` file (`safetensors.numpy.load_file`) and the network spec
stored with the model, so the serving side never needs the training code.

Arithmetic is float32 and follows `rl.networks.CandidateQNetwork` exactly (a test
checks agreement with the PyTorch module). Masked positions get `MASKED_Q`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

MASKED_Q = -1.0e9
"""Score of a candidate that may not be chosen; finite so no arithmetic turns into NaN."""

Linear = tuple[NDArray[np.float32], NDArray[np.float32]]


class ScorerSpecError(ValueError):
    """The weights and the spec do not describe a candidate network this scorer can run."""


class CandidateScorer:
    """Inference-only NumPy twin of a candidate network (same arithmetic, float32)."""

    def __init__(
        self,
        encoder: list[Linear],
        advantage: Linear,
        value: list[Linear] | None,
        *,
        n_candidate_features: int,
        activation: str,
    ) -> None:
        if activation not in ("relu", "tanh"):
            raise ScorerSpecError(f"unknown activation {activation!r} (expected relu or tanh)")
        first_weight, self._first_bias = encoder[0]
        # The first layer split into candidate and context parts: the context term is
        # computed once per decision instead of being concatenated onto every row.
        self._first_candidate = first_weight[:n_candidate_features].copy()
        self._first_context = first_weight[n_candidate_features:].copy()
        self._encoder = encoder[1:]
        self._advantage = advantage
        self._value = value
        self._tanh = activation == "tanh"
        self.n_candidate_features = n_candidate_features
        self.n_context_features = first_weight.shape[0] - n_candidate_features

    @classmethod
    def from_state(
        cls, tensors: Mapping[str, NDArray[Any]], spec: Mapping[str, Any]
    ) -> CandidateScorer:
        """From a state dict of arrays (names as in `CandidateQNetwork`) and its `spec()`."""
        if spec.get("kind") != "candidate":
            raise ScorerSpecError(f"network kind {spec.get('kind')!r} is not a candidate network")
        try:
            n_layers = int(spec["n_layers"])
            encoder = [_linear(tensors, f"encoder.{2 * i}") for i in range(n_layers)]
            advantage = _linear(tensors, "advantage")
            value = (
                [_linear(tensors, "value.0"), _linear(tensors, "value.2")]
                if spec.get("dueling")
                else None
            )
            n_candidate = int(spec["n_candidate_features"])
            activation = str(spec.get("activation", "relu"))
        except KeyError as exc:
            raise ScorerSpecError(f"the weights or spec lack {exc.args[0]!r}") from None
        _check_shapes(encoder, n_candidate + int(spec["n_context_features"]))
        return cls(
            encoder, advantage, value, n_candidate_features=n_candidate, activation=activation
        )

    def _act(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.tanh(x) if self._tanh else np.maximum(x, 0.0)

    def _embed(
        self, candidates: NDArray[np.float32], context: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Embeddings h (B·n, H) and advantages a (B, n) of every candidate, eligible or not."""
        batch, n, features = candidates.shape
        rows = candidates.reshape(batch * n, features)  # 2-D matmuls are the fast ones
        per_decision = context @ self._first_context + self._first_bias  # (B, H)
        h = (rows @ self._first_candidate).reshape(batch, n, -1) + per_decision[:, None, :]
        h = self._act(h).reshape(batch * n, -1)
        for weight, bias in self._encoder:
            h = self._act(h @ weight + bias)
        return h, (h @ self._advantage[0] + self._advantage[1]).reshape(batch, n)

    def ranking_scores(
        self, candidates: NDArray[np.float32], context: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """Scores (B, n) whose masked argmax is the masked argmax of Q.

        With a dueling head Q_i = V + a_i - mean_eligible(a): V and the mean are the
        same for every candidate of a decision, so the ranking is the advantages'
        alone and a greedy decision skips the value head (a third of the work).
        """
        return self._embed(candidates, context)[1]

    def q_values(
        self,
        candidates: NDArray[np.float32],
        context: NDArray[np.float32],
        mask: NDArray[np.bool_],
    ) -> NDArray[np.float32]:
        """candidates (B, n, F_c), context (B, F_ctx), mask (B, n) → masked Q (B, n)."""
        batch, n, _ = candidates.shape
        h, advantage = self._embed(candidates, context)
        if self._value is None:
            q = advantage
        else:
            w = mask.astype(np.float32)
            count = np.maximum(w.sum(axis=1, keepdims=True), 1.0)
            pooled = np.einsum("bn,bnh->bh", w, h.reshape(batch, n, -1)) / count
            v = np.concatenate([pooled, context], axis=-1)
            v = self._act(v @ self._value[0][0] + self._value[0][1])
            value = v @ self._value[1][0] + self._value[1][1]
            q = value + advantage - (advantage * w).sum(axis=1, keepdims=True) / count
        return np.where(mask, q, np.float32(MASKED_Q)).astype(np.float32)


def _linear(tensors: Mapping[str, NDArray[Any]], prefix: str) -> Linear:
    """A torch-layout Linear (out, in) as a right-multiplied (in, out) float32 pair."""
    weight = np.asarray(tensors[f"{prefix}.weight"], dtype=np.float32)
    bias = np.asarray(tensors[f"{prefix}.bias"], dtype=np.float32)
    return np.ascontiguousarray(weight.T), bias.copy()


def _check_shapes(encoder: list[Linear], in_features: int) -> None:
    width = in_features
    for index, (weight, bias) in enumerate(encoder):
        if weight.shape[0] != width or bias.shape != (weight.shape[1],):
            raise ScorerSpecError(
                f"encoder layer {index} has shape {weight.shape[::-1]}, expected input {width}"
            )
        width = weight.shape[1]

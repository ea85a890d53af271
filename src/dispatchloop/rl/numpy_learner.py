"""The DQN gradient step in NumPy, for both Q-networks training uses.

Why NumPy: one update of a 64x64 MLP on a batch of 64 is some forty tiny array
operations. PyTorch eager spends ~5-10 µs of dispatch and autograd bookkeeping
on each; on this machine forward + backward + Adam alone (no DQN at all) runs
at about Stable-Baselines3's whole update rate, so no amount of trimming an
eager update can make it several times faster. NumPy spends ~1 µs per op. So
the step is written out by hand, CleanRL style, top to bottom:

1. `ParameterVector` — the torch module's parameters moved into one contiguous
   float32 vector, each torch parameter becoming a *view* of it. The PyTorch
   network stays the model (artifacts, ONNX, serving, callbacks that evaluate
   or checkpoint mid-training): every NumPy update is its weights at once,
   nothing is copied back. Adam and the gradient norm run as a few vector ops
   over all parameters.
2. `FlatQFunction` / `CandidateQFunction` — forward with cached activations and
   a hand-written backward for `FlatQNetwork` and `CandidateQNetwork` (dueling
   or not, relu or tanh, action masks).
3. `dqn_loss_and_grad` — Double-DQN target over eligible actions, Huber loss,
   CQL penalty, and dLoss/dQ.
4. `NumpyDQNStep` — loss and gradient, clipping by global norm, `Adam`, target update.

It is the same arithmetic as `dqn_loss` + `loss.backward()` + `clip_grad_norm_` +
`torch.optim.Adam` in rl/dqn.py, which stays the reference definition (and the
path for any other network kind); tests/unit/rl/test_rl_numpy_learner.py checks
loss, gradients and Adam steps agree to float32 precision.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from dispatchloop.decisions.scorer import MASKED_Q
from dispatchloop.rl.buffer import Transitions
from dispatchloop.rl.networks import CandidateQNetwork, FlatQNetwork, QNetwork

F32 = NDArray[np.float32]
Bool = NDArray[np.bool_]
ArrayObs = Mapping[str, F32]

_MASKED = np.float32(MASKED_Q)


# --- 1. parameters as one vector ---------------------------------------------------------


class ParameterVector:
    """All parameters of a torch module in one float32 vector; the module's become views of it.

    `param[name]` / `grad[name]` are views (shaped like the torch parameter) into
    `values` / `grads`, so a layer reads and writes its slice while clipping and
    Adam see one flat vector. In-place changes through torch (`load_state_dict`,
    `p.mul_()`) reach the NumPy weights too; replacing a parameter (`.to(...)`,
    `.double()`) or wrapping the same module in a second vector breaks the
    sharing, so a module belongs to one learner while it trains.
    """

    def __init__(self, module: nn.Module) -> None:
        named = list(module.named_parameters())
        sizes = [p.numel() for _, p in named]
        self.values: F32 = np.empty(sum(sizes), np.float32)
        self.grads: F32 = np.zeros(sum(sizes), np.float32)
        self.param: dict[str, F32] = {}
        self.grad: dict[str, F32] = {}
        offset = 0
        for (name, parameter), size in zip(named, sizes, strict=True):
            if parameter.dtype != torch.float32 or parameter.device.type != "cpu":
                raise ValueError(f"{name}: only float32 CPU parameters are supported")
            shape = tuple(parameter.shape)
            view = self.values[offset : offset + size].reshape(shape)
            view[...] = parameter.detach().numpy()
            parameter.data = torch.from_numpy(view)  # the torch module now reads this memory
            self.param[name] = view
            self.grad[name] = self.grads[offset : offset + size].reshape(shape)
            offset += size


class Dense:
    """y = x W^T + b on views of a ParameterVector; `backward` writes dW and db there."""

    def __init__(self, params: ParameterVector, prefix: str) -> None:
        self.weight = params.param[f"{prefix}.weight"]  # (out, in), torch's layout
        self.bias = params.param[f"{prefix}.bias"]
        self.d_weight = params.grad[f"{prefix}.weight"]
        self.d_bias = params.grad[f"{prefix}.bias"]

    def __call__(self, x: F32) -> F32:
        out: F32 = x @ self.weight.T
        out += self.bias
        return out

    def backward(self, x: F32, dy: F32) -> F32:
        """Write dW, db for input x and output gradient dy; return dLoss/dx."""
        np.matmul(dy.T, x, out=self.d_weight)
        np.sum(dy, axis=0, out=self.d_bias)
        return dy @ self.weight

    def backward_params(self, x: F32, dy: F32) -> None:
        """Like `backward` for a first layer, whose input needs no gradient."""
        np.matmul(dy.T, x, out=self.d_weight)
        np.sum(dy, axis=0, out=self.d_bias)


def _activate(x: F32, tanh: bool) -> F32:
    """In place: x is a fresh pre-activation nobody else holds."""
    if tanh:
        return np.tanh(x, out=x)
    return np.maximum(x, 0.0, out=x)


def _activation_grad(dy: F32, y: F32, tanh: bool) -> F32:
    """dLoss/d(pre-activation) from the activation's output y (relu: y > 0; tanh: 1 - y²)."""
    if tanh:
        return dy * (1.0 - y * y)
    return dy * (y > 0.0)


def _linears(module: nn.Module) -> list[str]:
    """Names of the nn.Linear children of a Sequential, in order (e.g. body.0, body.2)."""
    return [name for name, child in module.named_modules() if isinstance(child, nn.Linear)]


# --- 2. the Q-functions: forward with cache, backward ------------------------------------


class NumpyQFunction(abc.ABC):
    """NumPy forward/backward of a torch Q-network whose parameters it shares."""

    def __init__(self, network: QNetwork) -> None:
        self.network = network
        self.params = ParameterVector(network)

    @abc.abstractmethod
    def forward(self, obs: ArrayObs, mask: Bool) -> tuple[F32, Any]:
        """Masked Q (B, A) like `network.q_values`, and what `backward` needs."""

    @abc.abstractmethod
    def backward(self, cache: Any, d_q: F32) -> None:
        """Write dLoss/dparameters into `params.grads`, given dLoss/dQ (zero where masked).

        d_q may cover only the first rows of the forward batch (the s half of [s; s']).
        """

    def q_values(self, obs: ArrayObs, mask: Bool) -> F32:
        return self.forward(obs, mask)[0]


class FlatQFunction(NumpyQFunction):
    """`FlatQNetwork`: MLP body, advantage head, optional dueling value head."""

    def __init__(self, network: FlatQNetwork) -> None:
        super().__init__(network)
        self.tanh = network.activation == "tanh"
        self.body = [Dense(self.params, f"body.{name}") for name in _linears(network.body)]
        self.advantage = Dense(self.params, "advantage")
        self.value = Dense(self.params, "value") if network.value is not None else None

    def forward(self, obs: ArrayObs, mask: Bool) -> tuple[F32, Any]:
        activations = [obs["obs"]]  # input of each layer, then the last hidden output
        for layer in self.body:
            activations.append(_activate(layer(activations[-1]), self.tanh))
        hidden = activations[-1]
        q = self.advantage(hidden)
        if self.value is not None:  # Q = V + A - mean(A)
            q -= q.mean(axis=1, keepdims=True)
            q += self.value(hidden)
        return np.where(mask, q, _MASKED), activations

    def backward(self, cache: Any, d_q: F32) -> None:
        activations: list[F32] = [a[: len(d_q)] for a in cache]
        hidden = activations[-1]
        if self.value is not None:
            d_value = d_q.sum(axis=1, keepdims=True)
            d_advantage = d_q - d_q.mean(axis=1, keepdims=True)
            d_hidden = self.advantage.backward(hidden, d_advantage)
            d_hidden += self.value.backward(hidden, d_value)
        else:
            d_hidden = self.advantage.backward(hidden, d_q)
        for i in range(len(self.body) - 1, -1, -1):
            d_pre = _activation_grad(d_hidden, activations[i + 1], self.tanh)
            if i == 0:
                self.body[0].backward_params(activations[0], d_pre)
            else:
                d_hidden = self.body[i].backward(activations[i], d_pre)


class _CandidateCache(NamedTuple):
    rows: F32  # (B*n, F_c) candidate features
    context: F32  # (B, F_ctx)
    hidden: list[F32]  # encoder outputs, each (B*n, H); the last is the embedding
    weights: F32  # (B, n) mask as float
    n_eligible: F32  # (B, 1) eligible candidates, at least 1
    value_input: F32 | None  # (B, H + F_ctx) [pooled embedding, context]
    value_hidden: F32 | None  # (B, H)

    def head(self, batch: int, n: int) -> _CandidateCache:
        """The cache of the first `batch` states only."""
        return _CandidateCache(
            self.rows[: batch * n],
            self.context[:batch],
            [h[: batch * n] for h in self.hidden],
            self.weights[:batch],
            self.n_eligible[:batch],
            None if self.value_input is None else self.value_input[:batch],
            None if self.value_hidden is None else self.value_hidden[:batch],
        )


class CandidateQFunction(NumpyQFunction):
    """`CandidateQNetwork`: per-candidate encoder with shared weights, dueling over eligible ones.

    The first encoder layer acts on [candidate, context]; its weight is split in
    the candidate and context columns so the context term is computed once per
    state, not once per candidate row (same sum, fewer flops).
    """

    def __init__(self, network: CandidateQNetwork) -> None:
        super().__init__(network)
        self.tanh = network.activation == "tanh"
        self.n_candidate_features = network.n_candidate_features
        self.encoder = [Dense(self.params, f"encoder.{n}") for n in _linears(network.encoder)]
        self.advantage = Dense(self.params, "advantage")
        self.value = (
            [Dense(self.params, f"value.{n}") for n in _linears(network.value)]
            if network.value is not None
            else None
        )

    def forward(self, obs: ArrayObs, mask: Bool) -> tuple[F32, Any]:
        candidates, context = obs["candidates"], obs["context"]
        batch, n, features = candidates.shape
        rows = candidates.reshape(batch * n, features)
        first = self.encoder[0]
        split = self.n_candidate_features
        per_state = context @ first.weight[:, split:].T + first.bias  # (B, H)
        pre = (rows @ first.weight[:, :split].T).reshape(batch, n, -1)
        pre += per_state[:, None, :]
        hidden = [_activate(pre.reshape(batch * n, -1), self.tanh)]
        for layer in self.encoder[1:]:
            hidden.append(_activate(layer(hidden[-1]), self.tanh))
        embedding = hidden[-1]
        advantage = self.advantage(embedding).reshape(batch, n)
        weights = mask.astype(np.float32)
        count = np.maximum(weights.sum(axis=1, keepdims=True), 1.0)
        value_input = value_hidden = None
        if self.value is not None:  # Q = V(mean eligible embedding, context) + A - mean_eligible(A)
            pooled = np.matmul(weights[:, None, :], embedding.reshape(batch, n, -1))[:, 0]
            pooled /= count
            value_input = np.concatenate([pooled, context], axis=1)
            value_hidden = _activate(self.value[0](value_input), self.tanh)
            q = advantage - (advantage * weights).sum(axis=1, keepdims=True) / count
            q += self.value[1](value_hidden)
        else:
            q = advantage
        cache = _CandidateCache(rows, context, hidden, weights, count, value_input, value_hidden)
        return np.where(mask, q, _MASKED), cache

    def backward(self, cache: Any, d_q: F32) -> None:
        batch, n = d_q.shape
        c: _CandidateCache = cache.head(batch, n)
        embedding = c.hidden[-1]
        if self.value is not None:
            assert c.value_input is not None and c.value_hidden is not None
            d_value = d_q.sum(axis=1, keepdims=True)  # (B, 1)
            d_advantage = d_q - c.weights * (d_value / c.n_eligible)
            d_value_hidden = self.value[1].backward(c.value_hidden, d_value)
            d_value_pre = _activation_grad(d_value_hidden, c.value_hidden, self.tanh)
            d_pooled = self.value[0].backward(c.value_input, d_value_pre)[:, : embedding.shape[1]]
            # pooled = sum_i w_i h_i / count  →  dh_i += w_i / count * d_pooled
            d_embedding = (c.weights / c.n_eligible)[:, :, None] * d_pooled[:, None, :]
            d_embedding = d_embedding.reshape(batch * n, -1)
            d_embedding += self.advantage.backward(embedding, d_advantage.reshape(-1, 1))
        else:
            d_embedding = self.advantage.backward(embedding, d_q.reshape(-1, 1))
        d_hidden = d_embedding
        for i in range(len(self.encoder) - 1, 0, -1):
            d_pre = _activation_grad(d_hidden, c.hidden[i], self.tanh)
            d_hidden = self.encoder[i].backward(c.hidden[i - 1], d_pre)
        d_pre = _activation_grad(d_hidden, c.hidden[0], self.tanh)  # (B*n, H)
        first, split = self.encoder[0], self.n_candidate_features
        first.d_weight[:, :split] = d_pre.T @ c.rows
        per_state = d_pre.reshape(batch, n, -1).sum(axis=1)  # (B, H): the context term's grad
        first.d_weight[:, split:] = per_state.T @ c.context
        np.sum(per_state, axis=0, out=first.d_bias)


def numpy_q_function(network: QNetwork) -> NumpyQFunction | None:
    """The NumPy twin of a network, or None for a kind this module does not implement."""
    if isinstance(network, FlatQNetwork):
        return FlatQFunction(network)
    if isinstance(network, CandidateQNetwork):
        return CandidateQFunction(network)
    return None


# --- 3. the loss and dLoss/dQ ------------------------------------------------------------


class LossAndGrad(NamedTuple):
    loss: float
    q_abs_max: float  # max |Q(s, a_taken)|, for the divergence check
    d_q: F32  # dLoss/dQ(s, .), zero at masked actions
    cache: Any  # the online forward pass's cache for backward


def td_targets(
    online: NumpyQFunction,
    target: NumpyQFunction,
    batch: Transitions,
    double_q: bool,
    next_online: F32 | None = None,
) -> F32:
    """r + gamma**k * (1 - done) * Q_target(s', a*), a* the best *eligible* action in s'.

    `next_online` (the online network's masked Q of s') may be passed in when the
    caller already computed it.
    """
    rows = np.arange(len(batch.actions))
    next_target = target.q_values(batch.next_observations, batch.next_masks)
    if double_q:  # online network picks a', target network scores it
        if next_online is None:
            next_online = online.q_values(batch.next_observations, batch.next_masks)
        next_q = next_target[rows, next_online.argmax(axis=1)]
    else:
        next_q = next_target.max(axis=1)
    # A bootstrap state where nothing is eligible has no value to bootstrap from.
    next_q = np.where(batch.next_masks.any(axis=1), next_q, np.float32(0.0))
    targets: F32 = batch.rewards + batch.discounts * (1.0 - batch.dones) * next_q
    return targets


def dqn_loss_and_grad(
    online: NumpyQFunction,
    target: NumpyQFunction,
    batch: Transitions,
    double_q: bool,
    cql_alpha: float = 0.0,
) -> LossAndGrad:
    """Huber TD loss (+ CQL penalty) and its gradient with respect to Q(s, .)."""
    size = len(batch.actions)
    rows = np.arange(size)
    next_online = None
    if double_q:
        # One online forward pass over s and s' together: half the per-op overhead, which
        # dominates for these small networks. Backward then uses only the s half.
        both = {
            k: np.concatenate([v, batch.next_observations[k]])
            for k, v in batch.observations.items()
        }
        q_both, cache = online.forward(both, np.concatenate([batch.masks, batch.next_masks]))
        q_all, next_online = q_both[:size], q_both[size:]
    else:
        q_all, cache = online.forward(batch.observations, batch.masks)
    q_taken = q_all[rows, batch.actions]
    diff = q_taken - td_targets(online, target, batch, double_q, next_online)
    abs_diff = np.abs(diff)
    # smooth_l1 (beta 1): 0.5 d² inside |d| < 1, |d| - 0.5 outside; gradient clip(d, -1, 1).
    loss = float(np.where(abs_diff < 1.0, 0.5 * diff * diff, abs_diff - 0.5).mean())
    d_q = np.zeros_like(q_all)
    d_q[rows, batch.actions] = np.clip(diff, -1.0, 1.0) / size
    if cql_alpha > 0.0:  # push down Q of actions the logs never took, up the logged one
        shifted = np.exp(q_all - q_all.max(axis=1, keepdims=True))  # masked entries: exp(-1e9) = 0
        total = shifted.sum(axis=1, keepdims=True)
        logsumexp = np.log(total[:, 0]) + q_all.max(axis=1)
        loss += cql_alpha * float((logsumexp - q_taken).mean())
        d_q += (cql_alpha / size) * (shifted / total)
        d_q[rows, batch.actions] -= cql_alpha / size
    d_q *= batch.masks  # masked Q-values are the constant MASKED_Q: no gradient
    q_abs_max = float(np.abs(q_taken).max()) if size else 0.0
    return LossAndGrad(loss, q_abs_max, d_q, cache)


# --- 4. the step: gradient, clipping, Adam, target ---------------------------------------


class Adam:
    """`torch.optim.Adam` (no weight decay, no amsgrad) on one flat vector, in place."""

    def __init__(
        self,
        params: F32,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = params
        self.lr = lr
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.step_count = 0
        self.exp_avg = np.zeros_like(params)
        self.exp_avg_sq = np.zeros_like(params)
        self._scratch = np.empty_like(params)

    def step(self, grad: F32) -> None:
        self.step_count += 1
        m, v, tmp = self.exp_avg, self.exp_avg_sq, self._scratch
        np.subtract(grad, m, out=tmp)  # m <- m + (1 - beta1)(g - m), torch's lerp_
        tmp *= 1.0 - self.beta1
        m += tmp
        np.multiply(grad, grad, out=tmp)  # v <- beta2 v + (1 - beta2) g²
        tmp *= 1.0 - self.beta2
        v *= self.beta2
        v += tmp
        bias1 = 1.0 - self.beta1**self.step_count
        bias2 = 1.0 - self.beta2**self.step_count
        np.sqrt(v, out=tmp)  # p <- p - lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)
        tmp *= 1.0 / math.sqrt(bias2)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= self.lr / bias1
        self.params -= tmp


class StepStats(NamedTuple):
    loss: float
    q_abs_max: float
    grad_norm: float  # global norm before clipping


class NumpyDQNStep:
    """One DQN gradient step on NumPy twins of the online and target networks.

    `compute` fills the gradient and clips it (nothing changes the weights yet,
    so a diverged step can be refused); `apply` then takes the Adam step.
    """

    def __init__(
        self,
        online: NumpyQFunction,
        target: NumpyQFunction,
        learning_rate: float,
        max_grad_norm: float,
        double_q: bool,
    ) -> None:
        self.online = online
        self.target = target
        self.max_grad_norm = max_grad_norm
        self.double_q = double_q
        self.target.params.values[:] = self.online.params.values
        self.adam = Adam(online.params.values, learning_rate)

    def compute(self, batch: Transitions, cql_alpha: float) -> StepStats:
        result = dqn_loss_and_grad(self.online, self.target, batch, self.double_q, cql_alpha)
        self.online.backward(result.cache, result.d_q)
        grads = self.online.params.grads
        norm = float(np.sqrt(np.dot(grads, grads)))
        coefficient = self.max_grad_norm / (norm + 1e-6)  # as clip_grad_norm_
        if coefficient < 1.0:
            grads *= np.float32(coefficient)
        return StepStats(result.loss, result.q_abs_max, norm)

    def apply(self) -> None:
        self.adam.step(self.online.params.grads)

    def update_target(self, tau: float) -> None:
        """Hard copy when tau >= 1, else Polyak: target <- target + tau (online - target)."""
        online, target = self.online.params.values, self.target.params.values
        if tau >= 1.0:
            target[:] = online
        else:
            target += np.float32(tau) * (online - target)

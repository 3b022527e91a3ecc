"""Per-token quantities shared by every loss: soft Q of the taken action and soft value.

A loss reads the logits only through `token_values`, so it takes either the logits `[B, T, V]`
or `ChunkedLogits` (final states and the head), which never holds them whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ChunkedLogits:
    """Logits `[B, T, V]` given as final states `hidden_BxTxD` and the `head` that maps
    `[B, C, D]` states to `[B, C, V]` logits, applied `chunk` positions at a time and
    recomputed in the backward pass: only a `[B, chunk, V]` float32 block exists at once
    (a 262k vocabulary takes about 1 GB per 1k-token sequence whole)."""

    hidden_BxTxD: jax.Array
    head: Callable[[jax.Array], jax.Array]
    chunk: int


def _dense_values(logits_BxTxV, targets_BxT, entropy: bool):
    logits32_BxTxV = logits_BxTxV.astype(jnp.float32)
    v_BxT = jax.nn.logsumexp(logits32_BxTxV, axis=-1)
    q_BxT = jnp.take_along_axis(logits32_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    if not entropy:
        return q_BxT, v_BxT, None
    # H(π(·|s_t)) = V_t − Σ_a π(a|s_t) ℓ_t[a]
    probs = jnp.exp(logits32_BxTxV - v_BxT[..., None])
    return q_BxT, v_BxT, v_BxT - jnp.sum(probs * logits32_BxTxV, axis=-1)


def _chunked_values(logits: ChunkedLogits, targets_BxT, entropy: bool):
    batch, length, width = logits.hidden_BxTxD.shape
    chunk = min(logits.chunk, length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length  # padded positions are computed, then cut off

    def split(x_BxT, *rest):  # [B, T, ...] -> [chunks, B, chunk, ...]
        x = jnp.pad(x_BxT, ((0, 0), (0, pad), *[(0, 0)] * len(rest)))
        return jnp.swapaxes(x.reshape(batch, num_chunks, chunk, *rest), 0, 1)

    @jax.checkpoint  # the backward pass recomputes each block's logits instead of storing them
    def one_chunk(hidden_and_targets):
        hidden_BxCxD, targets_BxC = hidden_and_targets
        return _dense_values(logits.head(hidden_BxCxD), targets_BxC, entropy)

    blocks = jax.lax.map(one_chunk, (split(logits.hidden_BxTxD, width), split(targets_BxT)))
    join = lambda x: jnp.swapaxes(x, 0, 1).reshape(batch, num_chunks * chunk)[:, :length]
    return tuple(None if x is None else join(x) for x in blocks)


def token_values(logits_BxTxV, targets_BxT, *, entropy: bool = False):
    """Returns (Q_t = ℓ_t[a_t], V_t = logsumexp ℓ_t, the entropy H(π(·|s_t)) or None unless
    `entropy`), each float32 `[B, T]`, of logits `[B, T, V]` or `ChunkedLogits`.

    log π(a_t|s_t) = Q_t − V_t; the logsumexp is taken in float32 whatever the logits' dtype.
    """
    if isinstance(logits_BxTxV, ChunkedLogits):
        return _chunked_values(logits_BxTxV, targets_BxT, entropy)
    return _dense_values(logits_BxTxV, targets_BxT, entropy)


def action_and_state_values(logits_BxTxV, targets_BxT):
    """Returns (Q_t, V_t), float32 `[B, T]` (`token_values`)."""
    q_BxT, v_BxT, _ = token_values(logits_BxTxV, targets_BxT)
    return q_BxT, v_BxT


def token_mean(values_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
    """Mean over target tokens: Σ w·x / Σ w (a batch without targets gives 0, not NaN)."""
    weights_BxT = weights_BxT.astype(jnp.float32)
    return jnp.sum(values_BxT * weights_BxT) / jnp.maximum(jnp.sum(weights_BxT), 1.0)


def negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT):
    """Token-mean −log π(a_t|s_t), plus the per-token Q and V it was computed from."""
    q_BxT, v_BxT = action_and_state_values(logits_BxTxV, targets_BxT)
    return token_mean(v_BxT - q_BxT, weights_BxT), q_BxT, v_BxT

"""Per-token quantities shared by every loss: soft Q of the taken action and soft value."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def action_and_state_values(logits_BxTxV: jax.Array, targets_BxT: jax.Array):
    """Returns (Q_t = ℓ_t[a_t], V_t = logsumexp ℓ_t), both float32 `[B, T]`.

    log π(a_t|s_t) = Q_t − V_t; the logsumexp is taken in float32 whatever the logits' dtype.
    """
    logits32_BxTxV = logits_BxTxV.astype(jnp.float32)
    v_BxT = jax.nn.logsumexp(logits32_BxTxV, axis=-1)
    q_BxT = jnp.take_along_axis(logits32_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return q_BxT, v_BxT


def token_mean(values_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
    """Mean over target tokens: Σ w·x / Σ w (a batch without targets gives 0, not NaN)."""
    weights_BxT = weights_BxT.astype(jnp.float32)
    return jnp.sum(values_BxT * weights_BxT) / jnp.maximum(jnp.sum(weights_BxT), 1.0)


def negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT):
    """Token-mean −log π(a_t|s_t), plus the per-token Q and V it was computed from."""
    q_BxT, v_BxT = action_and_state_values(logits_BxTxV, targets_BxT)
    return token_mean(v_BxT - q_BxT, weights_BxT), q_BxT, v_BxT

"""Token-level maximum likelihood, and MLE with an entropy bonus (PAPER.md §4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irl_lm.losses.common import negative_log_likelihood, token_mean, token_values


def mle_loss(logits_BxTxV, targets_BxT, weights_BxT, **unused):
    """Token-mean negative log-likelihood of the targets; returns (loss, metrics)."""
    nll, _, v_BxT = negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT)
    return nll, {"mle/nll": nll, "mle/v_mean": token_mean(v_BxT, weights_BxT)}


def entropies(logits_BxTxV) -> jax.Array:
    """H(π(·|s_t)) of logits `[B, T, V]`, float32 `[B, T]`."""
    no_targets_BxT = jnp.zeros(logits_BxTxV.shape[:2], jnp.int32)  # Q is not used
    return token_values(logits_BxTxV, no_targets_BxT, entropy=True)[2]


def mle_entropy_loss(logits_BxTxV, targets_BxT, weights_BxT, *, beta, **unused):
    """−log π(a_t|s_t) − β H(π(·|s_t)), token-mean over the targets; `beta=0` is `mle_loss`
    exactly (the same code, no entropy computed)."""
    static_zero = isinstance(beta, int | float) and beta == 0
    q_BxT, v_BxT, entropy_BxT = token_values(logits_BxTxV, targets_BxT, entropy=not static_zero)
    nll = token_mean(v_BxT - q_BxT, weights_BxT)
    metrics = {"mle_entropy/nll": nll, "mle_entropy/v_mean": token_mean(v_BxT, weights_BxT)}
    if static_zero:
        return nll, metrics | {"mle_entropy/loss": nll}
    entropy = token_mean(entropy_BxT, weights_BxT)
    loss = nll - beta * entropy
    return loss, metrics | {"mle_entropy/loss": loss, "mle_entropy/entropy": entropy}

"""Token-level maximum likelihood, and MLE with an entropy bonus (PAPER.md §4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irl_lm.losses.common import negative_log_likelihood, token_mean


def mle_loss(logits_BxTxV, targets_BxT, weights_BxT, **unused):
    """Token-mean negative log-likelihood of the targets; returns (loss, metrics)."""
    nll, _, v_BxT = negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT)
    return nll, {"mle/nll": nll, "mle/v_mean": token_mean(v_BxT, weights_BxT)}


def entropies(logits_BxTxV, v_BxT) -> jax.Array:
    """H(π(·|s_t)) = V_t − Σ_a π(a|s_t) ℓ_t[a], float32 `[B, T]`."""
    logits32 = logits_BxTxV.astype(jnp.float32)
    probs = jnp.exp(logits32 - v_BxT[..., None])
    return v_BxT - jnp.sum(probs * logits32, axis=-1)


def mle_entropy_loss(logits_BxTxV, targets_BxT, weights_BxT, *, beta, **unused):
    """−log π(a_t|s_t) − β H(π(·|s_t)), token-mean over the targets; `beta=0` is `mle_loss`
    exactly (the same code, no entropy computed)."""
    nll, _, v_BxT = negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT)
    metrics = {"mle_entropy/nll": nll, "mle_entropy/v_mean": token_mean(v_BxT, weights_BxT)}
    if isinstance(beta, int | float) and beta == 0:
        return nll, metrics | {"mle_entropy/loss": nll}
    entropy = token_mean(entropies(logits_BxTxV, v_BxT), weights_BxT)
    loss = nll - beta * entropy
    return loss, metrics | {"mle_entropy/loss": loss, "mle_entropy/entropy": entropy}

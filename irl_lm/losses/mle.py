"""Token-level maximum likelihood."""

from __future__ import annotations

from irl_lm.losses.common import negative_log_likelihood, token_mean


def mle_loss(logits_BxTxV, targets_BxT, weights_BxT, **unused):
    """Token-mean negative log-likelihood of the targets; returns (loss, metrics)."""
    nll, _, v_BxT = negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT)
    return nll, {"mle/nll": nll, "mle/v_mean": token_mean(v_BxT, weights_BxT)}

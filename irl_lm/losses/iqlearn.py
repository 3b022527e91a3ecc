"""Offline IQLearn (χ² regulariser): MLE plus λ times a squared temporal-difference term.

With logits read as soft Q-values (PAPER.md §1–2):
    L   = mean over target tokens of [ −log π(a_t|s_t) + λ δ_t² ]
    δ_t = Q_t − γ V_{t+1},   V_{t+1} = 0 when a_t is EOS (terminal).
δ_t is also the extracted per-token reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irl_lm.losses.common import negative_log_likelihood, token_mean


def _shift_left(x_BxT: jax.Array, fill) -> jax.Array:
    """x[:, t+1] at position t; `fill` at the last position."""
    return jnp.concatenate([x_BxT[:, 1:], jnp.full_like(x_BxT[:, :1], fill)], axis=1)


def td_errors(q_BxT, v_BxT, targets_BxT, weights_BxT, *, gamma, eos_id=1, segment_ids_BxT=None):
    """Returns (δ `[B, T]`, mask `[B, T]` of the positions whose TD term counts).

    V_{t+1} is read only from a real target token of the same packed segment. A position
    with neither a successor nor EOS (a sequence truncated at max length) has no known
    V_{t+1}, so its TD term is dropped; its NLL term stays.
    """
    is_target_BxT = weights_BxT > 0
    has_successor_BxT = _shift_left(is_target_BxT, False)
    if segment_ids_BxT is not None:
        has_successor_BxT &= _shift_left(segment_ids_BxT, -1) == segment_ids_BxT
    terminal_BxT = targets_BxT == eos_id
    next_v_BxT = jnp.where(terminal_BxT, 0.0, _shift_left(v_BxT, 0.0))
    delta_BxT = q_BxT - gamma * next_v_BxT
    td_mask_BxT = weights_BxT.astype(jnp.float32) * (terminal_BxT | has_successor_BxT)
    return delta_BxT, td_mask_BxT


def iqlearn_loss(
    logits_BxTxV,
    targets_BxT,
    weights_BxT,
    *,
    lam,
    gamma,
    eos_id=1,
    segment_ids=None,
    **unused,
):
    """Offline IQLearn loss; `lam=0` is `mle_loss` exactly (same NLL code, no TD term added)."""
    nll, q_BxT, v_BxT = negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT)
    delta_BxT, td_mask_BxT = td_errors(
        q_BxT, v_BxT, targets_BxT, weights_BxT, gamma=gamma, eos_id=eos_id,
        segment_ids_BxT=segment_ids,
    )  # fmt: skip
    # Same normaliser as the NLL: all target tokens, including those whose TD term is dropped.
    num_targets = jnp.maximum(jnp.sum(weights_BxT.astype(jnp.float32)), 1.0)
    td2 = jnp.sum(td_mask_BxT * jnp.square(delta_BxT)) / num_targets
    static_zero = isinstance(lam, int | float) and lam == 0
    loss = nll if static_zero else nll + lam * td2
    metrics = {
        "iqlearn/loss": loss,
        "iqlearn/nll": nll,
        "iqlearn/td2": td2,
        "iqlearn/v_mean": token_mean(v_BxT, weights_BxT),
        "iqlearn/delta_mean": token_mean(delta_BxT, td_mask_BxT),
    }
    return loss, metrics

"""IQLearn (χ² regulariser), offline and online.

With logits read as soft Q-values (PAPER.md §1–3):
    L_offline = mean over target tokens of [ −log π(a_t|s_t) + λ δ_t² ]
    δ_t = Q_t − γ V_{t+1},   V_{t+1} = 0 when a_t is EOS (terminal).
    L_online  = L_offline + α ( mean_policy[V_t − γ V_{t+1}] − mean_expert[V_t − γ V_{t+1}] )
on continuations sampled from the policy (terminal at EOS or at their last token).
δ_t is also the extracted per-token reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irl_lm.losses.common import action_and_state_values, token_mean


def _shift_left(x_BxT: jax.Array, fill) -> jax.Array:
    """x[:, t+1] at position t; `fill` at the last position."""
    return jnp.concatenate([x_BxT[:, 1:], jnp.full_like(x_BxT[:, :1], fill)], axis=1)


def next_values(
    v_BxT, targets_BxT, weights_BxT, *, eos_id, segment_ids_BxT=None, terminal_at_end=False
):
    """Returns (V_{t+1} `[B, T]`, mask `[B, T]` of the positions where it is known).

    V_{t+1} is 0 after EOS, and is read only from a real target token of the same packed
    segment. A position with neither a successor nor EOS (a sequence truncated at max
    length) has no known V_{t+1}: it is masked out, unless `terminal_at_end` (sampled
    continuations, whose last token ends the episode) makes it terminal.
    """
    is_target_BxT = weights_BxT > 0
    has_successor_BxT = _shift_left(is_target_BxT, False)
    if segment_ids_BxT is not None:
        has_successor_BxT &= _shift_left(segment_ids_BxT, -1) == segment_ids_BxT
    terminal_BxT = targets_BxT == eos_id
    if terminal_at_end:
        terminal_BxT |= ~has_successor_BxT
    next_v_BxT = jnp.where(terminal_BxT, 0.0, _shift_left(v_BxT, 0.0))
    mask_BxT = weights_BxT.astype(jnp.float32) * (terminal_BxT | has_successor_BxT)
    return next_v_BxT, mask_BxT


def td_residuals(
    logits_BxTxV,
    targets_BxT,
    weights_BxT,
    *,
    gamma,
    eos_id,
    segment_ids_BxT=None,
    terminal_at_end=False,
):
    """δ_t = Q_t − γ V_{t+1}, the TD residual and the extracted per-token reward.

    Returns (Q `[B, T]`, V `[B, T]`, V_{t+1}, δ, mask of the positions with a known V_{t+1}
    (`next_values`)).
    """
    q_BxT, v_BxT = action_and_state_values(logits_BxTxV, targets_BxT)
    next_v_BxT, mask_BxT = next_values(
        v_BxT,
        targets_BxT,
        weights_BxT,
        eos_id=eos_id,
        segment_ids_BxT=segment_ids_BxT,
        terminal_at_end=terminal_at_end,
    )
    return q_BxT, v_BxT, next_v_BxT, q_BxT - gamma * next_v_BxT, mask_BxT


def sequence_rewards(logits_BxTxV, targets_BxT, weights_BxT, *, gamma, eos_id):
    """The reward IQLearn extracts for whole sequences (generated or given, one per row):
    per-token r_t = δ_t `[B, T]` (0 off the targets) and R = Σ_t r_t `[B]`.

    Each row's last target token ends its episode (V = 0 after it), as for the online loss's
    samples: at EOS, and also where a sequence stops without one.
    """
    *_, delta_BxT, mask_BxT = td_residuals(
        logits_BxTxV, targets_BxT, weights_BxT, gamma=gamma, eos_id=eos_id, terminal_at_end=True
    )
    rewards_BxT = jnp.where(mask_BxT > 0, delta_BxT, 0.0)
    return rewards_BxT, jnp.sum(rewards_BxT, axis=1)


# How a reranker scores one output from its extracted reward R = Σ_t r_t, its log π(y|x) and
# its length (irl_lm.sample --rerank, the reward evaluator's best_of).
RANKERS = {
    "reward": lambda reward, log_prob, length: reward,
    "logprob": lambda reward, log_prob, length: log_prob,
    "mean_logprob": lambda reward, log_prob, length: log_prob / length,
}


def data_terms(logits_BxTxV, targets_BxT, weights_BxT, *, gamma, eos_id, segment_ids_BxT):
    """The per-token pieces of IQLearn on data: (NLL, V `[B, T]`, V_{t+1}, δ, TD mask, χ²).

    A position without a known V_{t+1} (see `next_values`) drops its TD term; its NLL term
    stays. χ² = Σ mask·δ² over all target tokens (the NLL's normaliser), including those
    whose TD term is dropped.
    """
    q_BxT, v_BxT, next_v_BxT, delta_BxT, td_mask_BxT = td_residuals(
        logits_BxTxV,
        targets_BxT,
        weights_BxT,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids_BxT=segment_ids_BxT,
    )
    nll = token_mean(v_BxT - q_BxT, weights_BxT)
    num_targets = jnp.maximum(jnp.sum(weights_BxT.astype(jnp.float32)), 1.0)
    td2 = jnp.sum(td_mask_BxT * jnp.square(delta_BxT)) / num_targets
    return nll, v_BxT, next_v_BxT, delta_BxT, td_mask_BxT, td2


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
    nll, v_BxT, _, delta_BxT, td_mask_BxT, td2 = data_terms(
        logits_BxTxV,
        targets_BxT,
        weights_BxT,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids_BxT=segment_ids,
    )
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


def iqlearn_online_loss(
    logits_BxTxV,
    targets_BxT,
    weights_BxT,
    *,
    lam,
    gamma,
    alpha,
    chi2_on_mixture=False,
    eos_id=1,
    segment_ids=None,
    policy=None,
    **unused,
):
    """Online IQLearn: `iqlearn_loss` on the data plus α (mean_policy[V_t − γ V_{t+1}] −
    mean_expert[V_t − γ V_{t+1}]).

    `policy`: {"logits", "targets", "weights"} of a teacher-forced pass over continuations
    sampled from the current policy (the trainer supplies it; the tokens carry no gradient).
    `chi2_on_mixture`: the χ² term is (1 − α) on data + α on samples instead of data only.
    `alpha=0` is `iqlearn_loss` exactly (the same code; no samples needed); so is a call
    without samples (the validation loss: the offline terms on held-out data).
    """
    if policy is None or (isinstance(alpha, int | float) and alpha == 0):
        return iqlearn_loss(
            logits_BxTxV,
            targets_BxT,
            weights_BxT,
            lam=lam,
            gamma=gamma,
            eos_id=eos_id,
            segment_ids=segment_ids,
        )
    nll, v_BxT, next_v_BxT, _, mask_BxT, td2 = data_terms(
        logits_BxTxV,
        targets_BxT,
        weights_BxT,
        gamma=gamma,
        eos_id=eos_id,
        segment_ids_BxT=segment_ids,
    )
    expert_diff = token_mean(v_BxT - gamma * next_v_BxT, mask_BxT)

    p_weights_BxT = policy["weights"]
    _, p_v_BxT, p_next_v_BxT, p_delta_BxT, p_mask_BxT = td_residuals(
        policy["logits"],
        policy["targets"],
        p_weights_BxT,
        gamma=gamma,
        eos_id=eos_id,
        terminal_at_end=True,
    )
    policy_diff = token_mean(p_v_BxT - gamma * p_next_v_BxT, p_mask_BxT)
    if chi2_on_mixture:
        p_td2 = token_mean(jnp.square(p_delta_BxT), p_mask_BxT)
        td2 = (1 - alpha) * td2 + alpha * p_td2
    online = alpha * (policy_diff - expert_diff)
    loss = nll + lam * td2 + online
    metrics = {
        "iqlearn_online/loss": loss,
        "iqlearn_online/nll": nll,
        "iqlearn_online/td2": td2,
        "iqlearn_online/online_term": online,
        "iqlearn_online/policy_value_diff": policy_diff,
        "iqlearn_online/expert_value_diff": expert_diff,
        "iqlearn_online/sample_length": jnp.mean(jnp.sum(p_weights_BxT.astype(jnp.float32), 1)),
    }
    return loss, metrics

"""GAIL's pure losses (PAPER.md §4): the discriminator's binary cross-entropy, the policy
gradient on sampled tokens with KL to the reference policy and an entropy bonus, and the
held-out NLL. `irl_lm/learners/gail.py` holds the two-model state and the step that uses them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irl_lm.losses.common import negative_log_likelihood, token_mean
from irl_lm.losses.mle import entropies

# Reward per sampled token from the discriminator's logit z = log D − log(1 − D).
REWARDS = {
    "logit": lambda z: z,
    "log_d": jax.nn.log_sigmoid,
    "neg_log_1md": lambda z: -jax.nn.log_sigmoid(-z),
}


def discriminator_loss(data_z, data_weights, policy_z, policy_weights):
    """Binary cross-entropy (data 1, policy 0), the mean of the two classes' token means."""
    data_term = token_mean(-jax.nn.log_sigmoid(data_z), data_weights)
    policy_term = token_mean(-jax.nn.log_sigmoid(-policy_z), policy_weights)
    loss = 0.5 * (data_term + policy_term)
    return loss, {
        "gail/disc_loss": loss,
        "gail/disc_accuracy_data": token_mean((data_z > 0).astype(jnp.float32), data_weights),
        "gail/disc_accuracy_policy": token_mean((policy_z < 0).astype(jnp.float32), policy_weights),
    }


def discounted_returns(rewards_BxT, mask_BxT, gamma: float) -> jax.Array:
    """G_t = r_t + γ G_{t+1} within each sample (0 past its end)."""
    rewards_BxT = rewards_BxT * mask_BxT

    def back(carry_B, xs):
        reward_B, mask_B = xs
        g_B = reward_B + gamma * carry_B * mask_B
        return g_B, g_B

    _, returns_TxB = jax.lax.scan(
        back, jnp.zeros(rewards_BxT.shape[0]), (rewards_BxT.T, mask_BxT.T), reverse=True
    )
    return returns_TxB.T * mask_BxT


def policy_loss(
    logits_BxTxV,
    ref_logits_BxTxV,
    tokens_BxT,
    mask_BxT,
    rewards_BxT,
    *,
    gamma,
    kl_coef,
    entropy_coef,
    normalize_advantages=False,
):
    """Policy gradient with a leave-one-out baseline (advantages optionally divided by their
    standard deviation over the sampled tokens), KL to the reference policy and an entropy
    bonus, on sampled tokens (`mask`: 1 on them). Returns (loss, metrics).

    The baseline of sample i at position t is the mean return of the *other* samples alive
    at t (0 where none is): a mean that included G_t itself would shrink every advantage by
    (1 − 1/n_t), and make it 0 where one sample is alive."""
    mask = mask_BxT.astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32))
    log_ref = jax.nn.log_softmax(ref_logits_BxTxV.astype(jnp.float32))
    log_p_taken = jnp.take_along_axis(log_p, tokens_BxT[..., None], axis=-1)[..., 0]
    returns = discounted_returns(rewards_BxT, mask, gamma)
    others = jnp.sum(mask, 0)[None] - mask
    baseline = (jnp.sum(returns * mask, 0)[None] - returns * mask) / jnp.maximum(others, 1.0)
    advantages = (returns - baseline) * mask
    if normalize_advantages:
        std = jnp.sqrt(token_mean(jnp.square(advantages), mask))
        advantages = advantages / (std + 1e-6)
    advantages = jax.lax.stop_gradient(advantages)
    pg = -token_mean(advantages * log_p_taken, mask)
    kl = token_mean(jnp.sum(jnp.exp(log_p) * (log_p - log_ref), -1), mask)
    entropy = token_mean(entropies(logits_BxTxV), mask)
    loss = pg + kl_coef * kl - entropy_coef * entropy
    return loss, {
        "gail/pg_loss": pg,
        "gail/kl_to_reference": kl,
        "gail/policy_entropy": entropy,
        "gail/mean_reward": token_mean(rewards_BxT, mask),
        "gail/reward_std": jnp.sqrt(
            jnp.maximum(
                token_mean(jnp.square(rewards_BxT), mask)
                - jnp.square(token_mean(rewards_BxT, mask)),
                0.0,
            )
        ),
        "gail/sample_length": jnp.mean(jnp.sum(mask, 1)),
    }


def data_loss(logits_BxTxV, targets_BxT, weights_BxT, **unused):
    """What GAIL reports on held-out data (the loss evaluator): the policy's NLL."""
    nll, _, v_BxT = negative_log_likelihood(logits_BxTxV, targets_BxT, weights_BxT)
    return nll, {"gail/nll": nll, "gail/v_mean": token_mean(v_BxT, weights_BxT)}

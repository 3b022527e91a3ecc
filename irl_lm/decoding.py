"""Temperature sampling from an encoder-decoder, jittable, usable inside training steps.

This simple sampler re-runs the decoder over the whole prefix at each step (no KV cache),
which is fine for the short sequences of the synthetic task; the cached decoder replaces it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample(
    model,
    params,
    encoder_input_tokens_BxS,
    rng,
    *,
    max_len: int,
    temperature,
    eos_id: int = 1,
):
    """Samples `max_len` tokens per row; after EOS a row emits padding (0).

    `temperature` is an array (changing it does not recompile); 0 means greedy.
    Returns a dict of `[B, T]` arrays: `tokens`, `log_probs` (under the unmodified model),
    `entropies` (of the unmodified next-token distribution), `mask` (1 up to and including
    EOS), and `lengths` `[B]`.
    """
    batch_size = encoder_input_tokens_BxS.shape[0]
    encoded = model.apply(
        {"params": params}, encoder_input_tokens_BxS, method=model.encode, deterministic=True
    )
    temperature = jnp.asarray(temperature, jnp.float32)

    def step(t, carry):
        tokens_BxT, log_probs_BxT, entropies_BxT, done_B, rng = carry
        decoder_input_BxT = jnp.pad(tokens_BxT[:, :-1], ((0, 0), (1, 0)))
        logits_BxTxV = model.apply(
            {"params": params},
            encoded,
            encoder_input_tokens_BxS,
            decoder_input_BxT,
            method=model.decode,
            deterministic=True,
        )
        logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, t, axis=1, keepdims=False)
        log_p_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32))
        rng, sample_rng = jax.random.split(rng)
        scaled_BxV = log_p_BxV / jnp.maximum(temperature, 1e-6)
        sampled_B = jax.random.categorical(sample_rng, scaled_BxV)
        token_B = jnp.where(temperature > 0, sampled_B, jnp.argmax(log_p_BxV, axis=-1))
        token_B = jnp.where(done_B, 0, token_B)
        log_prob_B = jnp.take_along_axis(log_p_BxV, token_B[:, None], axis=-1)[:, 0]
        entropy_B = -jnp.sum(jnp.exp(log_p_BxV) * log_p_BxV, axis=-1)
        live_B = ~done_B
        tokens_BxT = tokens_BxT.at[:, t].set(token_B)
        log_probs_BxT = log_probs_BxT.at[:, t].set(jnp.where(live_B, log_prob_B, 0.0))
        entropies_BxT = entropies_BxT.at[:, t].set(jnp.where(live_B, entropy_B, 0.0))
        return tokens_BxT, log_probs_BxT, entropies_BxT, done_B | (token_B == eos_id), rng

    zeros = jnp.zeros((batch_size, max_len), jnp.float32)
    init = (
        jnp.zeros((batch_size, max_len), jnp.int32),
        zeros,
        zeros,
        jnp.zeros((batch_size,), bool),
        rng,
    )
    tokens_BxT, log_probs_BxT, entropies_BxT, _, _ = jax.lax.fori_loop(0, max_len, step, init)
    # A row's length counts its EOS; a row without EOS was truncated at max_len.
    is_eos_BxT = tokens_BxT == eos_id
    after_eos_BxT = jnp.cumsum(is_eos_BxT, axis=1) - is_eos_BxT > 0
    mask_BxT = ~after_eos_BxT
    return {
        "tokens": tokens_BxT,
        "log_probs": log_probs_BxT,
        "entropies": entropies_BxT,
        "mask": mask_BxT,
        "lengths": jnp.sum(mask_BxT, axis=1),
    }

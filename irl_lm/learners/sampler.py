"""Policy samples for online losses (online IQLearn): continuations drawn from the current
policy for the first rows of a training batch, laid out as a teacher-forced batch.

`policy_batch` is one jittable function (prefill, a `jax.lax.while_loop` over tokens, the
layout): the trainer runs it once per step, with no host round trip per token. The sampled
tokens are integers and the sampler's parameters are not differentiated, so no gradient
flows through the sampling; the loss's teacher-forced pass over the samples carries it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from irl_lm import decoding, sharding
from irl_lm.models import is_decoder_only


def num_sampled_rows(batch_size: int, alpha: float, shards: int) -> int:
    """ceil(α · batch), rounded up to a multiple of the batch shards (at most the batch)."""
    rows = math.ceil(alpha * batch_size)
    return min(batch_size, -(-rows // shards) * shards)


def make_sampler(model, mesh, *, rows: int, max_len: int, eos_id: int):
    """`policy_batch` for the first `rows` rows of a batch, jitted, batch-sharded."""
    sample = functools.partial(policy_batch, model, rows=rows, max_len=max_len, eos_id=eos_id)
    return jax.jit(sample, out_shardings=sharding.batch_sharding(mesh))


def _first_targets(batch, rows: int) -> jax.Array:
    """Per prefix-LM row, the position of its first target: its input is the last prompt
    token."""
    return jnp.argmax(batch["decoder_loss_weights"][:rows] > 0, axis=1)


def prompts(model, batch, rows: int) -> dict:
    """The sampling prompts of the first `rows` rows: encoder inputs (T5), or each prefix-LM
    row up to its last prompt token, right-padded (decoder-only; in a packed row, its first
    example)."""
    if not is_decoder_only(model):
        return {"encoder_input_tokens": batch["encoder_input_tokens"][:rows]}
    tokens = batch["decoder_input_tokens"][:rows]
    first = _first_targets(batch, rows)
    keep = jnp.arange(tokens.shape[1])[None] <= first[:, None]
    return {"decoder_input_tokens": jnp.where(keep, tokens, 0)}


def policy_batch(model, params, batch, rng, *, rows: int, max_len: int, eos_id: int) -> dict:
    """Samples (temperature 1) for the first `rows` rows of `batch`, as the model's
    teacher-forced features plus `decoder_target_tokens` / `decoder_loss_weights` (1 on
    sampled tokens, EOS included)."""
    context = prompts(model, batch, rows)
    out = decoding.sample(model, params, context, rng, max_len=max_len, eos_id=eos_id)
    tokens, mask = out["tokens"][:, 0], out["mask"][:, 0].astype(jnp.int32)
    if not is_decoder_only(model):
        shifted = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
        return context | {
            "decoder_input_tokens": shifted,
            "decoder_target_tokens": tokens,
            "decoder_loss_weights": mask,
        }
    prompt, first = context["decoder_input_tokens"], _first_targets(batch, rows)

    def row(prompt_T, first, tokens_L, mask_L):
        sequence = jnp.pad(prompt_T, (0, max_len))
        sequence = jax.lax.dynamic_update_slice(sequence, tokens_L, (first + 1,))
        weights = jnp.zeros(sequence.shape[0] - 1, jnp.int32)
        weights = jax.lax.dynamic_update_slice(weights, mask_L, (first,))
        return sequence[:-1], sequence[1:], weights

    inputs, targets, weights = jax.vmap(row)(prompt, first, tokens, mask)
    return {
        "decoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": weights,
    }

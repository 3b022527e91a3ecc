"""The policy learner of MLE, MLE + entropy, and offline and online IQLearn: one model, its
optimizer and the jitted train step.

`train_step(state, batch, rng) -> (state, metrics)` works for any loss of `irl_lm.losses`
and any model family whose `apply({'params': p}, batch)` returns logits `[B, T, V]`.
The step imports no input pipeline, so benchmarks run it on machines without TensorFlow.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from irl_lm import sharding
from irl_lm.learners.common import (
    Learner,
    TrainState,
    init_state,
    state_from_params,
    state_shardings,
)
from irl_lm.models import model_logits

# ----------------------------------------------------------------------------- train step


def train_step(
    state,
    batch,
    rng,
    policy=None,
    *,
    model,
    loss_fn,
    tx,
    grad_accum_steps: int,
    eos_id: int,
    logits_chunk_size: int = 0,
):
    """One update over a global batch; `grad_accum_steps` microbatches, token-weighted.

    `policy`: for online losses, a teacher-forced batch of policy samples
    (`irl_lm.learners.sampler.policy_batch`); its logits reach the loss as `policy=`.
    `logits_chunk_size` > 0: the losses see `ChunkedLogits` (`model_logits`).
    """
    rng = jax.random.fold_in(rng, state.step)

    def loss_and_metrics(params, microbatch, dropout_rng):
        apply = lambda features, key: model_logits(model, params, features, key, logits_chunk_size)
        extra = {}
        if policy is not None:
            features = {k: policy[k] for k in type(model).input_features}
            extra["policy"] = {
                "logits": apply(features, jax.random.fold_in(dropout_rng, 1)),
                "targets": policy["decoder_target_tokens"],
                "weights": policy["decoder_loss_weights"],
            }
        loss, metrics = loss_fn(
            apply(microbatch, dropout_rng),
            microbatch["decoder_target_tokens"],
            microbatch["decoder_loss_weights"],
            eos_id=eos_id,
            segment_ids=microbatch.get("decoder_segment_ids"),
            **extra,
        )
        return loss, metrics | {"loss": loss}

    grad_fn = jax.value_and_grad(loss_and_metrics, has_aux=True)
    if grad_accum_steps == 1:
        (_, metrics), grads = grad_fn(state.params, batch, rng)
    else:
        # Microbatch i takes rows i, i+k, i+2k, ...: every device keeps its local rows.
        split = jax.tree.map(
            lambda x: x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:]),
            batch,
        )

        def accumulate(i, carry):
            grads_sum, metrics_sum, tokens_sum = carry
            micro = jax.tree.map(lambda x: jnp.take(x, i, axis=1), split)
            (_, metrics), grads = grad_fn(state.params, micro, jax.random.fold_in(rng, i))
            tokens = jnp.sum(micro["decoder_loss_weights"].astype(jnp.float32))
            grads_sum = jax.tree.map(lambda a, g: a + g * tokens, grads_sum, grads)
            metrics_sum = jax.tree.map(lambda a, m: a + m * tokens, metrics_sum, metrics)
            return grads_sum, metrics_sum, tokens_sum + tokens

        zero_grads = jax.tree.map(jnp.zeros_like, state.params)
        _, metric_shapes = jax.eval_shape(
            loss_and_metrics, state.params, jax.tree.map(lambda x: x[:, 0], split), rng
        )
        zero_metrics = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metric_shapes)
        grads, metrics, tokens = jax.lax.fori_loop(
            0, grad_accum_steps, accumulate, (zero_grads, zero_metrics, jnp.zeros(()))
        )
        tokens = jnp.maximum(tokens, 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        metrics = jax.tree.map(lambda m: m / tokens, metrics)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = metrics | {
        "grad_norm": optax.global_norm(grads),
        "num_tokens": jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_train_step(
    model,
    loss_fn,
    tx,
    mesh,
    shardings,
    *,
    grad_accum_steps=1,
    eos_id=1,
    online=False,
    logits_chunk_size=0,
):
    """The jitted `train_step(state, batch, rng)`, or `(state, batch, rng, policy)` when
    `online`."""
    step_fn = functools.partial(
        train_step,
        model=model,
        loss_fn=loss_fn,
        tx=tx,
        grad_accum_steps=grad_accum_steps,
        eos_id=eos_id,
        logits_chunk_size=logits_chunk_size,
    )
    return jax.jit(
        step_fn,
        in_shardings=(shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh))
        + ((sharding.batch_sharding(mesh),) if online else ()),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def policy_learner(
    model,
    loss_fn,
    tx,
    example,
    mesh,
    rng,
    *,
    sampler,
    grad_accum_steps,
    eos_id,
    logits_chunk_size=0,
):
    """MLE, MLE + entropy, offline and online IQLearn: one model and its optimizer."""
    abstract, shardings = state_shardings(model, tx, example, mesh)
    step = jit_train_step(
        model,
        loss_fn,
        tx,
        mesh,
        shardings,
        grad_accum_steps=grad_accum_steps,
        eos_id=eos_id,
        online=sampler is not None,
        logits_chunk_size=logits_chunk_size,
    )
    return Learner(
        abstract_state=abstract,
        shardings=shardings,
        init=lambda: init_state(model, tx, example, shardings, rng),
        from_params=lambda params: state_from_params(tx, params, shardings),
        step=step,
        sampler=sampler,
    )

"""Optimizer, train state and the jitted train step: everything an update needs, no data.

`train_step(state, batch, rng) -> (state, metrics)` works for any loss of `irl_lm.losses`
and any model family whose `apply({'params': p}, batch)` returns logits `[B, T, V]`.
The step imports no input pipeline, so benchmarks run it on machines without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.tree_util import DictKey

from irl_lm import sharding
from irl_lm.losses.common import ChunkedLogits

# ----------------------------------------------------------------------------- optimizer


def make_schedule(config) -> optax.Schedule:
    """Linear warmup to `optimizer.learning_rate`, then the decay named by `schedule.name`."""
    peak, warmup = config.optimizer.learning_rate, config.schedule.warmup_steps
    decay_steps = max(config.total_steps - warmup, 1)
    end = peak * config.schedule.final_fraction
    decay = {
        "constant": optax.constant_schedule(peak),
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0),
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "rsqrt": lambda step: peak * jax.lax.rsqrt(1.0 + step / max(warmup, 1)),
    }[config.schedule.name]
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(config) -> optax.GradientTransformation:
    schedule = make_schedule(config)
    opt = config.optimizer
    if opt.name == "adamw":
        core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
    else:
        core = optax.adafactor(schedule, weight_decay_rate=opt.weight_decay or None)
    parts = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip else []
    return optax.chain(*parts, core)


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def state_shardings(model, tx, example_batch, mesh):
    """Abstract state and its shardings: eval_shape -> logical specs -> NamedShardings."""
    abstract_params, param_shardings = sharding.abstract_params(model, mesh, example_batch)
    abstract_state = jax.eval_shape(
        lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)),
        abstract_params,
    )
    # Optimizer leaves that mirror a parameter (Adam moments) take its sharding.
    by_path = {
        tuple(k.key for k in path): (leaf.shape, s)
        for (path, leaf), s in zip(
            jax.tree_util.tree_flatten_with_path(abstract_params)[0],
            jax.tree.leaves(param_shardings),
            strict=True,
        )
    }

    def opt_leaf_sharding(path, leaf):
        keys = tuple(k.key for k in path if isinstance(k, DictKey))
        shape, param_sharding = by_path.get(keys, (None, None))
        return param_sharding if shape == leaf.shape else sharding.replicated(mesh)

    shardings = TrainState(
        step=sharding.replicated(mesh),
        params=param_shardings,
        opt_state=jax.tree_util.tree_map_with_path(opt_leaf_sharding, abstract_state.opt_state),
    )
    return abstract_state, shardings


def init_state(model, tx, example_batch, shardings, rng) -> TrainState:
    def init(rng):
        variables = model.init(rng, example_batch, deterministic=True)
        params = sharding.cast_params(model, sharding.unbox(variables["params"]))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(init, out_shardings=shardings)(rng)


def state_from_params(tx, params, shardings) -> TrainState:
    """Step 0 with given (already placed) parameters and a fresh optimizer state."""

    def init(params):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return jax.jit(init, out_shardings=shardings, donate_argnums=0)(params)


# ----------------------------------------------------------------------------- train step


def model_logits(model, params, features, dropout_rng=None, logits_chunk_size: int = 0):
    """The teacher-forced forward pass: logits `[B, T, V]`, or with `logits_chunk_size` > 0
    the final states and the head as `ChunkedLogits` (the losses apply it that many
    positions at a time). Dropout with `dropout_rng`; none (evaluation) without."""
    variables = {"params": params}
    kwargs = {"deterministic": dropout_rng is None}
    if dropout_rng is not None:
        kwargs["rngs"] = {"dropout": dropout_rng}
    if not logits_chunk_size:
        return model.apply(variables, features, **kwargs)
    hidden = model.apply(variables, features, method="hidden", **kwargs)
    head = lambda hidden_BxCxD: model.apply(variables, hidden_BxCxD, method="logits")
    return ChunkedLogits(hidden, head, logits_chunk_size)


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
    (`irl_lm.online.policy_batch`); its logits reach the loss as `policy=`.
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


@dataclasses.dataclass(frozen=True)
class Learner:
    """What the train loop needs of one kind of learner: its state's shape and shardings,
    a fresh state, a state from given policy parameters (`config.init_from`), the jitted
    step, and the policy sampler its step takes (None: it learns from data only).

    `step(state, batch, rng)`, or `step(state, batch, rng, policy)` with a sampler.
    """

    abstract_state: Any
    shardings: Any
    init: Callable[[], Any]
    from_params: Callable[[Any], Any]
    step: Callable
    sampler: Callable | None = None


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

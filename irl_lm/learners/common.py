"""What every learner builds on: the optimizer and its schedule, a model's train state (its
shardings, a fresh one, one from given parameters), and the `Learner` interface the trainer's
loop runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.tree_util import DictKey

from irl_lm import sharding

# ----------------------------------------------------------------------------- optimizer


def make_schedule(optimizer: Mapping, schedule: Mapping, total_steps: int) -> optax.Schedule:
    """Linear warmup to `optimizer.learning_rate`, then the decay named by `schedule.name`."""
    peak, warmup = optimizer["learning_rate"], schedule["warmup_steps"]
    decay_steps = max(total_steps - warmup, 1)
    end = peak * schedule["final_fraction"]
    decay = {
        "constant": optax.constant_schedule(peak),
        "cosine": optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0),
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "rsqrt": lambda step: peak * jax.lax.rsqrt(1.0 + step / max(warmup, 1)),
    }[schedule["name"]]
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(
    optimizer: Mapping, schedule: Mapping, total_steps: int
) -> optax.GradientTransformation:
    """`config.optimizer` (AdamW or Adafactor, optional global-norm clipping) on
    `config.schedule` over `config.total_steps`."""
    lr = make_schedule(optimizer, schedule, total_steps)
    if optimizer["name"] == "adamw":
        b1, b2, decay = optimizer["b1"], optimizer["b2"], optimizer["weight_decay"]
        core = optax.adamw(lr, b1=b1, b2=b2, weight_decay=decay)
    else:
        core = optax.adafactor(lr, weight_decay_rate=optimizer["weight_decay"] or None)
    clip = optimizer["grad_clip"]
    return optax.chain(*([optax.clip_by_global_norm(clip)] if clip else []), core)


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
    sampled_rows: int = 0  # rows of each batch the sampler draws
    update_flops: float = 0.0  # model FLOPs of one step's update (`irl_lm.perf`)
    sampling_flops: float = 0.0  # and of drawing its samples

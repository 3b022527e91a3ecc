"""GAIL for language models (PAPER.md §4): a discriminator D(s_t, a_t) trained to tell data
tokens from policy samples, and the policy trained on its own samples by policy gradient.

- The discriminator is a model of the policy's family (`config.discriminator.model`
  overrides fields of the policy's model config) with a scalar z_t per target position,
  D = σ(z_t), from the state and the action (`config.discriminator.head`): "scalar" (the
  paper's) a linear head on its final state once it has read a_t (`ScalarDiscriminator`);
  "token" its vocabulary head at the token taken, ℓ^D_t[a_t]; "log_ratio"
  log π_D(a_t|s_t) − log π_ref(a_t|s_t). Trained with binary cross-entropy, data tokens
  labelled 1, policy tokens 0 (each class's token mean, averaged).
- Reward per sampled token (`config.loss.reward`): "logit" log D − log(1 − D) = z_t (the
  paper's), "log_d" log D, "neg_log_1md" −log(1 − D).
- Policy loss on its samples: −mean_t[(G_t − b_t) log π(a_t|s_t)] with discounted returns
  G_t = Σ_k γ^k r_{t+k} (terminal at EOS or the sample's end) and baseline b_t the mean
  G_t of the batch's other samples; plus kl_coef · KL(π ‖ π_ref) (exact, per position,
  against the frozen initial policy), minus entropy_coef · H(π), plus mle_weight · NLL on
  the data. The terms on the samples run the policy without dropout, as it was when it
  drew them (so at step 0 the KL is 0); the NLL on the data keeps the model's dropout.
- Each step: sample the whole batch's inputs, `updates_per_step` discriminator updates on
  (data, samples), then one policy update with rewards from the updated discriminator (none
  in the first `warmup_steps` steps, while the discriminator learns).
  Discriminator, policy and reference are one `GAILState`, checkpointed and restored
  together.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from irl_lm import perf, sharding
from irl_lm.learners.common import (
    Learner,
    TrainState,
    init_state,
    make_optimizer,
    state_from_params,
)
from irl_lm.learners.common import state_shardings as policy_state_shardings
from irl_lm.losses.common import negative_log_likelihood
from irl_lm.losses.gail import REWARDS, discriminator_loss, policy_loss
from irl_lm.models.layers import param


@flax.struct.dataclass
class GAILState:
    """The policy's train state (named as `TrainState`'s fields, so `state.params` and
    `state.step` are the policy's), the discriminator's, and the frozen reference policy."""

    step: jax.Array
    params: Any
    opt_state: Any
    discriminator: TrainState
    reference: Any


# ----------------------------------------------------------------------------- discriminator


HEADS = ("scalar", "token", "log_ratio")


class ScalarDiscriminator(nn.Module):
    """The "scalar" head: z_t = w · h_t + b, with h_t the model's final state at target
    position t when it reads the targets themselves as its decoder inputs, so position t
    has read the state and the action a_t (the row's first input token, T5's start token or
    a decoder-only row's first prompt token, is not read). w and b start at 0: D = 1/2.

    Its parameters: the model's under "model", the head's "kernel" and "bias"."""

    model: nn.Module

    @property
    def config(self):
        return self.model.config

    @nn.compact
    def __call__(self, batch, *, deterministic=True):
        rows = dict(batch) | {"decoder_input_tokens": batch["decoder_target_tokens"]}
        hidden = self.model.hidden(rows, deterministic=deterministic).astype(jnp.float32)
        kernel = param(self, "kernel", nn.initializers.zeros, hidden.shape[-1:], ("embed",))
        bias = param(self, "bias", nn.initializers.zeros, (), ())
        return jnp.einsum("btd,d->bt", hidden, kernel) + bias


def discriminator_model(model, head: str) -> nn.Module:
    """The discriminator module for `head` over a model of the policy's family."""
    return ScalarDiscriminator(model) if head == "scalar" else model


def action_logits(model, params, batch, *, normalize=False) -> jax.Array:
    """ℓ_t[a_t] (or log-softmax(ℓ_t)[a_t] when `normalize`) for the targets of `batch`,
    float32 `[B, T]`."""
    logits = model.apply({"params": params}, batch, deterministic=True).astype(jnp.float32)
    if normalize:
        logits = jax.nn.log_softmax(logits)
    targets = batch["decoder_target_tokens"]
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def discriminator_logits(disc_model, disc_params, model, reference, batch, head: str):
    """The discriminator's logit z_t = log D − log(1 − D) per target of `batch`.

    head "scalar": `ScalarDiscriminator`. head "token": z_t = ℓ^D_t[a_t]. head "log_ratio":
    z_t = log π_D(a_t|s_t) − log π_ref(a_t|s_t), with π_ref the frozen initial policy: a
    discriminator initialised from the policy starts at z = 0 (D = 1/2). Its limit: for
    every state E_{a∼π_ref}[e^z] = 1, so it tells actions apart within a state but cannot
    score the states themselves (the optimal discriminator's log μ_E(s)/μ_π(s)).
    """
    if head == "scalar":
        return disc_model.apply({"params": disc_params}, batch)
    if head == "token":
        return action_logits(disc_model, disc_params, batch)
    log_ref = jax.lax.stop_gradient(action_logits(model, reference, batch, normalize=True))
    return action_logits(disc_model, disc_params, batch, normalize=True) - log_ref


# ----------------------------------------------------------------------------- state


def discriminator_optimizer(
    optimizer: Mapping, schedule: Mapping, total_steps: int, learning_rate: float
) -> optax.GradientTransformation:
    """The policy's optimizer and schedule with `config.discriminator.learning_rate`
    (`learning_rate`; 0: the policy's)."""
    if learning_rate:
        optimizer = dict(optimizer) | {"learning_rate": learning_rate}
    return make_optimizer(optimizer, schedule, total_steps)


def discriminator_example(example_batch):
    """The policy's example batch with the targets a discriminator reads."""
    return dict(example_batch) | {"decoder_target_tokens": example_batch["decoder_input_tokens"]}


def state_shardings(model, disc_model, tx, disc_tx, example_batch, mesh):
    """(abstract GAILState, its shardings), from the two models' train states."""
    policy, policy_shardings = policy_state_shardings(model, tx, example_batch, mesh)
    disc, disc_shardings = policy_state_shardings(
        disc_model, disc_tx, discriminator_example(example_batch), mesh
    )

    def combine(p, d):
        return GAILState(
            step=p.step, params=p.params, opt_state=p.opt_state, discriminator=d, reference=p.params
        )

    return combine(policy, disc), combine(policy_shardings, disc_shardings)


def initial_state(
    model,
    disc_model,
    tx,
    disc_tx,
    example,
    abstract,
    shardings,
    rng,
    *,
    policy_params=None,
    disc_from_policy: bool,
):
    """Step 0: the policy from `policy_params` (else a fresh initialisation), the reference a
    copy of it, the discriminator a copy too (`disc_from_policy`; a scalar head over the
    copy starts at 0) or freshly initialised."""
    policy_shardings = TrainState(shardings.step, shardings.params, shardings.opt_state)
    if policy_params is None:
        policy = init_state(model, tx, example, policy_shardings, rng)
    else:
        policy = state_from_params(tx, policy_params, policy_shardings)
    copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.params)
    if disc_from_policy:
        disc_params = copy(policy.params)
        if isinstance(disc_model, ScalarDiscriminator):
            # The policy's parameters the discriminator has (not its vocabulary head), and
            # the scalar head at 0.
            shapes = abstract.discriminator.params
            head = {k: v for k, v in shapes.items() if k != "model"}
            disc_params = {
                "model": _select(disc_params, shapes["model"]),
                **jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), head),
            }
        disc = state_from_params(disc_tx, disc_params, shardings.discriminator)
    else:
        disc = init_state(
            disc_model,
            disc_tx,
            discriminator_example(example),
            shardings.discriminator,
            jax.random.fold_in(rng, 7),
        )
    return GAILState(
        step=policy.step,
        params=policy.params,
        opt_state=policy.opt_state,
        discriminator=disc,
        reference=copy(policy.params),
    )


def _select(tree, like):
    """The subtree of nested dict `tree` with the keys of `like`."""
    if not isinstance(like, Mapping):
        return tree
    return {k: _select(tree[k], v) for k, v in like.items()}


# ----------------------------------------------------------------------------- the step


def step_flops(model, disc_model, data_shapes, *, updates_per_step: int, head: str, mle_weight):
    """Model FLOPs of one `gail_step` (`irl_lm.perf`'s convention; a forward and backward
    pass counts 3 forward passes; the samples have the data's shapes; `disc_model`: the
    discriminator's model, without its "scalar" head): each discriminator
    update's passes over data and samples (and the reference policy's, for "log_ratio"),
    the rewards of the samples, the reference logits of the samples, and the policy update
    (with its NLL on the data when `mle_weight`). Drawing the samples is counted apart."""
    policy = perf.train_flops_per_step(model, data_shapes) / 3  # one forward pass
    parts = perf.flops_breakdown(disc_model, data_shapes)
    if head == "scalar":  # a scalar per position, not the vocabulary head
        parts.pop("head")
    disc = sum(parts.values())
    reference = policy if head == "log_ratio" else 0.0
    disc_update = 2 * (3 * disc + reference)  # data and samples
    policy_update = 3 * policy * (2 if mle_weight else 1)
    rewards_and_reference = disc + reference + policy
    return updates_per_step * disc_update + rewards_and_reference + policy_update


def gail_step(
    state: GAILState,
    batch,
    rng,
    samples,
    *,
    model,
    disc_model,
    tx,
    disc_tx,
    loss_config,
    updates_per_step: int,
    warmup_steps: int,
    head: str,
):
    """Discriminator update(s) on (data, samples), then one policy update on the samples."""
    samples_mask = samples["decoder_loss_weights"]

    z = lambda disc_params, rows: discriminator_logits(
        disc_model, disc_params, model, state.reference, rows, head
    )

    def disc_objective(disc_params):
        data_z, policy_z = z(disc_params, batch), z(disc_params, samples)
        return discriminator_loss(data_z, batch["decoder_loss_weights"], policy_z, samples_mask)

    def disc_update(_, carry):
        disc, _ = carry
        (_, metrics), grads = jax.value_and_grad(disc_objective, has_aux=True)(disc.params)
        updates, opt_state = disc_tx.update(grads, disc.opt_state, disc.params)
        disc = TrainState(disc.step + 1, optax.apply_updates(disc.params, updates), opt_state)
        return disc, metrics

    _, metric_shapes = jax.eval_shape(disc_objective, state.discriminator.params)
    zero = jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metric_shapes)
    disc, disc_metrics = jax.lax.fori_loop(
        0, updates_per_step, disc_update, (state.discriminator, zero)
    )
    rewards = REWARDS[loss_config["reward"]](z(disc.params, samples))
    rewards = jax.lax.stop_gradient(rewards)
    ref_logits = jax.lax.stop_gradient(
        model.apply({"params": state.reference}, samples, deterministic=True)
    )
    rng = jax.random.fold_in(rng, state.step)

    def policy_objective(params):
        # The samples' terms read the policy as it drew them: no dropout.
        logits = model.apply({"params": params}, samples, deterministic=True)
        loss, metrics = policy_loss(
            logits,
            ref_logits,
            samples["decoder_target_tokens"],
            samples_mask,
            rewards,
            gamma=loss_config["gamma"],
            kl_coef=loss_config["kl_coef"],
            entropy_coef=loss_config["entropy_coef"],
            normalize_advantages=bool(loss_config["normalize_advantages"]),
        )
        if loss_config["mle_weight"]:
            data_logits = model.apply(
                {"params": params}, batch, deterministic=False, rngs={"dropout": rng}
            )
            nll, _, _ = negative_log_likelihood(
                data_logits,
                batch["decoder_target_tokens"],
                batch["decoder_loss_weights"],
            )
            loss = loss + loss_config["mle_weight"] * nll
            metrics = metrics | {"gail/nll": nll}
        return loss, metrics | {"loss": loss}

    (_, metrics), grads = jax.value_and_grad(policy_objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # The policy waits `warmup_steps` steps for the discriminator to learn.
    active = state.step >= warmup_steps
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
    state = state.replace(
        step=state.step + 1,
        params=keep(optax.apply_updates(state.params, updates), state.params),
        opt_state=keep(opt_state, state.opt_state),
        discriminator=disc,
    )
    metrics = (
        metrics
        | disc_metrics
        | {
            "grad_norm": optax.global_norm(grads),
            "num_tokens": jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)),
        }
    )
    return state, metrics


def jit_gail_step(
    model,
    disc_model,
    tx,
    disc_tx,
    mesh,
    shardings,
    *,
    loss_config,
    updates_per_step: int,
    warmup_steps: int,
    head: str,
):
    step_fn = functools.partial(
        gail_step,
        model=model,
        disc_model=disc_model,
        tx=tx,
        disc_tx=disc_tx,
        loss_config=dict(loss_config),
        updates_per_step=updates_per_step,
        warmup_steps=warmup_steps,
        head=head,
    )
    batch_sharding = sharding.batch_sharding(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding, sharding.replicated(mesh), batch_sharding),
        out_shardings=(shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def gail_learner(
    model, disc_model, tx, disc_tx, example, mesh, rng, *, loss, discriminator, sampler
):
    """Policy, discriminator and reference policy in one `GAILState`; each step samples the
    whole batch's inputs (`sampler`). `loss`: `config.loss`; `discriminator`:
    `config.discriminator`."""
    abstract, shardings = state_shardings(model, disc_model, tx, disc_tx, example, mesh)
    init = functools.partial(
        initial_state,
        model,
        disc_model,
        tx,
        disc_tx,
        example,
        abstract,
        shardings,
        rng,
        disc_from_policy=discriminator["init"] == "policy",
    )
    step = jit_gail_step(
        model,
        disc_model,
        tx,
        disc_tx,
        mesh,
        shardings,
        loss_config=loss,
        updates_per_step=discriminator["updates_per_step"],
        warmup_steps=discriminator["warmup_steps"],
        head=discriminator["head"],
    )
    return Learner(
        abstract_state=abstract,
        shardings=shardings,
        init=init,
        from_params=lambda params: init(policy_params=params),
        step=step,
        sampler=sampler,
    )

"""Chunked logits (`losses.common.ChunkedLogits`): every loss equals its unchunked value and
gradients within float32 rounding, and the training step equals the unchunked step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_lm import sharding, train_step
from irl_lm.losses import LOSSES, loss_fields, make_loss
from irl_lm.losses.common import ChunkedLogits
from irl_lm.models import build_model
from tests.test_losses import random_batch

VOCAB, WIDTH = 11, 6
POLICY_LOSSES = ("mle", "mle_entropy", "iqlearn", "iqlearn_online")


def _loss_fn(name):
    fields = {
        "mle_entropy": {"beta": 0.3},
        "iqlearn": {"lam": 0.7, "gamma": 0.9},
        "iqlearn_online": {"lam": 0.7, "gamma": 0.9, "alpha": 0.3},
    }.get(name, {})
    return make_loss(loss_fields(name, **fields))


@pytest.mark.parametrize("chunk", [1, 4, 9, 64])  # 4 leaves a partial last chunk of 9 positions
@pytest.mark.parametrize("name", POLICY_LOSSES)
def test_chunked_loss_equals_unchunked_values_and_gradients(name, chunk):
    _, targets, weights = random_batch(seed=1)
    rng = np.random.default_rng(2)
    hidden = jnp.asarray(rng.normal(size=(*targets.shape, WIDTH)), jnp.float32)
    head_w = jnp.asarray(rng.normal(size=(WIDTH, VOCAB)), jnp.float32)
    policy_targets = rng.integers(2, VOCAB, size=(3, 7))
    policy_weights = np.ones((3, 7), np.float32)
    policy_hidden = jnp.asarray(rng.normal(size=(3, 7, WIDTH)), jnp.float32)
    loss_fn = _loss_fn(name)

    def loss(hidden, policy_hidden, head_w, chunked):
        head = lambda h: jnp.einsum("btd,dv->btv", h, head_w)
        as_logits = lambda h: ChunkedLogits(h, head, chunk) if chunked else head(h)
        extra = {}
        if LOSSES[name].online:
            extra["policy"] = {
                "logits": as_logits(policy_hidden),
                "targets": policy_targets,
                "weights": policy_weights,
            }
        return loss_fn(as_logits(hidden), targets, weights, eos_id=1, **extra)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    (dense, dense_metrics), dense_grads = jax.jit(functools.partial(grad, chunked=False))(
        hidden, policy_hidden, head_w
    )
    (chunked, chunked_metrics), chunked_grads = jax.jit(functools.partial(grad, chunked=True))(
        hidden, policy_hidden, head_w
    )
    assert float(dense) > 0.5  # a real loss, not a degenerate zero
    np.testing.assert_allclose(chunked, dense, rtol=1e-6)
    for key, value in dense_metrics.items():
        np.testing.assert_allclose(chunked_metrics[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    online = LOSSES[name].online
    for i, (got, want) in enumerate(zip(chunked_grads, dense_grads, strict=True)):
        assert (np.abs(want).max() > 1e-3) == (i != 1 or online)  # policy states: online only
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_train_step_with_chunked_logits_equals_the_unchunked_step(family):
    """The step through `model.hidden` + `model.logits` in chunks of 3 target positions gives
    the parameters and metrics of the plain step, on a real (tiny) model and mesh."""
    rng = np.random.default_rng(0)
    vocab, batch_size, length = 97, 8, 10
    if family == "t5":
        model_config = dict(
            name="t5",
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_heads=4,
            num_layers=1,
            num_decoder_layers=2,
        )
    else:
        model_config = dict(
            name="decoder_only",
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            tie_word_embeddings=True,
        )
    model = build_model(model_config)
    targets = rng.integers(2, vocab, (batch_size, length)).astype(np.int32)
    targets[:, -3:] = 0
    targets[:, -4] = 1
    batch = {
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }
    if family == "t5":
        batch["encoder_input_tokens"] = rng.integers(2, vocab, (batch_size, 6)).astype(np.int32)
    mesh = sharding.make_mesh({"data": -1})
    config = _optimizer_config()
    tx = train_step.make_optimizer(config)
    loss_fn = make_loss(loss_fields("iqlearn", lam=0.5, gamma=0.9))
    results = []
    with sharding.use_mesh(mesh):
        example = {k: v[:1] for k, v in batch.items()}
        for chunk in (0, 3):
            learner = train_step.policy_learner(
                model,
                loss_fn,
                tx,
                example,
                mesh,
                jax.random.PRNGKey(0),
                sampler=None,
                grad_accum_steps=1,
                eos_id=1,
                logits_chunk_size=chunk,
            )
            state = learner.init()
            placed = sharding.shard_global_batch(batch, mesh)
            state, metrics = learner.step(state, placed, jax.random.PRNGKey(1))
            results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (dense_params, dense_metrics), (chunked_params, chunked_metrics) = results
    for key in ("loss", "iqlearn/td2", "grad_norm"):
        np.testing.assert_allclose(chunked_metrics[key], dense_metrics[key], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        chunked_params,
        dense_params,
    )


def _optimizer_config():
    from irl_lm.config_utils import trainer_defaults

    config = trainer_defaults()
    config.total_steps, config.schedule.warmup_steps = 10, 0
    config.optimizer.learning_rate = 1e-2
    return config

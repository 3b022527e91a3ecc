"""Chunked logits (`losses.common.ChunkedLogits`): every loss equals its unchunked value and
gradients within float32 rounding, and the training step equals the unchunked step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_batch, tiny_model, train_tiny

from irl_lm.losses import LOSSES, loss_fields, make_loss
from irl_lm.losses.common import ChunkedLogits
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


@pytest.mark.parametrize("chunk", [4, 64])  # 4: a partial last chunk of 9 positions; 64: one
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
    model, batch = tiny_model(family, tie_word_embeddings=family != "t5"), tiny_batch(family)
    dense, (dense_metrics,), _ = train_tiny(model, batch)
    chunked, (chunked_metrics,), _ = train_tiny(model, batch, logits_chunk_size=3)
    for key in ("loss", "iqlearn/td2", "grad_norm"):
        np.testing.assert_allclose(chunked_metrics[key], dense_metrics[key], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        chunked.params,
        dense.params,
    )

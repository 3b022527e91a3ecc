"""Mixed precision (float32 parameters and optimizer state, bf16 compute, float32 losses;
bf16 parameters on request) and rematerialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_batch, tiny_model, train_tiny

from irl_lm import sharding, train
from irl_lm.losses import loss_fields, make_loss
from tests.test_trainer import read_events

STEPS = 50


def _demo_losses(tmp_path, dtype):
    from configs import demo

    config = demo.get_config("loss=iqlearn")
    config.total_steps, config.log_every, config.checkpoint.every = STEPS, 1, STEPS
    config.evals = {}
    config.model.dtype = dtype
    workdir = str(tmp_path / dtype)
    train.train_and_evaluate(config, workdir)
    return np.array([v for _, v in read_events(workdir)["train/loss"]])


def test_bf16_loss_curve_follows_float32_on_the_demo(tmp_path):
    """50 steps of the demo (IQLearn λ 0.1, batch 64) in bf16 compute: every step's loss
    within 2% of float32's (measured: at most 0.05%), and the same descent."""
    f32, bf16 = _demo_losses(tmp_path, "float32"), _demo_losses(tmp_path, "bfloat16")
    assert len(f32) == len(bf16) == STEPS
    print("max relative difference", np.max(np.abs(bf16 / f32 - 1)))
    assert f32[-1] < 0.7 * f32[0]  # it learns: the comparison is over a real descent
    np.testing.assert_allclose(bf16, f32, rtol=0.02)
    assert not np.array_equal(bf16, f32)  # bf16 really ran


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
@pytest.mark.parametrize("policy", ["dots_saveable", "full"])
def test_remat_gives_the_same_loss_and_gradients(family, policy):
    """Recomputing activations in the backward pass changes neither the parameter paths nor
    the gradients (float32 rounding)."""
    batch = tiny_batch(family)
    loss_fn = make_loss(loss_fields("iqlearn", lam=0.5, gamma=0.9))

    def loss_and_grads(model, params):
        def loss(params):
            logits = model.apply({"params": params}, batch, deterministic=False)
            targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
            return loss_fn(logits, targets, weights, eos_id=1)[0]

        return jax.jit(jax.value_and_grad(loss))(params)

    plain = tiny_model(family)
    params = sharding.unbox(plain.init(jax.random.PRNGKey(0), batch)["params"])
    remat = tiny_model(family, remat=policy)
    remat_params = sharding.unbox(remat.init(jax.random.PRNGKey(0), batch)["params"])
    assert jax.tree.structure(remat_params) == jax.tree.structure(params)
    jaxpr = str(jax.make_jaxpr(lambda p: remat.apply({"params": p}, batch))(params))
    assert jaxpr.count("checkpoint") + jaxpr.count("remat") >= 2  # one per layer, at least
    want_loss, want = loss_and_grads(plain, params)
    got_loss, got = loss_and_grads(remat, params)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)


def test_bf16_parameters_hold_params_and_optimizer_state_in_bf16():
    """`param_dtype=bfloat16`: parameters and Adam moments in bf16 (half the memory), the
    loss still computed in float32, and it goes down as with float32 parameters."""
    batch = tiny_batch("t5")
    model = tiny_model("t5", dtype="bfloat16", param_dtype="bfloat16")
    state, metrics, learner = train_tiny(model, batch, steps=8)
    losses = [m["loss"] for m in metrics]
    leaves = jax.tree.leaves(state.params)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(learner.abstract_state.params)} == {
        jnp.dtype(jnp.bfloat16)
    }
    logits = model.apply({"params": state.params}, batch)
    assert logits.dtype == jnp.bfloat16  # the compute dtype; the losses take float32
    assert all(m["loss"].dtype == np.float32 for m in metrics)
    _, f32_metrics, _ = train_tiny(tiny_model("t5", dtype="bfloat16"), batch, steps=8)
    f32_losses = [m["loss"] for m in f32_metrics]
    assert losses[-1] < 0.8 * losses[0]
    np.testing.assert_allclose(losses, f32_losses, rtol=0.05)
    with pytest.raises(ValueError, match="param_dtype='float8' is not supported"):
        tiny_model("t5", param_dtype="float8")

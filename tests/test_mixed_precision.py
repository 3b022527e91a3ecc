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


@pytest.mark.parametrize("family", ["t5", "decoder_only", "t5gemma2"])
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
    assert logits.dtype == jnp.float32  # the head accumulates its bf16 matmul in float32
    assert all(m["loss"].dtype == np.float32 for m in metrics)
    _, f32_metrics, _ = train_tiny(tiny_model("t5", dtype="bfloat16"), batch, steps=8)
    f32_losses = [m["loss"] for m in f32_metrics]
    assert losses[-1] < 0.8 * losses[0]
    np.testing.assert_allclose(losses, f32_losses, rtol=0.05)
    with pytest.raises(ValueError, match="param_dtype='float8' is not supported"):
        tiny_model("t5", param_dtype="float8")


@pytest.mark.parametrize("tied", [False, True])
def test_bf16_rewards_match_a_float32_reference_at_vocab_32k(tied):
    """The head accumulates its bf16 matmul in float32 and emits float32 logits: IQLearn's
    extracted per-token rewards at vocabulary 32k, target logits up to ~50, are within 0.01
    nats of rewards from the same bf16 states and weights multiplied in float64 (logits
    rounded to bf16 would be off by up to ~0.25)."""
    from irl_lm.losses.iqlearn import sequence_rewards
    from irl_lm.models import build_model

    vocab, width = 32128, 64
    model = build_model(
        dict(
            name="t5",
            vocab_size=vocab,
            d_model=width,
            d_kv=16,
            d_ff=128,
            num_heads=4,
            num_layers=1,
            tie_word_embeddings=tied,
            dtype="bfloat16",
        )
    )
    rng = np.random.default_rng(0)
    targets = rng.integers(2, vocab, (2, 8)).astype(np.int32)
    batch = {
        "encoder_input_tokens": rng.integers(2, vocab, (2, 6)).astype(np.int32),
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
    }
    params = sharding.unbox(model.init(jax.random.PRNGKey(0), batch)["params"])
    # Logits of tens of nats, as a trained model's (the initial head gives ~N(0, 1)).
    if tied:
        params["token_embedder"]["embedding"] = params["token_embedder"]["embedding"] * 30.0
        head = np.asarray(params["token_embedder"]["embedding"]).T
    else:
        params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 30.0
        head = np.asarray(params["lm_head"]["kernel"])
    hidden = model.apply({"params": params}, batch, method="hidden")
    assert hidden.dtype == jnp.bfloat16
    hidden = np.asarray(hidden.astype(jnp.float32), np.float64)
    if model.config.scales_decoder_outputs:
        hidden = hidden * np.asarray(jnp.asarray(width**-0.5, jnp.bfloat16), np.float64)
    head = np.asarray(jnp.asarray(head).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    reference_logits = hidden @ head
    logits = model.apply({"params": params}, batch)
    assert logits.dtype == jnp.float32
    taken = np.take_along_axis(reference_logits, targets[..., None], -1)
    assert np.abs(taken).max() > 12, np.abs(taken).max()
    weights = np.ones_like(targets)
    rewards = lambda x: np.asarray(
        sequence_rewards(jnp.asarray(x, jnp.float32), targets, weights, gamma=0.99, eos_id=1)[0]
    )
    expected = rewards(reference_logits)
    error = np.abs(rewards(logits) - expected).max()
    rounded = np.abs(rewards(jnp.asarray(reference_logits).astype(jnp.bfloat16)) - expected).max()
    print(f"\nreward error: float32 head {error:.4f} nats, bf16-rounded logits {rounded:.4f}")
    assert error < 0.01
    assert rounded > 0.02  # the check can tell the two apart

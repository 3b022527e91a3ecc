"""GAIL: its losses against NumPy, the discriminator learning to separate data from policy
samples, and a crashed run resuming both models."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_T5GEMMA2
from test_trainer import _Recorder, read_events

from irl_lm import checkpointing, sharding, train
from irl_lm.learners import common, gail
from irl_lm.losses import loss_fields
from irl_lm.losses.gail import discounted_returns, discriminator_loss, policy_loss
from irl_lm.models import build_model

ROOT = os.path.join(os.path.dirname(__file__), "..")


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_policy_and_discriminator_losses_match_numpy():
    rng = np.random.default_rng(0)
    batch, length, vocab = 3, 6, 7
    logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 2
    ref_logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 2
    tokens = rng.integers(0, vocab, (batch, length))
    mask = np.zeros((batch, length), np.float32)
    for row, n in enumerate([6, 2, 4]):
        mask[row, :n] = 1
    rewards = rng.normal(size=(batch, length)).astype(np.float32)
    gamma, kl_coef, entropy_coef = 0.9, 0.2, 0.05

    returns = np.zeros((batch, length))
    for b in range(batch):
        running = 0.0
        for t in reversed(range(int(mask[b].sum()))):
            running = rewards[b, t] + gamma * running
            returns[b, t] = running
    np.testing.assert_allclose(discounted_returns(rewards, mask, gamma), returns, rtol=1e-5)
    # Leave-one-out: the mean return of the other samples alive at t (0 where none is;
    # rows 1 and 2 end early, so position 5 has row 0 alone).
    baseline = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            others = [returns[o, t] for o in range(batch) if o != b and mask[o, t] > 0]
            baseline[b, t] = np.mean(others) if others else 0.0
    log_p, log_ref = log_softmax(logits), log_softmax(ref_logits)
    taken = np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
    n = mask.sum()
    pg = -(((returns - baseline) * taken) * mask).sum() / n
    kl = ((np.exp(log_p) * (log_p - log_ref)).sum(-1) * mask).sum() / n
    entropy = ((-np.exp(log_p) * log_p).sum(-1) * mask).sum() / n
    loss, metrics = policy_loss(
        logits,
        ref_logits,
        tokens,
        mask,
        rewards,
        gamma=gamma,
        kl_coef=kl_coef,
        entropy_coef=entropy_coef,
    )
    np.testing.assert_allclose(loss, pg + kl_coef * kl - entropy_coef * entropy, rtol=1e-5)
    np.testing.assert_allclose(metrics["gail/kl_to_reference"], kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["gail/policy_entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(metrics["gail/reward_std"], np.std(rewards[mask > 0]), rtol=1e-4)
    # The advantage is a constant: the gradient is −A_t ∇ log π(a_t) (+ KL and entropy).
    pg_only = lambda x: policy_loss(
        x, ref_logits, tokens, mask, rewards, gamma=gamma, kl_coef=0.0, entropy_coef=0.0
    )[0]
    grad = jax.grad(pg_only)(jnp.asarray(logits))
    one_hot = np.eye(vocab)[tokens]
    expected = -((returns - baseline) * mask)[..., None] * (one_hot - np.exp(log_p)) / n
    np.testing.assert_allclose(grad, expected, atol=1e-6)

    data_z, policy_z = rng.normal(size=(2, 5)), rng.normal(size=(3, 4))
    data_w, policy_w = np.ones((2, 5)), (rng.random((3, 4)) > 0.3).astype(np.float64)
    loss, metrics = discriminator_loss(data_z, data_w, policy_z, policy_w)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    policy_term = -(np.log(1 - sigmoid(policy_z)) * policy_w).sum() / policy_w.sum()
    expected = 0.5 * (-np.log(sigmoid(data_z)).mean() + policy_term)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    accuracy = ((policy_z < 0) * policy_w).sum() / policy_w.sum()
    np.testing.assert_allclose(metrics["gail/disc_accuracy_policy"], accuracy, rtol=1e-6)


@pytest.mark.parametrize("family", ["t5", "decoder_only", "t5gemma2"])
def test_scalar_discriminator_reads_state_and_action(family):
    """The default head: z_t = w · h_t + b with h_t the final state after reading a_t, checked
    against the model's own hidden states; changing a_t moves z_t and no earlier z."""
    fields = dict(vocab_size=11, dtype="float32")
    if family == "t5":
        fields |= dict(name="t5", d_model=16, d_kv=4, d_ff=32, num_heads=2, num_layers=1)
    elif family == "t5gemma2":
        fields = TINY_T5GEMMA2 | fields
    else:
        fields |= dict(
            name="decoder_only",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    model = build_model(fields)
    disc = gail.discriminator_model(model, "scalar")
    rng = np.random.default_rng(0)
    targets = rng.integers(2, 11, (2, 5)).astype(np.int32)
    batch = {
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
    }
    if family != "decoder_only":
        batch["encoder_input_tokens"] = rng.integers(2, 11, (2, 4)).astype(np.int32)
    params = sharding.unbox(disc.init(jax.random.PRNGKey(0), batch)["params"])
    params["kernel"] = jnp.asarray(rng.normal(size=16), jnp.float32)
    params["bias"] = jnp.asarray(0.3, jnp.float32)
    assert "lm_head" not in params["model"]  # the vocabulary head is not part of it
    z = np.asarray(disc.apply({"params": params}, batch))
    read_targets = dict(batch) | {"decoder_input_tokens": targets}
    hidden = model.apply(
        {"params": params["model"]}, read_targets, method="hidden", deterministic=True
    )
    expected = np.asarray(hidden, np.float64) @ np.asarray(params["kernel"], np.float64) + 0.3
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    changed = targets.copy()
    changed[:, 2] = np.where(targets[:, 2] == 5, 6, 5)
    z2 = np.asarray(disc.apply({"params": params}, batch | {"decoder_target_tokens": changed}))
    np.testing.assert_array_equal(z2[:, :2], z[:, :2])
    assert np.all(np.abs(z2[:, 2] - z[:, 2]) > 1e-4)


def test_gail_defaults_to_the_scalar_head(make_config):
    assert gail_config(make_config).discriminator.head == "scalar"


def test_gail_policy_terms_see_no_dropout(make_config, tmp_path, monkeypatch):
    """Policy = reference at step 0: with dropout 0.1 the KL to the reference is 0 there,
    because the terms on the samples run the policy without dropout (as it sampled)."""
    config = gail_config(make_config, total_steps=1, log_every=1, evals={})
    config.model.dropout_rate = 0.1
    _Recorder(monkeypatch)
    train.train_and_evaluate(config, str(tmp_path))
    (step, kl), *_ = read_events(str(tmp_path))["train/gail/kl_to_reference"]
    assert step == 1 and abs(kl) < 1e-6, kl


def gail_config(make_config, **overrides):
    config = make_config(**overrides)
    config.loss = loss_fields("gail")
    return config


def test_discriminator_separates_data_from_untrained_policy_samples(make_config, tmp_path):
    config = gail_config(
        make_config, total_steps=200, log_every=10, evals={}, **{"checkpoint.every": 200}
    )
    config.optimizer.learning_rate = 0.0  # the policy stays untrained
    config.discriminator.update(init="scratch", learning_rate=3e-3)
    train.train_and_evaluate(config, str(tmp_path))
    events = read_events(str(tmp_path))
    data = [v for _, v in events["train/gail/disc_accuracy_data"]]
    policy = [v for _, v in events["train/gail/disc_accuracy_policy"]]
    last_data, last_policy = np.mean(data[-5:]), np.mean(policy[-5:])
    print(
        f"\ndiscriminator accuracy, data / policy tokens: first {data[0]:.2f} / "
        f"{policy[0]:.2f}, last 5 logs {last_data:.2f} / {last_policy:.2f}"
    )
    assert last_data > 0.8 and last_policy > 0.8


def final_state(workdir, config):
    model = build_model(train.resolve_model_config(config))
    tx, disc_tx = (
        common.make_optimizer(config.optimizer, config.schedule, config.total_steps),
        gail.discriminator_optimizer(
            config.optimizer,
            config.schedule,
            config.total_steps,
            config.discriminator.learning_rate,
        ),
    )
    mesh = sharding.make_mesh(config.mesh)
    with sharding.use_mesh(mesh):
        example = train.dummy_batch(config, model, 1)
        disc_model = gail.discriminator_model(model, config.discriminator.head)
        abstract, shardings = gail.state_shardings(model, disc_model, tx, disc_tx, example, mesh)
        ckpt = checkpointing.Checkpointer(workdir, keep=5)
        state, _ = ckpt.restore(
            ckpt.latest_step(), checkpointing.abstract_like(abstract, shardings)
        )
        ckpt.close()
    return jax.device_get(state)


@pytest.mark.parametrize("family", ["t5", "t5gemma2"])
def test_gail_resumes_policy_discriminator_and_reference(
    make_config, tmp_path, monkeypatch, family
):
    config = gail_config(make_config, total_steps=6, evals={})
    config.loss.mle_weight = 0.5
    if family == "t5gemma2":
        config.model = TINY_T5GEMMA2
    _Recorder(monkeypatch)
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    straight = final_state(str(tmp_path / "straight"), config)
    _Recorder(monkeypatch, crash_at=4)  # steps 1-3 run, checkpoint at 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(config, str(tmp_path / "resumed"))
    _Recorder(monkeypatch)
    assert train.train_and_evaluate(config, str(tmp_path / "resumed"))["step"] == 6
    resumed = final_state(str(tmp_path / "resumed"), config)
    assert int(resumed.step) == int(resumed.discriminator.step) == 6
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, straight, resumed)  # policy, both optimizers, discriminator, reference
    # The reference stays the initial policy; the discriminator and the policy moved.
    moved = lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max()
    assert max(jax.tree.leaves(jax.tree.map(moved, resumed.params, resumed.reference))) > 1e-4


def test_gail_moves_a_briefly_trained_policy_towards_the_expert(tmp_path, processes):
    """experiments/gail_from_mle on one CPU device: 500 MLE steps on the demo's synthetic
    expert, then 400 GAIL steps without an MLE term; on 2048 samples validity rises by more
    than 10% and the forward KL to the exact expert falls (every run of the study). The
    reverse KL, from the few valid samples of a 10%-valid policy, is one seed's noise: it
    fell 0.146 -> 0.141 on one CPU type and rose 0.140 -> 0.154 on another (AMD EPYC family
    25 model 1), so it is only held from blowing up."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = processes.run(
        [
            sys.executable,
            os.path.join(ROOT, "experiments", "gail_from_mle", "run.py"),
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(line)
    start, end = result["start"], result["end"]
    print(
        f"\nGAIL from MLE@500: reverse KL {start['reverse_kl']:.4f} -> {end['reverse_kl']:.4f}"
        f", validity {start['validity']:.3f} -> {end['validity']:.3f}"
    )
    assert end["validity"] > 1.1 * start["validity"]
    assert end["reverse_kl"] < 1.25 * start["reverse_kl"]
    assert end["forward_kl"] < start["forward_kl"]
    events = read_events(str(tmp_path / "seed0" / "log_ratio"))
    assert events["train/gail/disc_accuracy_data"][-1][1] > 0.6  # the discriminator learned

"""The temperature sampler against teacher-forced forward passes of the same model."""

import jax
import numpy as np

from irl_lm import decoding
from irl_lm.models import T5, T5Config
from irl_lm.sharding import unbox

CONFIG = T5Config(vocab_size=13, d_model=16, d_kv=4, d_ff=32, num_heads=2, num_layers=1)
MODEL = T5(CONFIG)


def setup(batch=6, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, CONFIG.vocab_size, (batch, 5)).astype(np.int32)
    inputs[:, -1] = 1
    example = {"encoder_input_tokens": inputs, "decoder_input_tokens": inputs}
    params = unbox(MODEL.init(jax.random.PRNGKey(seed), example)["params"])
    # Make EOS likely so that some rows stop early.
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"].at[:, 1].add(0.3)
    return params, inputs


def teacher_forced_log_probs(params, inputs, tokens):
    batch = {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
    }
    return np.asarray(jax.nn.log_softmax(MODEL.apply({"params": params}, batch)))


def test_greedy_follows_the_teacher_forced_argmax():
    params, inputs = setup()
    out = jax.device_get(
        decoding.sample(MODEL, params, inputs, jax.random.PRNGKey(0), max_len=8, temperature=0.0)
    )
    log_p = teacher_forced_log_probs(params, inputs, out["tokens"])
    for row in range(len(inputs)):
        n = int(out["lengths"][row])
        np.testing.assert_array_equal(out["tokens"][row, :n], log_p[row, :n].argmax(-1))
        picked = np.take_along_axis(log_p[row, :n], out["tokens"][row, :n, None], -1)[:, 0]
        np.testing.assert_allclose(out["log_probs"][row, :n], picked, atol=1e-5)
        entropy = -(np.exp(log_p[row, :n]) * log_p[row, :n]).sum(-1)
        np.testing.assert_allclose(out["entropies"][row, :n], entropy, atol=1e-5)
        assert (out["tokens"][row, n:] == 0).all()
        if n < 8:
            assert out["tokens"][row, n - 1] == 1  # ended by EOS
    assert out["lengths"].min() < 8, "fixture should produce at least one early EOS"


def test_sampling_frequencies_follow_the_tempered_distribution():
    params, inputs = setup(batch=1)
    rows = 4000
    many = np.repeat(inputs, rows, axis=0)
    temperature = 0.7
    out = jax.device_get(
        decoding.sample(
            MODEL, params, many, jax.random.PRNGKey(3), max_len=1, temperature=temperature
        )
    )
    log_p = teacher_forced_log_probs(params, inputs, np.zeros((1, 1), np.int32))[0, 0]
    tempered = np.exp(log_p / temperature) / np.exp(log_p / temperature).sum()
    freq = np.bincount(out["tokens"][:, 0], minlength=CONFIG.vocab_size) / rows
    np.testing.assert_allclose(freq, tempered, atol=5 * np.sqrt(0.25 / rows))


def test_same_seed_same_samples():
    params, inputs = setup()
    draw = lambda seed: jax.device_get(
        decoding.sample(MODEL, params, inputs, jax.random.PRNGKey(seed), max_len=6, temperature=1.0)
    )["tokens"]
    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))

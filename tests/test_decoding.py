"""The cached decoders against teacher-forced forward passes of the same model and NumPy."""

import dataclasses
import functools
import itertools

import jax
import numpy as np
import pytest

from irl_lm import decoding
from irl_lm.models import T5, DecoderOnly, DecoderOnlyConfig, T5Config
from irl_lm.sharding import unbox

CONFIG = T5Config(
    vocab_size=13, d_model=16, d_kv=4, d_ff=32, num_heads=2, num_layers=1, num_decoder_layers=2
)
MODEL = T5(CONFIG)


def setup(batch=6, seed=0, model=MODEL, eos_boost=0.3):
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    inputs = rng.integers(2, vocab, (batch, 5)).astype(np.int32)
    inputs[:, -1] = 1
    inputs[1:3, -2:] = 0  # padded rows: the cross-attention mask must hold in the cache too
    example = {"encoder_input_tokens": inputs, "decoder_input_tokens": inputs}
    params = unbox(model.init(jax.random.PRNGKey(seed), example)["params"])
    if not model.config.tie_word_embeddings:  # make EOS likely so that some rows stop early
        params["lm_head"]["kernel"] = params["lm_head"]["kernel"].at[:, 1].add(eos_boost)
    return params, {"encoder_input_tokens": inputs}


def teacher_forced_log_probs(params, batch, tokens, model=MODEL):
    full = dict(batch, decoder_input_tokens=np.pad(tokens[:, :-1], ((0, 0), (1, 0))))
    return np.asarray(jax.nn.log_softmax(model.apply({"params": params}, full)))


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        T5Config(
            vocab_size=11,
            d_model=12,
            d_kv=5,
            d_ff=16,
            num_heads=3,
            num_layers=2,
            feed_forward_proj="relu",
            tie_word_embeddings=True,
            relative_attention_num_buckets=6,
            relative_attention_max_distance=9,
        ),
    ],
    ids=["v1_1", "original"],
)
def test_cached_steps_equal_the_teacher_forced_pass(config):
    """Logits position by position through the cache == one full forward over the tokens
    (14 steps: past the exact relative-position buckets, into the log-spaced ones)."""
    model = T5(config)
    params, batch = setup(model=model)
    tokens = np.random.default_rng(1).integers(2, config.vocab_size, (6, 14)).astype(np.int32)
    expected = teacher_forced_log_probs(params, batch, tokens, model)
    cache = model.apply({"params": params}, batch, 14, method=model.prefill)
    step = jax.jit(functools.partial(model.apply, method=model.decode_step))
    previous = np.zeros(6, np.int32)
    for t in range(14):
        logits, cache = step({"params": params}, cache, previous, t)
        np.testing.assert_allclose(jax.nn.log_softmax(logits), expected[:, t], atol=1e-5)
        previous = tokens[:, t]


def test_greedy_follows_the_teacher_forced_argmax():
    params, batch = setup()
    out = jax.device_get(decoding.greedy(MODEL, params, batch, max_len=8))
    out = {k: v[:, 0] for k, v in out.items() if k != "num_steps"}
    log_p = teacher_forced_log_probs(params, batch, out["tokens"])
    for row in range(6):
        n = int(out["lengths"][row])
        np.testing.assert_array_equal(out["tokens"][row, :n], log_p[row, :n].argmax(-1))
        picked = np.take_along_axis(log_p[row, :n], out["tokens"][row, :n, None], -1)[:, 0]
        np.testing.assert_allclose(out["log_probs"][row, :n], picked, atol=1e-5)
        entropy = -(np.exp(log_p[row, :n]) * log_p[row, :n]).sum(-1)
        np.testing.assert_allclose(out["entropies"][row, :n], entropy, atol=1e-5)
        assert (out["tokens"][row, n:] == 0).all() and (out["sample_log_probs"][row] == 0).all()
        if n < 8:
            assert out["tokens"][row, n - 1] == 1  # ended by EOS
    assert out["lengths"].min() < 8, "fixture should produce at least one early EOS"


def np_filter(logits, top_k, top_p):
    """NumPy reference of top-k then top-p (nucleus) filtering of one row."""
    order = np.argsort(-logits, kind="stable")
    keep = np.zeros(len(logits), bool)
    keep[order[: top_k or len(logits)]] = True
    kept = np.where(keep, logits, -np.inf)
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    total = 0.0
    nucleus = np.zeros(len(logits), bool)
    for index in np.argsort(-kept, kind="stable"):
        if total >= top_p:
            break
        nucleus[index] = True
        total += probs[index]
    return np.where(keep & nucleus, logits, -np.inf)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.6), (4, 0.5), (1, 1.0)])
def test_filter_logits_matches_numpy(top_k, top_p):
    logits = np.random.default_rng(top_k).normal(size=(5, 13)).astype(np.float32)
    got = np.asarray(decoding.filter_logits(logits, np.int32(top_k), np.float32(top_p)))
    for row in range(5):
        np.testing.assert_array_equal(got[row], np_filter(logits[row], top_k, top_p))


def test_sampling_frequencies_follow_the_filtered_tempered_distribution():
    params, batch = setup(batch=1)
    rows, temperature, top_k, top_p = 4000, 0.7, 6, 0.9
    out = jax.device_get(
        decoding.sample(
            MODEL,
            params,
            batch,
            jax.random.PRNGKey(3),
            max_len=1,
            num_decodes=rows,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
    )
    log_p = teacher_forced_log_probs(params, batch, np.zeros((1, 1), np.int32))[0, 0]
    filtered = np_filter(log_p / temperature, top_k, top_p)
    expected = np.exp(filtered - filtered.max())
    expected /= expected.sum()
    tokens = out["tokens"][0, :, 0]
    freq = np.bincount(tokens, minlength=CONFIG.vocab_size) / rows
    np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / rows))
    np.testing.assert_allclose(out["sample_log_probs"][0, :, 0], np.log(expected[tokens]), 1e-4)
    np.testing.assert_allclose(out["log_probs"][0, :, 0], log_p[tokens], atol=1e-5)


def test_seeds_temperature_zero_limit_and_top_k_one():
    params, batch = setup()
    draw = lambda seed, **kw: jax.device_get(
        decoding.sample(
            MODEL, params, batch, jax.random.PRNGKey(seed), max_len=6, num_decodes=3, **kw
        )
    )["tokens"]
    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))
    greedy = jax.device_get(decoding.greedy(MODEL, params, batch, max_len=6))["tokens"]
    for kw in ({"temperature": 1e-3}, {"top_k": 1}, {"top_p": 1e-6}):
        np.testing.assert_array_equal(draw(5, **kw), np.repeat(greedy, 3, axis=1), err_msg=kw)


def test_beam_search_with_one_beam_is_greedy():
    params, batch = setup()
    beam = jax.device_get(decoding.beam_search(MODEL, params, batch, max_len=8, num_beams=1))
    greedy = jax.device_get(decoding.greedy(MODEL, params, batch, max_len=8))
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    np.testing.assert_allclose(beam["log_probs"], greedy["log_probs"], atol=1e-5)


def test_beam_search_finds_the_best_sequences_by_enumeration():
    """Vocabulary 5, length <= 3: every sequence scored exactly; 32 beams are exhaustive."""
    config = T5Config(vocab_size=5, d_model=8, d_kv=4, d_ff=8, num_heads=2, num_layers=1)
    model, alpha, max_len = T5(config), 0.8, 3
    params, batch = setup(batch=3, model=model, eos_boost=1.5)
    out = jax.device_get(
        decoding.beam_search(model, params, batch, max_len=max_len, num_beams=32, alpha=alpha)
    )
    candidates = [
        y
        for length in range(1, max_len + 1)
        for y in itertools.product(range(5), repeat=length)
        if 1 not in y[:-1] and (y[-1] == 1 or length == max_len)
    ]
    tokens = np.array([list(y) + [0] * (max_len - len(y)) for y in candidates], np.int32)
    for row in range(3):
        rows = {
            "encoder_input_tokens": np.repeat(
                batch["encoder_input_tokens"][row : row + 1], len(candidates), axis=0
            )
        }
        log_p = teacher_forced_log_probs(params, rows, tokens, model)
        scores = [
            np.take_along_axis(log_p[i, : len(y)], np.array(y)[:, None], -1).sum()
            / ((5 + len(y)) / 6) ** alpha
            for i, y in enumerate(candidates)
        ]
        best = np.argsort(scores)[::-1][:5]
        np.testing.assert_allclose(out["scores"][row, :5], np.array(scores)[best], atol=1e-4)
        np.testing.assert_array_equal(out["tokens"][row, 0], tokens[best[0]])
        assert out["lengths"][row, 0] == len(candidates[best[0]])
    assert (np.diff(out["scores"], axis=1) <= 1e-6).all()  # best first


def test_options_are_arrays_and_the_loop_stops_at_the_last_eos():
    params, batch = setup(batch=4, eos_boost=1.0)
    decode = jax.jit(
        lambda p, b, r, temperature, top_k, top_p: decoding.sample(
            MODEL, p, b, r, max_len=20, temperature=temperature, top_k=top_k, top_p=top_p
        )
    )
    outs = [
        jax.device_get(decode(params, batch, jax.random.PRNGKey(0), *options))
        for options in [(1.0, 0, 1.0), (0.5, 3, 0.9), (0.0, 0, 1.0)]
    ]
    assert decode._cache_size() == 1  # new temperature / top-k / top-p values: no recompile
    # The loop runs until the last row's EOS (or max_len), no further.
    assert [int(out["num_steps"]) for out in outs] == [out["lengths"].max() for out in outs]
    assert min(int(out["num_steps"]) for out in outs) < 20


# ----------------------------------------------------------------------------- decoder-only

LLAMA = DecoderOnlyConfig(
    vocab_size=17,
    hidden_size=16,
    intermediate_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=50.0,
)


def decoder_only_setup(config=LLAMA, seed=0):
    model = DecoderOnly(config)
    rng = np.random.default_rng(seed)
    lengths = [5, 2, 4, 1]  # right-padded prompts of different lengths
    prompts = np.zeros((4, 5), np.int32)
    for row, n in enumerate(lengths):
        prompts[row, :n] = rng.integers(2, config.vocab_size, n)
    example = {"decoder_input_tokens": prompts}
    params = unbox(model.init(jax.random.PRNGKey(seed), example)["params"])
    return model, params, prompts, lengths


@pytest.mark.parametrize("tied", [False, True])
def test_decoder_only_cached_steps_equal_the_teacher_forced_pass(tied):
    """Prompt prefill, then one token per step: the logits of step t equal a full forward
    pass over prompt + continuation at position len(prompt) - 1 + t, row by row."""
    config = dataclasses.replace(LLAMA, tie_word_embeddings=tied)
    model, params, prompts, lengths = decoder_only_setup(config)
    steps = 9
    continuation = np.random.default_rng(1).integers(2, 17, (4, steps)).astype(np.int32)
    cache = model.apply(
        {"params": params}, {"decoder_input_tokens": prompts}, steps, method=model.prefill
    )
    step = jax.jit(functools.partial(model.apply, method=model.decode_step))
    previous = np.zeros(4, np.int32)
    got = []
    for t in range(steps):
        logits, cache = step({"params": params}, cache, previous, t)
        got.append(np.asarray(jax.nn.log_softmax(logits)))
        previous = continuation[:, t]
    for row, n in enumerate(lengths):
        sequence = np.concatenate([prompts[row, :n], continuation[row]])[None]
        full = model.apply({"params": params}, {"decoder_input_tokens": sequence})
        expected = np.asarray(jax.nn.log_softmax(full))[0, n - 1 : n - 1 + steps]
        np.testing.assert_allclose(np.stack(got)[:, row], expected, atol=1e-5)


def test_decoder_only_greedy_and_beam_through_the_same_decoders():
    model, params, prompts, lengths = decoder_only_setup()
    batch = {"decoder_input_tokens": prompts}
    greedy = jax.device_get(decoding.greedy(model, params, batch, max_len=6, eos_id=1))
    beam = jax.device_get(decoding.beam_search(model, params, batch, max_len=6, num_beams=1))
    np.testing.assert_array_equal(beam["tokens"], greedy["tokens"])
    for row, n in enumerate(lengths):  # each new token is the argmax given all before it
        tokens = greedy["tokens"][row, 0, : greedy["lengths"][row, 0]]
        sequence = np.concatenate([prompts[row, :n], tokens])[None]
        full = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": sequence}))
        np.testing.assert_array_equal(full[0, n - 1 : n - 1 + len(tokens)].argmax(-1), tokens)


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_several_continuations_per_input_score_as_the_teacher_forced_pass(family):
    """Beams (3) and samples (2 per input) share each input's cache rows (T5: its
    cross-attention keys and values): every returned token's log-probability equals the
    teacher-forced pass over that input and sequence."""
    if family == "t5":
        params, batch = setup(batch=3)  # a padded input among them
        model = MODEL
    else:
        model, params, prompts, lengths = decoder_only_setup()
        batch = {"decoder_input_tokens": prompts}
    beams = decoding.beam_search(model, params, batch, max_len=5, num_beams=3, eos_id=1)
    samples = decoding.sample(
        model, params, batch, jax.random.PRNGKey(4), max_len=5, num_decodes=2, eos_id=1
    )
    for out, n in ((jax.device_get(beams), 3), (jax.device_get(samples), 2)):
        for row in range(out["tokens"].shape[0]):
            for k in range(n):
                length = int(out["lengths"][row, k])
                tokens = out["tokens"][row, k, :length]
                if family == "t5":
                    one = {"encoder_input_tokens": batch["encoder_input_tokens"][row : row + 1]}
                    log_p = teacher_forced_log_probs(params, one, tokens[None])[0]
                else:
                    p = lengths[row]
                    sequence = np.concatenate([prompts[row, :p], tokens])[None]
                    logits = model.apply({"params": params}, {"decoder_input_tokens": sequence})
                    log_p = np.asarray(jax.nn.log_softmax(logits))[0, p - 1 : p - 1 + length]
                want = log_p[np.arange(length), tokens]
                got = out["log_probs"][row, k, :length]
                np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"row {row}, {k}")

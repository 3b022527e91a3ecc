"""The synthetic expert's probabilities against brute-force enumeration and its own samples."""

import dataclasses
import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_lm.data.synthetic import (
    EOS_ID,
    FIRST_TOKEN,
    PAD_ID,
    UNK_ID,
    ExpertSpec,
    SyntheticExpert,
)

# Small enough to enumerate every sequence the expert could emit (max_target_len = 6).
TINY = ExpertSpec(
    num_symbols=3,
    num_output_tokens=3,
    num_states=2,
    branching=2,
    filler_prob=0.2,
    min_input_len=1,
    max_input_len=3,
    max_fillers=2,
    seed=7,
)


@functools.lru_cache
def brute_force_probs(inputs: tuple[int, ...]) -> dict[tuple[int, ...], float]:
    """exp(log_prob) of every `w + [EOS]`, w over all non-special ids, len <= max_target_len."""
    expert = SyntheticExpert(TINY)
    # UNK and one id past the filler (vocab padding) are in the alphabet to check they get p = 0.
    alphabet = [UNK_ID, *range(FIRST_TOKEN, TINY.filler_token + 2)]
    assert TINY.filler_token + 1 < TINY.vocab_size
    probs = {}
    for length in range(TINY.max_target_len):
        for words in itertools.product(alphabet, repeat=length):
            targets = (*words, EOS_ID)
            probs[targets] = math.exp(expert.log_prob(np.array(inputs), np.array(targets)))
    return probs


@pytest.mark.parametrize("inputs", [(4,), (5, 5), (5, 3, 4)])
def test_probabilities_sum_to_one_over_all_sequences(inputs):
    probs = brute_force_probs(inputs)
    assert math.fsum(probs.values()) == pytest.approx(1.0, abs=1e-9)
    expert = SyntheticExpert(TINY)
    rng = np.random.default_rng(0)
    for _ in range(200):
        sample = expert.sample(np.array(inputs), rng)
        assert expert.log_prob(np.array(inputs), sample) > -math.inf
        assert probs[tuple(sample.tolist())] > 0


def test_sample_frequencies_match_probabilities():
    inputs = (5, 3, 4)
    probs = brute_force_probs(inputs)
    expert = SyntheticExpert(TINY)
    rng = np.random.default_rng(1)
    num_samples = 20_000
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(num_samples):
        sample = tuple(expert.sample(np.array(inputs), rng).tolist())
        counts[sample] = counts.get(sample, 0) + 1
    assert set(counts) <= {seq for seq, p in probs.items() if p > 0}
    support = [seq for seq, p in probs.items() if p > 0]
    assert len(support) > 10  # the check below is only meaningful with several outcomes
    for seq in support:
        p = probs[seq]
        freq = counts.get(seq, 0) / num_samples
        assert abs(freq - p) <= 5 * math.sqrt(p * (1 - p) / num_samples) + 1e-12, seq


def test_token_log_probs_and_entropies_match_next_token_distribution():
    expert = SyntheticExpert(ExpertSpec())
    for index in range(20):
        example = expert.example("train", index)
        x, y = example["inputs"], example["targets"]
        token_log_probs = expert.token_log_probs(x, y)
        assert token_log_probs.shape == y.shape
        np.testing.assert_allclose(token_log_probs.sum(), expert.log_prob(x, y), rtol=1e-12)
        entropies = expert.entropies(x, y)
        for t in range(len(y)):
            probs = expert.next_token_distribution(x, y[:t])
            assert probs.shape == (expert.spec.vocab_size,)
            assert probs.sum() == pytest.approx(1.0, abs=1e-12)
            assert probs[y[t]] == pytest.approx(math.exp(token_log_probs[t]), rel=1e-12)
            nonzero = probs[probs > 0]
            assert entropies[t] == pytest.approx(-np.sum(nonzero * np.log(nonzero)), abs=1e-12)
        assert not expert.next_token_distribution(x, y).any()  # ended with EOS


def test_entropy_increases_with_temperature():
    mean_entropies = []
    for temperature in [0.05, 0.3, 1.0, 3.0]:
        expert = SyntheticExpert(dataclasses.replace(ExpertSpec(), temperature=temperature))
        rng = np.random.default_rng(2)
        entropies = []
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            for _ in range(300):
                x = expert.sample_inputs(rng)
                y = expert.sample(x, rng)
                assert np.isfinite(expert.log_prob(x, y))
                entropies.append(expert.entropies(x, y))
        mean_entropies.append(np.concatenate(entropies).mean())
    assert np.all(np.diff(mean_entropies) > 0), mean_entropies


def test_tiny_temperature_is_finite():
    expert = SyntheticExpert(dataclasses.replace(ExpertSpec(), temperature=1e-4))
    rng = np.random.default_rng(3)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for _ in range(50):
            x = expert.sample_inputs(rng)
            y = expert.sample(x, rng)
            assert np.all(np.isfinite(expert.token_log_probs(x, y)))
            assert np.all(np.isfinite(expert.entropies(x, y)))


def test_truncated_and_impossible_sequences():
    expert = SyntheticExpert(ExpertSpec())
    example = expert.example("validation", 3)
    x, y = example["inputs"], example["targets"]
    assert len(y) >= 3

    truncated = y[:-1]
    assert np.all(np.isfinite(expert.token_log_probs(x, truncated)))
    assert expert.log_prob(x, truncated) == -math.inf
    assert expert.log_prob(x, y[:0]) == -math.inf
    assert expert.log_prob(x, np.array([EOS_ID])) == -math.inf  # x is not consumed yet

    probs_at_1 = expert.next_token_distribution(x, y[:1])
    unused_output_token = next(
        token
        for token in range(expert.spec.first_output_token, expert.spec.filler_token)
        if probs_at_1[token] == 0
    )
    for bad_token in [UNK_ID, PAD_ID, int(x[0]), unused_output_token]:
        impossible = y.copy()
        impossible[1] = bad_token
        token_log_probs = expert.token_log_probs(x, impossible)
        assert np.isfinite(token_log_probs[0])
        assert np.all(token_log_probs[1:] == -math.inf)
        entropies = expert.entropies(x, impossible)
        assert np.all(np.isfinite(entropies[:2]))  # y_<2 is still a possible prefix
        assert np.all(np.isnan(entropies[2:]))
        assert expert.log_prob(x, impossible) == -math.inf
        assert not expert.next_token_distribution(x, impossible[:2]).any()


def test_padding_after_eos_is_ignored():
    expert = SyntheticExpert(ExpertSpec())
    example = expert.example("test", 0)
    x, y = example["inputs"], example["targets"]
    padded_y = np.concatenate([y, np.full(5, PAD_ID, np.int32)])
    padded_x = np.concatenate([x, [EOS_ID], np.full(3, PAD_ID, np.int32)])
    assert expert.log_prob(padded_x, padded_y) == expert.log_prob(x, y)
    np.testing.assert_array_equal(expert.token_log_probs(x, padded_y), expert.token_log_probs(x, y))
    assert expert.entropies(x, padded_y).shape == y.shape


def test_samples_fit_the_spec():
    spec = ExpertSpec()
    expert = SyntheticExpert(spec)
    assert spec.vocab_size % 8 == 0 and spec.vocab_size > spec.filler_token
    for index in range(200):
        example = expert.example("train", index)
        x, y = example["inputs"], example["targets"]
        assert x.dtype == np.int32 and y.dtype == np.int32
        assert spec.min_input_len <= len(x) <= spec.max_input_len
        assert np.all((x >= FIRST_TOKEN) & (x < spec.first_output_token))
        assert len(y) <= spec.max_target_len and y[-1] == EOS_ID
        assert np.all((y[:-1] >= spec.first_output_token) & (y[:-1] <= spec.filler_token))


def test_examples_are_reproducible():
    def examples(spec, split):
        expert = SyntheticExpert(spec)
        return [
            (
                expert.example(split, i)["inputs"].tolist(),
                expert.example(split, i)["targets"].tolist(),
            )
            for i in range(10)
        ]

    spec = ExpertSpec()
    assert examples(spec, "train") == examples(ExpertSpec(), "train")
    assert examples(spec, "train") != examples(spec, "validation")
    assert examples(spec, "validation") != examples(spec, "test")
    assert examples(spec, "train") != examples(dataclasses.replace(spec, seed=1), "train")
    with pytest.raises(ValueError, match="split"):
        SyntheticExpert(spec).example("dev", 0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_symbols", 0),
        ("num_output_tokens", -1),
        ("num_states", 0),
        ("branching", 25),  # > num_output_tokens
        ("temperature", 0.0),
        ("temperature", math.inf),
        ("filler_prob", 1.0),
        ("filler_prob", -0.1),
        ("min_input_len", 9),  # > max_input_len
        ("max_input_len", 0),
        ("max_fillers", -1),
        ("seed", -1),
    ],
)
def test_spec_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticExpert(dataclasses.replace(ExpertSpec(), **{field: value}))


class ScriptedPolicy(nn.Module):
    """A T5-shaped stand-in policy that writes `scripts[i]` for `prompts[i]` (greedy decoding
    reads that point mass) and gives uniform teacher-forced logits."""

    prompts: np.ndarray  # [R, W]
    scripts: np.ndarray  # [R, T]
    vocab_size: int
    input_features = ("encoder_input_tokens", "decoder_input_tokens")

    def prefill(self, batch, max_len):
        match_BxR = (batch["encoder_input_tokens"][:, None] == self.prompts[None]).all(-1)
        row_B = jnp.argmax(match_BxR, axis=1)  # (an unmatched padding row: row 0)
        return {"inputs": {"row": row_B}, "decode": {"row": row_B}}

    def decode_step(self, cache, tokens_B, index):
        step = jnp.minimum(index, self.scripts.shape[1] - 1)
        token_B = jnp.asarray(self.scripts)[cache["decode"]["row"], step]
        return jax.nn.one_hot(token_B, self.vocab_size) * 10.0, cache

    def __call__(self, batch, deterministic=True):
        rows, length = batch["decoder_input_tokens"].shape
        return jnp.zeros((rows, length, self.vocab_size))


@pytest.mark.parametrize("outside", [2, 6])
def test_expert_evaluator_with_outputs_outside_the_support(make_config, outside):
    """A policy whose (greedy) output is an expert sample for some inputs and, for `outside`
    of the 6, one with an impossible first token: validity is the share inside the support,
    and the reverse KL that of the valid outputs renormalised, +inf when none is valid,
    both from the scripted outputs in NumPy."""
    from irl_lm import evaluators, sharding
    from irl_lm.data import tasks

    task = tasks.build(make_config().task)
    expert, num = task.expert, 6
    inputs = [expert.example("validation", i)["inputs"] for i in range(num)]
    prompts = np.zeros((num, expert.spec.max_input_len_with_eos), np.int32)
    scripts = np.zeros((num, expert.spec.max_target_len), np.int32)
    rng = np.random.default_rng(0)
    for i, x in enumerate(inputs):
        prompts[i, : len(x) + 1] = [*x, EOS_ID]
        y = expert.sample(x, rng)
        if i % 3 == 0 or outside == num:  # rows 0 and 3 when outside == 2
            impossible = np.flatnonzero(expert.next_token_distribution(x, [])[FIRST_TOKEN:] == 0)
            y = np.array([FIRST_TOKEN + impossible[0], *y[1:]])
        scripts[i, : len(y)] = y
    model = ScriptedPolicy(prompts, scripts, expert.spec.vocab_size)
    mesh = sharding.make_mesh({"data": -1})
    ctx = evaluators.EvalContext(task, model, mesh)
    with sharding.use_mesh(mesh):
        evaluator = evaluators.ExpertEvaluator(
            ctx, "expert", num_examples=num, num_samples=2, method="greedy"
        )
        assert [list(x) for x in evaluator.inputs] == [list(x) for x in inputs]
        scalars, _ = evaluator({}, 0)

    ys = [s[: np.flatnonzero(s == EOS_ID)[0] + 1] for s in scripts]
    log_p = np.array([expert.log_prob(x, y) for x, y in zip(inputs, ys, strict=True)])
    valid = np.isfinite(log_p)
    assert valid.sum() == num - outside
    assert scalars["validity"] == pytest.approx(valid.mean())
    lengths = np.array([len(y) for y in ys])
    if valid.any():  # a point mass: log q = 0 on each valid output, then renormalised
        log_valid = np.log(valid.mean())
        expected = (-log_p[valid].sum() - valid.sum() * log_valid) / lengths[valid].sum()
        assert scalars["reverse_kl"] == pytest.approx(expected, rel=1e-6)
    else:
        assert scalars["reverse_kl"] == math.inf
    assert np.isfinite(scalars["forward_kl"])

"""Online losses through the trainer: policy samples laid out as teacher-forced batches."""

import jax
import numpy as np
import pytest
from conftest import (
    TINY_DECODER_ONLY,
    TINY_T5GEMMA2,
    batch_sequences,
    numpy_iqlearn,
    restore_final,
)
from test_trainer import read_events

from irl_lm import decoding, sharding, train
from irl_lm.learners import sampler
from irl_lm.models import build_model

EOS = 1


FAMILIES = ["t5", "decoder_only", "t5gemma2"]
TINY_MODELS = {
    "t5": dict(name="t5", d_model=16, d_kv=4, d_ff=32, num_heads=4, num_layers=1),
    "decoder_only": TINY_DECODER_ONLY,
    "t5gemma2": TINY_T5GEMMA2,
}


def tiny_model(family):
    model = build_model(TINY_MODELS[family] | {"vocab_size": 23})
    features = {k: np.ones((1, 4), np.int32) for k in type(model).input_features}
    params = sharding.unbox(model.init(jax.random.PRNGKey(0), features)["params"])
    return model, jax.tree.map(lambda p: 3 * p, params)


def training_batch(family):
    """Two rows: encoder inputs, or prefix-LM rows (BOS, prompt, EOS, target)."""
    if family != "decoder_only":
        enc = np.zeros((2, 6), np.int32)
        enc[0, :4], enc[1, :6] = [5, 6, 7, EOS], [8, 9, 10, 11, 12, EOS]
        return {"encoder_input_tokens": enc}
    rows = [[EOS, 5, 6, 7, EOS, 9, 9, EOS], [EOS, 8, 9, EOS, 4, EOS]]  # prompt len 5 and 4
    tokens, weights = np.zeros((2, 10), np.int32), np.zeros((2, 10), np.int32)
    for i, (row, prompt) in enumerate(zip(rows, (5, 4), strict=True)):
        tokens[i, : len(row)] = row
        weights[i, prompt - 1 : len(row) - 1] = 1
    return {"decoder_input_tokens": tokens, "decoder_loss_weights": weights}


@pytest.mark.parametrize("family", FAMILIES)
def test_policy_batch_scores_the_samples_the_sampler_drew(family):
    """The teacher-forced pass over the laid-out samples gives, token for token, the
    log-probabilities the sampler recorded while drawing them (from its cache)."""
    model, params = tiny_model(family)
    batch = training_batch(family)
    rng = jax.random.PRNGKey(3)
    policy = sampler.policy_batch(model, params, batch, rng, rows=2, max_len=6, eos_id=EOS)
    drawn = decoding.sample(
        model, params, sampler.prompts(model, batch, 2), rng, max_len=6, eos_id=EOS
    )
    features = {k: policy[k] for k in type(model).input_features}
    log_p = jax.nn.log_softmax(model.apply({"params": params}, features))
    scored = np.take_along_axis(np.asarray(log_p), policy["decoder_target_tokens"][..., None], -1)[
        ..., 0
    ]
    weights = np.asarray(policy["decoder_loss_weights"])
    for row in range(2):
        n = int(drawn["lengths"][row, 0])
        assert weights[row].sum() == n
        np.testing.assert_array_equal(
            np.asarray(policy["decoder_target_tokens"])[row][weights[row] > 0],
            np.asarray(drawn["tokens"])[row, 0, :n],
        )
        recorded = np.asarray(drawn["log_probs"])[row, 0, :n]
        np.testing.assert_allclose(scored[row][weights[row] > 0], recorded, atol=1e-4)
    if family == "decoder_only":  # the prompt stays in front, as training reads it
        np.testing.assert_array_equal(policy["decoder_input_tokens"][0, :5], [EOS, 5, 6, 7, EOS])
        assert np.argmax(weights[0] > 0) == 4 and np.argmax(weights[1] > 0) == 3


@pytest.mark.parametrize("model", FAMILIES)
def test_online_iqlearn_trains_and_times_sampling_apart(make_config, tmp_path, model):
    """Step 3's data terms are NumPy's on batch 3 under the step-2 parameters; the logged
    loss is its terms' sum; sampling is timed apart from the update."""
    config = make_config()
    config.loss = dict(name="iqlearn_online", lam=0.1, gamma=0.99, alpha=0.5, chi2_on_mixture=1)
    if model != "t5":
        config.model = TINY_MODELS[model]
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 4 and np.isfinite(results["eval"]["validation"]["iqlearn/loss"])
    events = read_events(str(tmp_path))
    assert all(v > 0 for _, v in events["train/time/sample_s"])
    assert [s for s, _ in events["train/time/update_s"]] == [2, 3, 4]
    assert all(0 < v <= 14 for _, v in events["train/iqlearn_online/sample_length"])

    logged = {k.removeprefix("train/iqlearn_online/"): dict(v) for k, v in events.items()}
    state, _, batch = restore_final(str(tmp_path), config, step=2)
    built = build_model(train.resolve_model_config(config))
    expected = numpy_iqlearn(built, state.params, batch_sequences(batch), lam=0.1, gamma=0.99)
    assert logged["nll"][3] == pytest.approx(expected["nll"], rel=1e-4)
    assert logged["expert_value_diff"][3] == pytest.approx(expected["value_diff"], rel=1e-4)
    for step in (1, 2, 3, 4):
        online = 0.5 * (logged["policy_value_diff"][step] - logged["expert_value_diff"][step])
        assert logged["online_term"][step] == pytest.approx(online, rel=1e-4, abs=1e-5)
        terms = logged["nll"][step] + 0.1 * logged["td2"][step] + online
        assert logged["loss"][step] == pytest.approx(terms, rel=1e-4)


@pytest.mark.parametrize("loss", ["iqlearn_online", "gail"])
def test_policy_sample_losses_refuse_packing(make_config, tmp_path, loss):
    """A packed row holds several inputs: samples drawn from it would read the others'."""
    from irl_lm.losses import loss_fields

    config = make_config(**{"data.pack": True})
    config.loss = loss_fields(loss)
    with pytest.raises(ValueError, match=r"config.data.pack=True .* set config.data.pack=False"):
        train.train_and_evaluate(config, str(tmp_path))


def test_online_loss_refuses_gradient_accumulation(make_config, tmp_path):
    config = make_config(grad_accum_steps=2)
    config.loss = dict(name="iqlearn_online", lam=0.1, gamma=0.99, alpha=0.1, chi2_on_mixture=0)
    with pytest.raises(ValueError, match=r"config.grad_accum_steps=1"):
        train.train_and_evaluate(config, str(tmp_path))


def _incremental_logits(model, params, prompt_batch, inputs_T):
    """The sampler's own logits for one row: prefill the prompt, then feed `inputs_T` one
    decoding step at a time (T5: its decoder inputs from the start token; decoder-only:
    step 0 feeds the last prompt token itself)."""
    apply = lambda method, *a: model.apply({"params": params}, *a, method=method)
    cache = apply("prefill", prompt_batch, len(inputs_T))
    rows = []
    for index, token in enumerate(inputs_T):
        logits, cache = apply("decode_step", cache, np.asarray([token], np.int32), index)
        rows.append(np.asarray(logits[0]))
    return np.stack(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_sampled_token_0_is_a_token_for_every_caller(family):
    """A barely trained policy samples id 0 (the padding id) now and then. The teacher-forced
    passes of every caller (the loss's `model_logits`, chunked or not, with the whole sample
    dict; GAIL's `action_logits`) read it as a token and give the sampler's own logits."""
    from irl_lm.learners import gail
    from irl_lm.models import model_logits

    model, params = tiny_model(family)
    sampled = [5, 0, 7, EOS]  # drew 0 second
    if family != "decoder_only":
        prompt = {"encoder_input_tokens": np.asarray([[8, 9, 10, EOS]], np.int32)}
        row = {
            "encoder_input_tokens": prompt["encoder_input_tokens"],
            "decoder_input_tokens": np.asarray([[0, 5, 0, 7, EOS, 0]], np.int32),
            "decoder_target_tokens": np.asarray([sampled + [0, 0]], np.int32),
            "decoder_loss_weights": np.asarray([[1, 1, 1, 1, 0, 0]], np.int32),
        }
        positions, fed = slice(0, 4), [0, 5, 0, 7]
    else:
        prompt = {"decoder_input_tokens": np.asarray([[EOS, 8, 9, EOS]], np.int32)}
        tokens = [EOS, 8, 9, EOS, *sampled, 0]
        row = {
            "decoder_input_tokens": np.asarray([tokens[:-1]], np.int32),
            "decoder_target_tokens": np.asarray([tokens[1:]], np.int32),
            "decoder_loss_weights": np.asarray([[0, 0, 0, 1, 1, 1, 1, 0]], np.int32),
        }
        positions, fed = slice(3, 7), [EOS, 5, 0, 7]
    expected = _incremental_logits(model, params, prompt, fed)
    whole = np.asarray(model_logits(model, params, row))[0, positions]
    np.testing.assert_allclose(whole, expected, atol=1e-4)
    chunked = model_logits(model, params, row, logits_chunk_size=2)
    head = np.asarray(chunked.head(chunked.hidden_BxTxD))[0, positions]
    np.testing.assert_allclose(head, expected, atol=1e-4)
    taken = np.asarray(gail.action_logits(model, params, row))[0, positions]
    np.testing.assert_allclose(taken, expected[np.arange(4), sampled], atol=1e-4)

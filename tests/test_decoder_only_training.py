"""Decoder-only models through the trainer: prefix-LM batches (prompt masked, packing), the
IQLearn loss on them against a NumPy reference, and the GSM8k tiny config end to end."""

import json
import os

import jax
import numpy as np
import pytest
from test_configs import CONFIG_DIR, load

from irl_lm import sharding, train
from irl_lm.data import pipeline, tasks
from irl_lm.losses import iqlearn_loss
from irl_lm.models import build_model

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def gsm8k_config(**args):
    if not os.path.isdir(os.path.join(DATA, "gsm8k")):
        pytest.skip(f"shared data not found at {DATA} (see shared/data/README.md)")
    arg = ",".join(f"{k}={v}" for k, v in {"model": "decoder_only", "data": DATA, **args}.items())
    return load(os.path.join(CONFIG_DIR, "gsm8k.py")).get_config(arg)


def logsumexp(x):
    m = x.max()
    return m + np.log(np.exp(x - m).sum())


def reference_loss(model, params, examples, bos, eos, lam, gamma):
    """IQLearn from PAPER.md §2 over target tokens only, one unpadded example at a time: the
    state of target j is prompt + y_<j, its logits at the position after them; V = 0 after
    EOS."""
    total, count = 0.0, 0
    for ex in examples:
        x, y = [int(t) for t in ex["inputs"]], [int(t) for t in ex["targets"]]
        sequence = np.array([[bos, *x, *y[:-1]]], np.int32)
        logits = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": sequence}))
        logits = logits[0].astype(np.float64)
        first = len(x)  # its input token is the last prompt token
        for j, action in enumerate(y):
            row = logits[first + j]
            q, v = row[action], logsumexp(row)
            next_v = 0.0 if action == eos else logsumexp(logits[first + j + 1])
            total += (v - q) + lam * (q - gamma * next_v) ** 2
            count += 1
    return total / count


def test_iqlearn_on_prefix_lm_batches_matches_numpy_with_prompt_masking_and_packing():
    config = gsm8k_config(loss="iqlearn")
    config.task.max_input_len, config.task.max_target_len = 400, 400  # room to pack
    task = tasks.get_task(config.task)
    vocab = task.output_features["targets"].vocabulary
    lengths = tasks.feature_lengths(config.task)
    dataset = task.get_dataset(lengths, split="validation", shuffle=False, use_cached=False)
    dataset = dataset.take(6)
    examples = list(dataset.as_numpy_iterator())
    model = build_model(train.resolve_model_config(config))
    params = model.init(jax.random.PRNGKey(0), train.dummy_batch(config, model, 1))["params"]
    params = jax.tree.map(lambda p: 3 * p, sharding.unbox(params))  # logits that vary
    bos, lam, gamma = pipeline.bos_id(vocab), 0.5, 0.9
    expected = reference_loss(model, params, examples, bos, vocab.eos_id, lam, gamma)

    losses = {}
    for pack in (False, True):
        converter = pipeline.feature_converter(vocab, decoder_only=True, pack=pack)
        batch = next(converter(dataset, lengths).batch(16).as_numpy_iterator())
        if not pack:  # the prompt (inputs + their EOS) carries no loss; every target does
            for row, ex in enumerate(examples):
                n, m = len(ex["inputs"]), len(ex["targets"])
                weights = batch["decoder_loss_weights"][row]
                assert weights[:n].sum() == 0 and weights[n : n + m].all()
                assert weights[n + m :].sum() == 0
                assert batch["decoder_input_tokens"][row, 0] == bos
        else:
            assert len(batch["decoder_input_tokens"]) < len(examples)  # rows hold several
            assert batch["decoder_segment_ids"].max() >= 2
        inputs = {
            k: batch[k]
            for k in ("decoder_input_tokens", "decoder_segment_ids", "decoder_positions")
            if k in batch
        }
        logits = model.apply({"params": params}, inputs)
        losses[pack], _ = iqlearn_loss(
            logits,
            batch["decoder_target_tokens"],
            batch["decoder_loss_weights"],
            lam=lam,
            gamma=gamma,
            eos_id=vocab.eos_id,
            segment_ids=batch.get("decoder_segment_ids"),
        )
    print(
        f"\ndecoder-only IQLearn: numpy {expected:.6f} unpacked {float(losses[False]):.6f} "
        f"packed {float(losses[True]):.6f}"
    )
    np.testing.assert_allclose(float(losses[False]), expected, rtol=2e-5)
    np.testing.assert_allclose(float(losses[True]), expected, rtol=2e-5)


@pytest.mark.parametrize("loss", ["mle", "iqlearn"])
def test_gsm8k_tiny_decoder_only_trains_decodes_and_exports(loss, tmp_path):
    config = gsm8k_config(loss=loss)
    config.total_steps = 10
    config.data.pack = loss == "iqlearn"  # packed rows through the trainer too
    config.task.max_input_len = 400  # most questions whole: the sampling CLI can re-read them
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["eval"]["validation"]["mle/nll" if loss == "mle" else "iqlearn/nll"] > 0
    assert 0.0 <= results["eval"]["decode"]["accuracy"] <= 100.0
    assert 0.0 <= results["eval"]["calculator"]["accuracy"] <= 100.0
    rows = [json.loads(line) for line in open(tmp_path / "predictions" / "decode" / "10.jsonl")]
    assert len(rows) == 8 and all(isinstance(r["predictions"][0], str) for r in rows)
    print(f"\ngsm8k mode=tiny model=decoder_only loss={loss}: {results['eval']}")
    assert json.load(open(tmp_path / "model.json"))["name"] == "decoder_only"

    # The sampling CLI formats text prompts as training did: its greedy outputs are the
    # decode evaluator's predictions.
    from irl_lm import sample

    whole = [r for r in rows if len(r["input"].encode()) < 400]
    assert whole
    with open(tmp_path / "in.jsonl", "w") as f:
        f.writelines(json.dumps({"inputs": r["input"]}) + "\n" for r in whole)
    sample.main(
        [
            "--workdir",
            str(tmp_path),
            "--input-file",
            str(tmp_path / "in.jsonl"),
            "--output-file",
            str(tmp_path / "out.jsonl"),
            "--max-decode-len",
            "48",
        ]
    )
    outputs = [json.loads(line)["outputs"][0] for line in open(tmp_path / "out.jsonl")]
    assert outputs == [r["predictions"][0] for r in whole]

    # The trained workdir exports to a Hugging Face Llama folder transformers reads.
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from irl_lm.convert import convert
    from irl_lm.models.hf import load_hf

    convert(str(tmp_path), "hf:" + str(tmp_path / "hf"))
    model, params = load_hf(str(tmp_path / "hf"))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = np.random.default_rng(0).integers(1, model.config.vocab_size, (2, 12))
    ours = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": tokens}))
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_gemma3_checkpoint_fine_tunes_through_the_trainer_and_exports_unchanged(tmp_path):
    """init_from=hf:<Gemma 3 folder> on the GSM8k tiny config: the architecture (sliding
    layers, q/k norms, ...) comes from the folder; with learning rate 0 the exported model
    is the original, logit for logit, in transformers."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from test_hf_decoder_only import reload, save_hf_decoder

    from irl_lm.convert import convert

    reference = save_hf_decoder(tmp_path / "gemma", "gemma3", vocab_size=300)
    config = gsm8k_config(loss="iqlearn")
    config.init_from = f"hf:{tmp_path / 'gemma'}"
    config.total_steps, config.optimizer.learning_rate = 3, 0.0
    config.evals = {"validation": config.evals.validation}
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(results["eval"]["validation"]["iqlearn/loss"])
    model_json = json.load(open(tmp_path / "run" / "model.json"))
    assert model_json["model_type"] == "gemma3_text" and model_json["qk_norm"]
    convert(str(tmp_path / "run"), f"hf:{tmp_path / 'out'}")
    exported = reload(tmp_path / "out")
    tokens = torch.tensor(np.random.default_rng(0).integers(1, 300, (2, 11)))
    with torch.no_grad():
        expected, got = reference(input_ids=tokens).logits, exported(input_ids=tokens).logits
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5, rtol=0)

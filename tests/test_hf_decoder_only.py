"""Hugging Face Llama import / export and decoding against transformers (the reference)."""

import jax
import numpy as np
import pytest
from hf_fixtures import torch, transformers

from irl_lm import decoding
from irl_lm.models import export_hf, load_hf

ATOL = 1e-4  # float32
VARIANTS = {  # grouped-query, untied; multi-query, tied head; plain multi-head
    "gqa": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "mqa_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "mha": dict(num_key_value_heads=4, tie_word_embeddings=False, rope_theta=10000.0),
}


def save_llama(folder, variant, seed=0):
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, rms_norm_eps=1e-6, **{"rope_theta": 500.0, **VARIANTS[variant]},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # weights large enough that the logits discriminate
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def logits_of(model, tokens):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_llama_import_and_export_match_transformers(variant, tmp_path):
    reference = save_llama(tmp_path / "in", variant)
    model, params = load_hf(str(tmp_path / "in"))
    assert model.config.kv_heads == reference.config.num_key_value_heads
    assert model.config.tie_word_embeddings == (variant == "mqa_tied")
    tokens = np.random.default_rng(0).integers(0, 128, (3, 11))
    ours = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": tokens}))
    theirs = logits_of(reference, tokens)
    print(f"\nparity llama {variant}: max |logit diff| {np.abs(ours - theirs).max():.2e}")
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)

    params = jax.tree.map(lambda x: x * 0.9, params)
    export_hf(model, params, str(tmp_path / "out"), max_shard_bytes=30_000)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ours = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": tokens}))
    np.testing.assert_allclose(ours, logits_of(reloaded, tokens), atol=ATOL, rtol=0)


def test_llama_greedy_decoding_equals_transformers_generate(tmp_path):
    reference = save_llama(tmp_path, "gqa", seed=2)
    model, params = load_hf(str(tmp_path))
    rng = np.random.default_rng(3)
    lengths = [6, 2, 4]
    prompts = np.zeros((3, 6), np.int32)
    for row, n in enumerate(lengths):
        prompts[row, :n] = rng.integers(3, 128, n)
    out = jax.device_get(
        decoding.greedy(model, params, {"decoder_input_tokens": prompts}, max_len=10, eos_id=-1)
    )
    for row, n in enumerate(lengths):
        with torch.no_grad():
            expected = reference.generate(
                input_ids=torch.tensor(prompts[row : row + 1, :n], dtype=torch.long),
                do_sample=False, max_new_tokens=10, eos_token_id=None, pad_token_id=0,
            )[0, n:].numpy()  # fmt: skip
        np.testing.assert_array_equal(out["tokens"][row, 0], expected)


def test_sample_cli_continues_prompts_of_a_llama_folder(tmp_path):
    import json

    from irl_lm import sample

    reference = save_llama(tmp_path, "gqa", seed=4)
    prompts = [[5, 9, 17, 3], [44], [7, 7, 8]]
    with open(tmp_path / "in.jsonl", "w") as f:
        f.writelines(json.dumps({"input_ids": p}) + "\n" for p in prompts)
    sample.main(["--hf", str(tmp_path), "--input-file", str(tmp_path / "in.jsonl"),
                 "--output-file", str(tmp_path / "out.jsonl"), "--max-decode-len", "5",
                 "--eos-id", "2"])  # fmt: skip
    outputs = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    for prompt, out in zip(prompts, outputs, strict=True):
        with torch.no_grad():
            expected = reference.generate(
                input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=5,
                eos_token_id=2, pad_token_id=0,
            )[0, len(prompt) :].tolist()  # fmt: skip
        assert out["output_ids"] == [expected]

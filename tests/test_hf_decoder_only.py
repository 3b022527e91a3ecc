"""Hugging Face Llama / Gemma import / export and decoding against transformers (the reference)."""

import dataclasses
import os
import sys

import jax
import numpy as np
import pytest
from hf_fixtures import torch, transformers

from irl_lm import decoding, sharding
from irl_lm.models import DecoderOnly, DecoderOnlyConfig
from irl_lm.models.hf import export_hf, load_hf
from irl_lm.models.layers import AttentionMask

ATOL = 1e-4  # float32
_LLAMA = dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0})
# variant -> (transformers config class, fields); all share `_BASE`
VARIANTS = {
    # Llama: grouped-query, untied; multi-query, tied head; plain multi-head; Llama 3.1 rope
    "gqa": ("LlamaConfig", dict(_LLAMA, num_key_value_heads=2, tie_word_embeddings=False)),
    "mqa_tied": ("LlamaConfig", dict(_LLAMA, num_key_value_heads=1, tie_word_embeddings=True)),
    "mha": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=False)),
    "llama3_rope": (
        "LlamaConfig",
        dict(
            num_key_value_heads=2,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500.0,
                factor=4.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    # Gemma 3: q/k norms, query_pre_attn_scalar != head_dim, sliding layers (window 4 < the
    # 11 tokens) with their own rope base, linear-scaled global rope, logit soft-capping
    "gemma3": (
        "Gemma3TextConfig",
        dict(
            num_key_value_heads=2,
            head_dim=8,
            query_pre_attn_scalar=12,
            sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            final_logit_softcapping=6.0,
            hidden_activation="gelu_pytorch_tanh",
            rope_parameters={
                "full_attention": dict(rope_type="linear", factor=4.0, rope_theta=1e4),
                "sliding_attention": dict(rope_type="default", rope_theta=50.0),
            },
        ),
    ),
    # Gemma 2: attention-score soft-capping, alternating sliding layers, no q/k norms
    "gemma2": (
        "Gemma2Config",
        dict(
            num_key_value_heads=1,
            head_dim=8,
            query_pre_attn_scalar=12,
            sliding_window=3,
            attn_logit_softcapping=4.0,
            final_logit_softcapping=6.0,
        ),
    ),
}
_BASE = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    rms_norm_eps=1e-6,
)


def save_hf_decoder(folder, variant, seed=0, **overrides):
    class_name, fields = VARIANTS[variant]
    config = getattr(transformers, class_name)(**{**_BASE, **fields, **overrides})
    config._attn_implementation = "eager"  # soft-capping needs it
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # weights large enough that the logits discriminate
        for name, p in model.named_parameters():
            p.copy_(p + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def reload(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), attn_implementation="eager"
    ).eval()


def logits_of(model, tokens):
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_import_and_export_match_transformers(variant, tmp_path):
    reference = save_hf_decoder(tmp_path / "in", variant)
    model, params = load_hf(str(tmp_path / "in"))
    assert model.config.kv_heads == reference.config.num_key_value_heads
    assert model.config.tie_word_embeddings == reference.config.tie_word_embeddings
    tokens = np.random.default_rng(0).integers(0, 128, (3, 11))
    ours = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": tokens}))
    theirs = logits_of(reference, tokens)
    print(f"\nparity {variant}: max |logit diff| {np.abs(ours - theirs).max():.2e}")
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)

    params = jax.tree.map(lambda x: x * 0.9, params)
    export_hf(model, params, str(tmp_path / "out"), max_shard_bytes=30_000)
    reloaded = reload(tmp_path / "out")
    ours = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": tokens}))
    np.testing.assert_allclose(ours, logits_of(reloaded, tokens), atol=ATOL, rtol=0)
    assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")  # sharded
    _, again = load_hf(str(tmp_path / "out"))  # our sharded export reads back exactly
    jax.tree.map(np.testing.assert_array_equal, again, params)


def test_gemma3_folder_with_a_missing_or_misshapen_tensor_fails_naming_it(tmp_path):
    from irl_lm.models.safetensors_io import read_folder, write_file

    save_hf_decoder(tmp_path / "in", "gemma3")
    tensors = {k: np.array(v) for k, v in read_folder(str(tmp_path / "in")).items()}
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.k_norm.weight"}
    write_file(str(tmp_path / "in" / "model.safetensors"), missing.items())
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight"):
        load_hf(str(tmp_path / "in"))
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.zeros(5, np.float32)
    write_file(str(tmp_path / "in" / "model.safetensors"), tensors.items())
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_norm\.weight.*\(8,\)"):
        load_hf(str(tmp_path / "in"))


@pytest.mark.parametrize("variant", ["gqa", "gemma3", "gemma2"])
def test_greedy_decoding_equals_transformers_generate(variant, tmp_path):
    reference = save_hf_decoder(tmp_path, variant, seed=2)
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
                do_sample=False,
                max_new_tokens=10,
                eos_token_id=None,
                pad_token_id=0,
            )[0, n:].numpy()
        np.testing.assert_array_equal(out["tokens"][row, 0], expected)


def test_sample_cli_continues_prompts_of_a_llama_folder(tmp_path):
    import json

    from irl_lm import sample

    reference = save_hf_decoder(tmp_path, "gqa", seed=4)
    prompts = [[5, 9, 17, 3], [44], [7, 7, 8]]
    with open(tmp_path / "in.jsonl", "w") as f:
        f.writelines(json.dumps({"input_ids": p}) + "\n" for p in prompts)
    sample.main(
        [
            "--hf",
            str(tmp_path),
            "--input-file",
            str(tmp_path / "in.jsonl"),
            "--output-file",
            str(tmp_path / "out.jsonl"),
            "--max-decode-len",
            "5",
            "--eos-id",
            "2",
        ]
    )
    outputs = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    for prompt, out in zip(prompts, outputs, strict=True):
        with torch.no_grad():
            expected = reference.generate(
                input_ids=torch.tensor([prompt]),
                do_sample=False,
                max_new_tokens=5,
                eos_token_id=2,
                pad_token_id=0,
            )[0, len(prompt) :].tolist()
        assert out["output_ids"] == [expected]


def test_presets_have_the_public_checkpoints_parameter_counts():
    """Ours (module shapes) == the published counts == transformers' model at the same shape."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
    import presets

    table = presets.rows()
    assert {"t5_base", "t5_xxl", "gemma3_270m", "gemma3_1b", "llama3_2_1b"} <= {r[0] for r in table}
    for name, ours, public, theirs in table:
        assert ours == public == theirs, (name, ours, public, theirs)


def test_parallel_block_is_palm_style(tmp_path):
    """x + attention(norm(x)) + mlp(norm(x)), with the attention and MLP of the layer itself."""
    config = DecoderOnlyConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        parallel_block=True,
    )
    model = DecoderOnly(config)
    tokens = np.random.default_rng(0).integers(1, 64, (2, 7))
    params = model.init(jax.random.PRNGKey(0), {"decoder_input_tokens": tokens})["params"]
    params = sharding.unbox(params)
    assert "pre_mlp_norm" not in params["layers_0"]
    bound = model.bind({"params": params})
    layer, positions = bound.layers[0], np.broadcast_to(np.arange(7), (2, 7))
    x = bound.token_embedder(tokens)
    h = layer.pre_attention_norm(x)
    k, v = layer.self_attention.project_kv(h, positions)
    mask = AttentionMask(np.tril(np.ones((7, 7), bool))[None], causal=True)
    attn = layer.self_attention.attend(h, positions, k, v, mask, True)
    y = x + attn + layer.mlp(h, deterministic=True)
    expected = bound.lm_head(bound.final_norm(y))
    ours = model.apply({"params": params}, {"decoder_input_tokens": tokens})
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    sequential = DecoderOnly(dataclasses.replace(config, parallel_block=False))
    seq_params = sequential.init(jax.random.PRNGKey(0), {"decoder_input_tokens": tokens})["params"]
    seq_params = sharding.unbox(seq_params)
    seq_params["layers_0"] = {**seq_params["layers_0"], **params["layers_0"]}
    seq = sequential.apply({"params": seq_params}, {"decoder_input_tokens": tokens})
    assert np.abs(np.asarray(seq) - np.asarray(ours)).max() > 1e-3  # the two blocks differ


def test_decoder_only_folders_give_their_tokenizer_as_a_seqio_vocabulary(tmp_path):
    """tokenizer.model (Gemma / Llama 2 SentencePiece, no sentinels) and tokenizer.json alone
    (Llama 3) both load; ids equal the reference libraries'."""
    pytest.importorskip("seqio")  # not on the GPU image
    from hf_fixtures import XSUM

    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary
    from irl_lm.data.vocabularies import load_vocabulary

    if not os.path.exists(XSUM):
        pytest.skip(f"shared data not found at {XSUM} (see shared/data/README.md)")
    spm = pytest.importorskip("sentencepiece")
    import json

    rows = [json.loads(line) for line in open(XSUM)]
    spm_dir, json_dir = tmp_path / "spm", tmp_path / "json"
    spm_dir.mkdir(), json_dir.mkdir()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(row["document"] for row in rows[:200]),
        model_prefix=str(spm_dir / "tokenizer"),
        vocab_size=200,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        model_type="bpe",
        minloglevel=2,
    )
    vocab = load_vocabulary(str(spm_dir))
    reference = spm.SentencePieceProcessor(model_file=str(spm_dir / "tokenizer.model"))
    assert (vocab.vocab_size, vocab.eos_id) == (reference.get_piece_size(), 1)  # no extra ids
    for row in rows[900:910]:
        assert vocab.encode(row["summary"]) == reference.encode(row["summary"])

    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"])
    tok.train_from_iterator((row["document"] for row in rows[:200]), trainer)
    tok.save(str(json_dir / "tokenizer.json"))
    json.dump({"eos_token_id": 1}, open(json_dir / "generation_config.json", "w"))
    vocab = load_vocabulary(str(json_dir))
    assert isinstance(vocab, TokenizerJsonVocabulary) and vocab.eos_id == 1
    for row in rows[900:910]:
        ids = tok.encode(row["summary"], add_special_tokens=False).ids
        assert vocab.encode(row["summary"]) == ids
        assert vocab.decode(ids) == row["summary"]

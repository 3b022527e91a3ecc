"""Hugging Face T5 import / export against transformers' PyTorch T5 (the reference)."""

import json
import os

import jax
import numpy as np
import pytest
from hf_fixtures import (
    VARIANTS,
    build_hf_model,
    hf_logits,
    random_batch,
    save_hf_model,
    torch,
    train_sentencepiece,
    transformers,
)
from jax.sharding import PartitionSpec as P

from irl_lm import sharding
from irl_lm.data.vocabularies import load_vocabulary
from irl_lm.models.hf import export_hf, load_hf
from irl_lm.models.safetensors_io import read_file, write_file

ATOL = 1e-4  # float32


def our_logits(model, params, batch, mesh=None):
    mesh = mesh or sharding.make_mesh({"data": -1})
    with sharding.use_mesh(mesh):
        return np.asarray(jax.jit(model.apply)({"params": params}, batch))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_import_matches_transformers_logits(variant, tmp_path):
    reference = save_hf_model(tmp_path, variant)
    model, params = load_hf(str(tmp_path))
    cfg = reference.config
    assert model.config.num_layers == cfg.num_layers
    assert model.config.decoder_layers == cfg.num_decoder_layers
    assert model.config.tie_word_embeddings == (not VARIANTS[variant][2])
    assert model.config.scales_decoder_outputs == (not VARIANTS[variant][2])
    batch = random_batch(cfg.vocab_size)
    ours, theirs = our_logits(model, params, batch), hf_logits(reference, batch)
    assert ours.shape == theirs.shape == (3, 6, cfg.vocab_size)
    err = np.abs(ours - theirs).max()
    print(
        f"\nparity {variant}: max |logit diff| {err:.2e} (logits up to {np.abs(theirs).max():.1f})"
    )
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


def test_sharded_safetensors_load_onto_a_2d_mesh(tmp_path):
    """Shards of 5 kB, parameters placed over fsdp=4 x tensor=2: each device holds a slice."""
    reference = save_hf_model(tmp_path, "t5_v1_1", max_shard_size="5KB")
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 10
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    model, params = load_hf(str(tmp_path), mesh)
    query = params["encoder_layers_0"]["attention"]["query"]  # [embed, heads, kv]
    assert query.sharding.spec == P("fsdp", "tensor", None)
    assert query.addressable_shards[0].data.shape == (16 // 4, 4 // 2, 4)
    head = params["lm_head"]["kernel"]  # [embed, vocab]
    assert head.sharding.spec == P("fsdp", "tensor")
    batch = random_batch(128)
    np.testing.assert_allclose(
        our_logits(model, params, batch, mesh), hf_logits(reference, batch), atol=ATOL, rtol=0
    )


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    reference = build_hf_model("t5_v1_1").to(torch.bfloat16)
    reference.save_pretrained(str(tmp_path))
    _, params = load_hf(str(tmp_path))
    shared = reference.shared.weight.float().detach().numpy()
    assert params["token_embedder"]["embedding"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(params["token_embedder"]["embedding"]), shared)


@pytest.mark.parametrize("variant", ["t5_v1_1", "t5_original"])
def test_export_reloads_in_transformers_with_matching_logits(variant, tmp_path):
    save_hf_model(tmp_path / "in", variant)
    model, params = load_hf(str(tmp_path / "in"))
    # Changed parameters, so the export must write ours (not echo the input files).
    params = jax.tree.map(lambda x: x * 1.1, params)
    export_hf(model, params, str(tmp_path / "out"), max_shard_bytes=20_000)
    assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "out")).eval()
    batch = random_batch(128, seed=1)
    ours, theirs = our_logits(model, params, batch), hf_logits(reloaded, batch)
    err = np.abs(ours - theirs).max()
    print(f"\nexport parity {variant}: max |logit diff| {err:.2e}")
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    # ... and our own import of the export gives back the same model.
    model2, params2 = load_hf(str(tmp_path / "out"))
    assert model2.config == model.config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_bad_checkpoints_name_the_tensor(tmp_path):
    save_hf_model(tmp_path, "t5_v1_1")
    path = str(tmp_path / "model.safetensors")
    tensors = {k: np.asarray(v) for k, v in read_file(path).items()}

    missing = {
        k: v for k, v in tensors.items() if k != "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    }
    write_file(path, missing.items())
    with pytest.raises(
        ValueError, match=r"'decoder.block.1.layer.2.DenseReluDense.wo.weight' is missing"
    ):
        load_hf(str(tmp_path))

    extra = tensors | {"encoder.block.7.layer.0.SelfAttention.q.weight": tensors["shared.weight"]}
    write_file(path, extra.items())
    with pytest.raises(
        ValueError, match=r"no place.*encoder.block.7.layer.0.SelfAttention.q.weight"
    ):
        load_hf(str(tmp_path))

    write_file(path, tensors.items())
    config = json.load(open(tmp_path / "config.json"))
    json.dump(config | {"d_ff": 48}, open(tmp_path / "config.json", "w"))
    with pytest.raises(
        ValueError,
        match=r"layer.[12].DenseReluDense.wi_0.weight' has shape \(32, 16\), expected \(48, 16\)",
    ):
        load_hf(str(tmp_path))

    json.dump(config | {"model_type": "bart"}, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match=r"model_type 'bart' is not supported"):
        load_hf(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf(str(tmp_path / "nowhere"))


def test_sentencepiece_vocabulary_matches_transformers_tokenizer(tmp_path):
    held_out = train_sentencepiece(tmp_path, vocab_size=118, extra_ids=10)
    vocab = load_vocabulary(str(tmp_path))
    reference = transformers.T5Tokenizer.from_pretrained(str(tmp_path))
    assert vocab.vocab_size == len(reference) == 128
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    for text in held_out:
        expected = reference(text).input_ids
        assert expected[-1] == 1  # transformers appends EOS; seqio leaves it to the feature
        ids = vocab.encode(text)
        assert ids == expected[:-1], text
        assert vocab.decode(ids) == reference.decode(expected, skip_special_tokens=True)
    sentinels = [f"<extra_id_{i}>" for i in (0, 9)]
    assert reference.convert_tokens_to_ids(sentinels) == [127, 118]
    assert [vocab.decode([i]) for i in (127, 118)] == sentinels


def test_byt5_folder_gives_a_byte_vocabulary(tmp_path):
    json.dump({"tokenizer_class": "ByT5Tokenizer"}, open(tmp_path / "tokenizer_config.json", "w"))
    vocab = load_vocabulary(str(tmp_path))
    reference = transformers.ByT5Tokenizer()
    assert vocab.vocab_size == len(reference) == 384  # ByT5's model vocab_size
    for text in ["Grüße aus Köln.", "東京は晴れ", "plain ascii, 123"]:
        assert vocab.encode(text) == reference(text).input_ids[:-1]
        assert vocab.decode(vocab.encode(text)) == text
    # Sentinel count taken from the transformers 5 key as well.
    sentinels = [f"<extra_id_{i}>" for i in range(7)]
    json.dump({"extra_special_tokens": sentinels}, open(tmp_path / "tokenizer_config.json", "w"))
    open(tmp_path / "spiece.model", "wb").close()  # only its presence matters here
    from irl_lm.data.vocabularies import _extra_ids

    assert _extra_ids(str(tmp_path), default=100) == 7


@pytest.mark.parametrize("variant", ["t5_v1_1", "t5_original"])
def test_greedy_decoding_equals_transformers_generate(variant, tmp_path):
    from irl_lm import decoding

    reference = save_hf_model(tmp_path, variant, seed=3)
    model, params = load_hf(str(tmp_path))
    batch = random_batch(128, seed=4, batch=3, enc_len=9)
    enc = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
    generate = lambda: reference.generate(
        input_ids=enc,
        attention_mask=(enc > 0).long(),
        do_sample=False,
        num_beams=1,
        max_new_tokens=12,
    ).numpy()[:, 1:]
    # EOS takes over the most frequent greedy token, so rows stop at different lengths.
    with torch.no_grad():
        counts = np.bincount(generate().ravel(), minlength=128)
        counts[[0, 1]] = 0
        reference.lm_head.weight[1] = 1.01 * reference.lm_head.weight[counts.argmax()]
    params = jax.tree.map(np.asarray, params)
    if "lm_head" in params:
        head = reference.lm_head.weight.detach().numpy().T
        params["lm_head"]["kernel"] = head
    else:
        params["token_embedder"]["embedding"] = reference.shared.weight.detach().numpy().copy()
    ours = jax.device_get(decoding.greedy(model, params, batch, max_len=12))["tokens"][:, 0]
    with torch.no_grad():
        theirs = generate()
    theirs = np.pad(theirs, ((0, 0), (0, 12 - theirs.shape[1])))
    np.testing.assert_array_equal(ours, theirs)
    lengths = [int((row == 1).argmax()) + 1 if (row == 1).any() else 12 for row in theirs]
    assert len(set(lengths)) > 1, lengths  # the fixture stops rows at different steps

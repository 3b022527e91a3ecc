"""Tiny Hugging Face T5 folders built with transformers (PyTorch), and a SentencePiece model
trained on the shared data: the independent references of the import / export tests."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
XSUM = os.path.join(DATA, "xsum", "test_first1000.jsonl")

# name -> (model class name, transformers config fields, untie the head by hand)
VARIANTS = {
    # T5 v1.1 / FLAN-T5: gated-GELU, untied head, no output scaling
    "t5_v1_1": ("T5ForConditionalGeneration", dict(feed_forward_proj="gated-gelu"), True),
    # original T5: ReLU, head tied to the shared embedding, output scaled by d_model^-0.5
    "t5_original": ("T5ForConditionalGeneration", dict(feed_forward_proj="relu"), False),
    # independent decoder depth, d_kv != d_model / num_heads, other bucket settings
    "t5_asymmetric": (
        "T5ForConditionalGeneration",
        dict(
            feed_forward_proj="gated-gelu",
            num_layers=3,
            num_decoder_layers=1,
            d_kv=5,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=20,
        ),
        True,
    ),
    # mT5 vocabulary size (250112) and model_type
    "mt5": ("MT5ForConditionalGeneration", dict(vocab_size=250112, d_model=8, d_ff=16), True),
    # ByT5: byte vocabulary (384), deep encoder, shallow decoder
    "byt5": (
        "T5ForConditionalGeneration",
        dict(vocab_size=384, num_layers=3, num_decoder_layers=1),
        True,
    ),
}

BASE = dict(
    vocab_size=128,
    d_model=16,
    d_kv=4,
    d_ff=32,
    num_heads=4,
    num_layers=2,
    dropout_rate=0.0,
    decoder_start_token_id=0,
)


def build_hf_model(variant: str, seed: int = 0, **fields):
    class_name, variant_fields, untie = VARIANTS[variant]
    config_cls = transformers.MT5Config if class_name.startswith("MT5") else transformers.T5Config
    config_fields = {**BASE, **variant_fields, **fields}
    if untie:  # transformers 5 ties the head unless a different one is set before saving
        config_fields["tie_word_embeddings"] = False
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config_cls(**config_fields)).eval()
    with torch.no_grad():  # norms start at exactly 1: make them count
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    if untie:
        shape = model.lm_head.weight.shape
        model.lm_head.weight = torch.nn.Parameter(torch.randn(shape) * shape[1] ** -0.5)
    return model


def save_hf_model(folder, variant: str, *, max_shard_size=None, seed: int = 0, **fields):
    model = build_hf_model(variant, seed, **fields)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(folder), **kwargs)
    return model


def random_batch(
    vocab_size: int, seed: int = 0, batch: int = 3, enc_len: int = 9, dec_len: int = 6
):
    """Token ids with encoder padding at the end of some rows; decoder starts with 0."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(3, vocab_size, (batch, enc_len)).astype(np.int32)
    for row, pad in enumerate([0, 3, 5][:batch]):
        if pad:
            enc[row, -pad:] = 0
    dec = rng.integers(3, vocab_size, (batch, dec_len)).astype(np.int32)
    dec[:, 0] = 0
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec}


def hf_logits(model, batch) -> np.ndarray:
    enc = torch.tensor(batch["encoder_input_tokens"], dtype=torch.long)
    with torch.no_grad():
        out = model(
            input_ids=enc,
            attention_mask=(enc > 0).long(),
            decoder_input_ids=torch.tensor(batch["decoder_input_tokens"], dtype=torch.long),
        )
    return out.logits.numpy()


def train_sentencepiece(folder, vocab_size: int = 118, extra_ids: int = 10) -> list[str]:
    """Writes spiece.model (T5 layout: pad 0, EOS 1, UNK 2, no BOS) trained on XSUM
    documents, plus tokenizer_config.json; returns held-out sentences for checks."""
    if not os.path.exists(XSUM):
        pytest.skip(f"shared data not found at {XSUM} (see shared/data/README.md)")
    spm = pytest.importorskip("sentencepiece")
    with open(XSUM) as f:
        rows = [json.loads(line) for line in f]
    texts = [row["document"] for row in rows[:200]]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=os.path.join(str(folder), "spiece"),
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    os.remove(os.path.join(str(folder), "spiece.vocab"))
    with open(os.path.join(str(folder), "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids}, f)
    return [row["summary"] for row in rows[900:940]]

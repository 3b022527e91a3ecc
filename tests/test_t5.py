"""T5 against an independent NumPy forward pass, and packing against unpacked rows."""

import math

import jax
import numpy as np
import pytest

from irl_lm.models import T5, T5Config, build_model
from irl_lm.models.t5 import relative_position_bucket

CONFIG = T5Config(
    vocab_size=37,
    d_model=16,
    d_kv=6,
    d_ff=24,
    num_heads=3,
    num_layers=2,
    num_decoder_layers=3,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
)


def bucket_reference(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """Scalar T5 bucketing, from the Mesh TensorFlow definition."""
    bucket, n = 0, -rel
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            bucket += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return bucket + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket(bidirectional):
    rel = np.arange(-200, 201)
    got = relative_position_bucket(
        rel, bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    want = [bucket_reference(int(r), bidirectional, 32, 128) for r in rel]
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- NumPy T5


def np_rms(x, scale, eps=1e-6):
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * scale


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_attention(p, xq, xkv, bias):
    q = np.einsum("qd,dhk->hqk", xq, p["query"])
    k = np.einsum("sd,dhk->hsk", xkv, p["key"])
    v = np.einsum("sd,dhk->hsk", xkv, p["value"])
    s = np.einsum("hqk,hsk->hqs", q, k) + bias
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    return np.einsum("hqs,hsk,hkd->qd", s, v, p["out"])


def np_mlp(p, x):
    return (np_gelu(x @ p["wi_0"]) * (x @ p["wi_1"])) @ p["wo"]


def np_relpos(table, q_len, k_len, bidirectional):
    out = np.zeros((CONFIG.num_heads, q_len, k_len))
    for i in range(q_len):
        for j in range(k_len):
            b = bucket_reference(
                j - i,
                bidirectional,
                CONFIG.relative_attention_num_buckets,
                CONFIG.relative_attention_max_distance,
            )
            out[:, i, j] = table[b]
    return out


def np_t5(params, enc_tokens, dec_inputs):
    """One unpacked, unpadded example."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    emb = p["token_embedder"]["embedding"]
    x = emb[enc_tokens]
    bias = np_relpos(p["encoder_relpos"]["rel_embedding"], len(x), len(x), True)
    for i in range(CONFIG.num_layers):
        lp = p[f"encoder_layers_{i}"]
        h = np_rms(x, lp["pre_attention_layer_norm"]["scale"])
        x = x + np_attention(lp["attention"], h, h, bias)
        x = x + np_mlp(lp["mlp"], np_rms(x, lp["pre_mlp_layer_norm"]["scale"]))
    enc = np_rms(x, p["encoder_norm"]["scale"])
    y = emb[dec_inputs]
    t = len(y)
    causal = np.where(np.tril(np.ones((t, t))) > 0, 0.0, -1e10)
    self_bias = np_relpos(p["decoder_relpos"]["rel_embedding"], t, t, False) + causal
    for i in range(CONFIG.decoder_layers):
        lp = p[f"decoder_layers_{i}"]
        h = np_rms(y, lp["pre_self_attention_layer_norm"]["scale"])
        y = y + np_attention(lp["self_attention"], h, h, self_bias)
        h = np_rms(y, lp["pre_cross_attention_layer_norm"]["scale"])
        y = y + np_attention(lp["encoder_decoder_attention"], h, enc, 0.0)
        y = y + np_mlp(lp["mlp"], np_rms(y, lp["pre_mlp_layer_norm"]["scale"]))
    return np_rms(y, p["decoder_norm"]["scale"]) @ p["lm_head"]["kernel"]


def init(model, batch):
    from irl_lm.sharding import unbox

    return unbox(model.init(jax.random.PRNGKey(0), batch)["params"])


def test_t5_matches_numpy_reference_with_padding():
    rng = np.random.default_rng(0)
    enc = rng.integers(2, CONFIG.vocab_size, size=(2, 7)).astype(np.int32)
    dec_targets = rng.integers(2, CONFIG.vocab_size, size=(2, 5)).astype(np.int32)
    enc[1, 4:] = 0  # padding
    dec_targets[1, 3:] = 0
    dec_inputs = np.pad(dec_targets[:, :-1], ((0, 0), (1, 0)))
    batch = {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_inputs,
        "decoder_target_tokens": dec_targets,
    }
    model = T5(CONFIG)
    params = init(model, batch)
    logits = np.asarray(model.apply({"params": params}, batch))
    assert logits.shape == (2, 5, CONFIG.vocab_size)
    np.testing.assert_allclose(logits[0], np_t5(params, enc[0], dec_inputs[0]), atol=1e-4)
    want = np_t5(params, enc[1, :4], dec_inputs[1, :3])
    np.testing.assert_allclose(logits[1, :3], want, atol=1e-4)


def test_packed_rows_equal_unpacked_rows():
    rng = np.random.default_rng(1)
    model = T5(CONFIG)
    a_enc, b_enc = rng.integers(2, 30, 3), rng.integers(2, 30, 4)
    a_tgt, b_tgt = rng.integers(2, 30, 2), rng.integers(2, 30, 3)
    shift = lambda t: np.concatenate([[0], t[:-1]])
    packed = {
        "encoder_input_tokens": np.concatenate([a_enc, b_enc])[None],
        "encoder_segment_ids": np.array([[1] * 3 + [2] * 4]),
        "decoder_input_tokens": np.concatenate([shift(a_tgt), shift(b_tgt)])[None],
        "decoder_target_tokens": np.concatenate([a_tgt, b_tgt])[None],
        "decoder_segment_ids": np.array([[1] * 2 + [2] * 3]),
    }
    params = init(model, packed)
    packed_logits = np.asarray(model.apply({"params": params}, packed))[0]
    for enc, tgt, rows in [(a_enc, a_tgt, slice(0, 2)), (b_enc, b_tgt, slice(2, 5))]:
        single = {
            "encoder_input_tokens": enc[None],
            "decoder_input_tokens": shift(tgt)[None],
            "decoder_target_tokens": tgt[None],
        }
        logits = np.asarray(model.apply({"params": params}, single))[0]
        np.testing.assert_allclose(packed_logits[rows], logits, atol=1e-5)


def test_build_model_errors_name_the_field():
    with pytest.raises(
        ValueError, match=r"config.model.name='t6'.*allowed: \['decoder_only', 't5', .*'t5_base'"
    ):
        build_model({"name": "t6"})
    with pytest.raises(ValueError, match=r"feed_forward_proj='gated-tanh'.*allowed"):
        build_model({"name": "t5", "feed_forward_proj": "gated-tanh"})
    with pytest.raises(ValueError, match=r"unknown fields \['d_modle'\]"):
        build_model({"name": "t5", "d_modle": 3})

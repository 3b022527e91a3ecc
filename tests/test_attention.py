"""Attention through `jax.nn.dot_product_attention` (the fused path: cuDNN flash attention on
GPU) against our einsum attention, values and gradients: T5 with its relative-position bias,
causal masking and padding given as lengths; decoder-only with grouped-query heads and a
sliding window. On CPU the fused call runs its XLA implementation; on a GPU also cuDNN."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_T5GEMMA2, tiny_model

from irl_lm.models import build_model
from irl_lm.models.layers import AttentionMask, dot_attention
from irl_lm.sharding import unbox


def _model(family, **fields):
    """The tiny model of `conftest`; the decoder-only one (and both T5Gemma 2 stacks) with
    sliding-window layers around a full one."""
    sliding, full = "sliding_attention", "full_attention"
    layers = {"layer_types": (sliding, full, sliding), "sliding_window": 3}
    if family == "decoder_only":
        fields = {"num_hidden_layers": 3, **layers, **fields}
    if family == "t5gemma2":  # sliding layers in both stacks: the encoder's window both ways
        stack = {**TINY_T5GEMMA2["encoder"], "num_hidden_layers": 3, **layers}
        fields = {"vocab_size": 97, "encoder": stack, "decoder": stack, **fields}
        return build_model({**TINY_T5GEMMA2, **fields})
    return tiny_model(family, **fields)


def _batch(family, rng, *, packed=False, even=False):
    """Right-padded rows of different lengths: one without padding, one all padding (as a
    padded evaluation batch has). `even`: even lengths (cuDNN takes a bias only with them)."""
    batch_size, enc_len, length = 5, 11 + even, 9 + even
    targets = rng.integers(2, 64, (batch_size, length)).astype(np.int32)
    for row, n in enumerate([length, 6, 3, 7, 0]):
        targets[row, max(n - 1, 0)], targets[row, n:] = 1, 0
    batch = {
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }
    if family != "decoder_only":
        inputs = rng.integers(2, 64, (batch_size, enc_len)).astype(np.int32)
        for row, n in enumerate([enc_len, 4, 8, 2, 0]):
            inputs[row, n:] = 0
        batch["encoder_input_tokens"] = inputs
    if packed:  # two segments per row, each position in one
        segments = np.where(np.arange(length) < 5, 1, 2)[None].repeat(batch_size, 0)
        batch["decoder_segment_ids"] = (segments * (targets > 0)).astype(np.int32)
        if family != "decoder_only":
            # Each row's real inputs halved into the two segments: every target segment
            # has inputs (a query with no key at all is outside what packing makes).
            real = batch["encoder_input_tokens"] > 0
            first = np.arange(enc_len)[None] < real.sum(1, keepdims=True) // 2
            batch["encoder_segment_ids"] = (np.where(first, 1, 2) * real).astype(np.int32)
        else:
            positions = np.where(np.arange(length) < 5, np.arange(length), np.arange(length) - 5)
            batch["decoder_positions"] = positions[None].repeat(batch_size, 0).astype(np.int32)
    return batch


def _values_and_grads(model, params, batch, probe):
    """Logits at the real target positions and the gradient of a probe loss over them."""
    real = batch["decoder_loss_weights"][..., None]

    def probe_loss(params):
        logits = model.apply({"params": params}, batch)
        return jnp.sum(logits * probe * real), logits * real

    (_, logits), grads = jax.jit(jax.value_and_grad(probe_loss, has_aux=True))(params)
    return logits, grads


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("family", ["t5", "decoder_only", "t5gemma2"])
def test_fused_attention_matches_einsum_values_and_gradients(family, packed):
    rng = np.random.default_rng(0)
    batch = _batch(family, rng, packed=packed)
    einsum_model = _model(family, attention_impl="einsum")
    fused_model = _model(family, attention_impl="xla")
    params = unbox(einsum_model.init(jax.random.PRNGKey(0), batch)["params"])
    vocab = einsum_model.config.vocab_size
    probe = rng.normal(size=(*batch["decoder_target_tokens"].shape, vocab)).astype(np.float32)
    want_logits, want_grads = _values_and_grads(einsum_model, params, batch, probe)
    got_logits, got_grads = _values_and_grads(fused_model, params, batch, probe)
    assert np.abs(want_logits).max() > 0.1
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    flat_want = jax.tree_util.tree_flatten_with_path(want_grads)[0]
    for (path, want), got in zip(flat_want, jax.tree.leaves(got_grads), strict=True):
        # float32 rounding, relative to the largest gradient of the parameter
        atol = 1e-5 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=str(path))
    if family == "t5":  # the relative-position tables get their gradient through the bias
        assert np.abs(want_grads["encoder_relpos"]["rel_embedding"]).max() > 1e-4
        assert np.abs(want_grads["decoder_relpos"]["rel_embedding"]).max() > 1e-4


@pytest.mark.parametrize("case", ["bias_padding", "bias_gqa", "causal_gqa_window"])
def test_dot_attention_paths_agree(case):
    """The layer-level call: lengths vs the boolean mask, the bias in the fused call's
    [1, H, Q, K] form, grouped-query heads and a sliding window."""
    rng = np.random.default_rng(1)
    batch, q_len, k_len, heads, kv_heads, dim = 3, 7, 7, 4, 4, 8
    if case != "bias_padding":
        kv_heads = 2
    q = jnp.asarray(rng.normal(size=(batch, q_len, heads, dim)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(batch, k_len, kv_heads, dim)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(batch, k_len, kv_heads, dim)), jnp.float32)
    q_lengths = jnp.asarray([7, 5, 2], jnp.int32)
    kv_lengths = jnp.asarray([7, 3, 6], jnp.int32)
    qi, ki = np.arange(q_len)[:, None], np.arange(k_len)[None, :]
    allowed = (qi < np.asarray(q_lengths)[:, None, None]) & (
        ki < np.asarray(kv_lengths)[:, None, None]
    )
    mask = AttentionMask(jnp.asarray(allowed), q_lengths_B=q_lengths, kv_lengths_B=kv_lengths)
    if case.startswith("bias"):
        bias = jnp.asarray(rng.normal(size=(1, heads, q_len, k_len)), jnp.float32)
        mask = dataclasses.replace(mask, bias_1xHxQxK=bias)
    else:
        window = 3
        allowed = allowed & (ki <= qi) & (qi - ki < window)
        mask = AttentionMask(
            jnp.asarray(allowed), None, q_lengths, kv_lengths, causal=True, window=window
        )
    real = (np.arange(q_len)[None, :] < np.asarray(q_lengths)[:, None])[:, :, None, None]

    def run(impl):
        def f(q, k, v, bias):
            m = mask if bias is None else dataclasses.replace(mask, bias_1xHxQxK=bias)
            return jnp.sum(dot_attention(q, k, v, m, impl=impl) * real * jnp.cos(q)), (
                dot_attention(q, k, v, m, impl=impl) * real
            )

        return jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, mask.bias_1xHxQxK)

    (_, want), want_grads = run("einsum")
    (_, got), got_grads = run("xla")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got_g, want_g in zip(got_grads, want_grads, strict=True):
        if want_g is not None:
            np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-5)


def test_auto_is_einsum_on_cpu_and_cudnn_refuses_what_it_cannot_compute():
    from irl_lm.models.layers import cudnn_refusal, resolve_attention_impl

    mask = AttentionMask(jnp.ones((1, 8, 8), bool))

    def resolve(impl, dtype=jnp.bfloat16, dropout=False):
        shape = (1, 8, 4, 64)
        return resolve_attention_impl(
            impl, q_shape=shape, k_len=8, dtype=dtype, mask=mask, dropout=dropout, softcap=None
        )

    assert resolve("auto") == ("cudnn" if jax.default_backend() == "gpu" else "einsum")
    assert resolve("auto", dtype=jnp.float32) == "einsum"
    with pytest.raises(ValueError, match="attention dropout or soft-capping"):
        resolve("cudnn", dropout=True)
    with pytest.raises(ValueError, match="does not take dtype float32"):
        resolve("cudnn", dtype=jnp.float32)
    with pytest.raises(ValueError, match="attention_impl='flash' is not supported"):
        _model("t5", attention_impl="flash")
    # JAX's cuDNN checks, made before choosing: `auto` takes the einsum path instead.
    assert cudnn_refusal((2, 8, 4, 64), 8, jnp.bfloat16, has_bias=True) is None
    assert "odd lengths 7 x 8" in cudnn_refusal((2, 7, 4, 64), 8, jnp.bfloat16, has_bias=True)
    assert cudnn_refusal((2, 7, 4, 64), 8, jnp.bfloat16, has_bias=False) is None
    assert "head size 60" in cudnn_refusal((2, 8, 4, 60), 8, jnp.bfloat16, has_bias=False)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_cudnn_attention_matches_einsum_on_gpu(family):
    """bf16 on both paths; cuDNN's flash attention reorders the sums (bf16 tolerance); an
    all-padding row stays finite."""
    rng = np.random.default_rng(0)
    batch = _batch(family, rng, even=True)
    einsum_model = _model(family, dtype="bfloat16", attention_impl="einsum")
    fused_model = _model(family, dtype="bfloat16", attention_impl="cudnn")
    params = unbox(einsum_model.init(jax.random.PRNGKey(0), batch)["params"])
    vocab = einsum_model.config.vocab_size
    probe = rng.normal(size=(*batch["decoder_target_tokens"].shape, vocab)).astype(np.float32)
    want_logits, want_grads = _values_and_grads(einsum_model, params, batch, probe)
    got_logits, got_grads = _values_and_grads(fused_model, params, batch, probe)
    np.testing.assert_allclose(got_logits, want_logits, rtol=0.05, atol=0.05)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        assert np.all(np.isfinite(got))
        scale = np.abs(want).max() + 1e-3
        np.testing.assert_allclose(got / scale, want / scale, atol=0.05)

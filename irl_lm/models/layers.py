"""Layers shared by the model families, with logical axis names on every parameter.

Kernels are created at their final multi-dimensional shape (e.g. `[embed, heads, kv]`)
and applied with einsum: no reshapes of partitioned parameters (flax issue 3676), and
Hugging Face tensors map onto them with one reshape/transpose at import.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

NEG_INF = -1e10  # finite, so fully masked rows (padding) give a uniform softmax, never NaN


def normal(stddev: float):
    return nn.initializers.normal(stddev=stddev)


def param(module: nn.Module, name: str, init, shape: Sequence[int], axes: Sequence[str]):
    """Declares a float32 parameter annotated with logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape))


def constrain(x: jax.Array, *axes: str | None) -> jax.Array:
    return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
    """T5 / Llama layer norm: scale only, no mean subtraction, computed in float32.

    `plus_one`: the scale is `1 + w` with `w` starting at 0 (Gemma).
    """

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    plus_one: bool = False
    axis_name: str = "norm"  # logical axis of the scale

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale = param(self, "scale", init, (x.shape[-1],), (self.axis_name,))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (x32 * (1.0 + scale if self.plus_one else scale)).astype(self.dtype)


class Embed(nn.Module):
    """Token embedding `[vocab, embed]`; `attend` reuses it as a tied output head."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    init_stddev: float = 1.0

    def setup(self):
        shape = (self.num_embeddings, self.features)
        init = normal(self.init_stddev)
        self.embedding = param(self, "embedding", init, shape, ("vocab", "embed"))

    def __call__(self, tokens_BxT):
        x = jnp.take(self.embedding, tokens_BxT, axis=0).astype(self.dtype)
        return constrain(x, "activation_batch", "activation_length", "activation_embed")

    def attend(self, x_BxTxD):
        logits = logits_einsum("btd,vd->btv", x_BxTxD, self.embedding.astype(self.dtype))
        return constrain(logits, "activation_batch", "activation_length", "activation_vocab")


def logits_einsum(spec: str, x, w) -> jax.Array:
    """The output head's matmul: float32 logits, accumulated in float32 from inputs in the
    compute dtype, so the losses and rewards read logits that were never rounded to bf16
    (at vocabulary 32k, bf16 logits of 12-52 carry errors of 0.06-0.25 nats). Its backward
    pass runs in the inputs' dtype, as it would for bf16 logits: the incoming gradient is
    rounded to it, so the two gradient matmuls stay bf16 (float32 ones are 1.7x slower on
    CPU at vocabulary 32k, and miss a GPU's tensor cores)."""
    if x.dtype == jnp.float32 and w.dtype == jnp.float32:
        return jnp.einsum(spec, x, w)
    return _float32_out_einsum(spec, x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _float32_out_einsum(spec, x, w):
    return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)


def _float32_out_einsum_fwd(spec, x, w):
    return _float32_out_einsum(spec, x, w), (x, w)


def _float32_out_einsum_bwd(spec, residuals, g):
    x, w = residuals
    _, vjp = jax.vjp(lambda x, w: jnp.einsum(spec, x, w), x, w)
    return vjp(g.astype(jnp.result_type(x, w)))


_float32_out_einsum.defvjp(_float32_out_einsum_fwd, _float32_out_einsum_bwd)


HEAD_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query sees, in the forms both attention paths take.

    The einsum path reads `allowed_BxQxK` (padding, causal, packed segments, window: all in
    one boolean) plus T5's relative-position `bias_1xHxQxK`. The fused path
    (`jax.nn.dot_product_attention`) reads the same mask as `causal`, `window` and, where
    given, the real lengths `q_lengths_B` / `kv_lengths_B` (right padding; a causal
    decoder-only row needs none: its padding comes after every real token), so cuDNN never
    builds a [B, Q, K] tensor; where that form is not exact (`dense_only`: packed segments,
    a decoding cache) it takes `allowed_BxQxK` itself.
    """

    allowed_BxQxK: jax.Array
    bias_1xHxQxK: jax.Array | None = None
    q_lengths_B: jax.Array | None = None
    kv_lengths_B: jax.Array | None = None
    causal: bool = flax.struct.field(pytree_node=False, default=False)
    # Causal: keys i - j < window; bidirectional: (keys behind, keys ahead), both inclusive.
    window: int | tuple[int, int] | None = flax.struct.field(pytree_node=False, default=None)
    dense_only: bool = flax.struct.field(pytree_node=False, default=False)

    def additive_bias(self) -> jax.Array:
        """The einsum path's float32 bias `[B, 1 or H, Q, K]`."""
        bias = attention_bias(self.allowed_BxQxK)
        return bias if self.bias_1xHxQxK is None else bias + self.bias_1xHxQxK

    def restricted(self, allowed_BxQxK, window: int | tuple[int, int]) -> AttentionMask:
        """This mask with keys outside `window` also hidden (`allowed_BxQxK` says which)."""
        return self.replace(allowed_BxQxK=allowed_BxQxK, window=window)


def cudnn_refusal(q_shape, k_len: int, dtype, has_bias: bool) -> str | None:
    """Why cuDNN's flash attention would refuse these shapes (JAX's own checks: bf16 / fp16,
    a head size that is a multiple of 8 and at most 128, 256 from Hopper on, even lengths
    with a bias), or None."""
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"dtype {jnp.dtype(dtype).name} (cuDNN takes bfloat16 or float16)"
    head_dim, q_len = q_shape[-1], q_shape[1]
    capability = getattr(jax.devices()[0], "compute_capability", "0")
    max_head = 256 if float(capability or 0) >= 9.0 else 128
    if head_dim % 8 or head_dim > max_head:
        return f"head size {head_dim} (a multiple of 8, at most {max_head} on this GPU)"
    if has_bias and (q_len % 2 or k_len % 2):
        return f"odd lengths {q_len} x {k_len} with a bias (pad the lengths to even)"
    return None


def resolve_attention_impl(
    impl: str, *, q_shape, k_len: int, dtype, mask: AttentionMask, dropout: bool, softcap
):
    """The implementation a call runs: `auto` is cuDNN's fused attention on a GPU where it
    computes what the einsum path does, up to rounding (no attention dropout, no
    soft-capping, a mask it takes as lengths and window, shapes cuDNN takes:
    `cudnn_refusal`), else the einsum path."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={impl!r} is not supported; allowed: {ATTENTION_IMPLS}")
    has_bias = mask.bias_1xHxQxK is not None
    # cuDNN's window reaches back only: a bidirectional window (an encoder's) is not its form.
    looks_ahead = isinstance(mask.window, tuple) and mask.window[1] > 0
    if impl == "auto":
        fusable = jax.default_backend() == "gpu" and not mask.dense_only and not looks_ahead
        fusable = fusable and not dropout and softcap is None
        fusable = fusable and cudnn_refusal(q_shape, k_len, dtype, has_bias) is None
        return "cudnn" if fusable else "einsum"
    if impl == "cudnn" and looks_ahead:
        raise ValueError(
            f"attention_impl='cudnn' does not take a window that looks ahead ({mask.window}: "
            "a bidirectional sliding-window encoder layer); use 'auto' or 'einsum'"
        )
    if impl != "einsum" and (dropout or softcap is not None):
        raise ValueError(
            f"attention_impl={impl!r} has no attention dropout or soft-capping; use 'einsum' "
            "or 'auto' (dropout_rate 0 or deterministic, attn_logit_softcapping None)"
        )
    if impl == "cudnn" and (why := cudnn_refusal(q_shape, k_len, dtype, has_bias)):
        raise ValueError(f"attention_impl='cudnn' does not take {why}; use 'auto' or 'einsum'")
    return impl


def dot_attention(
    q_BxQxHxD,
    k_BxKxGxD,
    v_BxKxGxD,
    mask: AttentionMask,
    *,
    impl="einsum",
    softcap=None,
    dropout=None,
):
    """softmax(q·kᵀ + bias)·v, unscaled (callers fold the scale into q), for H query heads
    over G ≤ H key/value heads (grouped-query when G < H); returns `[B, Q, H, D]`.

    `impl`: "einsum" (ours: scores and softmax in float32, `dropout(probs)` applied), or
    `jax.nn.dot_product_attention` with `implementation=impl` ("xla", "cudnn"); "auto" picks
    (`resolve_attention_impl`), and falls back to "einsum" (with a warning) where cuDNN
    refuses the call anyway (e.g. no cuDNN found).
    """
    dtype = q_BxQxHxD.dtype
    chosen = resolve_attention_impl(
        impl,
        q_shape=q_BxQxHxD.shape,
        k_len=k_BxKxGxD.shape[1],
        dtype=dtype,
        mask=mask,
        dropout=dropout is not None,
        softcap=softcap,
    )
    if chosen == "einsum":
        return _einsum_attention(q_BxQxHxD, k_BxKxGxD, v_BxKxGxD, mask, softcap, dropout)
    try:
        return _fused_attention(q_BxQxHxD, k_BxKxGxD, v_BxKxGxD, mask, chosen)
    except (NotImplementedError, ValueError, RuntimeError) as e:  # raised while tracing
        if impl != "auto":
            raise
        logging.warning(
            "cuDNN attention refused %s (%s); using einsum attention", q_BxQxHxD.shape, e
        )
        return _einsum_attention(q_BxQxHxD, k_BxKxGxD, v_BxKxGxD, mask, softcap, dropout)


def _fused_attention(q_BxQxHxD, k_BxKxGxD, v_BxKxGxD, mask: AttentionMask, impl: str):
    dtype = q_BxQxHxD.dtype
    window = mask.window
    if isinstance(window, int):
        window = (window - 1, 0)
    bias = None if mask.bias_1xHxQxK is None else mask.bias_1xHxQxK.astype(dtype)
    return jax.nn.dot_product_attention(
        q_BxQxHxD,
        k_BxKxGxD.astype(dtype),
        v_BxKxGxD.astype(dtype),
        bias=bias,  # bf16 on cuDNN: float32 biases gave NaN bias gradients (jax #32242)
        mask=mask.allowed_BxQxK[:, None] if mask.dense_only else None,
        scale=1.0,
        is_causal=mask.causal and not mask.dense_only,
        query_seq_lengths=None if mask.dense_only else mask.q_lengths_B,
        key_value_seq_lengths=None if mask.dense_only else mask.kv_lengths_B,
        local_window_size=None if mask.dense_only else window,
        implementation=impl,
    )


def _einsum_attention(q_BxQxHxD, k_BxKxGxD, v_BxKxGxD, mask: AttentionMask, softcap, dropout):
    dtype = q_BxQxHxD.dtype
    batch, length, heads, head_dim = q_BxQxHxD.shape
    kv_heads = k_BxKxGxD.shape[2]
    q = q_BxQxHxD.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bqhgk,bshk->bhgqs", q, k_BxKxGxD).astype(jnp.float32)
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    bias = mask.additive_bias()  # [B, 1 or H, Q, K] -> [B, 1 or G, 1 or H/G, Q, K]
    if bias.shape[1] == 1:
        bias = bias[:, :, None]
    else:
        bias = bias.reshape(bias.shape[0], kv_heads, heads // kv_heads, *bias.shape[2:])
    scores = scores + bias
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if dropout is not None:
        probs = dropout(probs)
    out = jnp.einsum("bhgqs,bshk->bqhgk", probs, v_BxKxGxD)
    return out.reshape(batch, length, heads, head_dim)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/o kernels and an additive bias.

    T5 folds the 1/sqrt(d_kv) scaling into the query initialisation, so none is applied here.
    `project_kv` and `attend` split the call so a decoder can cache keys and values.
    """

    features: int  # d_model
    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    attention_impl: str = "auto"  # see `dot_attention`

    def setup(self):
        d, h, k = self.features, self.num_heads, self.head_dim
        qkv_axes = ("embed", "heads", "kv")
        self.query = param(self, "query", normal((d * k) ** -0.5), (d, h, k), qkv_axes)
        self.key = param(self, "key", normal(d**-0.5), (d, h, k), qkv_axes)
        self.value = param(self, "value", normal(d**-0.5), (d, h, k), qkv_axes)
        self.out = param(self, "out", normal((h * k) ** -0.5), (h, k, d), ("heads", "kv", "embed"))
        self.dropout = nn.Dropout(self.dropout_rate)

    def project_kv(self, x_kv_BxKxD):
        """Keys and values `[B, K, H, Dk]` of the attended-to positions."""
        k = jnp.einsum("bsd,dhk->bshk", x_kv_BxKxD, self.key.astype(self.dtype))
        v = jnp.einsum("bsd,dhk->bshk", x_kv_BxKxD, self.value.astype(self.dtype))
        return constrain(k, *HEAD_AXES), constrain(v, *HEAD_AXES)

    def attend(self, x_q_BxQxD, k_BxKxHxDk, v_BxKxHxDk, mask: AttentionMask, *, deterministic):
        q = constrain(
            jnp.einsum("bqd,dhk->bqhk", x_q_BxQxD, self.query.astype(self.dtype)), *HEAD_AXES
        )
        dropout = None
        if self.dropout_rate > 0 and not deterministic:
            dropout = lambda probs: self.dropout(probs, deterministic=False)
        out = dot_attention(
            q, k_BxKxHxDk, v_BxKxHxDk, mask, impl=self.attention_impl, dropout=dropout
        )
        out = jnp.einsum("bqhk,hkd->bqd", constrain(out, *HEAD_AXES), self.out.astype(self.dtype))
        return constrain(out, "activation_batch", "activation_length", "activation_embed")

    def __call__(self, x_q_BxQxD, x_kv_BxKxD, mask: AttentionMask, *, deterministic: bool):
        k, v = self.project_kv(x_kv_BxKxD)
        return self.attend(x_q_BxQxD, k, v, mask, deterministic=deterministic)


# Activation names as Hugging Face's ACT2FN spells them ("gelu_new" is the tanh approximation
# that T5 v1.1 / FLAN-T5 use; plain "gelu" is the exact erf form).
ACTIVATIONS = {
    "gelu_new": lambda h: jax.nn.gelu(h, approximate=True),
    "gelu_pytorch_tanh": lambda h: jax.nn.gelu(h, approximate=True),
    "gelu": lambda h: jax.nn.gelu(h, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


class MLP(nn.Module):
    """Feed-forward block: gated (`wi_0` activation times `wi_1`) or plain (`wi`)."""

    d_ff: int
    activation: str = "gelu_new"  # a key of ACTIVATIONS
    gated: bool = True
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD, *, deterministic: bool):
        d_model = x_BxTxD.shape[-1]
        act = ACTIVATIONS[self.activation]
        in_init, in_axes = normal(d_model**-0.5), ("embed", "mlp")
        mlp_axes = ("activation_batch", "activation_length", "activation_mlp")
        if self.gated:
            w_0 = param(self, "wi_0", in_init, (d_model, self.d_ff), in_axes)
            w_1 = param(self, "wi_1", in_init, (d_model, self.d_ff), in_axes)
            hidden = act(jnp.einsum("btd,df->btf", x_BxTxD, w_0.astype(self.dtype)))
            hidden = hidden * jnp.einsum("btd,df->btf", x_BxTxD, w_1.astype(self.dtype))
        else:
            w_i = param(self, "wi", in_init, (d_model, self.d_ff), in_axes)
            hidden = act(jnp.einsum("btd,df->btf", x_BxTxD, w_i.astype(self.dtype)))
        hidden = constrain(hidden, *mlp_axes)
        hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
        w_o = param(self, "wo", normal(self.d_ff**-0.5), (self.d_ff, d_model), ("mlp", "embed"))
        out = jnp.einsum("btf,fd->btd", hidden, w_o.astype(self.dtype))
        return constrain(out, "activation_batch", "activation_length", "activation_embed")


class Head(nn.Module):
    """The output projection `[embed, vocab]` of a model whose head is not its embedding:
    float32 logits from a matmul in `dtype` (`logits_einsum`)."""

    vocab_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD):
        d_model = x_BxTxD.shape[-1]
        init = normal(d_model**-0.5)
        kernel = param(self, "kernel", init, (d_model, self.vocab_size), ("embed", "vocab"))
        return logits_einsum("btd,dv->btv", x_BxTxD.astype(self.dtype), kernel.astype(self.dtype))


def vocab_logits(x_BxTxD, embedder: Embed, head: Head | None) -> jax.Array:
    """Logits through the untied `head`, or through the embedding when `head` is None."""
    logits = embedder.attend(x_BxTxD) if head is None else head(x_BxTxD)
    return constrain(logits, "activation_batch", "activation_length", "activation_vocab")


REMAT_POLICIES = {
    "none": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
}


def remat(layer_cls, policy: str, *, static_argnums):
    """`layer_cls` with its activations recomputed in the backward pass as `policy` says
    (`none`: `layer_cls` itself). Parameter paths do not change."""
    if policy == "none":
        return layer_cls
    return nn.remat(layer_cls, policy=REMAT_POLICIES[policy], static_argnums=static_argnums)


_RUNTIME_CHOICES = {
    "dtype": ("float32", "bfloat16", "float16"),
    "param_dtype": ("float32", "bfloat16"),
    "attention_impl": ATTENTION_IMPLS,
    "remat": tuple(REMAT_POLICIES),
}


def check_runtime_fields(config) -> None:
    """A model config's fields that say how it runs (dtypes, attention, remat) hold allowed
    values."""
    for field, allowed in _RUNTIME_CHOICES.items():
        value = getattr(config, field)
        if value not in allowed:
            raise ValueError(
                f"{type(config).__name__}.{field}={value!r} is not supported; allowed: {allowed}"
            )


def config_from_fields(config_cls, fields: Mapping, where: str, about: str = ""):
    """`config_cls(**fields)`; an unknown field or a refused value fails naming `where` (the
    config path) and, for unknown fields, `about` (which model they were given for)."""
    allowed = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}{about}; allowed: {sorted(allowed)}")
    try:
        return config_cls(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def write_kv(kv: dict, k_new, v_new, slot) -> dict:
    """A decoding cache `{"k", "v"}` (`[B, S, H, Dk]`) with new keys/values written at `slot`."""
    write = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
        cache, new.astype(cache.dtype), slot, axis=1
    )
    return {"k": write(kv["k"], k_new), "v": write(kv["v"], v_new)}


def token_lengths(tokens_BxT):
    """Real tokens per row (right padding), for fused attention."""
    return jnp.sum(tokens_BxT > 0, axis=1, dtype=jnp.int32)


def padding_mask(q_tokens, k_tokens, q_segments, k_segments):
    """`[B, Q, K]`: both positions are real tokens and, when packed, in the same segment."""
    mask = (q_tokens > 0)[:, :, None] & (k_tokens > 0)[:, None, :]
    if q_segments is not None and k_segments is not None:
        mask = mask & (q_segments[:, :, None] == k_segments[:, None, :])
    return mask


def attention_bias(mask_BxQxK: jax.Array) -> jax.Array:
    """Boolean mask `[B, Q, K]` -> additive float32 bias `[B, 1, Q, K]`."""
    return jnp.where(mask_BxQxK, 0.0, NEG_INF).astype(jnp.float32)[:, None]


def rotary(x_BxTxHxD, positions_BxT, inv_freq):
    """Rotary embedding, rotate-half layout: the two halves of each head are the pairs."""
    half = x_BxTxHxD.shape[-1] // 2
    angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq.astype(np.float32)
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    x = x_BxTxHxD.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxHxD.dtype)


def softcap(x, cap: float | None):
    return x if cap is None else cap * jnp.tanh(x / cap)

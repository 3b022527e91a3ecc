"""Layers shared by the model families, with logical axis names on every parameter.

Kernels are created at their final multi-dimensional shape (e.g. `[embed, heads, kv]`)
and applied with einsum: no reshapes of partitioned parameters (flax issue 3676), and
Hugging Face tensors map onto them with one reshape/transpose at import.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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

    def setup(self):
        self.embedding = param(
            self, "embedding", normal(1.0), (self.num_embeddings, self.features), ("vocab", "embed")
        )

    def __call__(self, tokens_BxT):
        x = jnp.take(self.embedding, tokens_BxT, axis=0).astype(self.dtype)
        return constrain(x, "activation_batch", "activation_length", "activation_embed")

    def attend(self, x_BxTxD):
        logits = jnp.einsum("btd,vd->btv", x_BxTxD, self.embedding.astype(self.dtype))
        return constrain(logits, "activation_batch", "activation_length", "activation_vocab")


HEAD_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_kv")


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

    def attend(self, x_q_BxQxD, k_BxKxHxDk, v_BxKxHxDk, bias_BxHxQxK, *, deterministic: bool):
        q = constrain(
            jnp.einsum("bqd,dhk->bqhk", x_q_BxQxD, self.query.astype(self.dtype)), *HEAD_AXES
        )
        scores = jnp.einsum("bqhk,bshk->bhqs", q, k_BxKxHxDk).astype(jnp.float32) + bias_BxHxQxK
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        probs = self.dropout(probs, deterministic=deterministic)
        out = jnp.einsum("bhqs,bshk->bqhk", probs, v_BxKxHxDk)
        out = jnp.einsum("bqhk,hkd->bqd", out, self.out.astype(self.dtype))
        return constrain(out, "activation_batch", "activation_length", "activation_embed")

    def __call__(self, x_q_BxQxD, x_kv_BxKxD, bias_BxHxQxK, *, deterministic: bool):
        k, v = self.project_kv(x_kv_BxKxD)
        return self.attend(x_q_BxQxD, k, v, bias_BxHxQxK, deterministic=deterministic)


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


def untied_head(vocab_size: int, features: int, dtype) -> nn.Dense:
    """The output projection `[embed, vocab]` of a model whose head is not its embedding."""
    init = nn.with_logical_partitioning(normal(features**-0.5), ("embed", "vocab"))
    return nn.Dense(vocab_size, use_bias=False, dtype=dtype, kernel_init=init)


def vocab_logits(x_BxTxD, embedder: Embed, head: nn.Dense | None) -> jax.Array:
    """Logits through the untied `head`, or through the embedding when `head` is None."""
    logits = embedder.attend(x_BxTxD) if head is None else head(x_BxTxD)
    return constrain(logits, "activation_batch", "activation_length", "activation_vocab")


def write_kv(kv: dict, k_new, v_new, slot) -> dict:
    """A decoding cache `{"k", "v"}` (`[B, S, H, Dk]`) with new keys/values written at `slot`."""
    write = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
        cache, new.astype(cache.dtype), slot, axis=1
    )
    return {"k": write(kv["k"], k_new), "v": write(kv["v"], v_new)}


def attention_bias(mask_BxQxK: jax.Array) -> jax.Array:
    """Boolean mask `[B, Q, K]` -> additive float32 bias `[B, 1, Q, K]`."""
    return jnp.where(mask_BxQxK, 0.0, NEG_INF).astype(jnp.float32)[:, None]

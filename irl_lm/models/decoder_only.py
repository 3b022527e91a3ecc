"""Decoder-only transformer (the Llama architecture) in Flax: the stand-in for PaLM2.

RMS norm, rotary position embeddings (the rotate-half layout of Hugging Face checkpoints),
multi-head / grouped-query / multi-query attention, a gated SiLU MLP, tied or untied output
head. Field names of `DecoderOnlyConfig` are those of a Hugging Face Llama `config.json`.
Batches use seqio's decoder-only feature names (`decoder_input_tokens`, and
`decoder_segment_ids` / `decoder_positions` when packed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irl_lm.models.layers import (
    ACTIVATIONS,
    MLP,
    Embed,
    RMSNorm,
    attention_bias,
    constrain,
    normal,
    param,
    untied_head,
    vocab_logits,
    write_kv,
)


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 22
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: as many as query heads; 1: multi-query
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    dropout_rate: float = 0.0
    dtype: str = "float32"  # activation / compute dtype; parameters stay float32

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"DecoderOnlyConfig.hidden_act={self.hidden_act!r} is not supported; "
                f"allowed: {sorted(ACTIVATIONS)}"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.kv_heads}"
            )

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


def rotary(x_BxTxHxD, positions_BxT, theta: float):
    """Rotary embedding, rotate-half layout: the two halves of each head are the pairs."""
    half = x_BxTxHxD.shape[-1] // 2
    inv_freq = 1.0 / theta ** (np.arange(half, dtype=np.float32) * 2 / (2 * half))
    angles = positions_BxT[..., None].astype(jnp.float32) * inv_freq  # [B, T, half]
    cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
    x = x_BxTxHxD.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BxTxHxD.dtype)


class GroupedQueryAttention(nn.Module):
    """Attention with `kv_heads` key/value heads shared by groups of query heads, rotary
    positions on queries and keys, and 1/sqrt(head_dim) scaling."""

    config: DecoderOnlyConfig

    def setup(self):
        cfg = self.config
        d, h, kvh, k = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads, cfg.head_size
        self.query = param(self, "query", normal(d**-0.5), (d, h, k), ("embed", "heads", "kv"))
        kv_axes = ("embed", "kv_heads", "kv")
        self.key = param(self, "key", normal(d**-0.5), (d, kvh, k), kv_axes)
        self.value = param(self, "value", normal(d**-0.5), (d, kvh, k), kv_axes)
        self.out = param(self, "out", normal((h * k) ** -0.5), (h, k, d), ("heads", "kv", "embed"))
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def project_kv(self, x_BxTxD, positions_BxT):
        """Rotated keys and values `[B, T, KVH, Dh]`."""
        dtype, cfg = jnp.dtype(self.config.dtype), self.config
        k = jnp.einsum("btd,dhk->bthk", x_BxTxD, self.key.astype(dtype))
        v = jnp.einsum("btd,dhk->bthk", x_BxTxD, self.value.astype(dtype))
        return rotary(k, positions_BxT, cfg.rope_theta), v

    def attend(self, x_BxQxD, positions_BxQ, k_BxSxKxD, v_BxSxKxD, bias_Bx1xQxS, deterministic):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        q = jnp.einsum("bqd,dhk->bqhk", x_BxQxD, self.query.astype(dtype))
        q = rotary(q, positions_BxQ, cfg.rope_theta) * cfg.head_size**-0.5
        batch, length, groups = q.shape[0], q.shape[1], cfg.num_attention_heads // cfg.kv_heads
        q = q.reshape(batch, length, cfg.kv_heads, groups, cfg.head_size)
        scores = jnp.einsum("bqhgk,bshk->bhgqs", q, k_BxSxKxD).astype(jnp.float32)
        scores = scores + bias_Bx1xQxS[:, :, None]
        probs = self.dropout(jax.nn.softmax(scores, axis=-1).astype(dtype), deterministic)
        out = jnp.einsum("bhgqs,bshk->bqhgk", probs, v_BxSxKxD)
        out = out.reshape(batch, length, cfg.num_attention_heads, cfg.head_size)
        out = jnp.einsum("bqhk,hkd->bqd", out, self.out.astype(dtype))
        return constrain(out, "activation_batch", "activation_length", "activation_embed")


class DecoderOnlyLayer(nn.Module):
    config: DecoderOnlyConfig

    def setup(self):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        self.input_layernorm = RMSNorm(cfg.rms_norm_eps, dtype)
        self.self_attention = GroupedQueryAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg.intermediate_size, cfg.hidden_act, True, cfg.dropout_rate, dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, positions, bias, *, deterministic):
        h = self.input_layernorm(x)
        k, v = self.self_attention.project_kv(h, positions)
        return self._block(x, h, positions, (k, v), bias, deterministic)

    def prefill(self, x, positions, bias):
        """Like `__call__` (no dropout), also returning the keys/values it computed."""
        h = self.input_layernorm(x)
        kv = self.self_attention.project_kv(h, positions)
        return self._block(x, h, positions, kv, bias, True), kv

    def step(self, x_Bx1xD, positions_Bx1, kv, bias, slot):
        """One position: writes its key/value at cache `slot`; returns (x, kv)."""
        h = self.input_layernorm(x_Bx1xD)
        k_new, v_new = self.self_attention.project_kv(h, positions_Bx1)
        kv = write_kv(kv, k_new, v_new, slot)
        return self._block(x_Bx1xD, h, positions_Bx1, (kv["k"], kv["v"]), bias, True), kv

    def _block(self, x, h, positions, kv, bias, deterministic):
        drop = lambda y: self.dropout(y, deterministic=deterministic)
        x = x + drop(self.self_attention.attend(h, positions, *kv, bias, deterministic))
        x = x + drop(self.mlp(self.post_attention_layernorm(x), deterministic=deterministic))
        return constrain(x, "activation_batch", "activation_length", "activation_embed")


class DecoderOnly(nn.Module):
    """`apply({'params': p}, batch)` -> logits `[B, T, V]` for a seqio decoder-only batch."""

    config: DecoderOnlyConfig
    input_features = ("decoder_input_tokens",)  # what apply() needs

    def setup(self):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        self.token_embedder = Embed(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = [DecoderOnlyLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.final_norm = RMSNorm(cfg.rms_norm_eps, dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if not cfg.tie_word_embeddings:
            self.lm_head = untied_head(cfg.vocab_size, cfg.hidden_size, dtype)

    def __call__(self, batch, *, deterministic=True):
        """Teacher-forced logits; causal, within a packed segment when segment ids are given."""
        tokens = batch["decoder_input_tokens"]
        length = tokens.shape[1]
        positions = batch.get("decoder_positions")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
        mask = np.tril(np.ones((length, length), bool))[None]
        segments = batch.get("decoder_segment_ids")
        if segments is not None:
            mask = mask & (segments[:, :, None] == segments[:, None, :])
        bias = attention_bias(mask)
        x = self.dropout(self.token_embedder(tokens), deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, positions, bias, deterministic=deterministic)
        return self._logits(self.dropout(self.final_norm(x), deterministic=deterministic))

    def _logits(self, x_BxTxD):
        head = None if self.config.tie_word_embeddings else self.lm_head
        return vocab_logits(x_BxTxD, self.token_embedder, head)

    # -- incremental decoding (irl_lm.decoding) ------------------------------------------------

    def prefill(self, batch, max_len: int):
        """The decoding cache for the prompts `batch['decoder_input_tokens']` `[B, P]` (right
        padded with 0) and `max_len` new tokens.

        The cache has P + max_len slots per layer. Prefill writes slots [0, P) with every
        prompt token but the last of each row; decoding step t writes slot P + t, at position
        `prompt_length - 1 + t`: step 0 feeds the last prompt token (its logits predict the
        first new token), later steps the previous output. `cache['inputs']` holds what
        depends on the prompt only; `cache['decode']` the keys/values.
        """
        prompts = batch["decoder_input_tokens"]
        batch_size, prompt_len = prompts.shape
        lengths = jnp.sum(prompts != 0, axis=1)
        positions = jnp.broadcast_to(jnp.arange(prompt_len), prompts.shape)
        seen = positions < (lengths - 1)[:, None]  # all but each row's last prompt token
        causal = np.tril(np.ones((prompt_len, prompt_len), bool))[None]
        bias = attention_bias(causal & seen[:, None, :])
        x = self.token_embedder(prompts)
        dtype, pad = jnp.dtype(self.config.dtype), ((0, 0), (0, max_len), (0, 0), (0, 0))
        layers = []
        for layer in self.layers:
            x, (k, v) = layer.prefill(x, positions, bias)
            layers.append({"k": jnp.pad(k, pad).astype(dtype), "v": jnp.pad(v, pad).astype(dtype)})
        last = jnp.take_along_axis(prompts, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
        return {
            "inputs": {"prompt_lengths": lengths, "last_prompt_token": last, "seen": seen},
            "decode": {"layers": layers},
        }

    def decode_step(self, cache, tokens_B, index):
        """Logits `[B, V]` for decoding step `index` (its input: the previous output; the
        last prompt token at step 0) and the updated cache."""
        inputs = cache["inputs"]
        prompt_len = inputs["seen"].shape[1]
        total = cache["decode"]["layers"][0]["k"].shape[1]
        tokens_B = jnp.where(index == 0, inputs["last_prompt_token"], tokens_B)
        positions = (inputs["prompt_lengths"] - 1 + index)[:, None]
        slot = prompt_len + index
        new = (jnp.arange(total - prompt_len) <= index)[None].repeat(tokens_B.shape[0], 0)
        visible = jnp.concatenate([inputs["seen"], new], axis=1)  # [B, P + max_len]
        bias = attention_bias(visible[:, None, :])
        x = self.token_embedder(tokens_B[:, None])
        layers = []
        for layer, kv in zip(self.layers, cache["decode"]["layers"], strict=True):
            x, kv = layer.step(x, positions, kv, bias, slot)
            layers.append(kv)
        logits = self._logits(self.final_norm(x))[:, 0]
        return logits, {"inputs": inputs, "decode": {"layers": layers}}


# ----------------------------------------------------------------------------- Hugging Face layout

_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "hidden_act",
)
HF_MODEL_TYPES = ("llama",)


def from_hf_config(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict:
    """`DecoderOnlyConfig` fields from a Hugging Face Llama `config.json` and its tensors."""
    fields = {k: hf[k] for k in _HF_FIELDS if hf.get(k) is not None}
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config.json: rope type {rope_type!r} is not supported (only default)")
    fields["rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("config.json: attention_bias / mlp_bias are not supported")
    tied = bool(hf.get("tie_word_embeddings", False))
    head, embed = tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")
    if head is None:
        tied = True
    elif tied and embed is not None:
        tied = head.shape == embed.shape and np.array_equal(head, embed)
    fields["tie_word_embeddings"] = tied
    return fields


def to_hf_config(cfg: DecoderOnlyConfig) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **{k: getattr(cfg, k) for k in _HF_FIELDS},
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
    }


def hf_tensor_names(cfg: DecoderOnlyConfig) -> dict[tuple[str, ...], tuple[str, int | None]]:
    """Our parameter path -> (Hugging Face tensor name, split); see `t5.hf_tensor_names`."""
    names = {
        ("token_embedder", "embedding"): ("model.embed_tokens.weight", None),
        ("final_norm", "scale"): ("model.norm.weight", None),
    }
    if not cfg.tie_word_embeddings:
        names[("lm_head", "kernel")] = ("lm_head.weight", 1)
    for i in range(cfg.num_hidden_layers):
        ours, theirs = f"layers_{i}", f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            names[(ours, norm, "scale")] = (f"{theirs}.{norm}.weight", None)
        for our_name, proj in (("query", "q"), ("key", "k"), ("value", "v")):
            names[(ours, "self_attention", our_name)] = (
                f"{theirs}.self_attn.{proj}_proj.weight",
                1,
            )
        names[(ours, "self_attention", "out")] = (f"{theirs}.self_attn.o_proj.weight", 2)
        for our_name, proj in (("wi_0", "gate"), ("wi_1", "up"), ("wo", "down")):
            names[(ours, "mlp", our_name)] = (f"{theirs}.mlp.{proj}_proj.weight", 1)
    return names


def hf_aliases(cfg: DecoderOnlyConfig) -> dict[str, str]:
    return {"lm_head.weight": "model.embed_tokens.weight"} if cfg.tie_word_embeddings else {}

"""Decoder-only transformer in Flax: the stand-in for PaLM2, covering the Llama and Gemma
(2 / 3) families from one config.

Llama: RMS norm, rotary position embeddings (rotate-half layout of Hugging Face checkpoints,
optionally "linear" or "llama3" frequency scaling), multi-head / grouped-query / multi-query
attention, gated MLP, tied or untied head. Gemma adds: RMS norm scale `1 + w`, embeddings
times sqrt(hidden_size), norms on the attention and MLP outputs too, query/key norms (Gemma 3),
a query scale of `query_pre_attn_scalar^-1/2`, tanh soft-capping of attention scores and
logits (Gemma 2), and sliding-window layers with their own rope base (`layer_types`).
`parallel_block` gives PaLM's block: x + attn(norm(x)) + mlp(norm(x)).

Field names of `DecoderOnlyConfig` follow Hugging Face's `config.json` where one exists.
Batches use seqio's decoder-only feature names (`decoder_input_tokens`, and
`decoder_segment_ids` / `decoder_positions` when packed).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irl_lm.models.layers import (
    ACTIVATIONS,
    MLP,
    AttentionMask,
    Embed,
    Head,
    RMSNorm,
    check_runtime_fields,
    constrain,
    dot_attention,
    normal,
    param,
    remat,
    rotary,
    softcap,
    vocab_logits,
    write_kv,
)

FULL, SLIDING = "full_attention", "sliding_attention"
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
    vocab_size: int = 32000
    # The row that holds the checkpoint's token 0 when import moved it off seqio's padding id
    # (irl_lm.data.vocabularies.zero_token_swap; export moves it back); 0: not moved.
    token_zero_row: int = 0
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 22
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: as many as query heads; 1: multi-query
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"  # gated MLP: silu = SwiGLU, gelu_pytorch_tanh = GeGLU
    tie_word_embeddings: bool = False
    max_position_embeddings: int | None = None  # informational (HF config); not enforced
    # Rotary embeddings of full-attention layers: base and frequency scaling ("default",
    # "linear": frequencies / rope_factor, "llama3": Llama 3.1's smooth low-frequency scaling).
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max_position_embeddings: int = 8192  # llama3 only
    # Sliding-window layers: `layer_types[i]` is "full_attention" or "sliding_attention"
    # (None: all full); a sliding layer's query at i sees keys j with i - j < sliding_window,
    # rotated with base rope_local_base_freq (None: rope_theta) and no scaling.
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None
    rope_local_base_freq: float | None = None
    # Gemma features (all off for Llama).
    norm_plus_one: bool = False  # RMS norm scale is 1 + w (parameters start at 0)
    scale_embeddings: bool = False  # token embeddings times sqrt(hidden_size)
    post_norms: bool = False  # also norm the attention and MLP outputs (Gemma 2 / 3)
    qk_norm: bool = False  # RMS norm over each query and key head (Gemma 3)
    query_pre_attn_scalar: float | None = None  # scores * its^-1/2; None: head_dim
    attn_logit_softcapping: float | None = None  # scores -> c·tanh(scores / c)
    final_logit_softcapping: float | None = None  # logits -> c·tanh(logits / c)
    parallel_block: bool = False  # PaLM: attention and MLP read the same norm of x
    model_type: str = "llama"  # Hugging Face layout for export: a key of HF_MODEL_TYPES
    dropout_rate: float = 0.0
    dtype: str = "float32"  # activation / compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"  # parameters and optimizer state; bfloat16 where memory matters
    attention_impl: str = "auto"  # layers.dot_attention: auto, einsum, xla, cudnn
    remat: str = "none"  # recompute in the backward pass: none, dots_saveable, full

    def __post_init__(self):
        check_runtime_fields(self)
        if self.layer_types is not None:  # JSON gives a list; the config must stay hashable
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        checks = [
            (
                self.token_zero_row == 0 or 0 < self.token_zero_row < self.vocab_size,
                f"token_zero_row={self.token_zero_row}",
                f"a row of the vocabulary, 0 to {self.vocab_size - 1}",
            ),
            (
                self.hidden_act in ACTIVATIONS,
                f"hidden_act={self.hidden_act!r}",
                sorted(ACTIVATIONS),
            ),
            (self.rope_type in ROPE_TYPES, f"rope_type={self.rope_type!r}", ROPE_TYPES),
            (
                self.model_type in HF_MODEL_TYPES,
                f"model_type={self.model_type!r}",
                sorted(HF_MODEL_TYPES),
            ),
            (
                self.num_attention_heads % self.kv_heads == 0,
                f"num_attention_heads={self.num_attention_heads} with num_key_value_heads="
                f"{self.kv_heads}",
                "a multiple of num_key_value_heads",
            ),
            (
                self.layer_types is None
                or (
                    len(self.layer_types) == self.num_hidden_layers
                    and set(self.layer_types) <= {FULL, SLIDING}
                ),
                f"layer_types={self.layer_types}",
                f"{self.num_hidden_layers} entries of {FULL!r} / {SLIDING!r}",
            ),
            (
                SLIDING not in (self.layer_types or ()) or (self.sliding_window or 0) > 0,
                f"sliding_window={self.sliding_window}",
                "> 0 when a layer is sliding_attention",
            ),
            (
                not (self.parallel_block and self.post_norms),
                "parallel_block with post_norms",
                "one of the two",
            ),
        ]
        for ok, what, allowed in checks:
            if not ok:
                raise ValueError(f"DecoderOnlyConfig.{what} is not supported; allowed: {allowed}")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_type(self, i: int) -> str:
        return self.layer_types[i] if self.layer_types else FULL


def inverse_frequencies(cfg: DecoderOnlyConfig, layer_type: str) -> np.ndarray:
    """Rotary inverse frequencies `[head_dim / 2]` of a layer type."""
    dim = cfg.head_size
    if layer_type == SLIDING:
        return 1.0 / (cfg.rope_local_base_freq or cfg.rope_theta) ** (np.arange(0, dim, 2) / dim)
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, dim, 2) / dim)
    if cfg.rope_type == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_type == "llama3":
        # Wavelengths beyond original_max / low_freq_factor are stretched by rope_factor,
        # those below original_max / high_freq_factor kept, the band between interpolated.
        context = cfg.rope_original_max_position_embeddings
        wavelength = 2 * math.pi / inv_freq
        smooth = (context / wavelength - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
        )
        scaled = np.where(
            wavelength > context / cfg.rope_low_freq_factor, inv_freq / cfg.rope_factor, inv_freq
        )
        medium = (wavelength >= context / cfg.rope_high_freq_factor) & (
            wavelength <= context / cfg.rope_low_freq_factor
        )
        return np.where(medium, (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled, scaled)
    return inv_freq


def layer_masks(cfg, mask: AttentionMask, query_positions_BxQ, key_positions_BxK):
    """Attention masks per layer type: `mask` for full layers, restricted to keys less than
    `sliding_window` positions back for sliding layers."""
    masks = {FULL: mask}
    if SLIDING in (cfg.layer_types or ()):
        distance = query_positions_BxQ[:, :, None] - key_positions_BxK[:, None, :]
        allowed = mask.allowed_BxQxK & (distance < cfg.sliding_window)
        masks[SLIDING] = mask.restricted(allowed, cfg.sliding_window)
    return masks


class GroupedQueryAttention(nn.Module):
    """Attention with `kv_heads` key/value heads shared by groups of query heads, rotary
    positions on queries and keys (after the optional query/key norms).

    Positions None (cross-attention over an encoder's states, `kv_features` wide): no
    rotation."""

    config: DecoderOnlyConfig
    layer_type: str = FULL
    kv_features: int | None = None  # width of the states keys/values read; None: hidden_size

    def setup(self):
        cfg = self.config
        d, h, kvh, k = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads, cfg.head_size
        d_kv = self.kv_features or d
        self.query = param(self, "query", normal(d**-0.5), (d, h, k), ("embed", "heads", "kv"))
        kv_axes = ("embed", "kv_heads", "kv")
        self.key = param(self, "key", normal(d_kv**-0.5), (d_kv, kvh, k), kv_axes)
        self.value = param(self, "value", normal(d_kv**-0.5), (d_kv, kvh, k), kv_axes)
        self.out = param(self, "out", normal((h * k) ** -0.5), (h, k, d), ("heads", "kv", "embed"))
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if cfg.qk_norm:
            dtype = jnp.dtype(cfg.dtype)
            self.query_norm = RMSNorm(cfg.rms_norm_eps, dtype, cfg.norm_plus_one, "kv")
            self.key_norm = RMSNorm(cfg.rms_norm_eps, dtype, cfg.norm_plus_one, "kv")
        self.inv_freq = inverse_frequencies(cfg, self.layer_type)

    def project_kv(self, x_BxTxD, positions_BxT):
        """Rotated keys and values `[B, T, KVH, Dh]`."""
        dtype = jnp.dtype(self.config.dtype)
        k = jnp.einsum("btd,dhk->bthk", x_BxTxD, self.key.astype(dtype))
        v = jnp.einsum("btd,dhk->bthk", x_BxTxD, self.value.astype(dtype))
        if self.config.qk_norm:
            k = self.key_norm(k)
        return _rotate(k, positions_BxT, self.inv_freq), v

    def attend(self, x_BxQxD, positions_BxQ, k_BxSxKxD, v_BxSxKxD, mask, deterministic):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        q = jnp.einsum("bqd,dhk->bqhk", x_BxQxD, self.query.astype(dtype))
        if cfg.qk_norm:
            q = self.query_norm(q)
        scale = (cfg.query_pre_attn_scalar or cfg.head_size) ** -0.5
        q = _rotate(q, positions_BxQ, self.inv_freq) * jnp.asarray(scale, dtype)
        dropout = None
        if cfg.dropout_rate > 0 and not deterministic:
            dropout = lambda probs: self.dropout(probs, deterministic=False)
        out = dot_attention(
            q,
            k_BxSxKxD,
            v_BxSxKxD,
            mask,
            impl=cfg.attention_impl,
            softcap=cfg.attn_logit_softcapping,
            dropout=dropout,
        )
        out = jnp.einsum("bqhk,hkd->bqd", out, self.out.astype(dtype))
        return constrain(out, "activation_batch", "activation_length", "activation_embed")


def _rotate(x_BxTxHxD, positions_BxT, inv_freq):
    return x_BxTxHxD if positions_BxT is None else rotary(x_BxTxHxD, positions_BxT, inv_freq)


class DecoderOnlyLayer(nn.Module):
    """Pre-norm block: sequential (Llama), with output norms (Gemma), or parallel (PaLM)."""

    config: DecoderOnlyConfig
    layer_type: str = FULL

    def setup(self):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        norm = lambda: RMSNorm(cfg.rms_norm_eps, dtype, cfg.norm_plus_one)
        self.pre_attention_norm = norm()
        self.self_attention = GroupedQueryAttention(cfg, self.layer_type)
        if not cfg.parallel_block:
            self.pre_mlp_norm = norm()
        if cfg.post_norms:
            self.post_attention_norm, self.post_mlp_norm = norm(), norm()
        self.mlp = MLP(cfg.intermediate_size, cfg.hidden_act, True, cfg.dropout_rate, dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, positions, masks, deterministic):
        h = self.pre_attention_norm(x)
        kv = self.self_attention.project_kv(h, positions)
        return self._block(x, h, positions, kv, masks[self.layer_type], deterministic)

    def prefill(self, x, positions, masks):
        """Like `__call__` (no dropout), also returning the keys/values it computed."""
        h = self.pre_attention_norm(x)
        kv = self.self_attention.project_kv(h, positions)
        return self._block(x, h, positions, kv, masks[self.layer_type], True), kv

    def step(self, x_Bx1xD, positions_Bx1, kv, masks, slot):
        """One position: writes its key/value at cache `slot`; returns (x, kv)."""
        h = self.pre_attention_norm(x_Bx1xD)
        k_new, v_new = self.self_attention.project_kv(h, positions_Bx1)
        kv = write_kv(kv, k_new, v_new, slot)
        mask = masks[self.layer_type]
        return self._block(x_Bx1xD, h, positions_Bx1, (kv["k"], kv["v"]), mask, True), kv

    def _block(self, x, h, positions, kv, mask, deterministic):
        attn = self.self_attention.attend(h, positions, *kv, mask, deterministic)
        if self.config.parallel_block:
            mlp = self.mlp(h, deterministic=deterministic)
            x = x + self._drop(attn, deterministic) + self._drop(mlp, deterministic)
            return constrain(x, "activation_batch", "activation_length", "activation_embed")
        x = self._residual(x, attn, "post_attention_norm", deterministic)
        return self._mlp_residual(x, deterministic)

    def _drop(self, y, deterministic):
        return self.dropout(y, deterministic=deterministic)

    def _residual(self, x, y, post_norm: str, deterministic):
        """x + dropout(y), y normed first by the layer's `post_norm` when it has post-norms."""
        if self.config.post_norms:
            y = getattr(self, post_norm)(y)
        return x + self._drop(y, deterministic)

    def _mlp_residual(self, x, deterministic):
        mlp = self.mlp(self.pre_mlp_norm(x), deterministic=deterministic)
        x = self._residual(x, mlp, "post_mlp_norm", deterministic)
        return constrain(x, "activation_batch", "activation_length", "activation_embed")


class DecoderOnly(nn.Module):
    """`apply({'params': p}, batch)` -> logits `[B, T, V]` for a seqio decoder-only batch."""

    config: DecoderOnlyConfig
    input_features = ("decoder_input_tokens",)  # what apply() needs

    def setup(self):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        self.token_embedder = Embed(cfg.vocab_size, cfg.hidden_size, dtype)
        # `deterministic` (the last argument) is static under rematerialisation.
        layer_cls = remat(DecoderOnlyLayer, cfg.remat, static_argnums=(4,))
        self.layers = [layer_cls(cfg, cfg.layer_type(i)) for i in range(cfg.num_hidden_layers)]
        self.final_norm = RMSNorm(cfg.rms_norm_eps, dtype, cfg.norm_plus_one)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if not cfg.tie_word_embeddings:
            self.lm_head = Head(cfg.vocab_size, dtype)

    def _embed(self, tokens):
        x = self.token_embedder(tokens)
        if self.config.scale_embeddings:
            x = x * jnp.asarray(self.config.hidden_size**0.5, x.dtype)
        return x

    def __call__(self, batch, *, deterministic=True):
        """Teacher-forced logits `[B, T, V]` (float32); causal, within a packed segment
        when segment ids are given."""
        return self.logits(self.hidden(batch, deterministic=deterministic))

    def hidden(self, batch, *, deterministic=True):
        """Final states `[B, T, D]`: `logits` of them are the model's output (the chunked
        losses apply the head a few positions at a time)."""
        tokens = batch["decoder_input_tokens"]
        length = tokens.shape[1]
        index = jnp.broadcast_to(jnp.arange(length), tokens.shape)
        positions = batch.get("decoder_positions")
        if positions is None:
            positions = index
        allowed = np.tril(np.ones((length, length), bool))[None]
        segments = batch.get("decoder_segment_ids")
        if segments is not None:
            allowed = allowed & (segments[:, :, None] == segments[:, None, :])
        # Padding (at the end of each row) is never a key of a real position: causal.
        mask = AttentionMask(allowed, causal=True, dense_only=segments is not None)
        masks = layer_masks(self.config, mask, index, index)
        x = self.dropout(self._embed(tokens), deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, positions, masks, deterministic)
        return self.dropout(self.final_norm(x), deterministic=deterministic)

    def logits(self, x_BxTxD):
        """Logits `[B, T, V]` (float32) of final states (`hidden`)."""
        head = None if self.config.tie_word_embeddings else self.lm_head
        logits = vocab_logits(x_BxTxD, self.token_embedder, head)
        return softcap(logits, self.config.final_logit_softcapping)

    # -- incremental decoding (irl_lm.decoding) ------------------------------------------------

    def prefill(self, batch, max_len: int):
        """The decoding cache for the prompts `batch['decoder_input_tokens']` `[B, P]` (right
        padded with 0) and `max_len` new tokens.

        The cache has P + max_len slots per layer (sliding layers too: their window is a
        mask, not a ring buffer). Prefill writes slots [0, P) with every prompt token but the
        last of each row; decoding step t writes slot P + t, at position
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
        mask = AttentionMask(causal & seen[:, None, :], dense_only=True)
        masks = layer_masks(self.config, mask, positions, positions)
        x = self._embed(prompts)
        dtype, pad = jnp.dtype(self.config.dtype), ((0, 0), (0, max_len), (0, 0), (0, 0))
        layers = []
        for layer in self.layers:
            x, (k, v) = layer.prefill(x, positions, masks)
            layers.append({"k": jnp.pad(k, pad).astype(dtype), "v": jnp.pad(v, pad).astype(dtype)})
        last = jnp.take_along_axis(prompts, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
        return {
            "inputs": {"prompt_lengths": lengths, "last_prompt_token": last, "seen": seen},
            "decode": {"layers": layers},
        }

    def decode_step(self, cache, tokens_B, index):
        """Logits `[B, V]` for decoding step `index` (its input: the previous output; the
        last prompt token at step 0) and the updated cache; B may be N rows per prompt of
        `cache['inputs']` (`irl_lm.decoding`)."""
        per_prompt = tokens_B.shape[0] // cache["inputs"]["prompt_lengths"].shape[0]
        inputs = jax.tree.map(lambda x: jnp.repeat(x, per_prompt, axis=0), cache["inputs"])
        prompt_len = inputs["seen"].shape[1]
        total = cache["decode"]["layers"][0]["k"].shape[1]
        tokens_B = jnp.where(index == 0, inputs["last_prompt_token"], tokens_B)
        start = inputs["prompt_lengths"][:, None] - 1  # position of decoding step 0
        positions = start + index
        slot = prompt_len + index
        slots = jnp.arange(total)[None]
        seen = jnp.pad(inputs["seen"], ((0, 0), (0, total - prompt_len)))
        visible = seen | ((slots >= prompt_len) & (slots <= slot))  # [B, P + max_len]
        key_positions = jnp.where(slots < prompt_len, slots, start + slots - prompt_len)
        masks = layer_masks(
            self.config,
            AttentionMask(visible[:, None, :], dense_only=True),
            positions,
            key_positions,
        )
        x = self._embed(tokens_B[:, None])
        layers = []
        for layer, kv in zip(self.layers, cache["decode"]["layers"], strict=True):
            x, kv = layer.step(x, positions, kv, masks, slot)
            layers.append(kv)
        logits = self.logits(self.final_norm(x))[:, 0]
        return logits, {"inputs": cache["inputs"], "decode": {"layers": layers}}


# ----------------------------------------------------------------------------- Hugging Face layout

_GEMMA = dict(norm_plus_one=True, scale_embeddings=True, post_norms=True)
# config.json model_type -> (architectures entry, DecoderOnlyConfig fields the family fixes)
HF_MODEL_TYPES = {
    "llama": ("LlamaForCausalLM", {}),
    "gemma2": ("Gemma2ForCausalLM", _GEMMA),
    "gemma3_text": ("Gemma3ForCausalLM", {**_GEMMA, "qk_norm": True}),
}
_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
)
_GEMMA_FIELDS = ("query_pre_attn_scalar", "final_logit_softcapping", "sliding_window")


def _rope_fields(rope: Mapping, where: str, *, scaled: bool) -> dict:
    """Our rope fields from one Hugging Face `rope_parameters` entry."""
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ROPE_TYPES or (rope_type != "default" and not scaled):
        raise ValueError(
            f"config.json: {where} rope type {rope_type!r} is not supported "
            f"(supported: {list(ROPE_TYPES) if scaled else ['default']})"
        )
    fields = {"rope_type": rope_type}
    if rope_type != "default":
        fields["rope_factor"] = float(rope["factor"])
    if rope_type == "llama3":
        fields |= {
            "rope_low_freq_factor": float(rope["low_freq_factor"]),
            "rope_high_freq_factor": float(rope["high_freq_factor"]),
            "rope_original_max_position_embeddings": int(rope["original_max_position_embeddings"]),
        }
    return fields


def from_hf_config(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict:
    """`DecoderOnlyConfig` fields from a Hugging Face Llama / Gemma 2 / Gemma 3 `config.json`
    (transformers 4 or 5 spelling of the rope settings) and its tensors."""
    model_type = hf["model_type"]
    fields = {k: hf[k] for k in (*_HF_FIELDS, "max_position_embeddings") if hf.get(k) is not None}
    fields |= {"model_type": model_type, **HF_MODEL_TYPES[model_type][1]}
    fields["hidden_act"] = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("config.json: attention_bias / mlp_bias are not supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if model_type == "llama":
        fields |= _rope_fields(rope, "rope_parameters", scaled=True)
        fields["rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    else:
        fields |= {k: hf[k] for k in _GEMMA_FIELDS if hf.get(k) is not None}
        layer_types = hf.get("layer_types")
        if layer_types is None:  # transformers 4: every `sliding_window_pattern`-th is full
            pattern = hf.get("sliding_window_pattern", 2 if model_type == "gemma2" else 6)
            layer_types = [
                FULL if (i + 1) % pattern == 0 else SLIDING for i in range(hf["num_hidden_layers"])
            ]
        fields["layer_types"] = tuple(layer_types)
        if model_type == "gemma2":  # transformers ignores attn_logit_softcapping for Gemma 3
            fields["attn_logit_softcapping"] = hf.get("attn_logit_softcapping")
        if FULL in rope or SLIDING in rope:  # transformers 5: one entry per layer type
            full, local = rope.get(FULL, {}), rope.get(SLIDING, {})
            _rope_fields(local, f"rope_parameters.{SLIDING}", scaled=False)
        else:
            full, local = rope, {}
        fields |= _rope_fields(full, f"rope_parameters.{FULL}", scaled=True)
        fields["rope_theta"] = float(full.get("rope_theta", hf.get("rope_theta", 10000.0)))
        local_theta = local.get("rope_theta", hf.get("rope_local_base_freq"))
        if local_theta is not None:
            fields["rope_local_base_freq"] = float(local_theta)
    tied = bool(hf.get("tie_word_embeddings", model_type != "llama"))
    head, embed = tensors.get("lm_head.weight"), tensors.get("model.embed_tokens.weight")
    if head is None:
        tied = True
    elif tied and embed is not None:
        tied = head.shape == embed.shape and np.array_equal(head, embed)
    fields["tie_word_embeddings"] = tied
    return fields


def to_hf_config(cfg: DecoderOnlyConfig) -> dict:
    """The `config.json` of `cfg`, in transformers 5's spelling."""
    if cfg.parallel_block:
        raise ValueError(
            "parallel_block=True has no Hugging Face layout (export is for the "
            "Llama and Gemma families)"
        )
    expected = HF_MODEL_TYPES[cfg.model_type][1]
    mismatched = {
        k: getattr(cfg, k)
        for k in set(_GEMMA) | {"qk_norm"}
        if getattr(cfg, k) != expected.get(k, False)
    }
    if mismatched:
        raise ValueError(
            f"model_type={cfg.model_type!r} cannot store {mismatched}; "
            "pick the model_type whose family has these features"
        )
    full = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type != "default":
        full["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        full |= {
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_position_embeddings,
        }
    out = {
        "architectures": [HF_MODEL_TYPES[cfg.model_type][0]],
        "model_type": cfg.model_type,
        **{k: getattr(cfg, k) for k in _HF_FIELDS},
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": False,
    }
    if cfg.max_position_embeddings:
        out["max_position_embeddings"] = cfg.max_position_embeddings
    if cfg.model_type == "llama":
        return out | {"hidden_act": cfg.hidden_act, "mlp_bias": False, "rope_parameters": full}
    out |= {
        "hidden_activation": cfg.hidden_act,
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar or cfg.head_size,
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "attn_logit_softcapping": cfg.attn_logit_softcapping,
        "sliding_window": cfg.sliding_window,
        "layer_types": [cfg.layer_type(i) for i in range(cfg.num_hidden_layers)],
    }
    if cfg.model_type == "gemma2":
        if cfg.rope_type != "default" or cfg.rope_local_base_freq not in (None, cfg.rope_theta):
            raise ValueError("model_type='gemma2' has one unscaled rope base for all layers")
        return out | {"rope_parameters": full}
    local = {"rope_type": "default", "rope_theta": cfg.rope_local_base_freq or cfg.rope_theta}
    return out | {"rope_parameters": {FULL: full, SLIDING: local}}


def hf_tensor_names(cfg: DecoderOnlyConfig) -> dict[tuple[str, ...], tuple[str, int | None]]:
    """Our parameter path -> (Hugging Face tensor name, split); see `t5.hf_tensor_names`."""
    names = {
        ("token_embedder", "embedding"): ("model.embed_tokens.weight", None),
        ("final_norm", "scale"): ("model.norm.weight", None),
    }
    if not cfg.tie_word_embeddings:
        names[("lm_head", "kernel")] = ("lm_head.weight", 1)
    norms = {"pre_attention_norm": "input_layernorm"}  # ours -> theirs, per family
    if cfg.post_norms:  # Gemma: "post_attention_layernorm" norms the attention output
        norms |= {
            "post_attention_norm": "post_attention_layernorm",
            "pre_mlp_norm": "pre_feedforward_layernorm",
            "post_mlp_norm": "post_feedforward_layernorm",
        }
    elif not cfg.parallel_block:  # Llama: "post_attention_layernorm" is the MLP's input norm
        norms["pre_mlp_norm"] = "post_attention_layernorm"
    for i in range(cfg.num_hidden_layers):
        ours, theirs = f"layers_{i}", f"model.layers.{i}"
        for our_norm, their_norm in norms.items():
            names[(ours, our_norm, "scale")] = (f"{theirs}.{their_norm}.weight", None)
        names |= attention_tensor_names(cfg, (ours, "self_attention"), f"{theirs}.self_attn")
        names |= mlp_tensor_names((ours, "mlp"), f"{theirs}.mlp")
    return names


def attention_tensor_names(cfg: DecoderOnlyConfig, ours: tuple[str, ...], theirs: str) -> dict:
    """The names of a `GroupedQueryAttention` at `ours` in Hugging Face's Llama / Gemma
    attention at `theirs` (`q_proj` ... `o_proj`, `q_norm` / `k_norm`)."""
    names = {}
    for our_name, proj in (("query", "q"), ("key", "k"), ("value", "v")):
        names[(*ours, our_name)] = (f"{theirs}.{proj}_proj.weight", 1)
    names[(*ours, "out")] = (f"{theirs}.o_proj.weight", 2)
    if cfg.qk_norm:
        names[(*ours, "query_norm", "scale")] = (f"{theirs}.q_norm.weight", None)
        names[(*ours, "key_norm", "scale")] = (f"{theirs}.k_norm.weight", None)
    return names


def mlp_tensor_names(ours: tuple[str, ...], theirs: str) -> dict:
    """The names of a gated `MLP` at `ours` in Hugging Face's `gate/up/down_proj` at `theirs`."""
    return {
        (*ours, our_name): (f"{theirs}.{proj}_proj.weight", 1)
        for our_name, proj in (("wi_0", "gate"), ("wi_1", "up"), ("wo", "down"))
    }


def hf_aliases(cfg: DecoderOnlyConfig) -> dict[str, str]:
    return {"lm_head.weight": "model.embed_tokens.weight"} if cfg.tie_word_embeddings else {}

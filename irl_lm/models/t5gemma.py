"""T5Gemma and T5Gemma 2: encoder-decoder models built from Gemma's layers.

Both stacks are Gemma decoder layers (`decoder_only.DecoderOnlyLayer`: RMS norm `1 + w`,
pre- and post-norms, grouped-query attention with rotary positions, sliding-window layers,
a GeGLU MLP); the encoder's attention is bidirectional, and each decoder layer also reads the
encoder's final states.

- T5Gemma (adapted from Gemma 2): a cross-attention block with its own kernels and norms
  between the self-attention and the MLP; attention and logit soft-capping; separate encoder
  and decoder embeddings (the head is the decoder's), and the two stacks may differ in width.
- T5Gemma 2 (from Gemma 3): *merged* attention: the decoder's queries attend, in one softmax,
  to its own rotated keys and to keys of the encoder's states made by the same kernels (and
  key norm) without rotation; query/key norms; one embedding for encoder, decoder and head;
  a separate, unscaled embedding for the end-of-image token. The checkpoints' vision tower
  is not part of the model (`irl_lm.models.hf` skips it on import and carries it on export).

`T5GemmaConfig.encoder` / `.decoder` are `DecoderOnlyConfig`s (given as dicts of their
fields); the fields that say how the model runs (dtypes, attention, remat, dropout) are set
once, on `T5GemmaConfig`. Batches use seqio's encoder-decoder features; the decoder's first
input (seqio's 0) is read as `decoder_start_token_id` (BOS), as the checkpoints were trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from irl_lm.models import decoder_only
from irl_lm.models.decoder_only import (
    FULL,
    SLIDING,
    DecoderOnlyConfig,
    DecoderOnlyLayer,
    GroupedQueryAttention,
    attention_tensor_names,
    mlp_tensor_names,
)
from irl_lm.models.decoder_only import (
    HF_MODEL_TYPES as DECODER_ONLY_TYPES,
)
from irl_lm.models.layers import (
    AttentionMask,
    Embed,
    Head,
    RMSNorm,
    check_runtime_fields,
    config_from_fields,
    padding_mask,
    param,
    remat,
    softcap,
    token_lengths,
    vocab_logits,
    write_kv,
)

# config.json model_type -> (architectures entry, the Gemma generation its stacks are)
HF_MODEL_TYPES = {
    "t5gemma": ("T5GemmaForConditionalGeneration", "gemma2"),
    "t5gemma2": ("T5Gemma2ForConditionalGeneration", "gemma3_text"),
}
_RUNTIME = ("dropout_rate", "dtype", "param_dtype", "attention_impl", "remat")
# Stack fields a config need not give (transformers' defaults for each family's config.json).
STACK_DEFAULTS = {
    "t5gemma": dict(
        hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),
    "t5gemma2": dict(
        hidden_act="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
    ),
}


@dataclasses.dataclass(frozen=True)
class T5GemmaConfig:
    encoder: DecoderOnlyConfig | Mapping  # a dict of DecoderOnlyConfig fields is converted
    decoder: DecoderOnlyConfig | Mapping
    model_type: str = "t5gemma2"  # "t5gemma" (Gemma 2 based) or "t5gemma2" (Gemma 3 based)
    vocab_size: int = 262_144
    token_zero_row: int = 0  # as in T5Config (irl_lm.data.vocabularies.zero_token_swap)
    tie_word_embeddings: bool = True  # the head is the decoder's embedding
    decoder_start_token_id: int = 2  # the decoder's first input (BOS)
    eoi_token_index: int | None = None  # T5Gemma 2: the token with its own, unscaled embedding
    dropout_rate: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    remat: str = "none"

    def __post_init__(self):
        check_runtime_fields(self)
        if self.model_type not in HF_MODEL_TYPES:
            raise ValueError(
                f"T5GemmaConfig.model_type={self.model_type!r} is not supported; allowed: "
                f"{sorted(HF_MODEL_TYPES)}"
            )
        if self.token_zero_row and not 0 < self.token_zero_row < self.vocab_size:
            raise ValueError(
                f"T5GemmaConfig.token_zero_row={self.token_zero_row} is not supported; allowed: "
                f"a row of the vocabulary, 0 to {self.vocab_size - 1}"
            )
        if self.eoi_token_index is not None and self.model_type != "t5gemma2":
            raise ValueError(
                f"T5GemmaConfig.eoi_token_index={self.eoi_token_index}: only "
                "model_type='t5gemma2' has an end-of-image embedding; set it to None"
            )
        family = DECODER_ONLY_TYPES[HF_MODEL_TYPES[self.model_type][1]][1]
        fixed = {
            "model_type": HF_MODEL_TYPES[self.model_type][1],
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": True,
            **family,
            **{k: getattr(self, k) for k in _RUNTIME},
        }
        if self.merged_attention:  # transformers' merged attention has no score soft-capping
            fixed["attn_logit_softcapping"] = None
        for stack in ("encoder", "decoder"):
            fields = getattr(self, stack)
            if isinstance(fields, DecoderOnlyConfig):  # already built: re-derive what is fixed
                fields = {k: v for k, v in dataclasses.asdict(fields).items() if k not in fixed}
            fields = dict(fields)
            clashes = sorted(k for k in fixed if k in fields and fields[k] != fixed[k])
            if clashes:
                raise ValueError(
                    f"T5GemmaConfig.{stack}: {clashes} are set for both stacks, on "
                    f"config.model itself (or fixed by model_type={self.model_type!r}); "
                    f"remove them from config.model.{stack}"
                )
            fields = {**STACK_DEFAULTS[self.model_type], **fields, **fixed}
            built = config_from_fields(DecoderOnlyConfig, fields, f"T5GemmaConfig.{stack}")
            object.__setattr__(self, stack, built)
        if self.merged_attention and self.encoder.hidden_size != self.decoder.hidden_size:
            raise ValueError(
                "T5GemmaConfig: model_type='t5gemma2' reads the encoder's states with the "
                "decoder's key/value kernels; encoder.hidden_size "
                f"{self.encoder.hidden_size} must equal decoder.hidden_size "
                f"{self.decoder.hidden_size}"
            )

    @property
    def merged_attention(self) -> bool:
        """T5Gemma 2: one softmax over the decoder's and the encoder's keys."""
        return self.model_type == "t5gemma2"

    @property
    def shared_embedding(self) -> bool:
        """T5Gemma 2: encoder and decoder read one embedding."""
        return self.model_type == "t5gemma2"

    def encoder_window(self) -> tuple[int, int]:
        """(keys behind, keys ahead) a sliding encoder layer's query sees, inclusive:
        T5Gemma: |i - j| <= w; T5Gemma 2: w // 2 ahead, (w + 1) // 2 - 1 behind."""
        w = self.encoder.sliding_window or 0
        if self.model_type == "t5gemma":
            return w, w
        return (w + 1) // 2 - 1, w // 2


class T5GemmaDecoderLayer(DecoderOnlyLayer):
    """A Gemma layer that also reads the encoder: through its own cross-attention block
    (T5Gemma), or through its self-attention's kernels in one softmax (`merged`)."""

    merged: bool = False
    encoder_features: int = 0  # width of the encoder's states

    def setup(self):
        super().setup()
        if not self.merged:
            cfg, dtype = self.config, jnp.dtype(self.config.dtype)
            self.pre_cross_attention_norm = RMSNorm(cfg.rms_norm_eps, dtype, cfg.norm_plus_one)
            self.post_cross_attention_norm = RMSNorm(cfg.rms_norm_eps, dtype, cfg.norm_plus_one)
            self.cross_attention = GroupedQueryAttention(cfg, FULL, self.encoder_features)

    def __call__(self, x, positions, encoded, masks, cross_mask, deterministic):
        h = self.pre_attention_norm(x)
        kv = self.self_attention.project_kv(h, positions)
        cross_kv = self.cross_kv(encoded)
        return self._decoder_block(
            x, h, positions, kv, cross_kv, masks[self.layer_type], cross_mask, deterministic
        )

    def cross_kv(self, encoded_BxSxD):
        """Keys and values of the encoder's states, unrotated: once per input when decoding."""
        attention = self.self_attention if self.merged else self.cross_attention
        return attention.project_kv(encoded_BxSxD, None)

    def step(self, x_Bx1xD, positions_Bx1, kv, cross_kv, masks, cross_mask, slot):
        """One position: writes its key/value at cache `slot`; returns (x, kv). `cross_kv`
        may hold one row per N rows of `x` (N continuations of each input)."""
        h = self.pre_attention_norm(x_Bx1xD)
        k_new, v_new = self.self_attention.project_kv(h, positions_Bx1)
        kv = write_kv(kv, k_new, v_new, slot)
        self_kv, mask = (kv["k"], kv["v"]), masks[self.layer_type]
        x = self._decoder_block(
            x_Bx1xD, h, positions_Bx1, self_kv, cross_kv, mask, cross_mask, True
        )
        return x, kv

    def _decoder_block(self, x, h, positions, self_kv, cross_kv, mask, cross_mask, deterministic):
        if self.merged:
            rows = h.shape[0]
            cross_kv = [jnp.repeat(c, rows // c.shape[0], axis=0) for c in cross_kv]
            keys, values = (jnp.concatenate(p, axis=1) for p in zip(self_kv, cross_kv, strict=True))
            both = _merged_mask(mask, cross_mask, rows)
            attn = self.self_attention.attend(h, positions, keys, values, both, deterministic)
            x = self._residual(x, attn, "post_attention_norm", deterministic)
            return self._mlp_residual(x, deterministic)
        attn = self.self_attention.attend(h, positions, *self_kv, mask, deterministic)
        x = self._residual(x, attn, "post_attention_norm", deterministic)
        # N rows per input (samples, beams) attend to it as N x T queries of one row.
        h = self.pre_cross_attention_norm(x)
        inputs, rows_BxTxD = cross_kv[0].shape[0], h.shape
        h = h.reshape(inputs, -1, h.shape[-1])
        cross = self.cross_attention.attend(h, None, *cross_kv, cross_mask, deterministic)
        x = self._residual(x, cross.reshape(rows_BxTxD), "post_cross_attention_norm", deterministic)
        return self._mlp_residual(x, deterministic)


def _merged_mask(self_mask: AttentionMask, cross_mask: AttentionMask, rows: int) -> AttentionMask:
    """One mask over [decoder keys; encoder keys] (T5Gemma 2's merged attention)."""
    cross = cross_mask.allowed_BxQxK
    cross = jnp.repeat(cross, rows // cross.shape[0], axis=0)
    self_allowed = jnp.broadcast_to(
        self_mask.allowed_BxQxK, (rows, cross.shape[1], self_mask.allowed_BxQxK.shape[-1])
    )
    return AttentionMask(jnp.concatenate([self_allowed, cross], axis=-1), dense_only=True)


class T5Gemma(nn.Module):
    """`apply({'params': p}, batch)` -> logits `[B, T, V]` for a seqio encoder-decoder batch."""

    config: T5GemmaConfig
    input_features = ("encoder_input_tokens", "decoder_input_tokens")  # what apply() needs

    def setup(self):
        cfg = self.config
        enc, dec, dtype = cfg.encoder, cfg.decoder, jnp.dtype(cfg.dtype)
        # Initialised at 1/sqrt(width): the embeddings enter times sqrt(width) (unit scale),
        # and the tied head then starts with logits of unit scale, not sqrt(width).
        embed = lambda width: Embed(cfg.vocab_size, width, dtype, width**-0.5)
        self.token_embedder = embed(dec.hidden_size)
        if not cfg.shared_embedding:
            self.encoder_token_embedder = embed(enc.hidden_size)
        if cfg.eoi_token_index is not None:
            init = nn.initializers.zeros
            self.eoi_embedding = param(self, "eoi_embedding", init, (dec.hidden_size,), ("norm",))
        # `deterministic` (the last argument) is static under rematerialisation.
        encoder_layer = remat(DecoderOnlyLayer, cfg.remat, static_argnums=(4,))
        decoder_layer = remat(T5GemmaDecoderLayer, cfg.remat, static_argnums=(6,))
        self.encoder_layers = [
            encoder_layer(enc, enc.layer_type(i)) for i in range(enc.num_hidden_layers)
        ]
        self.decoder_layers = [
            decoder_layer(dec, dec.layer_type(i), cfg.merged_attention, enc.hidden_size)
            for i in range(dec.num_hidden_layers)
        ]
        self.encoder_norm = RMSNorm(enc.rms_norm_eps, dtype, True)
        self.decoder_norm = RMSNorm(dec.rms_norm_eps, dtype, True)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if not cfg.tie_word_embeddings:
            self.lm_head = Head(cfg.vocab_size, dtype)

    def _embed(self, embedder: Embed, tokens):
        """Embeddings times sqrt(width); T5Gemma 2's end-of-image token takes its own."""
        x = embedder(tokens)
        x = x * jnp.asarray(x.shape[-1] ** 0.5, x.dtype)
        if self.config.eoi_token_index is not None:
            is_eoi = (tokens == self.config.eoi_token_index)[..., None]
            x = jnp.where(is_eoi, self.eoi_embedding.astype(x.dtype), x)
        return x

    def _decoder_inputs(self, tokens, starts):
        """seqio's start token (0 where `starts`) read as the checkpoint's BOS."""
        return jnp.where(starts & (tokens == 0), self.config.decoder_start_token_id, tokens)

    def encode(
        self,
        encoder_input_tokens,
        encoder_segment_ids=None,
        encoder_positions=None,
        *,
        deterministic=True,
    ):
        """Encoder states `[B, S, D]`: bidirectional over the real tokens (and within a
        packed segment)."""
        tokens, cfg = encoder_input_tokens, self.config
        index = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        positions = index if encoder_positions is None else encoder_positions
        allowed = padding_mask(tokens, tokens, encoder_segment_ids, encoder_segment_ids)
        lengths = token_lengths(tokens)
        packed = encoder_segment_ids is not None
        masks = {FULL: AttentionMask(allowed, None, lengths, lengths, dense_only=packed)}
        if SLIDING in (cfg.encoder.layer_types or ()):
            behind, ahead = cfg.encoder_window()
            distance = index[:, :, None] - index[:, None, :]
            window = allowed & (distance <= behind) & (-distance <= ahead)
            masks[SLIDING] = masks[FULL].restricted(window, (behind, ahead))
        embedder = self.token_embedder if cfg.shared_embedding else self.encoder_token_embedder
        x = self.dropout(self._embed(embedder, tokens), deterministic=deterministic)
        for layer in self.encoder_layers:
            x = layer(x, positions, masks, deterministic)
        return self.dropout(self.encoder_norm(x), deterministic=deterministic)

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        decoder_positions=None,
        *,
        deterministic=True,
    ):
        """Teacher-forced final decoder states `[B, T, D]` (`logits` maps them); causal
        (within a packed segment), every decoder position counts (see `t5.T5.decode`)."""
        cfg = self.config
        tokens = decoder_input_tokens
        index = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        positions = index if decoder_positions is None else decoder_positions
        length, real = tokens.shape[1], jnp.ones_like(tokens)
        causal = np.tril(np.ones((length, length), bool))[None]
        packed = decoder_segment_ids is not None
        allowed = causal & padding_mask(real, real, decoder_segment_ids, decoder_segment_ids)
        self_mask = AttentionMask(allowed, causal=True, dense_only=packed)
        masks = decoder_only.layer_masks(cfg.decoder, self_mask, index, index)
        cross_mask = AttentionMask(
            padding_mask(real, encoder_input_tokens, decoder_segment_ids, encoder_segment_ids),
            kv_lengths_B=token_lengths(encoder_input_tokens),
            dense_only=packed,
        )
        tokens = self._decoder_inputs(tokens, positions == 0)
        x = self.dropout(self._embed(self.token_embedder, tokens), deterministic=deterministic)
        for layer in self.decoder_layers:
            x = layer(x, positions, encoded, masks, cross_mask, deterministic)
        return self.dropout(self.decoder_norm(x), deterministic=deterministic)

    def logits(self, x_BxTxD):
        """Logits `[B, T, V]` (float32) of final decoder states (`hidden`)."""
        head = None if self.config.tie_word_embeddings else self.lm_head
        logits = vocab_logits(x_BxTxD, self.token_embedder, head)
        return softcap(logits, self.config.decoder.final_logit_softcapping)

    def __call__(self, batch, *, deterministic=True):
        """Logits `[B, T, V]` (float32)."""
        return self.logits(self.hidden(batch, deterministic=deterministic))

    def hidden(self, batch, *, deterministic=True):
        """Final decoder states `[B, T, D]` (the chunked losses apply `logits` to them)."""
        encoded = self.encode(
            batch["encoder_input_tokens"],
            batch.get("encoder_segment_ids"),
            batch.get("encoder_positions"),
            deterministic=deterministic,
        )
        return self.decode(
            encoded,
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch.get("encoder_segment_ids"),
            batch.get("decoder_segment_ids"),
            batch.get("decoder_positions"),
            deterministic=deterministic,
        )

    # -- incremental decoding (irl_lm.decoding): prefill once, then one token per step ------

    def prefill(self, batch, max_len: int):
        """The decoding cache (layout of `t5.T5.prefill`): the encoder tokens and each decoder
        layer's keys/values of the encoder's states in `inputs`, empty self-attention
        caches `[B, max_len, KVH, Dh]` in `decode`."""
        tokens = batch["encoder_input_tokens"]
        encoded = self.encode(tokens)
        dec, dtype = self.config.decoder, jnp.dtype(self.config.dtype)
        empty = jnp.zeros((tokens.shape[0], max_len, dec.kv_heads, dec.head_size), dtype)
        cross = [
            dict(zip("kv", layer.cross_kv(encoded), strict=True)) for layer in self.decoder_layers
        ]
        return {
            "inputs": {"encoder_input_tokens": tokens, "cross": cross},
            "decode": {"layers": [{"k": empty, "v": empty} for _ in self.decoder_layers]},
        }

    def decode_step(self, cache, tokens_B, index):
        """Logits `[B, V]` for position `index` (its input `tokens_B`: the previous output, 0
        at the start) and the updated cache; B may be N rows per input of `cache['inputs']`."""
        max_len = cache["decode"]["layers"][0]["k"].shape[1]
        slots = jnp.arange(max_len)[None]
        visible = slots <= index  # causal: positions written so far
        positions = jnp.full((tokens_B.shape[0], 1), index)
        masks = decoder_only.layer_masks(
            self.config.decoder,
            AttentionMask(visible[:, None, :], dense_only=True),
            positions,
            slots,
        )
        encoder_real = cache["inputs"]["encoder_input_tokens"] > 0
        cross_mask = AttentionMask(encoder_real[:, None, :], dense_only=True)
        tokens = self._decoder_inputs(tokens_B[:, None], positions == 0)
        x = self._embed(self.token_embedder, tokens)
        layers = []
        for layer, kv, cross in zip(
            self.decoder_layers, cache["decode"]["layers"], cache["inputs"]["cross"], strict=True
        ):
            cross_kv = (cross["k"], cross["v"])
            x, kv = layer.step(x, positions, kv, cross_kv, masks, cross_mask, index)
            layers.append(kv)
        logits = self.logits(self.decoder_norm(x))[:, 0]
        return logits, {"inputs": cache["inputs"], "decode": {"layers": layers}}


# ----------------------------------------------------------------------------- Hugging Face layout

# Tensors of T5Gemma 2 checkpoints that are not the text model: read past on import (counted),
# copied from the source folder on export.
VISION_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.multi_modal_projector.")
PROJECTION = "model.encoder.multi_modal_projector.mm_input_projection_weight"  # [vision, text]


def carried_prefixes(cfg: T5GemmaConfig) -> tuple[str, ...]:
    return VISION_PREFIXES if cfg.model_type == "t5gemma2" else ()


# config.json fields of the encoder that describe the vision tower (carried with it).
VISION_CONFIG_FIELDS = (
    "vision_config",
    "mm_tokens_per_image",
    "boi_token_index",
    "eoi_token_index",
    "image_token_index",
)


def _text_configs(hf: dict) -> tuple[dict, dict]:
    encoder = hf["encoder"]
    if hf["model_type"] == "t5gemma2":
        encoder = encoder["text_config"]
    return encoder, hf["decoder"]


def from_hf_config(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict:
    """`T5GemmaConfig` fields from a Hugging Face T5Gemma / T5Gemma 2 `config.json`."""
    model_type = hf["model_type"]
    gemma = HF_MODEL_TYPES[model_type][1]
    stacks = {}
    for name, sub in zip(("encoder", "decoder"), _text_configs(hf), strict=True):
        fields = decoder_only.from_hf_config({**sub, "model_type": gemma}, {})
        stacks[name] = {
            k: v
            for k, v in fields.items()
            if k not in ("model_type", "vocab_size", "tie_word_embeddings")
        }
    decoder = hf["decoder"]
    fields = {
        "model_type": model_type,
        **stacks,
        "vocab_size": int(decoder["vocab_size"]),
        "decoder_start_token_id": int(decoder.get("bos_token_id", 2)),
    }
    tied = bool(hf.get("tie_word_embeddings", True))
    head = tensors.get("lm_head.out_proj.weight")
    embedding = tensors.get(_embedding_names(model_type)[0])
    if head is None:
        tied = True
    elif tied and embedding is not None:
        tied = head.shape == embedding.shape and np.array_equal(head, embedding)
    fields["tie_word_embeddings"] = tied
    if model_type == "t5gemma2":  # transformers' default 256,000; our exports may say null
        eoi = hf["encoder"].get("eoi_token_index", 256_000)
        fields["eoi_token_index"] = None if eoi is None else int(eoi)
    return fields


def to_hf_config(cfg: T5GemmaConfig, carried: dict | None = None) -> dict:
    """The `config.json` of `cfg`, in transformers 5's spelling. `carried`: the source
    folder's `config.json`, whose vision settings a T5Gemma 2 export keeps."""
    specials = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    specials["bos_token_id"] = cfg.decoder_start_token_id
    stacks = []
    for stack in (cfg.encoder, cfg.decoder):
        sub = decoder_only.to_hf_config(stack)
        del sub["architectures"], sub["tie_word_embeddings"]
        stacks.append(sub | specials | {"vocab_size": cfg.vocab_size})
    encoder, decoder = stacks
    out = {
        "architectures": [HF_MODEL_TYPES[cfg.model_type][0]],
        "model_type": cfg.model_type,
        "is_encoder_decoder": True,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "vocab_size": cfg.vocab_size,
        **specials,
        "decoder_start_token_id": cfg.decoder_start_token_id,
    }
    if cfg.model_type == "t5gemma":
        encoder["model_type"] = decoder["model_type"] = "t5_gemma_module"
        decoder |= {"is_decoder": True, "cross_attention_hidden_size": cfg.encoder.hidden_size}
        return out | {"encoder": encoder, "decoder": decoder}
    encoder["model_type"], decoder["model_type"] = "t5gemma2_text", "t5gemma2_decoder"
    vision = {
        k: v for k, v in ((carried or {}).get("encoder") or {}).items() if k in VISION_CONFIG_FIELDS
    }
    vision["eoi_token_index"] = cfg.eoi_token_index
    wrapped = {"model_type": "t5gemma2_encoder", "text_config": encoder, **vision}
    image_token = (carried or {}).get("image_token_index")
    if image_token is not None:
        out["image_token_index"] = image_token
    return out | {"encoder": wrapped, "decoder": decoder}


def _embedding_names(model_type: str) -> tuple[str, str]:
    """(the head's embedding, the encoder's embedding) in the checkpoint."""
    if model_type == "t5gemma2":
        return "model.encoder.embed_tokens.weight", "model.encoder.embed_tokens.weight"
    return "model.decoder.embed_tokens.weight", "model.encoder.embed_tokens.weight"


def hf_tensor_names(cfg: T5GemmaConfig) -> dict[tuple[str, ...], tuple[str, int | None]]:
    """Our parameter path -> (Hugging Face tensor name, split); see `t5.hf_tensor_names`."""
    head_embedding, encoder_embedding = _embedding_names(cfg.model_type)
    names = {
        ("token_embedder", "embedding"): (head_embedding, None),
        ("encoder_norm", "scale"): ("model.encoder.norm.weight", None),
        ("decoder_norm", "scale"): ("model.decoder.norm.weight", None),
    }
    if not cfg.shared_embedding:
        names[("encoder_token_embedder", "embedding")] = (encoder_embedding, None)
    if cfg.eoi_token_index is not None:
        names[("eoi_embedding",)] = ("model.encoder.embed_tokens.eoi_embedding", None)
    if not cfg.tie_word_embeddings:
        names[("lm_head", "kernel")] = ("lm_head.out_proj.weight", 1)
    norms = {
        "pre_attention_norm": "pre_self_attn_layernorm",
        "post_attention_norm": "post_self_attn_layernorm",
        "pre_mlp_norm": "pre_feedforward_layernorm",
        "post_mlp_norm": "post_feedforward_layernorm",
    }
    cross_norms = {
        "pre_cross_attention_norm": "pre_cross_attn_layernorm",
        "post_cross_attention_norm": "post_cross_attn_layernorm",
    }
    for stack, sub in (("encoder", cfg.encoder), ("decoder", cfg.decoder)):
        for i in range(sub.num_hidden_layers):
            ours, theirs = f"{stack}_layers_{i}", f"model.{stack}.layers.{i}"
            layer_norms = norms | (
                cross_norms if stack == "decoder" and not cfg.merged_attention else {}
            )
            for our_norm, their_norm in layer_norms.items():
                names[(ours, our_norm, "scale")] = (f"{theirs}.{their_norm}.weight", None)
            names |= attention_tensor_names(sub, (ours, "self_attention"), f"{theirs}.self_attn")
            if stack == "decoder" and not cfg.merged_attention:
                names |= attention_tensor_names(
                    sub, (ours, "cross_attention"), f"{theirs}.cross_attn"
                )
            names |= mlp_tensor_names((ours, "mlp"), f"{theirs}.mlp")
    return names


def hf_aliases(cfg: T5GemmaConfig) -> dict[str, str]:
    """Tensors a checkpoint may also store that repeat another one (transformers ties them)."""
    head_embedding, _ = _embedding_names(cfg.model_type)
    aliases = {"lm_head.out_proj.weight": head_embedding} if cfg.tie_word_embeddings else {}
    if cfg.shared_embedding:
        aliases["model.decoder.embed_tokens.weight"] = head_embedding
    if cfg.eoi_token_index is not None:
        aliases["model.decoder.embed_tokens.eoi_embedding"] = (
            "model.encoder.embed_tokens.eoi_embedding"
        )
    return aliases

"""T5 encoder-decoder (v1.1 style by default) in Flax.

Structure follows the public T5 checkpoints so Hugging Face weights map onto it one tensor
at a time: a shared token embedding, per-stack relative position bias, pre-norm blocks with
RMS layer norm, and an untied output head unless `tie_word_embeddings` is set. Field names
of `T5Config` are those of Hugging Face's `config.json`.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irl_lm.models.layers import (
    MLP,
    Embed,
    MultiHeadAttention,
    RMSNorm,
    attention_bias,
    constrain,
    normal,
    param,
)


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 1024
    num_heads: int = 6
    num_layers: int = 8
    num_decoder_layers: int | None = None  # None: same as num_layers
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"  # T5 v1.1 / FLAN-T5; "relu" for original T5
    tie_word_embeddings: bool = False  # original T5 ties the head and scales by d_model^-0.5
    dtype: str = "float32"  # activation / compute dtype; parameters stay float32

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers


def relative_position_bucket(
    relative_position: np.ndarray, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bucketing of (key position - query position): exact when small, log-spaced after."""
    buckets = np.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0) * num_buckets
        distance = np.abs(relative_position)
    else:
        distance = -np.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    log_ratio = np.log(np.maximum(distance, 1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_len: int, k_len: int) -> jax.Array:
        """Bias `[1, H, Q, K]` (float32)."""
        table = param(
            self,
            "rel_embedding",
            normal(1.0),
            (self.num_buckets, self.num_heads),
            ("relpos_buckets", "heads"),
        )
        relative = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = table[buckets]  # [Q, K, H]
        return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, bias, *, deterministic):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, name="attention")(
            h, h, bias, deterministic=deterministic
        )
        x = x + drop(h)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
        x = x + drop(_mlp(cfg, dtype)(h, deterministic=deterministic))
        return constrain(x, "activation_batch", "activation_length", "activation_embed")


class DecoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, encoded, self_bias, cross_bias, *, deterministic):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        attention = lambda name: MultiHeadAttention(
            cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, name=name
        )
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(x)
        x = x + drop(attention("self_attention")(h, h, self_bias, deterministic=deterministic))
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(x)
        x = x + drop(
            attention("encoder_decoder_attention")(
                h, encoded, cross_bias, deterministic=deterministic
            )
        )
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
        x = x + drop(_mlp(cfg, dtype)(h, deterministic=deterministic))
        return constrain(x, "activation_batch", "activation_length", "activation_embed")


def _mlp(cfg: T5Config, dtype) -> MLP:
    gated = cfg.feed_forward_proj.startswith("gated-")
    activation = cfg.feed_forward_proj.removeprefix("gated-")
    return MLP(cfg.d_ff, activation, gated, cfg.dropout_rate, dtype, name="mlp")


class T5(nn.Module):
    """`apply({'params': p}, batch)` -> logits `[B, T, V]` for a seqio encoder-decoder batch."""

    config: T5Config

    def setup(self):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, dtype)
        rel = lambda bidirectional: RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional,
        )
        self.encoder_relpos = rel(True)
        self.decoder_relpos = rel(False)
        self.encoder_layers = [EncoderLayer(cfg) for _ in range(cfg.num_layers)]
        self.decoder_layers = [DecoderLayer(cfg) for _ in range(cfg.decoder_layers)]
        self.encoder_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
        self.decoder_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=dtype,
                kernel_init=nn.with_logical_partitioning(
                    normal(cfg.d_model**-0.5), ("embed", "vocab")
                ),
            )

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, deterministic=True):
        """Encoder states `[B, S, D]`."""
        tokens = encoder_input_tokens
        mask = _padding_mask(tokens, tokens, encoder_segment_ids, encoder_segment_ids)
        bias = attention_bias(mask) + self.encoder_relpos(tokens.shape[1], tokens.shape[1])
        x = self.dropout(self.token_embedder(tokens), deterministic=deterministic)
        for layer in self.encoder_layers:
            x = layer(x, bias, deterministic=deterministic)
        return self.dropout(self.encoder_norm(x), deterministic=deterministic)

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens=None,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        *,
        deterministic=True,
    ):
        """Teacher-forced decoder logits `[B, T, V]`.

        Padding is read off `decoder_target_tokens` when given (the decoder input starts
        with token 0, so it cannot tell padding apart); without targets (sampling) every
        position counts and only the causal mask applies.
        """
        length = decoder_input_tokens.shape[1]
        real = decoder_target_tokens
        if real is None:
            real = jnp.ones_like(decoder_input_tokens)
        causal = np.tril(np.ones((length, length), bool))[None]
        self_mask = causal & _padding_mask(real, real, decoder_segment_ids, decoder_segment_ids)
        self_bias = attention_bias(self_mask) + self.decoder_relpos(length, length)
        cross_bias = attention_bias(
            _padding_mask(real, encoder_input_tokens, decoder_segment_ids, encoder_segment_ids)
        )
        x = self.dropout(self.token_embedder(decoder_input_tokens), deterministic=deterministic)
        for layer in self.decoder_layers:
            x = layer(x, encoded, self_bias, cross_bias, deterministic=deterministic)
        x = self.dropout(self.decoder_norm(x), deterministic=deterministic)
        if self.config.tie_word_embeddings:
            logits = self.token_embedder.attend(x * self.config.d_model**-0.5)
        else:
            logits = self.lm_head(x)
        return constrain(logits, "activation_batch", "activation_length", "activation_vocab")

    def __call__(self, batch, *, deterministic=True):
        encoded = self.encode(
            batch["encoder_input_tokens"],
            batch.get("encoder_segment_ids"),
            deterministic=deterministic,
        )
        return self.decode(
            encoded,
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch.get("decoder_target_tokens"),
            batch.get("encoder_segment_ids"),
            batch.get("decoder_segment_ids"),
            deterministic=deterministic,
        )


def _padding_mask(q_tokens, k_tokens, q_segments, k_segments):
    """`[B, Q, K]`: both positions are real tokens and, when packed, in the same segment."""
    mask = (q_tokens > 0)[:, :, None] & (k_tokens > 0)[:, None, :]
    if q_segments is not None and k_segments is not None:
        mask = mask & (q_segments[:, :, None] == k_segments[:, None, :])
    return mask

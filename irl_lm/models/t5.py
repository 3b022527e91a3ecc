"""T5 encoder-decoder (v1.1 style by default) in Flax.

Structure follows the public T5 checkpoints so Hugging Face weights map onto it one tensor
at a time: a shared token embedding, per-stack relative position bias, pre-norm blocks with
RMS layer norm, and an untied output head unless `tie_word_embeddings` is set. Field names
of `T5Config` are those of Hugging Face's `config.json`.
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
    MultiHeadAttention,
    RMSNorm,
    check_runtime_fields,
    constrain,
    normal,
    padding_mask,
    param,
    remat,
    token_lengths,
    vocab_logits,
    write_kv,
)


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    # The row that holds the checkpoint's token 0 when import moved it off seqio's padding id
    # (irl_lm.data.vocabularies.zero_token_swap; export moves it back); 0: not moved.
    token_zero_row: int = 0
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
    tie_word_embeddings: bool = False  # original T5: the head is the shared embedding
    scale_decoder_outputs: bool | None = None  # x d_model^-0.5 before the head; None: as tied
    dtype: str = "float32"  # activation / compute dtype (bfloat16 on accelerators)
    param_dtype: str = "float32"  # parameters and optimizer state; bfloat16 where memory matters
    attention_impl: str = "auto"  # layers.dot_attention: auto, einsum, xla, cudnn
    remat: str = "none"  # recompute in the backward pass: none, dots_saveable, full

    def __post_init__(self):
        check_runtime_fields(self)
        if self.token_zero_row and not 0 < self.token_zero_row < self.vocab_size:
            raise ValueError(
                f"T5Config.token_zero_row={self.token_zero_row} is not supported; allowed: "
                f"a row of the vocabulary, 0 to {self.vocab_size - 1}"
            )
        if self.activation not in ACTIVATIONS:
            allowed = sorted({f"gated-{a}" for a in ACTIVATIONS} | set(ACTIVATIONS))
            raise ValueError(
                f"T5Config.feed_forward_proj={self.feed_forward_proj!r} is not supported; "
                f"allowed: {allowed}"
            )

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """The ACTIVATIONS key, as Hugging Face reads `feed_forward_proj`."""
        if self.feed_forward_proj == "gated-gelu":  # T5 v1.1 means the tanh approximation
            return "gelu_new"
        return self.feed_forward_proj.removeprefix("gated-")

    @property
    def scales_decoder_outputs(self) -> bool:
        if self.scale_decoder_outputs is None:
            return self.tie_word_embeddings
        return self.scale_decoder_outputs


def relative_position_bucket(
    relative_position, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucketing of (key position - query position): exact when small, log-spaced after."""
    relative_position = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(distance, 1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_len: int, k_len: int, q_offset=0) -> jax.Array:
        """Bias `[1, H, Q, K]` (float32) for queries at `q_offset + [0, Q)`, keys at `[0, K)`."""
        table = param(
            self,
            "rel_embedding",
            normal(1.0),
            (self.num_buckets, self.num_heads),
            ("relpos_buckets", "heads"),
        )
        relative = jnp.arange(k_len)[None, :] - (jnp.arange(q_len)[:, None] + q_offset)
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = jnp.take(table, buckets, axis=0)  # [Q, K, H]
        return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, mask, deterministic):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
        attention = _attention(cfg, dtype, name="attention")
        h = attention(h, h, mask, deterministic=deterministic)
        x = x + drop(h)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
        x = x + drop(_mlp(cfg, dtype)(h, deterministic=deterministic))
        return constrain(x, "activation_batch", "activation_length", "activation_embed")


class DecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention and MLP; teacher-forced over a whole sequence
    (`__call__`) or one position at a time against a key/value cache (`step`)."""

    config: T5Config

    def setup(self):
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        norm = lambda: RMSNorm(cfg.layer_norm_epsilon, dtype)
        attention = lambda: _attention(cfg, dtype, name=None)
        self.pre_self_attention_layer_norm = norm()
        self.self_attention = attention()
        self.pre_cross_attention_layer_norm = norm()
        self.encoder_decoder_attention = attention()
        self.pre_mlp_layer_norm = norm()
        self.mlp = _mlp(cfg, dtype, name=None)
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def __call__(self, x, encoded, self_mask, cross_mask, deterministic):
        h = self.pre_self_attention_layer_norm(x)
        self_kv = self.self_attention.project_kv(h)
        cross_kv = self.encoder_decoder_attention.project_kv(encoded)
        return self._block(x, h, self_kv, cross_kv, self_mask, cross_mask, deterministic)

    def cross_kv(self, encoded):
        """The cross-attention keys and values: computed once per input when decoding."""
        return self.encoder_decoder_attention.project_kv(encoded)

    def step(self, x_Bx1xD, kv, cross_kv, self_mask, cross_mask, index):
        """One position: writes its key/value at `index` of `kv`; returns (x, kv). `cross_kv`
        may hold one row per N rows of `x` (N continuations of each input)."""
        h = self.pre_self_attention_layer_norm(x_Bx1xD)
        k_new, v_new = self.self_attention.project_kv(h)
        kv = write_kv(kv, k_new, v_new, index)
        x = self._block(x_Bx1xD, h, (kv["k"], kv["v"]), cross_kv, self_mask, cross_mask, True)
        return x, kv

    def _block(self, x, h, self_kv, cross_kv, self_mask, cross_mask, deterministic):
        """The layer after the first norm: `h` is x normed, `self_kv` its keys/values."""
        drop = lambda y: self.dropout(y, deterministic=deterministic)
        x = x + drop(
            self.self_attention.attend(h, *self_kv, self_mask, deterministic=deterministic)
        )
        h = self.pre_cross_attention_layer_norm(x)
        # N rows per input (samples, beams) attend to it as N x T queries of one row.
        inputs, rows_BxTxD = cross_kv[0].shape[0], h.shape
        h = h.reshape(inputs, -1, h.shape[-1])
        cross = self.encoder_decoder_attention.attend(
            h, *cross_kv, cross_mask, deterministic=deterministic
        )
        x = x + drop(cross.reshape(rows_BxTxD))
        h = self.pre_mlp_layer_norm(x)
        x = x + drop(self.mlp(h, deterministic=deterministic))
        return constrain(x, "activation_batch", "activation_length", "activation_embed")


def _mlp(cfg: T5Config, dtype, name: str | None = "mlp") -> MLP:
    return MLP(cfg.d_ff, cfg.activation, cfg.gated, cfg.dropout_rate, dtype, name=name)


def _attention(cfg: T5Config, dtype, name: str | None) -> MultiHeadAttention:
    return MultiHeadAttention(
        cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype, cfg.attention_impl, name=name
    )


class T5(nn.Module):
    """`apply({'params': p}, batch)` -> logits `[B, T, V]` for a seqio encoder-decoder batch."""

    config: T5Config
    input_features = ("encoder_input_tokens", "decoder_input_tokens")  # what apply() needs

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
        # `deterministic` (the last argument) is static under rematerialisation.
        encoder_layer = remat(EncoderLayer, cfg.remat, static_argnums=(3,))
        decoder_layer = remat(DecoderLayer, cfg.remat, static_argnums=(5,))
        self.encoder_layers = [encoder_layer(cfg) for _ in range(cfg.num_layers)]
        self.decoder_layers = [decoder_layer(cfg) for _ in range(cfg.decoder_layers)]
        self.encoder_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
        self.decoder_norm = RMSNorm(cfg.layer_norm_epsilon, dtype)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if not cfg.tie_word_embeddings:
            self.lm_head = Head(cfg.vocab_size, dtype)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, deterministic=True):
        """Encoder states `[B, S, D]`."""
        tokens = encoder_input_tokens
        lengths = token_lengths(tokens)
        mask = AttentionMask(
            padding_mask(tokens, tokens, encoder_segment_ids, encoder_segment_ids),
            self.encoder_relpos(tokens.shape[1], tokens.shape[1]),
            lengths,
            lengths,
            dense_only=encoder_segment_ids is not None,
        )
        x = self.dropout(self.token_embedder(tokens), deterministic=deterministic)
        for layer in self.encoder_layers:
            x = layer(x, mask, deterministic)
        return self.dropout(self.encoder_norm(x), deterministic=deterministic)

    def decode(
        self,
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        *,
        deterministic=True,
    ):
        """Teacher-forced final decoder states `[B, T, D]` (`logits` maps them).

        Every decoder position counts: the causal mask alone keeps padding (always after a
        row's real tokens) out of every real position's view, so nothing is read off the
        token values and a token 0 inside a sampled row is a token like any other. Packed
        rows also stay within their segment.
        """
        length = decoder_input_tokens.shape[1]
        real = jnp.ones_like(decoder_input_tokens)
        causal = np.tril(np.ones((length, length), bool))[None]
        packed = decoder_segment_ids is not None
        self_mask = AttentionMask(
            causal & padding_mask(real, real, decoder_segment_ids, decoder_segment_ids),
            self.decoder_relpos(length, length),
            causal=True,
            dense_only=packed,
        )
        cross_mask = AttentionMask(
            padding_mask(real, encoder_input_tokens, decoder_segment_ids, encoder_segment_ids),
            kv_lengths_B=token_lengths(encoder_input_tokens),
            dense_only=packed,
        )
        x = self.dropout(self.token_embedder(decoder_input_tokens), deterministic=deterministic)
        for layer in self.decoder_layers:
            x = layer(x, encoded, self_mask, cross_mask, deterministic)
        return self.dropout(self.decoder_norm(x), deterministic=deterministic)

    def logits(self, x_BxTxD):
        """Logits `[B, T, V]` (float32) of final decoder states (`hidden`)."""
        if self.config.scales_decoder_outputs:
            x_BxTxD = x_BxTxD * self.config.d_model**-0.5
        head = None if self.config.tie_word_embeddings else self.lm_head
        return vocab_logits(x_BxTxD, self.token_embedder, head)

    # -- incremental decoding (irl_lm.decoding): prefill once, then one token per step ------

    def prefill(self, batch, max_len: int):
        """The decoding cache for `batch['encoder_input_tokens']` and up to `max_len` steps.

        `cache['inputs']`: what depends on the input only (the encoder tokens, the
        cross-attention keys/values per layer); `cache['decode']`: what each decoded row
        writes (self-attention keys/values `[B, max_len, H, Dk]` per layer). Every leaf has
        the batch first: a decoder repeats rows for samples and beams, and reorders only
        `decode` between beams of the same input.
        """
        tokens = batch["encoder_input_tokens"]
        encoded = self.encode(tokens)
        batch_size, dtype = tokens.shape[0], jnp.dtype(self.config.dtype)
        empty = jnp.zeros((batch_size, max_len, self.config.num_heads, self.config.d_kv), dtype)
        cross = [
            dict(zip("kv", layer.cross_kv(encoded), strict=True)) for layer in self.decoder_layers
        ]
        return {
            "inputs": {"encoder_input_tokens": tokens, "cross": cross},
            "decode": {"layers": [{"k": empty, "v": empty} for _ in self.decoder_layers]},
        }

    def decode_step(self, cache, tokens_B, index):
        """Logits `[B, V]` for the position `index` (its input token `tokens_B`: the previous
        output, 0 at the start) and the updated cache; B may be N rows per input of
        `cache['inputs']` (`irl_lm.decoding`)."""
        max_len = cache["decode"]["layers"][0]["k"].shape[1]
        visible = jnp.arange(max_len) <= index  # causal: positions written so far
        self_mask = AttentionMask(
            visible[None, None, :],
            self.decoder_relpos(1, max_len, q_offset=index),
            dense_only=True,
        )
        encoder_real = cache["inputs"]["encoder_input_tokens"] > 0
        cross_mask = AttentionMask(encoder_real[:, None, :], dense_only=True)
        x = self.token_embedder(tokens_B[:, None])
        layers = []
        for layer, kv, cross in zip(
            self.decoder_layers, cache["decode"]["layers"], cache["inputs"]["cross"], strict=True
        ):
            x, kv = layer.step(x, kv, (cross["k"], cross["v"]), self_mask, cross_mask, index)
            layers.append(kv)
        logits = self.logits(self.decoder_norm(x))[:, 0]
        return logits, {"inputs": cache["inputs"], "decode": {"layers": layers}}

    def __call__(self, batch, *, deterministic=True):
        """Logits `[B, T, V]` (float32)."""
        return self.logits(self.hidden(batch, deterministic=deterministic))

    def hidden(self, batch, *, deterministic=True):
        """Final decoder states `[B, T, D]`: `logits` of them are the model's output (the
        chunked losses apply the head a few positions at a time)."""
        encoded = self.encode(
            batch["encoder_input_tokens"],
            batch.get("encoder_segment_ids"),
            deterministic=deterministic,
        )
        return self.decode(
            encoded,
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            batch.get("encoder_segment_ids"),
            batch.get("decoder_segment_ids"),
            deterministic=deterministic,
        )


# ----------------------------------------------------------------------------- Hugging Face layout

# config.json fields that are ours too (same names, same meaning).
_HF_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_heads",
    "num_layers",
    "num_decoder_layers",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "dropout_rate",
    "layer_norm_epsilon",
    "feed_forward_proj",
)
HF_MODEL_TYPES = ("t5", "mt5")  # mT5 and ByT5 are T5 v1.1 with other vocabularies


def from_hf_config(hf: dict, tensors: Mapping[str, np.ndarray]) -> dict:
    """`T5Config` fields from a Hugging Face T5 `config.json` and the checkpoint's tensors."""
    # Defaults of transformers' T5Config where an (older) config.json leaves a field out.
    fields = {"relative_attention_max_distance": 128, "feed_forward_proj": "relu"}
    fields |= {k: hf[k] for k in _HF_FIELDS if hf.get(k) is not None}
    tied = bool(hf.get("tie_word_embeddings", True))
    # transformers' rule: a stored head that differs from the embedding is not tied, whatever
    # config.json says (transformers 5 writes tie_word_embeddings=true for every T5).
    head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    if tied and head is not None and shared is not None:
        tied = head.shape == shared.shape and np.array_equal(head, shared)
    fields["tie_word_embeddings"] = tied
    # Original T5 scales the decoder output; v1.1 / FLAN-T5 configs say tie_word_embeddings
    # false, which transformers reads as "do not scale" (newer files say it outright).
    # mT5 is v1.1 and never scales, whatever its config says.
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    fields["scale_decoder_outputs"] = bool(scale) and hf.get("model_type") != "mt5"
    return fields


def to_hf_config(cfg: T5Config) -> dict:
    """A `config.json` that transformers 4 and 5 read back as this model."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        **{k: getattr(cfg, k) for k in _HF_FIELDS},
        "num_decoder_layers": cfg.decoder_layers,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "scale_decoder_outputs": cfg.scales_decoder_outputs,
        "is_encoder_decoder": True,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


def hf_tensor_names(cfg: T5Config) -> dict[tuple[str, ...], tuple[str, int | None]]:
    """Our parameter path -> (Hugging Face tensor name, split).

    split None: the same array. split s: a torch Linear weight `[out, in]`, whose transpose
    is ours with dimensions `[:s]` and `[s:]` merged (`[embed, heads, kv]` has s=1 from
    `[heads * kv, embed]`, the output kernel `[heads, kv, embed]` s=2 from `[embed, heads * kv]`).
    """
    names = {
        ("token_embedder", "embedding"): ("shared.weight", None),
        ("encoder_norm", "scale"): ("encoder.final_layer_norm.weight", None),
        ("decoder_norm", "scale"): ("decoder.final_layer_norm.weight", None),
    }
    for stack in ("encoder", "decoder"):
        bias = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        names[(f"{stack}_relpos", "rel_embedding")] = (bias, None)
    if not cfg.tie_word_embeddings:
        names[("lm_head", "kernel")] = ("lm_head.weight", 1)

    def attention(ours: tuple[str, ...], theirs: str) -> None:
        for our_name, hf_name in (("query", "q"), ("key", "k"), ("value", "v")):
            names[(*ours, our_name)] = (f"{theirs}.{hf_name}.weight", 1)
        names[(*ours, "out")] = (f"{theirs}.o.weight", 2)

    def mlp(ours: tuple[str, ...], theirs: str) -> None:
        for kernel in ("wi_0", "wi_1", "wo") if cfg.gated else ("wi", "wo"):
            names[(*ours, kernel)] = (f"{theirs}.{kernel}.weight", 1)

    for i in range(cfg.num_layers):
        layer, block = f"encoder_layers_{i}", f"encoder.block.{i}.layer"
        names[(layer, "pre_attention_layer_norm", "scale")] = (f"{block}.0.layer_norm.weight", None)
        attention((layer, "attention"), f"{block}.0.SelfAttention")
        names[(layer, "pre_mlp_layer_norm", "scale")] = (f"{block}.1.layer_norm.weight", None)
        mlp((layer, "mlp"), f"{block}.1.DenseReluDense")
    for i in range(cfg.decoder_layers):
        layer, block = f"decoder_layers_{i}", f"decoder.block.{i}.layer"
        norms = ("pre_self_attention_layer_norm", "pre_cross_attention_layer_norm")
        for j, norm in enumerate((*norms, "pre_mlp_layer_norm")):
            names[(layer, norm, "scale")] = (f"{block}.{j}.layer_norm.weight", None)
        attention((layer, "self_attention"), f"{block}.0.SelfAttention")
        attention((layer, "encoder_decoder_attention"), f"{block}.1.EncDecAttention")
        mlp((layer, "mlp"), f"{block}.2.DenseReluDense")
    return names


def hf_aliases(cfg: T5Config) -> dict[str, str]:
    """Tensors a checkpoint may also store that repeat another one (transformers ties them)."""
    aliases = {f"{stack}.embed_tokens.weight": "shared.weight" for stack in ("encoder", "decoder")}
    if cfg.tie_word_embeddings:
        aliases["lm_head.weight"] = "shared.weight"
    return aliases

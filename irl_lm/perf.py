"""Model FLOPs of a training step or of sampling, and model FLOPs utilisation (MFU).

Conventions are MaxText's: a matmul of `[m, k] x [k, n]` is `2 * m * k * n` FLOPs; attention
scores (Q K^T) and context (P V) are counted, causal self-attention over half of the
query-key pairs; embedding lookups, norms, softmax and elementwise ops are not counted; the
output head is. A training update is forward + backward = 3 x the forward FLOPs. These are
*model* FLOPs: what the architecture needs, not what XLA runs (no rematerialisation, no
masked-out attention scores), so MFU compares across implementations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from irl_lm.models import T5GemmaConfig, is_decoder_only
from irl_lm.models.decoder_only import SLIDING

# (substring of the lower-cased `jax.Device.device_kind`, peak dense bf16 FLOP/s), first
# match wins: "tpu v5 lite" (v5e) must come before the bare "tpu v5" that v5p may report.
PEAK_BF16_FLOPS_PER_DEVICE: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device of this kind; None when unknown (e.g. "cpu")."""
    kind = device_kind.lower()
    for substring, peak in PEAK_BF16_FLOPS_PER_DEVICE:
        if substring in kind:
            return peak
    return None


def _shape(batch_shapes: Mapping[str, Any], name: str) -> tuple[int, int]:
    """`[B, L]` of feature `name`, given as a shape or as an array."""
    if name not in batch_shapes:
        raise KeyError(f"batch_shapes needs {name!r}; got {sorted(batch_shapes)}")
    value = batch_shapes[name]
    shape = tuple(value.shape) if hasattr(value, "shape") else tuple(value)
    if len(shape) != 2:
        raise ValueError(f"batch_shapes[{name!r}] should be [batch, length], got {shape}")
    return int(shape[0]), int(shape[1])


def _causal_pairs(length: int, window: int | None = None) -> float:
    """Query-key pairs a causal layer attends to, to first order: T^2/2, or T*w - w^2/2
    when a sliding window w < T keeps only the last w keys of each query."""
    if window is None or window >= length:
        return length * length / 2
    return length * window - window * window / 2


def flops_breakdown(model, batch_shapes: Mapping[str, Any]) -> dict[str, float]:
    """Forward FLOPs of one teacher-forced pass over a batch, by part of the model.

    `batch_shapes` maps feature names to `[B, L]` shapes (or arrays): `encoder_input_tokens`
    `[B, S]` and `decoder_target_tokens` `[B, T]` for T5, `decoder_target_tokens` for a
    decoder-only model. The padded shape is what counts: padding positions are counted, and
    a packed batch is counted by its padded shape too (attention across the segments of a
    packed row is masked, not skipped, so it costs the same as one long sequence).
    """
    if is_decoder_only(model):
        return _decoder_only_breakdown(model.config, *_shape(batch_shapes, "decoder_target_tokens"))
    batch, inputs_len = _shape(batch_shapes, "encoder_input_tokens")
    _, targets_len = _shape(batch_shapes, "decoder_target_tokens")
    if isinstance(model.config, T5GemmaConfig):
        return _t5gemma_breakdown(model.config, batch, inputs_len, targets_len)
    return _t5_breakdown(model.config, batch, inputs_len, targets_len)


def train_flops_per_step(model, batch_shapes: Mapping[str, Any]) -> float:
    """Model FLOPs of one training update on this batch: forward + backward = 3 x forward
    (the backward pass runs two matmuls per forward one: gradients of inputs and weights)."""
    return 3 * sum(flops_breakdown(model, batch_shapes).values())


def _t5_per_token(cfg) -> tuple[int, int]:
    """(q/k/v/o projection FLOPs for one of the four, MLP FLOPs) per token of a T5 layer."""
    projection = 2 * cfg.d_model * cfg.num_heads * cfg.d_kv
    mlp = (3 if cfg.gated else 2) * 2 * cfg.d_model * cfg.d_ff
    return projection, mlp


def _t5_breakdown(cfg, batch: int, inputs_len: int, targets_len: int) -> dict[str, float]:
    projection, mlp = _t5_per_token(cfg)
    per_pair = 2 * 2 * cfg.num_heads * cfg.d_kv  # scores and context of one query-key pair
    enc_tokens, dec_tokens = batch * inputs_len, batch * targets_len
    encoder_matmul = cfg.num_layers * enc_tokens * (4 * projection + mlp)
    encoder_attention = cfg.num_layers * batch * inputs_len * inputs_len * per_pair
    # Self-attention q/k/v/o and cross-attention q/o run on decoder tokens; the cross k/v
    # projections read the encoder output, once per decoder layer.
    decoder_matmul = cfg.decoder_layers * (
        dec_tokens * (6 * projection + mlp) + enc_tokens * 2 * projection
    )
    self_pairs = _causal_pairs(targets_len)
    cross_pairs = targets_len * inputs_len  # every decoder position sees every input
    decoder_attention = cfg.decoder_layers * batch * (self_pairs + cross_pairs) * per_pair
    return {
        "encoder_matmul": float(encoder_matmul),
        "encoder_attention": float(encoder_attention),
        "decoder_matmul": float(decoder_matmul),
        "decoder_attention": float(decoder_attention),
        "head": float(dec_tokens * 2 * cfg.d_model * cfg.vocab_size),
    }


def _decoder_only_per_token(cfg) -> int:
    """Matmul FLOPs per token of one decoder-only layer (projections and gated MLP)."""
    d, ff = cfg.hidden_size, cfg.intermediate_size
    q_width, kv_width = cfg.num_attention_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
    return 2 * d * q_width + 2 * 2 * d * kv_width + 2 * q_width * d + 3 * 2 * d * ff


def _decoder_only_breakdown(cfg, batch: int, length: int) -> dict[str, float]:
    # Every query head scores against its group's key head: the work scales with query heads.
    per_pair = 2 * 2 * cfg.num_attention_heads * cfg.head_size
    pairs = sum(_causal_pairs(length, _window(cfg, i)) for i in range(cfg.num_hidden_layers))
    return {
        "decoder_matmul": float(
            cfg.num_hidden_layers * batch * length * _decoder_only_per_token(cfg)
        ),
        "decoder_attention": float(batch * pairs * per_pair),
        "head": float(batch * length * 2 * cfg.hidden_size * cfg.vocab_size),
    }


def _window(cfg, layer: int) -> int | None:
    return cfg.sliding_window if cfg.layer_type(layer) == SLIDING else None


def _t5gemma_parts(cfg: T5GemmaConfig, inputs_len: int) -> dict[str, float]:
    """Per-input and per-decoder-token FLOPs of T5Gemma's parts (one input of `inputs_len`)."""
    enc, dec = cfg.encoder, cfg.decoder
    behind, ahead = cfg.encoder_window()
    encoder_pairs = sum(
        inputs_len * min(inputs_len, behind + ahead + 1) if _window(enc, i) else inputs_len**2
        for i in range(enc.num_hidden_layers)
    )
    q_width, kv_width = dec.num_attention_heads * dec.head_size, dec.kv_heads * dec.head_size
    # The encoder's keys/values for each decoder layer (merged attention: the layer's own
    # kernels; T5Gemma: the cross-attention's), and T5Gemma's cross q/o per decoder token.
    cross_kv = 2 * 2 * enc.hidden_size * kv_width
    cross_qo = 0 if cfg.merged_attention else 2 * 2 * dec.hidden_size * q_width
    return {
        "encoder_matmul": enc.num_hidden_layers * inputs_len * _decoder_only_per_token(enc),
        "encoder_attention": encoder_pairs * 2 * 2 * enc.num_attention_heads * enc.head_size,
        "cross_kv": dec.num_hidden_layers * inputs_len * cross_kv,
        "decoder_token": dec.num_hidden_layers * (_decoder_only_per_token(dec) + cross_qo),
        "per_pair": 2 * 2 * dec.num_attention_heads * dec.head_size,
        "head": 2 * dec.hidden_size * cfg.vocab_size,
    }


def _t5gemma_breakdown(cfg, batch: int, inputs_len: int, targets_len: int) -> dict[str, float]:
    parts, dec = _t5gemma_parts(cfg, inputs_len), cfg.decoder
    self_pairs = sum(
        _causal_pairs(targets_len, _window(dec, i)) for i in range(dec.num_hidden_layers)
    )
    cross_pairs = dec.num_hidden_layers * targets_len * inputs_len
    return {
        "encoder_matmul": float(batch * parts["encoder_matmul"]),
        "encoder_attention": float(batch * parts["encoder_attention"]),
        "decoder_matmul": float(batch * (targets_len * parts["decoder_token"] + parts["cross_kv"])),
        "decoder_attention": float(batch * (self_pairs + cross_pairs) * parts["per_pair"]),
        "head": float(batch * targets_len * parts["head"]),
    }


def sampling_flops(model, num_rows: int, input_len: int, sample_len: int) -> float:
    """Forward FLOPs of sampling `sample_len` tokens for `num_rows` rows with a KV cache.

    The cache has a fixed size and every step attends over all of it (masked slots cost the
    same), as `irl_lm.decoding` runs it. T5 and T5Gemma: the encoder once over `input_len`,
    the cross-attention keys/values once per decoder layer, then per step the decoder layers for one
    token, attention over `sample_len` self and `input_len` cross slots, and the head.
    Decoder-only: a prefill over the `input_len` prompt (causal, halved; no head), then per
    step the layers for one token, attention over `input_len + sample_len` slots (sliding
    layers too: their window is a mask), and the head.
    """
    cfg = model.config
    if is_decoder_only(model):
        per_pair = 2 * 2 * cfg.num_attention_heads * cfg.head_size
        layer = _decoder_only_per_token(cfg)
        layers = cfg.num_hidden_layers
        pairs = sum(_causal_pairs(input_len, _window(cfg, i)) for i in range(layers))
        prefill = num_rows * (layers * input_len * layer + pairs * per_pair)
        step = layers * (layer + (input_len + sample_len) * per_pair)
        step += 2 * cfg.hidden_size * cfg.vocab_size
        return float(prefill + num_rows * sample_len * step)
    if isinstance(cfg, T5GemmaConfig):
        parts = _t5gemma_parts(cfg, input_len)
        per_input = parts["encoder_matmul"] + parts["encoder_attention"] + parts["cross_kv"]
        layers = cfg.decoder.num_hidden_layers
        step = parts["decoder_token"] + layers * (sample_len + input_len) * parts["per_pair"]
        return float(num_rows * (per_input + sample_len * (step + parts["head"])))
    projection, mlp = _t5_per_token(cfg)
    per_pair = 2 * 2 * cfg.num_heads * cfg.d_kv
    encoder = cfg.num_layers * input_len * (4 * projection + mlp + input_len * per_pair)
    cross_kv = cfg.decoder_layers * input_len * 2 * projection
    # Per step: self q/k/v/o, cross q/o and the MLP for the new token, attention, the head.
    step = cfg.decoder_layers * (6 * projection + mlp + (sample_len + input_len) * per_pair)
    step += 2 * cfg.d_model * cfg.vocab_size
    return float(num_rows * (encoder + cross_kv + sample_len * step))


def throughput(
    flops_per_step: float,
    tokens_per_step: int,
    seconds_per_step: float,
    num_devices: int,
    device_kind: str,
) -> dict[str, float | None]:
    """Tokens/s, achieved TFLOP/s per device and MFU (None when the device's peak is unknown).

    `tokens_per_step` is the caller's count (the trainer counts every position of the batch,
    inputs and targets, padding included).
    """
    per_device = flops_per_step / seconds_per_step / num_devices
    peak = peak_flops_per_device(device_kind)
    return {
        "model_flops_per_step": float(flops_per_step),
        "tokens_per_s": tokens_per_step / seconds_per_step,
        "tflops_per_s_per_device": per_device / 1e12,
        "mfu": None if peak is None else per_device / peak,
    }


# The features whose positions a step's FLOPs count (the others repeat their shapes).
COUNTED_FEATURES = ("encoder_input_tokens", "decoder_target_tokens")


@dataclasses.dataclass(frozen=True)
class StepCost:
    """What one training step computes: the update's model FLOPs (forward + backward over
    the data rows, and over the policy samples of an online loss), the forward FLOPs of
    drawing those samples, and the positions the batch holds (inputs and targets, padding
    included)."""

    update_flops: float
    sampling_flops: float
    tokens: int

    def perf(self, steps_per_sec: float, num_devices: int, device_kind: str) -> dict:
        """`perf/*` of a run at `steps_per_sec`: achieved FLOP/s and MFU count the update
        and the sampling, over the step's whole time (which includes the sampling)."""
        flops = {
            "model_flops_per_step": self.update_flops,
            "sampling_flops_per_step": self.sampling_flops,
        }
        if not steps_per_sec > 0 or not math.isfinite(steps_per_sec):
            return flops | {"tokens_per_s": None, "tflops_per_s_per_device": None, "mfu": None}
        total = self.update_flops + self.sampling_flops
        result = throughput(total, self.tokens, 1.0 / steps_per_sec, num_devices, device_kind)
        return result | flops


__all__ = [
    "StepCost",
    "PEAK_BF16_FLOPS_PER_DEVICE",
    "flops_breakdown",
    "peak_flops_per_device",
    "sampling_flops",
    "throughput",
    "train_flops_per_step",
]

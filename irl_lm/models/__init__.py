"""Model families, chosen by `config.model.name`; the other `config.model` fields configure it.

`name` is a family (`t5` and `t5gemma`: encoder-decoder, T5 v1.1 and T5Gemma / T5Gemma 2;
`decoder_only`: Llama / Gemma / PaLM-style) or a preset of one (`t5_small` ... `t5_xxl`,
`t5gemma2_1b_1b`, `gemma3_1b`, `llama3_2_1b`, ...: the public checkpoints' shapes, listed in
`presets.py`); fields given next to a preset override it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import flax.linen as nn
import jax

from irl_lm import sharding
from irl_lm.losses.common import ChunkedLogits
from irl_lm.models.decoder_only import DecoderOnly, DecoderOnlyConfig
from irl_lm.models.layers import config_from_fields
from irl_lm.models.presets import PRESETS, PUBLIC_PARAM_COUNTS
from irl_lm.models.t5 import T5, T5Config
from irl_lm.models.t5gemma import T5Gemma, T5GemmaConfig

# name -> (config dataclass, module class)
MODELS = {
    "t5": (T5Config, T5),
    "decoder_only": (DecoderOnlyConfig, DecoderOnly),
    "t5gemma": (T5GemmaConfig, T5Gemma),
}


def resolve_preset(model_config: Mapping) -> dict:
    """`config.model` with a preset name expanded into its family and fields (a field that
    is itself a dict, e.g. T5Gemma's `encoder`, is merged key by key)."""
    fields = _plain(model_config)
    name = fields.get("name")
    if name in PRESETS:
        family, preset = PRESETS[name]
        fields = {**merge_fields(preset, fields), "name": family}
    return fields


def merge_fields(base: Mapping, overrides: Mapping) -> dict:
    """`base` with `overrides`; a field that is a dict in both (T5Gemma's `encoder`) is merged
    key by key."""
    merged = _plain(base)
    for key, value in _plain(overrides).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = {**merged[key], **value}
        merged[key] = value
    return merged


def _plain(value):
    """Dicts (ConfigDicts too) as plain dicts, all the way down."""
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
        return {k: _plain(v) for k, v in dict(value).items()}
    return value


def build_model(model_config: Mapping) -> nn.Module:
    """Builds the module named by `model_config['name']` from the remaining fields."""
    fields = resolve_preset(model_config)
    name = fields.pop("name", None)
    if name not in MODELS:
        allowed = sorted(MODELS) + sorted(PRESETS)
        raise ValueError(f"config.model.name={name!r} is not a model; allowed: {allowed}")
    config_cls, module_cls = MODELS[name]
    return module_cls(
        config_from_fields(config_cls, fields, "config.model", f" for model {name!r}")
    )


def is_decoder_only(model: nn.Module) -> bool:
    """Whether `model` reads one token stream (prefix-LM batches) rather than encoder inputs."""
    return "encoder_input_tokens" not in type(model).input_features


def num_params(model: nn.Module) -> int:
    """Parameter count, from shapes only (nothing is allocated)."""
    mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
    with sharding.use_mesh(mesh):
        shapes, _ = sharding.abstract_params(model, mesh)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def model_logits(model, params, features, dropout_rng=None, logits_chunk_size: int = 0):
    """The teacher-forced forward pass: logits `[B, T, V]`, or with `logits_chunk_size` > 0
    the final states and the head as `ChunkedLogits` (the losses apply it that many
    positions at a time). Dropout with `dropout_rng`; none (evaluation) without."""
    variables = {"params": params}
    kwargs = {"deterministic": dropout_rng is None}
    if dropout_rng is not None:
        kwargs["rngs"] = {"dropout": dropout_rng}
    if not logits_chunk_size:
        return model.apply(variables, features, **kwargs)
    hidden = model.apply(variables, features, method="hidden", **kwargs)
    head = lambda hidden_BxCxD: model.apply(variables, hidden_BxCxD, method="logits")
    return ChunkedLogits(hidden, head, logits_chunk_size)


__all__ = [
    "DecoderOnly",
    "DecoderOnlyConfig",
    "MODELS",
    "PRESETS",
    "PUBLIC_PARAM_COUNTS",
    "T5",
    "T5Config",
    "T5Gemma",
    "T5GemmaConfig",
    "build_model",
    "is_decoder_only",
    "merge_fields",
    "model_logits",
    "num_params",
    "resolve_preset",
]

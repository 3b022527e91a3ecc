"""Model families, chosen by `config.model.name`; the other `config.model` fields configure it.

`name` is a family (`t5`: encoder-decoder; `decoder_only`: Llama / Gemma / PaLM-style) or a
preset of one (`t5_small` ... `t5_xxl`, `gemma3_270m`, `gemma3_1b`, `llama3_2_1b`,
`tinyllama_1_1b`: the public checkpoints' shapes); fields given next to a preset override it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import flax.linen as nn
import jax

from irl_lm.models.decoder_only import (
    DECODER_ONLY_PRESETS,
    DECODER_ONLY_PUBLIC_PARAM_COUNTS,
    DecoderOnly,
    DecoderOnlyConfig,
)
from irl_lm.models.t5 import T5, T5_PRESETS, T5_PUBLIC_PARAM_COUNTS, T5Config

# name -> (config dataclass, module class)
MODELS = {"t5": (T5Config, T5), "decoder_only": (DecoderOnlyConfig, DecoderOnly)}
# preset name -> (family, fields)
PRESETS = {
    **{name: ("t5", fields) for name, fields in T5_PRESETS.items()},
    **{name: ("decoder_only", fields) for name, fields in DECODER_ONLY_PRESETS.items()},
}
# preset name -> parameter count of the public checkpoint it mirrors
PUBLIC_PARAM_COUNTS = {**T5_PUBLIC_PARAM_COUNTS, **DECODER_ONLY_PUBLIC_PARAM_COUNTS}


def resolve_preset(model_config: Mapping) -> dict:
    """`config.model` with a preset name expanded into its family and fields."""
    fields = dict(model_config)
    name = fields.get("name")
    if name in PRESETS:
        family, preset = PRESETS[name]
        fields = {**preset, **fields, "name": family}
    return fields


def build_model(model_config: Mapping) -> nn.Module:
    """Builds the module named by `model_config['name']` from the remaining fields."""
    fields = resolve_preset(model_config)
    name = fields.pop("name", None)
    if name not in MODELS:
        allowed = sorted(MODELS) + sorted(PRESETS)
        raise ValueError(f"config.model.name={name!r} is not a model; allowed: {allowed}")
    config_cls, module_cls = MODELS[name]
    allowed = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(
            f"config.model: unknown fields {unknown} for model {name!r}; allowed: {sorted(allowed)}"
        )
    try:
        return module_cls(config_cls(**fields))
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None


def is_decoder_only(model: nn.Module) -> bool:
    """Whether `model` reads one token stream (prefix-LM batches) rather than encoder inputs."""
    return "encoder_input_tokens" not in type(model).input_features


def num_params(model: nn.Module) -> int:
    """Parameter count, from shapes only (nothing is allocated)."""
    from irl_lm import sharding

    mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
    with sharding.use_mesh(mesh):
        shapes, _ = sharding.abstract_params(model, mesh)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


from irl_lm.models.hf import export_hf, load_hf, load_vocabulary  # noqa: E402

__all__ = [
    "DecoderOnly",
    "DecoderOnlyConfig",
    "MODELS",
    "PRESETS",
    "PUBLIC_PARAM_COUNTS",
    "T5",
    "T5Config",
    "build_model",
    "export_hf",
    "is_decoder_only",
    "load_hf",
    "load_vocabulary",
    "num_params",
    "resolve_preset",
]

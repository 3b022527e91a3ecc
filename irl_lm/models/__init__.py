"""Model families, chosen by `config.model.name`; the other `config.model` fields configure it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn

from irl_lm.models.t5 import T5, T5Config

# name -> (config dataclass, module class)
MODELS = {"t5": (T5Config, T5)}


def build_model(model_config: Mapping) -> nn.Module:
    """Builds the module named by `model_config['name']` from the remaining fields."""
    fields = dict(model_config)
    name = fields.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"config.model.name={name!r} is not a model; allowed: {sorted(MODELS)}")
    config_cls, module_cls = MODELS[name]
    allowed = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(
            f"config.model: unknown fields {unknown} for model {name!r}; allowed: {sorted(allowed)}"
        )
    return module_cls(config_cls(**fields))


__all__ = ["MODELS", "T5", "T5Config", "build_model"]

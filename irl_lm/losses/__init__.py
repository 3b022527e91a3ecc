"""Losses: pure functions `fn(logits, targets, weights, **fields) -> (loss, metrics)`.

`config.loss.name` picks one from `LOSSES`; the other `config.loss` fields are its keyword
arguments, validated at start by `make_loss`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping

from irl_lm.losses.gail import REWARDS as GAIL_REWARDS
from irl_lm.losses.gail import data_loss as gail_data_loss
from irl_lm.losses.iqlearn import iqlearn_loss, iqlearn_online_loss
from irl_lm.losses.mle import mle_entropy_loss, mle_loss


@dataclasses.dataclass(frozen=True)
class LossSpec:
    fn: Callable
    # field -> (check, what the field accepts, default), for the loss's own config fields.
    fields: Mapping[str, tuple[Callable[[float], bool], str, float]] = dataclasses.field(
        default_factory=dict
    )
    online: bool = False  # needs continuations sampled from the policy (`policy=` argument)


_LAM = (lambda x: x >= 0, "a number >= 0 (0 is MLE; paper grid 0.01-1.0)", 0.1)
DEFAULT_GAMMA = 0.99
_GAMMA = (lambda x: 0 < x <= 1, f"a number in (0, 1] (default {DEFAULT_GAMMA})", DEFAULT_GAMMA)
LOSSES = {
    "mle": LossSpec(mle_loss),
    "mle_entropy": LossSpec(
        mle_entropy_loss,
        {"beta": (lambda x: x >= 0, "a number >= 0 (0 is MLE; paper: 0.1 hurts)", 0.01)},
    ),
    "iqlearn": LossSpec(iqlearn_loss, {"lam": _LAM, "gamma": _GAMMA}),
    "iqlearn_online": LossSpec(
        iqlearn_online_loss,
        {
            "lam": _LAM,
            "gamma": _GAMMA,
            "alpha": (lambda x: 0 <= x <= 1, "a number in [0, 1] (paper 0.1; 0 is offline)", 0.1),
            "chi2_on_mixture": (lambda x: x in (0, 1), "0 (χ² on data) or 1 (on the mixture)", 0),
        },
        online=True,
    ),
    # GAIL's objective lives in irl_lm/learners/gail.py (two models); `fn` is its held-out NLL.
    "gail": LossSpec(
        gail_data_loss,
        {
            "mle_weight": (lambda x: x >= 0, "a number >= 0 (NLL on data; 0: off)", 0.0),
            "kl_coef": (lambda x: x >= 0, "a number >= 0 (KL to the initial policy)", 0.05),
            "entropy_coef": (lambda x: x >= 0, "a number >= 0 (entropy bonus)", 0.0),
            "gamma": (lambda x: 0 < x <= 1, "a number in (0, 1] (reward discount)", 1.0),
            "reward": (lambda x: x in GAIL_REWARDS, f"one of {sorted(GAIL_REWARDS)}", "logit"),
            "normalize_advantages": (lambda x: x in (0, 1), "0 or 1 (divide by their std)", 1),
        },
        online=True,
    ),
}


def loss_fields(name: str, **values) -> dict:
    """`config.loss` for a loss name: its fields at their defaults, updated by `values`
    (only the loss's own fields are taken)."""
    if name not in LOSSES:
        raise ValueError(f"config.loss.name={name!r} is not a loss; allowed: {sorted(LOSSES)}")
    fields = {k: default for k, (_, _, default) in LOSSES[name].fields.items()}
    return {"name": name, **fields, **{k: v for k, v in values.items() if k in fields}}


def make_loss(loss_config: Mapping) -> Callable:
    """Validates `config.loss` and returns its function with the config fields bound."""
    fields = dict(loss_config)
    name = fields.pop("name", None)
    if name not in LOSSES:
        raise ValueError(f"config.loss.name={name!r} is not a loss; allowed: {sorted(LOSSES)}")
    spec = LOSSES[name]
    unknown = sorted(set(fields) - set(spec.fields))
    if unknown:
        raise ValueError(
            f"config.loss: unknown fields {unknown} for loss {name!r}; "
            f"allowed: {sorted(spec.fields) or 'none'}"
        )
    for field, (check, allowed, default) in spec.fields.items():
        if field not in fields:
            raise ValueError(f"config.loss.{field} is required for loss {name!r}: {allowed}")
        value = fields[field]
        try:
            valid = check(value) and isinstance(value, type(default) | int | float)
        except TypeError:  # e.g. a string where a number is expected
            valid = False
        if isinstance(value, float) and not math.isfinite(value):  # inf passes `>= 0`
            valid = False
        if not valid:
            raise ValueError(f"config.loss.{field}={value!r} is invalid; allowed: {allowed}")
    return functools.partial(spec.fn, **fields)


__all__ = [
    "DEFAULT_GAMMA",
    "LOSSES",
    "iqlearn_loss",
    "iqlearn_online_loss",
    "loss_fields",
    "make_loss",
    "mle_entropy_loss",
    "mle_loss",
]

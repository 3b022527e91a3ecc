"""Shared pieces of the `configs/*.py` files: trainer defaults and `arg` parsing."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults: str) -> dict[str, str]:
    """`"loss=iqlearn,lam=0.1"` -> {"loss": "iqlearn", "lam": "0.1"} over `defaults`.

    Keys not in `defaults` are rejected so a typo in `--config=file.py:arg` fails loudly.
    """
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(
                f"config arg {item!r}: expected key=value with key in {sorted(defaults)}"
            )
        values[key] = value
    return values


def trainer_defaults() -> ml_collections.ConfigDict:
    """Everything but task, model and loss, with the values most runs keep."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Parameters to start from (fresh optimizer): "hf:<Hugging Face folder>", one of our
    # workdirs / WORKDIR/checkpoints/<step> / converted folders, or "" (random init).
    # The architecture and the vocabulary then come from there.
    config.init_from = ""
    config.total_steps = 1000
    config.batch_size = 64  # global, in sequences
    config.eval_batch_size = 64
    config.grad_accum_steps = 1
    config.log_every = 50
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.data = ml_collections.ConfigDict({"pack": False})
    config.optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",  # or "adafactor"
            "learning_rate": 1e-3,
            "b1": 0.9,
            "b2": 0.98,
            "weight_decay": 0.0,
            "grad_clip": 1.0,  # global-norm clip; 0 disables
        }
    )
    config.schedule = ml_collections.ConfigDict(
        {"name": "cosine", "warmup_steps": 100, "final_fraction": 0.1}
    )
    config.checkpoint = ml_collections.ConfigDict({"every": 500, "keep": 3})
    config.evals = ml_collections.ConfigDict()
    return config


def loss_config(name: str, lam: float = 0.1, gamma: float = 0.99) -> ml_collections.ConfigDict:
    """`config.loss` for a loss name, with the paper's defaults for its fields."""
    fields = {"mle": {}, "iqlearn": {"lam": lam, "gamma": gamma}}.get(name, {})
    return ml_collections.ConfigDict({"name": name, **fields})

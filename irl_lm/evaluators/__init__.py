"""Evaluators, picked from `config.evals` (name -> {kind, every, ...}) through `EVALUATORS`.

An evaluator is built once with an `EvalContext` and its own config fields, and called as
`evaluator(params, step) -> (scalars, texts)`; the trainer writes them under `eval/<name>/`.
One module per kind: `loss.py`, `expert.py`, `decode.py`, `reward.py`; what they share is in
`common.py`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from irl_lm.evaluators.common import EvalContext
from irl_lm.evaluators.decode import DecodeEvaluator
from irl_lm.evaluators.expert import ExpertEvaluator
from irl_lm.evaluators.loss import LossEvaluator
from irl_lm.evaluators.reward import RewardEvaluator

__all__ = [
    "EVALUATORS",
    "DecodeEvaluator",
    "EvalContext",
    "ExpertEvaluator",
    "LossEvaluator",
    "RewardEvaluator",
    "make_evaluators",
]

EVALUATORS = {
    "loss": LossEvaluator,
    "synthetic_expert": ExpertEvaluator,
    "decode": DecodeEvaluator,
    "reward": RewardEvaluator,
}


def make_evaluators(ctx: EvalContext, evals: Mapping) -> dict[str, tuple[int, object]]:
    """name -> (every, evaluator) for each entry of `evals` (`config.evals`)."""
    evaluators = {}
    for name, eval_config in evals.items():
        fields = dict(eval_config)
        kind = fields.pop("kind", None)
        every = int(fields.pop("every", 0))  # 0: only at the end of training
        if kind not in EVALUATORS:
            raise ValueError(
                f"config.evals.{name}.kind={kind!r} is not an evaluator; "
                f"allowed: {sorted(EVALUATORS)}"
            )
        allowed = set(inspect.signature(EVALUATORS[kind]).parameters) - {"ctx", "name"}
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(
                f"config.evals.{name}: unknown fields {unknown} for kind {kind!r}; "
                f"allowed: {sorted(allowed | {'kind', 'every'})}"
            )
        try:
            evaluators[name] = (every, EVALUATORS[kind](ctx, name, **fields))
        except TypeError as e:
            raise ValueError(f"config.evals.{name}: {e}") from None
    return evaluators

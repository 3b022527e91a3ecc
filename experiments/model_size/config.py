"""Study 2: model size (PAPER.md §5, claim 2). T5 with d_model 32 / 64 / 128 (d_ff twice
that, 4 heads of d_model / 4, 2 + 2 layers) for MLE (λ = 0) and study 1's best λ
(`BEST_LAMBDA`: the λ > 0 with the highest mean validity in experiments/lambda_entropy),
each x 3 seeds, on configs/expert_study.py.

    python -m irl_lm.sweep --config=experiments/model_size/config.py \
        --workdir=workdirs/model_size --parallel=2
    python -m irl_lm.report workdirs/model_size \
        --group_by=model.d_model,optimizer.learning_rate,loss.lam
"""

from configs.expert_study import get_config  # noqa: F401
from irl_lm import studies
from irl_lm.config_utils import format_value

BEST_LAMBDA = 0.01
# (d_model, learning rate): the study-1 rate for every size; d_model 128 did not learn at it
# (loss stuck at 2.5), so it also runs at 1e-3.
SIZES = ((32, 3e-3), (64, 3e-3), (128, 3e-3), (128, 1e-3))


def sweep(arg=None):
    del arg
    sizes = [
        (
            f"d_model={d}" + ("" if lr == 3e-3 else f",lr={format_value(lr)}"),
            "",
            {
                "model.d_model": d,
                "model.d_ff": 2 * d,
                "model.d_kv": d // 4,
                "optimizer.learning_rate": lr,
            },
        )
        for d, lr in SIZES
    ]
    return studies.model_size(sizes, (0.0, BEST_LAMBDA))

"""Study 5: the extracted reward (PAPER.md §5, claim 5). For 128 validation inputs x 8
policy samples at temperature 1, Spearman's ρ of R(y) = Σ_t δ_t with the exact expert
log-probability per token (valid samples) and with validity, pooled and within input
(the `reward` evaluator), against λ (λ = 0 is MLE), plus online IQLearn (α = 0.1).

    python -m irl_lm.sweep --config=experiments/reward_correlation/config.py \
        --sweep_arg=workdirs/lambda_entropy --workdir=workdirs/reward_correlation --parallel=2
    python -m irl_lm.report workdirs/reward_correlation --group_by=config_arg,loss.lam

The λ grid's points evaluate study 1's final checkpoints (experiments/lambda_entropy;
`--sweep_arg`: its sweep folder) without training, about 30 s each; the online points
train 1000 steps from scratch (a few minutes each).
"""

import os

from configs.expert_study import get_config as study_config
from irl_lm.config_utils import PAPER_LAMBDAS, SEEDS, grid
from irl_lm.sweep import format_value

ONLINE_LAMBDA = 0.1


def get_config(arg=None):
    config = study_config(arg)
    config.evals = dict(
        expert=dict(kind="synthetic_expert", every=0, num_examples=128, num_samples=4),
        reward=dict(kind="reward", every=0, num_examples=128, num_samples=8),
    )
    return config


def sweep(arg=None):
    study_1 = arg or "workdirs/lambda_entropy"
    offline = [
        {
            "config_arg": "loss=iqlearn",
            "init_from": os.path.join(study_1, f"loss=iqlearn,lam={format_value(lam)},seed={seed}"),
            "total_steps": 0,
            "loss.lam": lam,
            "seed": seed,
        }
        for lam in PAPER_LAMBDAS
        for seed in SEEDS
    ]
    for point in offline:
        point["name"] = f"loss=iqlearn,lam={format_value(point['loss.lam'])},seed={point['seed']}"
    online = grid(
        "loss=iqlearn_online",
        **{"loss.lam": (ONLINE_LAMBDA,), "loss.alpha": (0.1,), "seed": SEEDS},
    )
    return offline + online

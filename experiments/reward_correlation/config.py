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

from configs.expert_study import get_config as study_config
from irl_lm import studies

ONLINE_LAMBDA = 0.1


def get_config(arg=None):
    config = study_config(arg)
    config.evals = dict(
        expert=dict(kind="synthetic_expert", every=0, num_examples=128, num_samples=4),
        reward=dict(kind="reward", every=0, num_examples=128, num_samples=8),
    )
    return config


def sweep(arg=None):
    run = studies.runs_of(arg or "workdirs/lambda_entropy", studies.lambda_entropy())
    return studies.reward_correlation(
        run,
        offline="loss=iqlearn",
        online="loss=iqlearn_online",
        online_lam=ONLINE_LAMBDA,
        prefix="loss=iqlearn,",
    )

"""Study 1: IQLearn's λ grid against MLE + entropy β (PAPER.md §5, claim 1).

    python -m irl_lm.sweep --config=experiments/lambda_entropy/config.py \
        --workdir=workdirs/lambda_entropy --parallel=2
    python -m irl_lm.report workdirs/lambda_entropy --group_by=config_arg,loss.lam,loss.beta

30 points (λ ∈ {0, 0.01, 0.03, 0.1, 0.3, 1}, λ = 0 being MLE, and β ∈ {0.01, 0.03, 0.1,
0.3}, each × 3 seeds) of configs/expert_study.py, about 1 minute each on 2 cores.
"""

from configs.expert_study import get_config  # noqa: F401
from irl_lm import studies


def sweep(arg=None):
    del arg
    return studies.lambda_entropy()

"""Study 4: training-set size (PAPER.md §5, claim 4). 250, 1,000, 4,000 and 20,000
training examples for MLE, IQLearn at λ = 0.1 (`TD_LAMBDA`: the paper's usual value and the
best reverse KL of experiments/lambda_entropy; the λ of the highest validity there, 0.01,
is within 0.4 s.e. of MLE in everything, so its TD term is too weak to tell) and MLE +
entropy at study 1's best β (`BEST_BETA`: the highest mean validity),
each x 3 seeds, on configs/expert_study.py (1000 steps of 64 sequences: 256 epochs of the
smallest set, 3.2 of the largest), with learning curves every 250 steps.

    python -m irl_lm.sweep --config=experiments/data_size/config.py \
        --workdir=workdirs/data_size --parallel=2
    python -m irl_lm.report workdirs/data_size \
        --group_by=config_arg,loss.lam,task.num_train_examples
"""

from configs.expert_study import get_config  # noqa: F401
from irl_lm import studies

TD_LAMBDA = 0.1
BEST_BETA = 0.01
SIZES = (250, 1000, 4000, 20_000)


def sweep(arg=None):
    del arg
    return studies.data_size(SIZES, TD_LAMBDA, BEST_BETA)

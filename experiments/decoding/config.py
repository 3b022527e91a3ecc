"""Study 3: decoding (PAPER.md §5, claim 3). The final checkpoints of study 1
(experiments/lambda_entropy) for MLE and two λ, evaluated without training
(`total_steps=0`, `init_from`) at temperatures {0.1, 0.25, 0.5, 0.75, 1}, greedy, and
beam search with 4 beams (the best beam).

    python -m irl_lm.sweep --config=experiments/decoding/config.py \
        --sweep_arg=workdirs/lambda_entropy --workdir=workdirs/decoding --parallel=2
    python -m irl_lm.report workdirs/decoding \
        --group_by=loss.lam,evals.expert.method,evals.expert.temperature

`--sweep_arg`: study 1's sweep folder (default workdirs/lambda_entropy). 63 points of
about 20 s each (start-up, compilation and one evaluation of 128 inputs x 4 samples).
"""

from configs.expert_study import get_config as study_config
from irl_lm import studies

LAMBDAS = (0.0, 0.1, 0.3)  # MLE, and two λ with clear effects in study 1


def get_config(arg=None):
    config = study_config(arg)
    config.total_steps = 0  # evaluate config.init_from (set per point)
    expert = dict(kind="synthetic_expert", every=0, num_examples=128, num_samples=4)
    config.evals = dict(expert=dict(expert, method="temperature", temperature=1.0))
    return config


def sweep(arg=None):
    run = studies.runs_of(arg or "workdirs/lambda_entropy", studies.lambda_entropy())
    return studies.decoding(run, LAMBDAS, evaluator="expert")

"""Best-of-N reranking with the extracted reward on the exact expert (PAPER.md §5).

Two sweeps. `--sweep_arg=policies` (the default) trains the policies: MLE and IQLearn
(λ ∈ {0.03, 0.1}) × 3 seeds at two budgets, 1000 steps (configs/expert_study.py, MLE
validity about 0.7) and 3000 steps (configs/demo.py's, about 0.94):

    python -m irl_lm.sweep --config=experiments/best_of_n/config.py --sweep_arg=policies \
        --workdir=workdirs/best_of_n_policies --parallel=2

Then `--sweep_arg=<that folder>` evaluates each final checkpoint without training: the
`reward` evaluator draws 16 samples for each of 256 validation inputs and reports, for
N ∈ {1, 2, 4, 8, 16}, the validity, expert log-likelihood and KL estimates of the sample
kept by each ranker (R, log π, length-normalised log π, random; `best_of` in
irl_lm/evaluators/reward.py), at γ = 0.9, 0.99 and 1:

    python -m irl_lm.sweep --config=experiments/best_of_n/config.py \
        --sweep_arg=workdirs/best_of_n_policies --workdir=workdirs/best_of_n --parallel=2
    python experiments/best_of_n/plot.py workdirs/best_of_n
"""

import os

from configs.expert_study import get_config as study_config
from irl_lm.config_utils import SEEDS, format_value

STEPS = (1000, 3000)
LAMBDAS = (0.0, 0.03, 0.1)  # 0: MLE
GAMMAS = (0.9, 0.99, 1.0)
BEST_OF = (1, 2, 4, 8, 16)


def get_config(arg=None):
    """configs/expert_study.py's `arg`, plus `evals=best_of` for the evaluation sweep."""
    items = [item for item in (arg or "").split(",") if item]
    best_of = "evals=best_of" in items
    config = study_config(",".join(item for item in items if item != "evals=best_of"))
    config.evals = dict(
        validation=dict(kind="loss", every=250, max_examples=512),
        expert=dict(kind="synthetic_expert", every=250, num_examples=128, num_samples=4),
    )
    if best_of:
        config.evals = {
            f"gamma_{format_value(gamma).replace('.', '_')}": dict(
                kind="reward",
                every=0,
                num_examples=256,
                num_samples=max(BEST_OF),
                gamma=gamma,
                best_of=BEST_OF,
            )
            for gamma in GAMMAS
        }
    return config


def _name(steps, lam, seed):
    return f"steps={steps},lam={format_value(lam)},seed={seed}"


def sweep(arg=None):
    """`policies` (the default) trains the policies; a folder of them evaluates each one."""
    train = arg in (None, "", "policies")
    return [
        {
            "config_arg": "loss=iqlearn" if train else "loss=iqlearn,evals=best_of",
            **(
                {"total_steps": steps, "checkpoint.every": steps}
                if train
                else {"init_from": os.path.join(arg, _name(steps, lam, seed)), "total_steps": 0}
            ),
            "loss.lam": lam,
            "seed": seed,
            "name": _name(steps, lam, seed),
        }
        for steps in STEPS
        for lam in LAMBDAS
        for seed in SEEDS
    ]

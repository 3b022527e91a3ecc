"""Both model families on the exact expert (PAPER.md §5; the paper ran IQLearn on T5 for some
tasks and on PaLM2 for others and never compared the two on one task), and GAIL's stability.

    python -m irl_lm.sweep --config=experiments/families/config.py \
        --workdir=workdirs/families --parallel=2
    python experiments/families/report.py workdirs/families

For each family, the demo's T5 (d_model 64, 2 + 2 layers, 203k parameters) and a
decoder-only model of the same parameter count (`configs/demo.py:model=decoder_only`,
Llama-style, 4 layers of width 64, 194k): MLE, MLE + entropy (β = 0.03), IQLearn offline at
λ = 0.03 and 0.1, online IQLearn (λ = 0.1, α = 0.1), 3000 steps each, and GAIL for 500
steps from that family's MLE run (the demo's GAIL settings), × 3 seeds. Evaluation every 250
steps (every 100 for GAIL): held-out loss terms on 512 examples and the expert evaluator on
128 inputs × 4 samples. GAIL's points come last: they start from the MLE runs' checkpoints.
"""

import os

from configs.expert_study import get_config as study_config
from irl_lm.config_utils import SEEDS

FAMILIES = ("t5", "decoder_only")
STEPS = 3000
GAIL_EVERY = 100
LOSSES = {  # name -> (config arg, overrides)
    "mle": ("loss=iqlearn", {"loss.lam": 0.0}),
    "entropy=0.03": ("loss=mle_entropy", {"loss.beta": 0.03}),
    "lam=0.03": ("loss=iqlearn", {"loss.lam": 0.03}),
    "lam=0.1": ("loss=iqlearn", {"loss.lam": 0.1}),
    "online": ("loss=iqlearn_online", {"loss.lam": 0.1, "loss.alpha": 0.1}),
}


def get_config(arg=None):
    """configs/expert_study.py's (configs/demo.py's `arg`: loss and model), evaluated every
    250 steps; GAIL (the demo's 500 steps) every 100."""
    config = study_config(arg)
    every = 250
    if config.loss.name == "gail":  # the demo's budget (expert_study's is MLE's 1000)
        config.total_steps, config.checkpoint.every, every = 500, 500, GAIL_EVERY
    config.evals = dict(
        validation=dict(kind="loss", every=every, max_examples=512),
        expert=dict(kind="synthetic_expert", every=every, num_examples=128, num_samples=4),
    )
    return config


def name(family, loss, seed) -> str:
    return f"{family},{loss},seed={seed}"


def sweep(arg=None):
    """Every family × loss × seed; `arg`: the sweep folder, where GAIL finds the MLE runs
    (default: workdirs/families)."""
    folder = arg or "workdirs/families"
    points = [
        {
            "config_arg": f"{config_arg},model={family}",
            "total_steps": STEPS,
            "checkpoint.every": STEPS,
            **overrides,
            "seed": seed,
            "name": name(family, loss, seed),
        }
        for family in FAMILIES
        for loss, (config_arg, overrides) in LOSSES.items()
        for seed in SEEDS
    ]
    gail = [
        {
            "config_arg": f"loss=gail,model={family}",
            "init_from": os.path.join(folder, name(family, "mle", seed)),
            "seed": seed,
            "name": name(family, "gail", seed),
        }
        for family in FAMILIES
        for seed in SEEDS
    ]
    return points + gail

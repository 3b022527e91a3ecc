"""The five studies at convergence, step 1: the budget and a learning rate per model size.

`--sweep_arg=lr` (the default): MLE (IQLearn at λ = 0) on configs/expert_study.py for each
model size of the model-size study (T5 d_model 32 / 64 / 128, d_ff twice that, 4 heads of
d_model / 4, 2 + 2 layers) × learning rate {1e-3, 3e-3, 1e-2}, seed 0, 3000 steps, and the
demo's size (64, 3e-3) at 6000 steps: whether 3000 steps has reached the plateau of the
held-out NLL. The learning rate of each size is the one with the lowest held-out NLL at
the last step (the validation loss evaluator, not the test metrics).

    python -m irl_lm.sweep --config=experiments/convergence/config.py \
        --workdir=workdirs/convergence_lr --parallel=2
"""

from configs.expert_study import get_config as study_config
from irl_lm.config_utils import format_value

D_MODELS = (32, 64, 128)
LEARNING_RATES = (1e-3, 3e-3, 1e-2)
STEPS = 3000
LONG = (64, 3e-3, 6000)  # (d_model, learning rate, steps): the plateau check


def get_config(arg=None):
    config = study_config(arg)
    config.total_steps = config.checkpoint.every = STEPS
    return config


def _point(d_model, lr, steps):
    name = f"d_model={d_model},lr={format_value(lr)}"
    return {
        "config_arg": "loss=iqlearn",
        "loss.lam": 0.0,
        "model.d_model": d_model,
        "model.d_ff": 2 * d_model,
        "model.d_kv": d_model // 4,
        "optimizer.learning_rate": lr,
        "total_steps": steps,
        "checkpoint.every": steps,
        "seed": 0,
        "name": name if steps == STEPS else f"{name},steps={steps}",
    }


def sweep(arg=None):
    if (arg or "lr") != "lr":
        raise ValueError(f"sweep arg {arg!r}; allowed: lr")
    return [_point(d, lr, STEPS) for d in D_MODELS for lr in LEARNING_RATES] + [_point(*LONG)]

"""The five studies at convergence (PAPER.md §5): the budget, a learning rate per model size,
then studies 1-5 on configs/expert_study.py at that budget, 3 seeds.

Three sweeps, run in this order (each resumes where it stopped):

    # 1. the learning-rate grid: MLE for d_model 32 / 64 / 128 × lr 1e-3 / 3e-3 / 1e-2,
    #    seed 0, 3000 steps, and d_model 64 at lr 3e-3 for 6000 steps (the plateau check)
    python -m irl_lm.sweep --config=experiments/convergence/config.py \
        --workdir=workdirs/convergence_lr --parallel=2
    # 2. every training run of studies 1, 2 and 4, in one folder (a run two studies share,
    #    e.g. MLE at d_model 64 on all 20k examples, runs once)
    python -m irl_lm.sweep --config=experiments/convergence/config.py --sweep_arg=train \
        --workdir=workdirs/convergence --parallel=2
    # 3. studies 3 and 5: study 1's final checkpoints decoded and their reward scored, and
    #    online IQLearn trained
    python -m irl_lm.sweep --config=experiments/convergence/config.py \
        --sweep_arg=evaluate:workdirs/convergence --workdir=workdirs/convergence_eval \
        --parallel=2
    python experiments/convergence/report.py workdirs/convergence_lr workdirs/convergence \
        workdirs/convergence_eval

The learning rate of each size (`LEARNING_RATES`) is the grid's lowest held-out NLL at the
last step (the validation loss evaluator, not the test metrics). The IQLearn λ of the size
studies (2 and 4) is `TD_LAMBDA` for both, the entropy β of study 4 `BEST_BETA`: fixed before
the runs, so the three training studies share their runs.

`get_config`'s arg: configs/demo.py's keys, and `evals=` `train` (the default: held-out loss
terms on 512 examples and the expert evaluator on 128 inputs × 4 samples, every 250 steps),
`decoding` (the expert evaluator only, its decoder set per point) or `reward` (the expert
and the reward evaluators, 128 inputs × 8 samples, at the end).
"""

from configs.expert_study import get_config as study_config
from irl_lm.config_utils import ENTROPY_BETAS, PAPER_LAMBDAS, SEEDS, decoders, format_value

STEPS = 3000
D_MODELS = (32, 64, 128)
GRID_RATES = (1e-3, 3e-3, 1e-2)
LONG = (64, 3e-3, 6000)  # (d_model, learning rate, steps): the plateau check
LEARNING_RATES = {32: 1e-2, 64: 3e-3, 128: 1e-3}  # the grid's pick per d_model
D_MODEL = 64  # studies 1, 3, 4 and 5
NUM_EXAMPLES = 20_000  # all of the expert study's training set
DATA_SIZES = (250, 1000, 4000, NUM_EXAMPLES)
TD_LAMBDA = 0.1  # studies 2 and 4
BEST_BETA = 0.01  # study 4
DECODING_LAMBDAS = (0.0, 0.1, 0.3)  # study 3: MLE and two λ with clear effects
ONLINE = {"loss.lam": 0.1, "loss.alpha": 0.1}  # study 5's online IQLearn
EVALS = ("train", "decoding", "reward")
SWEEPS = ("lr", "train", "evaluate:FOLDER")


def get_config(arg=None):
    items = [kv for kv in (arg or "").split(",") if kv]
    evals = [kv.partition("=")[2] for kv in items if kv.startswith("evals=")] or ["train"]
    if len(evals) > 1 or evals[0] not in EVALS:
        raise ValueError(f"config arg evals={','.join(evals)}: allowed one of {EVALS}")
    config = study_config(",".join(kv for kv in items if not kv.startswith("evals=")))
    config.total_steps = config.checkpoint.every = STEPS
    expert = dict(kind="synthetic_expert", num_examples=128, num_samples=4)
    if evals[0] == "decoding":
        config.evals = dict(expert=dict(expert, every=0, method="temperature", temperature=1.0))
    elif evals[0] == "reward":
        config.evals = dict(
            expert=dict(expert, every=0),
            reward=dict(kind="reward", every=0, num_examples=128, num_samples=8),
        )
    return config


def _model(d_model: int) -> dict:
    return {
        "model.d_model": d_model,
        "model.d_ff": 2 * d_model,
        "model.d_kv": d_model // 4,
        "optimizer.learning_rate": LEARNING_RATES[d_model],
    }


def _grid_point(d_model, lr, steps):
    name = f"d_model={d_model},lr={format_value(lr)}"
    return {
        "config_arg": "loss=iqlearn",
        "loss.lam": 0.0,
        **_model(d_model),
        "optimizer.learning_rate": lr,
        "total_steps": steps,
        "checkpoint.every": steps,
        "seed": 0,
        "name": name if steps == STEPS else f"{name},steps={steps}",
    }


def loss_name(loss: str, value: float) -> str:
    return "mle" if loss == "lam" and value == 0 else f"{loss}={format_value(value)}"


def run_name(loss: str, value: float, d_model: int, examples: int, seed: int) -> str:
    """A training run's folder, e.g. `lam=0.1,d_model=64,examples=20000,seed=0`."""
    return f"{loss_name(loss, value)},d_model={d_model},examples={examples},seed={seed}"


def _train_point(loss, value, d_model=D_MODEL, examples=NUM_EXAMPLES, seed=0):
    field = {"lam": ("loss=iqlearn", "loss.lam"), "beta": ("loss=mle_entropy", "loss.beta")}
    config_arg, key = field[loss]
    return {
        "config_arg": config_arg,
        key: value,
        **_model(d_model),
        "task.num_train_examples": examples,
        "seed": seed,
        "name": run_name(loss, value, d_model, examples, seed),
    }


def train_runs() -> list[tuple[str, float, int, int]]:
    """(loss, value, d_model, examples) of studies 1, 2 and 4, each once, study 1's first."""
    study_1 = [("lam", lam, D_MODEL, NUM_EXAMPLES) for lam in PAPER_LAMBDAS]
    study_1 += [("beta", beta, D_MODEL, NUM_EXAMPLES) for beta in ENTROPY_BETAS]
    study_2 = [("lam", lam, d, NUM_EXAMPLES) for d in D_MODELS for lam in (0.0, TD_LAMBDA)]
    study_4 = [
        (loss, value, D_MODEL, n)
        for n in DATA_SIZES
        for loss, value in (("lam", 0.0), ("lam", TD_LAMBDA), ("beta", BEST_BETA))
    ]
    return list(dict.fromkeys(study_1 + study_2 + study_4))


def _evaluate(folder: str) -> list[dict]:
    """Study 3 (decoders on study 1's final checkpoints), study 5 (the reward of study 1's
    λ runs; online IQLearn trained)."""
    points = []
    for lam in DECODING_LAMBDAS:
        for seed in SEEDS:
            init = f"{folder}/{run_name('lam', lam, D_MODEL, NUM_EXAMPLES, seed)}"
            for name, method, temperature in decoders():
                points.append(
                    {
                        "config_arg": "loss=iqlearn,evals=decoding",
                        "name": f"decoding,{loss_name('lam', lam)},{name},seed={seed}",
                        "init_from": init,
                        "total_steps": 0,
                        "loss.lam": lam,
                        "seed": seed,
                        "evals.expert.method": method,
                        "evals.expert.temperature": temperature,
                    }
                )
    for lam in PAPER_LAMBDAS:
        for seed in SEEDS:
            points.append(
                {
                    "config_arg": "loss=iqlearn,evals=reward",
                    "name": f"reward,{loss_name('lam', lam)},seed={seed}",
                    "init_from": f"{folder}/{run_name('lam', lam, D_MODEL, NUM_EXAMPLES, seed)}",
                    "total_steps": 0,
                    "loss.lam": lam,
                    "seed": seed,
                }
            )
    for seed in SEEDS:
        points.append(
            {
                "config_arg": "loss=iqlearn_online,evals=reward",
                **ONLINE,
                **_model(D_MODEL),
                "seed": seed,
                "name": f"reward,online,seed={seed}",
            }
        )
    return points


def sweep(arg=None):
    """`lr` (the default): the learning-rate grid; `train`: studies 1, 2 and 4;
    `evaluate:FOLDER`: studies 3 and 5 on the `train` sweep's FOLDER."""
    kind, _, folder = (arg or "lr").partition(":")
    if kind == "lr":
        return [_grid_point(d, lr, STEPS) for d in D_MODELS for lr in GRID_RATES] + [
            _grid_point(*LONG)
        ]
    if kind == "train":
        return [
            _train_point(loss, value, d, n, seed)
            for loss, value, d, n in train_runs()
            for seed in SEEDS
        ]
    if kind == "evaluate" and folder:
        return _evaluate(folder.rstrip("/"))
    raise ValueError(f"sweep arg {arg!r}; allowed: {', '.join(SWEEPS)}")

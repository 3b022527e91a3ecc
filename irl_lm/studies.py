"""The paper's studies as sweep definitions, each defined once: the synthetic-expert studies
(`experiments/*/config.py`) and the paper tasks' configs (`text_task_sweep`, behind
`configs/{xsum,gsm8k,tldr,wmt22}.py`'s `sweep(arg)`) call these with their own losses'
config args, sizes and run folders.

A point is a dict of dotted config fields (with optionally its `config_arg` and `name`);
`python -m irl_lm.sweep` runs them. Reading them imports neither seqio nor TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from irl_lm.config_utils import (
    ENTROPY_BETAS,
    PAPER_LAMBDAS,
    SEEDS,
    decoders,
    format_value,
    grid,
    parse_arg,
    point_names,
)

STUDIES = ("lambda", "lambda_entropy", "model_size", "decoding", "data_size", "reward_correlation")
# The model-size study's T5 presets and the Hugging Face folders (under `ckpts=`) they load
T5_SIZES = {"t5_base": "t5-v1_1-base", "t5_large": "t5-v1_1-large", "t5_xl": "t5-v1_1-xl"}

# (λ, seed) -> the folder of the run to evaluate (`runs_of`)
RunFolder = Callable[[float, int], str]


def lambda_grid(iqlearn: str = "loss=iqlearn") -> list[dict]:
    """IQLearn over the paper's λ grid (λ = 0 is MLE) × `SEEDS`."""
    return grid(iqlearn, **{"loss.lam": PAPER_LAMBDAS, "seed": SEEDS})


def lambda_entropy(iqlearn: str = "loss=iqlearn", entropy: str = "loss=mle_entropy"):
    """Study 1: the λ grid, and MLE + entropy over `ENTROPY_BETAS`, × `SEEDS`."""
    return lambda_grid(iqlearn) + grid(entropy, **{"loss.beta": ENTROPY_BETAS, "seed": SEEDS})


def runs_of(folder: str, study_1: Sequence[dict]) -> RunFolder:
    """Where a sweep of `study_1`'s points (`lambda_entropy`) in `folder` keeps each λ run,
    named as the sweep names them."""
    names = point_names(study_1)
    runs = {
        (p["loss.lam"], p["seed"]): n
        for p, n in zip(study_1, names, strict=True)
        if "loss.lam" in p
    }
    return lambda lam, seed: os.path.join(folder, runs[(lam, seed)])


def model_size(sizes: Sequence[tuple[str, str, dict]], lambdas, iqlearn="loss=iqlearn"):
    """Study 2: for each size `(name, config_arg suffix, fields)`, IQLearn at each of
    `lambdas` × `SEEDS`, named `<size>,lam=<λ>,seed=<seed>`."""
    return [
        {
            "name": f"{size},lam={format_value(lam)},seed={seed}",
            "config_arg": iqlearn + model_arg,
            "loss.lam": lam,
            "seed": seed,
            **fields,
        }
        for size, model_arg, fields in sizes
        for lam in lambdas
        for seed in SEEDS
    ]


def decoding(
    run: RunFolder, lambdas, *, evaluator: str, config_arg: str | None = None, num_decodes=False
) -> list[dict]:
    """Study 3: each run of `lambdas` × `SEEDS` (`run(λ, seed)`) evaluated without training
    by `config.evals.<evaluator>` with each of `decoders()` (`num_decodes`: 4 samples at a
    temperature, else 1)."""
    points = []
    for lam in lambdas:
        for seed in SEEDS:
            for name, method, temperature in decoders():
                point = {"name": f"lam={format_value(lam)},seed={seed},{name}"}
                point |= {"config_arg": config_arg} if config_arg else {}
                point |= {
                    "init_from": run(lam, seed),
                    "total_steps": 0,
                    "loss.lam": lam,
                    "seed": seed,
                    f"evals.{evaluator}.method": method,
                    f"evals.{evaluator}.temperature": temperature,
                }
                if num_decodes:
                    point[f"evals.{evaluator}.num_decodes"] = 4 if method == "temperature" else 1
                points.append(point)
    return points


def data_size(sizes, lam: float, beta: float, iqlearn="loss=iqlearn", entropy="loss=mle_entropy"):
    """Study 4: MLE, IQLearn at `lam` and MLE + entropy at `beta` on each number of training
    examples (0: all) × `SEEDS`."""
    axes = {"task.num_train_examples": sizes, "seed": SEEDS}
    return grid(iqlearn, **{"loss.lam": (0.0, lam)}, **axes) + grid(
        entropy, **{"loss.beta": (beta,)}, **axes
    )


def reward_correlation(
    run: RunFolder, *, offline: str, online: str, online_lam: float, prefix="", online_names=False
) -> list[dict]:
    """Study 5: each run of the λ grid × `SEEDS` evaluated without training (`offline`: its
    config arg, with the reward evaluator), named `<prefix>lam=<λ>,seed=<seed>`; and online
    IQLearn (α = 0.1) at `online_lam` trained from scratch (`online`: its config arg;
    `online_names`: named `online,lam=...`, else by the sweep)."""
    points = [
        {
            "config_arg": offline,
            "init_from": run(lam, seed),
            "total_steps": 0,
            "loss.lam": lam,
            "seed": seed,
            "name": f"{prefix}lam={format_value(lam)},seed={seed}",
        }
        for lam in PAPER_LAMBDAS
        for seed in SEEDS
    ]
    trained = grid(online, **{"loss.lam": (online_lam,), "loss.alpha": (0.1,), "seed": SEEDS})
    if online_names:
        trained = [
            p | {"name": f"online,lam={format_value(online_lam)},alpha=0.1,seed={p['seed']}"}
            for p in trained
        ]
    return points + trained


def text_task_sweep(arg: str | None = None) -> list[dict]:
    """The sweeps of the paper-task configs: the synthetic-expert studies' layout
    (experiments/README.md) for a real task. `arg` keys:

    study   "lambda" (the default): the paper's λ grid × 3 seeds of IQLearn;
            "lambda_entropy": that grid and MLE + entropy β ∈ `ENTROPY_BETAS`;
            "model_size": MLE and IQLearn at `lam` for each of `T5_SIZES` (mode=full
            fine-tunes `ckpts`/<folder>; mode=tiny widens the tiny T5: d_model 32/64/128);
            "decoding": `source`'s MLE and IQLearn-at-`lam` runs evaluated (no training) by
            the decode evaluator with each of `decoders()`;
            "data_size": MLE, IQLearn at `lam` and MLE + entropy at `beta` on 250 / 1000 /
            4000 / all training examples (mode=tiny: 32 / 64 / 128 / 256);
            "reward_correlation": `source`'s λ grid evaluated by the reward evaluator,
            plus online IQLearn (α = 0.1) at `lam`.
    mode    "full" (the default) or "tiny" (the smoke config; "tiny" alone is
            study=lambda,mode=tiny).
    lam, beta  the λ and β of the studies after the first (default 0.1, 0.01);
    source  the lambda_entropy sweep folder that decoding and reward_correlation evaluate;
    ckpts   the folder of the Hugging Face checkpoints of `T5_SIZES` (default /ckpts).
    Each point of a seed: 3 seeds each.
    """
    arg = "study=lambda,mode=tiny" if arg == "tiny" else arg
    args = parse_arg(
        arg,
        study="lambda",
        mode="full",
        lam="0.1",
        beta="0.01",
        source="workdirs/lambda_entropy",
        ckpts="/ckpts",
    )
    study, mode = args["study"], args["mode"]
    if study not in STUDIES:
        raise ValueError(f"sweep arg study={study!r}; allowed: {', '.join(STUDIES)}")
    if mode not in ("full", "tiny"):
        raise ValueError(f"sweep arg mode={mode!r}; allowed: full, tiny")
    lam, beta = float(args["lam"]), float(args["beta"])
    iqlearn, entropy = f"mode={mode},loss=iqlearn", f"mode={mode},loss=mle_entropy"
    study_1 = lambda_entropy(iqlearn, entropy)
    run = runs_of(args["source"], study_1)
    if study == "lambda":
        return lambda_grid(iqlearn)
    if study == "lambda_entropy":
        return study_1
    if study == "model_size":
        return model_size(_model_sizes(mode, args["ckpts"]), (0.0, lam), iqlearn)
    if study == "data_size":
        sizes = (250, 1000, 4000, 0) if mode == "full" else (32, 64, 128, 256)
        return data_size(sizes, lam, beta, iqlearn, entropy)
    if study == "decoding":
        arg = f"{iqlearn},evals=decode"
        return decoding(run, (0.0, lam), evaluator="decode", config_arg=arg, num_decodes=True)
    return reward_correlation(
        run,
        offline=f"{iqlearn},evals=reward",
        online=f"mode={mode},loss=iqlearn_online,evals=reward",
        online_lam=lam,
        online_names=True,
    )


def _model_sizes(mode: str, ckpts: str) -> list[tuple[str, str, dict]]:
    """(name, config_arg suffix, fields) per size: `T5_SIZES` fine-tuned from `ckpts`, or
    (mode=tiny) the tiny T5 at d_model 32 / 64 / 128."""
    if mode == "full":
        return [
            (preset, f",model={preset}", {"init_from": f"hf:{ckpts}/{folder}"})
            for preset, folder in T5_SIZES.items()
        ]
    return [
        (f"d_model={d}", "", {"model.d_model": d, "model.d_ff": 2 * d, "model.d_kv": d // 4})
        for d in (32, 64, 128)
    ]

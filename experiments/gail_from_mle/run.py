"""GAIL on the synthetic expert, from a briefly MLE-trained policy (PAPER.md §4: start GAIL
from an MLE checkpoint). Prints a JSON line per run, the expert evaluation before and after,
then a table of means and standard errors over the seeds.

    .venv/bin/python experiments/gail_from_mle/run.py --workdir=/tmp/gail_from_mle
    .venv/bin/python experiments/gail_from_mle/run.py --workdir=/tmp/gail_from_mle \
        --seeds=0,1,2 --heads=scalar,log_ratio

The demo's model and task (`configs/demo.py`): for each seed, MLE for `--mle_steps`, then
GAIL for `--gail_steps` with each discriminator head of `--heads`, without an MLE term (KL to
the initial policy `--kl_coef`, entropy bonus `--entropy_coef`), the discriminator
initialised from the policy, `--warmup` discriminator-only steps; expert evaluation on
`--eval_inputs` x 4 samples. Finished runs are not trained again (their results.json), so a
rerun only does what is missing.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from configs import demo  # noqa: E402
from irl_lm import train  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/gail_from_mle", "Parent of the runs.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (each: an MLE run and its GAIL runs).")
_HEADS = flags.DEFINE_list(
    "heads",
    ["log_ratio"],
    "Discriminator heads (config.discriminator.head), e.g. scalar,log_ratio.",
)
_MLE_STEPS = flags.DEFINE_integer("mle_steps", 500, "MLE steps before GAIL.")
_GAIL_STEPS = flags.DEFINE_integer("gail_steps", 400, "GAIL steps.")
_WARMUP = flags.DEFINE_integer("warmup", 100, "Discriminator-only steps at the start of GAIL.")
_EVAL_INPUTS = flags.DEFINE_integer("eval_inputs", 512, "Expert-evaluation inputs (x4 samples).")
_KL = flags.DEFINE_float("kl_coef", 0.05, "KL to the initial policy.")
_ENTROPY = flags.DEFINE_float("entropy_coef", 0.02, "Entropy bonus.")

METRICS = ("validity", "forward_kl", "reverse_kl")


def shorten(config, steps: int, seed: int) -> None:
    config.seed = seed
    config.total_steps, config.checkpoint.every, config.log_every = steps, steps, 100
    config.evals.expert.update(num_examples=_EVAL_INPUTS.value, every=0)
    config.evals.validation.update(every=0, max_examples=64)


def run(seed: int, head: str) -> dict:
    """The MLE start of `seed` (trained once) and GAIL from it with `head`."""
    mle = demo.get_config("loss=mle")
    shorten(mle, _MLE_STEPS.value, seed)
    mle_dir = os.path.join(_WORKDIR.value, f"seed{seed}", "mle")
    start = train.train_and_evaluate(mle, mle_dir)
    config = demo.get_config(
        f"loss=gail,gamma=0.9,kl_coef={_KL.value},entropy_coef={_ENTROPY.value}"
    )
    shorten(config, _GAIL_STEPS.value, seed)
    config.init_from = mle_dir
    config.optimizer.learning_rate, config.schedule.warmup_steps = 1e-4, 10
    config.discriminator.update(
        init="policy", head=head, learning_rate=1e-3, warmup_steps=_WARMUP.value
    )
    end = train.train_and_evaluate(config, os.path.join(_WORKDIR.value, f"seed{seed}", head))
    return {
        "seed": seed,
        "head": head,
        "start": start["eval"]["expert"],
        "end": end["eval"]["expert"],
    }


def table(results: list[dict]) -> str:
    """Mean ± standard error over seeds: the MLE start, and each head's end and change."""
    rows = ["| run | seeds | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 2) + "|"]

    def row(name, values):
        cells = []
        for metric in METRICS:
            x = np.array([v[metric] for v in values], np.float64)
            se = stats.sem(x) if len(x) > 1 else float("nan")
            cells.append(f"{x.mean():.3f} ± {se:.3f}")
        rows.append(f"| {name} | {len(values)} | " + " | ".join(cells) + " |")

    starts = {r["seed"]: r["start"] for r in results}
    row("MLE (start)", list(starts.values()))
    for head in dict.fromkeys(r["head"] for r in results):
        ends = [r for r in results if r["head"] == head]
        row(f"GAIL, head={head}", [r["end"] for r in ends])
        change = [{m: r["end"][m] - r["start"][m] for m in METRICS} for r in ends]
        row(f"change, head={head}", change)
    return "\n".join(rows)


def main(argv):
    del argv
    train.quiet_library_logs()
    results = []
    for seed in map(int, _SEEDS.value):
        for head in _HEADS.value:
            results.append(run(seed, head))
            print(json.dumps(results[-1]), flush=True)
    print(table(results))


if __name__ == "__main__":
    app.run(main)

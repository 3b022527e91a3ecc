"""GAIL on the synthetic expert, from a briefly MLE-trained policy (PAPER.md §4: start GAIL
from an MLE checkpoint). Prints one JSON line: the expert evaluation before and after.

    .venv/bin/python experiments/gail_from_mle/run.py --workdir=/tmp/gail_from_mle

The demo's model and task (`configs/demo.py`): MLE for `--mle_steps`, then GAIL for
`--gail_steps` without an MLE term (KL to the initial policy `--kl_coef`, entropy bonus
`--entropy_coef`), the discriminator initialised from the policy with the log-ratio head,
`--warmup` discriminator-only steps; expert evaluation on `--eval_inputs` x 4 samples.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from configs import demo  # noqa: E402
from irl_lm import train  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/gail_from_mle", "Parent of the two runs.")
_MLE_STEPS = flags.DEFINE_integer("mle_steps", 500, "MLE steps before GAIL.")
_GAIL_STEPS = flags.DEFINE_integer("gail_steps", 400, "GAIL steps.")
_WARMUP = flags.DEFINE_integer("warmup", 100, "Discriminator-only steps at the start of GAIL.")
_EVAL_INPUTS = flags.DEFINE_integer("eval_inputs", 512, "Expert-evaluation inputs (x4 samples).")
_KL = flags.DEFINE_float("kl_coef", 0.05, "KL to the initial policy.")
_ENTROPY = flags.DEFINE_float("entropy_coef", 0.02, "Entropy bonus.")


def shorten(config, steps: int) -> None:
    config.total_steps, config.checkpoint.every, config.log_every = steps, steps, 100
    config.evals.expert.update(num_examples=_EVAL_INPUTS.value, every=0)
    config.evals.validation.update(every=0, max_examples=64)


def main(argv):
    del argv
    train.quiet_library_logs()
    mle = demo.get_config("loss=mle")
    shorten(mle, _MLE_STEPS.value)
    start = train.train_and_evaluate(mle, os.path.join(_WORKDIR.value, "mle"))
    config = demo.get_config(
        f"loss=gail,gamma=0.9,kl_coef={_KL.value},entropy_coef={_ENTROPY.value}"
    )
    shorten(config, _GAIL_STEPS.value)
    config.init_from = os.path.join(_WORKDIR.value, "mle")
    config.optimizer.learning_rate, config.schedule.warmup_steps = 1e-4, 10
    config.discriminator.update(
        init="policy", head="log_ratio", learning_rate=1e-3, warmup_steps=_WARMUP.value
    )
    end = train.train_and_evaluate(config, os.path.join(_WORKDIR.value, "gail"))
    print(json.dumps({"start": start["eval"]["expert"], "end": end["eval"]["expert"]}))


if __name__ == "__main__":
    app.run(main)

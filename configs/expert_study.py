"""The synthetic-expert studies' base (experiments/lambda_entropy, model_size, decoding,
data_size, reward_correlation): the demo's expert, model and data at a budget that leaves
MLE clearly below the expert.

    python -m irl_lm.main --config=configs/expert_study.py:loss=mle --workdir=/tmp/study_mle

Expected: about 1 minute on 2 CPU cores; MLE reaches validity 0.71 ± 0.03 (3 seeds; the
expert: 1) and forward KL 0.08 nats per token after 1000 steps (experiments/lambda_entropy).

Why this budget: the demo's 3000 steps take MLE to validity 0.94 and KL 0.03, which leaves
little for another loss to win or lose; a harder expert (24 symbols, 4 states, 4 options,
inputs of 6-12 symbols, or 6 states) left MLE at validity 0.01-0.02 after 1000 steps, where
the samples are all invalid and nothing can be compared. The demo's expert at 1000 steps
(0.65 in one calibration run) and 1500 (0.81) both leave room on either side; 1000 steps
keeps the five studies inside 90 minutes.
The same `arg` as configs/demo.py. Evaluation every 250 steps (learning curves): held-out
loss terms on 512 examples, the expert evaluator on 128 inputs x 4 samples at temperature 1.
"""

from configs import demo


def get_config(arg=None):
    config = demo.get_config(arg)
    config.total_steps = 1000
    config.checkpoint.every = 1000
    config.log_every = 100
    config.evals = dict(
        validation=dict(kind="loss", every=250, max_examples=512),
        expert=dict(kind="synthetic_expert", every=250, num_examples=128, num_samples=4),
    )
    return config

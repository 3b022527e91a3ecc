"""GSM8k grade-school maths: question -> worked answer ending in `#### <number>` (accuracy).

    python -m irl_lm.main --config=configs/gsm8k.py:mode=tiny --workdir=/tmp/gsm8k_tiny
    python -m irl_lm.main --config=configs/gsm8k.py:model=decoder_only,loss=iqlearn \
        --workdir=/tmp/gsm8k_tiny_do
    python -m irl_lm.data.fetch --task=gsm8k   # the paper's splits, for mode=full
    python -m irl_lm.main --config=configs/gsm8k.py:mode=full,loss=iqlearn,model=t5_large \
        --config.init_from=hf:/ckpts/flan-t5-large --workdir=workdirs/gsm8k_iq
    python -m irl_lm.main --config=configs/gsm8k.py:mode=full,loss=iqlearn,model=gemma3_1b \
        --config.init_from=hf:/ckpts/gemma-3-1b-pt --workdir=workdirs/gsm8k_gemma_iq

mode=tiny: about 20 s on 2 CPU cores, training on the first 256 of the shared 4000 train
examples; accuracy stays at 0 (a smoke run). `model=decoder_only` trains a tiny
decoder-only model on prefix-LM rows instead of the tiny T5 (the paper's PaLM2 side). The
shared files hold the first 4000 training examples and the whole 1319-example test split;
the paper fine-tunes T5 base/large/xl and PaLM2 and reports accuracy with and without a
calculator.

The paper's λ grid × 3 seeds (mode=full; `--sweep_arg=tiny`: the same on mode=tiny); the
five studies of experiments/README.md with `--sweep_arg=study=lambda_entropy|model_size|
decoding|data_size|reward_correlation[,mode=tiny]` (`irl_lm.studies.text_task_sweep`):
    python -m irl_lm.sweep --config=configs/gsm8k.py --workdir=workdirs/gsm8k_lambda \
        --config.init_from=hf:/ckpts/t5-v1_1-base --parallel=1
"""

from irl_lm.config_utils import text_task_config
from irl_lm.studies import text_task_sweep


def get_config(arg=None):
    files = {"train": "gsm8k/train_first4000.jsonl", "validation": "gsm8k/test.jsonl"}
    return text_task_config("gsm8k", arg, files=files, lengths=(256, 256))


def sweep(arg=None):
    return text_task_sweep(arg)

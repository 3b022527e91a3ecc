"""Reddit TL;DR summarisation (PaLM2 in the paper; ROUGE, Lsum).

    python -m irl_lm.main --config=configs/tldr.py:mode=tiny --workdir=/tmp/tldr_tiny
    python -m irl_lm.data.fetch --task=tldr   # the paper's splits, for mode=full
    python -m irl_lm.main --config=configs/tldr.py:mode=full,loss=iqlearn,model=t5_base \
        --config.init_from=hf:/ckpts/t5-v1_1-base --workdir=workdirs/tldr_iq

mode=tiny: about 20 s on 2 CPU cores on the shared 500-example test subset (ROUGE-1 about 12:
a smoke run). The paper's TL;DR models are PaLM2 (decoder-only); T5 stands in until the
decoder-only trainer lands.

The paper's λ grid × 3 seeds (mode=full; `--sweep_arg=tiny`: the same on mode=tiny); the
five studies of experiments/README.md with `--sweep_arg=study=lambda_entropy|model_size|
decoding|data_size|reward_correlation[,mode=tiny]` (`irl_lm.studies.text_task_sweep`):
    python -m irl_lm.sweep --config=configs/tldr.py --workdir=workdirs/tldr_lambda \
        --config.init_from=hf:/ckpts/t5-v1_1-base --parallel=1
"""

from irl_lm.config_utils import text_task_config
from irl_lm.studies import text_task_sweep


def get_config(arg=None):
    files = {"train": "tldr/test_500.jsonl", "validation": "tldr/test_500.jsonl"}
    return text_task_config("tldr", arg, files=files, lengths=(512, 64))


def sweep(arg=None):
    return text_task_sweep(arg)

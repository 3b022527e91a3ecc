"""XSUM summarisation (T5 in the paper: ROUGE-1/2/Lsum, base/large/xl).

    python -m irl_lm.main --config=configs/xsum.py:mode=tiny --workdir=/tmp/xsum_tiny
    python -m irl_lm.data.fetch --task=xsum   # the paper's splits, for mode=full
    python -m irl_lm.main --config=configs/xsum.py:mode=full,loss=iqlearn,lam=0.1,model=t5_base \
        --config.init_from=hf:/ckpts/t5-v1_1-base --workdir=workdirs/xsum_iq

mode=tiny: about 20 s on 2 CPU cores; a byte-level model trained 30 steps on the shared
1000-example test subset: ROUGE-1 about 8, from frequent words (every piece runs). For
reference, the lead sentence scores ROUGE-1 16.45 on that subset (tests/test_text_metrics.py);
fine-tuned T5-base reaches about 35-40 ROUGE-1 on XSUM.

The paper's λ grid × 3 seeds (mode=full; `--sweep_arg=tiny`: the same on mode=tiny); the
five studies of experiments/README.md with `--sweep_arg=study=lambda_entropy|model_size|
decoding|data_size|reward_correlation[,mode=tiny]` (`irl_lm.studies.text_task_sweep`):
    python -m irl_lm.sweep --config=configs/xsum.py --workdir=workdirs/xsum_lambda \
        --config.init_from=hf:/ckpts/t5-v1_1-base --parallel=1
"""

from irl_lm.config_utils import text_task_config
from irl_lm.studies import text_task_sweep


def get_config(arg=None):
    files = {"train": "xsum/test_first1000.jsonl", "validation": "xsum/test_first1000.jsonl"}
    return text_task_config("xsum", arg, files=files, lengths=(512, 64))


def sweep(arg=None):
    return text_task_sweep(arg)

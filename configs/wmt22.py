"""WMT22 en->de translation (PaLM2 in the paper; sacreBLEU BLEU and chrF on generaltest2022).

    python -m irl_lm.main --config=configs/wmt22.py:mode=tiny --workdir=/tmp/wmt22_tiny
    python -m irl_lm.data.fetch --task=wmt22_en_de   # the paper's splits, for mode=full
    python -m irl_lm.main --config=configs/wmt22.py:mode=full,loss=iqlearn,model=t5_base \
        --config.init_from=hf:/ckpts/t5-v1_1-base --workdir=workdirs/wmt22_iq

mode=tiny: about 20 s on 2 CPU cores on the shared generaltest2022 en-de file (BLEU near 0:
a smoke run). For reference, the best constrained WMT22 en-de system scores BLEU 37.79 and chrF
64.32 on it (tests/test_text_metrics.py). For de->en, set --config.task.name=irl_lm.wmt22_de_en and
the files to wmt22/de-en.jsonl.

The paper's λ grid × 3 seeds (mode=full; `--sweep_arg=tiny`: the same on mode=tiny); the
five studies of experiments/README.md with `--sweep_arg=study=lambda_entropy|model_size|
decoding|data_size|reward_correlation[,mode=tiny]` (`irl_lm.studies.text_task_sweep`):
    python -m irl_lm.sweep --config=configs/wmt22.py --workdir=workdirs/wmt22_lambda \
        --config.init_from=hf:/ckpts/t5-v1_1-base --parallel=1
"""

from irl_lm.config_utils import text_task_config
from irl_lm.studies import text_task_sweep


def get_config(arg=None):
    files = {"train": "wmt22/en-de.jsonl", "validation": "wmt22/en-de.jsonl"}
    return text_task_config("wmt22_en_de", arg, files=files, lengths=(256, 256))


def sweep(arg=None):
    return text_task_sweep(arg)

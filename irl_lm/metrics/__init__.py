"""Text metrics computed on decoded samples: task metrics and diversity."""

from irl_lm.metrics.diversity import distinct_n, ids_to_text, self_bleu
from irl_lm.metrics.text import bleu, chrf, final_number, gsm8k_accuracy, rouge

__all__ = [
    "bleu",
    "chrf",
    "distinct_n",
    "final_number",
    "gsm8k_accuracy",
    "ids_to_text",
    "rouge",
    "self_bleu",
]

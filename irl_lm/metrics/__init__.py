"""Text metrics computed on decoded samples."""

from irl_lm.metrics.diversity import distinct_n, ids_to_text, self_bleu

__all__ = ["distinct_n", "ids_to_text", "self_bleu"]

"""Diversity of sampled outputs: Self-BLEU (PAPER.md §5) and distinct-n."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sacrebleu


def self_bleu(samples_per_input: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over inputs of the mean sentence BLEU of each sample against its siblings (0-100).

    Lower is more diverse. Uses `sacrebleu.sentence_bleu` with its defaults (13a tokenizer,
    'exp' smoothing, effective order).
    """
    if len(samples_per_input) == 0:
        raise ValueError("self_bleu needs at least one input")
    per_input = []
    for index, samples in enumerate(samples_per_input):
        if isinstance(samples, str):
            raise ValueError(f"input {index}: expected a sequence of samples, got a single string")
        samples = list(samples)
        if len(samples) < 2:
            raise ValueError(
                f"input {index} has {len(samples)} sample(s); Self-BLEU needs at least 2"
            )
        scores = [
            sacrebleu.sentence_bleu(sample, samples[:i] + samples[i + 1 :]).score
            for i, sample in enumerate(samples)
        ]
        per_input.append(sum(scores) / len(scores))
    return {"self_bleu": float(sum(per_input) / len(per_input))}


def distinct_n(samples: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over whitespace tokens; n-grams never span two samples."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ngrams = []
    for sample in samples:
        tokens = sample.split()
        ngrams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    if not ngrams:
        return 0.0
    return len(set(ngrams)) / len(ngrams)


def ids_to_text(ids: Iterable[int], *, eos_id: int = 1, pad_id: int = 0) -> str:
    """Token ids as space-separated text for the text metrics: stops at EOS, drops PAD."""
    words = []
    for token in ids:
        token = int(token)
        if token == eos_id:
            break
        if token != pad_id:
            words.append(str(token))
    return " ".join(words)

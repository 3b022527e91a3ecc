"""Task metrics as seqio-style functions `fn(targets, predictions) -> {name: value}`, 0-100.

- `rouge`: ROUGE-1/2/L/Lsum F-measure through `rouge-score` (Porter stemming, as T5), mean
  over examples; Lsum splits summaries into sentences at newlines.
- `bleu`, `chrf`: sacreBLEU corpus scores with its defaults (13a tokenisation, mixed case);
  a target is one reference string or a list of references for that example.
- `gsm8k_accuracy`: the final number (after `####`, else the last number in the text),
  with commas, `$` and a trailing `.` removed, compared numerically.
- `METRICS[name]`: these by name (what `config.task.metrics` of the config-only `jsonl` task
  and the built-in tasks' `metric_fns` pick).
- `PER_EXAMPLE[metric]`: the same metrics per example (`fn(targets, predictions) ->
  {name: [value per example]}`), to rank samples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    per_example = rouge_per_example(targets, predictions)
    return {name: float(np.mean(values)) for name, values in per_example.items()}


def rouge_per_example(targets, predictions) -> dict[str, list[float]]:
    _check_lengths(targets, predictions)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(t, p) for t, p in zip(targets, predictions, strict=True)]
    return {name: [100 * s[name].fmeasure for s in scores] for name in ROUGE_TYPES}


def _reference_streams(targets) -> list[list[str]]:
    """sacreBLEU's layout: one stream per reference position. Examples with fewer references
    repeat their first one, which changes neither BLEU's clipped counts nor chrF's best match."""
    refs = [[t] if isinstance(t, str) else list(t) for t in targets]
    if any(not r for r in refs):
        raise ValueError("every example needs at least one reference")
    width = max(len(r) for r in refs)
    return [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]


def bleu(targets, predictions: Sequence[str]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    return {"bleu": sacrebleu.corpus_bleu(list(predictions), _reference_streams(targets)).score}


def chrf(targets, predictions: Sequence[str]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    return {"chrf": sacrebleu.corpus_chrf(list(predictions), _reference_streams(targets)).score}


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The answer of a GSM8k solution: the number after the last `####`, else the last number
    in the text; None when there is none."""
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])[:1]
    else:
        found = _NUMBER.findall(text)[-1:]
    if not found:
        return None
    cleaned = found[0].replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def gsm8k_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    return {"accuracy": float(np.mean(gsm8k_per_example(targets, predictions)["accuracy"]))}


def gsm8k_per_example(targets, predictions) -> dict[str, list[float]]:
    _check_lengths(targets, predictions)
    correct = []
    for target, prediction in zip(targets, predictions, strict=True):
        gold, guess = final_number(target), final_number(prediction)
        if gold is None:
            raise ValueError(f"target has no final number: {target[-80:]!r}")
        correct.append(guess is not None and np.isclose(guess, gold, rtol=0, atol=1e-6))
    return {"accuracy": [100.0 * c for c in correct]}


def _sentence_scores(score_fn, name: str):
    def per_example(targets, predictions) -> dict[str, list[float]]:
        _check_lengths(targets, predictions)
        refs = [[t] if isinstance(t, str) else list(t) for t in targets]
        return {name: [score_fn(p, r).score for p, r in zip(predictions, refs, strict=True)]}

    return per_example


# A task metric's per-example scores (0-100), e.g. to rank samples: ROUGE and GSM8k
# correctness average to the corpus values; BLEU and chrF are sacreBLEU's sentence scores
# (sentence BLEU with its default exponential smoothing), which do not.
PER_EXAMPLE = {
    "rouge": rouge_per_example,
    "bleu": _sentence_scores(sacrebleu.sentence_bleu, "bleu"),
    "chrf": _sentence_scores(sacrebleu.sentence_chrf, "chrf"),
    "gsm8k_accuracy": gsm8k_per_example,
}


METRICS = {"rouge": rouge, "bleu": bleu, "chrf": chrf, "gsm8k_accuracy": gsm8k_accuracy}


def _check_lengths(targets, predictions) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not len(targets):
        raise ValueError("no examples to score")

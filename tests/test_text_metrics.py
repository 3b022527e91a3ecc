"""Task metrics on the real shared data against the official scores and the standard tools."""

import json
import os

import numpy as np
import pytest
from rouge_score import rouge_scorer

from irl_lm.metrics import bleu, chrf, final_number, gsm8k_accuracy, rouge

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def read_jsonl(*parts):
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data not found at {path} (see shared/data/README.md)")
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_bleu_and_chrf_reproduce_the_official_wmt22_scores():
    """JDExploreAcademy en-de: BLEU-A 37.79, chrF-A 64.32, BLEU-A+B 51.62 (WMT22 findings)."""
    rows = read_jsonl("wmt22", "en-de.jsonl")
    with open(os.path.join(DATA, "wmt22", "systems", "en-de.JDExploreAcademy.hyp.de")) as f:
        hypotheses = [line.rstrip("\n") for line in f]
    assert len(hypotheses) == len(rows) == 2037
    refs_a = [row["de"] for row in rows]
    assert round(bleu(refs_a, hypotheses)["bleu"], 2) == 37.79
    assert round(chrf(refs_a, hypotheses)["chrf"], 2) == 64.32
    both = [[row["de"], row["de_refB"]] for row in rows]
    assert round(bleu(both, hypotheses)["bleu"], 2) == 51.62


def test_gsm8k_accuracy_on_the_gold_answers_and_on_changed_ones():
    rows = read_jsonl("gsm8k", "test.jsonl")
    answers = [row["answer"] for row in rows]
    assert gsm8k_accuracy(answers, answers)["accuracy"] == 100.0
    changed = [a.rsplit("####", 1)[0] + f"#### {final_number(a) + 1:g}" for a in answers]
    assert gsm8k_accuracy(answers, changed)["accuracy"] == 0.0
    # A free-form prediction: the last number counts, normalised for $, commas and a final dot.
    assert gsm8k_accuracy(["#### 1234"], ["so she pays $1,234."])["accuracy"] == 100.0
    assert gsm8k_accuracy(["#### -3.5"], ["it is -3.50 in the end"])["accuracy"] == 100.0
    assert gsm8k_accuracy(["#### 7"], ["no idea"])["accuracy"] == 0.0


def test_rouge_equals_rouge_score_on_xsum_lead_sentences():
    rows = read_jsonl("xsum", "test_first1000.jsonl")[:200]
    summaries = [row["summary"] for row in rows]
    leads = [row["document"].split("\n")[0] for row in rows]
    got = rouge(summaries, leads)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(s, p) for s, p in zip(summaries, leads, strict=True)]
    for name in got:
        expected = 100 * np.mean([score[name].fmeasure for score in scores])
        assert got[name] == pytest.approx(expected, abs=1e-9)
    assert 10 < got["rouge1"] < 40  # lead-1 on XSUM: a weak baseline


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no final number"):
        gsm8k_accuracy(["no number here"], ["3"])

"""Self-BLEU against a from-scratch sentence BLEU, and distinct-n on hand examples."""

import math
from collections import Counter

import numpy as np
import pytest

from irl_lm.metrics import distinct_n, ids_to_text, self_bleu


def reference_sentence_bleu(hypothesis: str, references: list[str]) -> float:
    """Sentence BLEU (0-100) with sacrebleu.sentence_bleu's defaults, for whitespace tokens.

    Defaults replicated: n-gram orders 1..4, counts clipped by the max count over references,
    closest reference length (shorter on ties) for the brevity penalty, 'exp' smoothing (the k-th
    order with no match gets precision 1 / (2^k * total)), effective order (orders with no
    hypothesis n-gram are left out of the mean), and 0 when nothing matches at all.
    """
    hyp = hypothesis.split()
    refs = [ref.split() for ref in references]
    correct, total = [], []
    for n in range(1, 5):
        hyp_counts = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        max_ref_counts = Counter()
        for ref in refs:
            for ngram, count in Counter(
                tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)
            ).items():
                max_ref_counts[ngram] = max(max_ref_counts[ngram], count)
        correct.append(sum(min(c, max_ref_counts[g]) for g, c in hyp_counts.items()))
        total.append(sum(hyp_counts.values()))
    if sum(correct) == 0:
        return 0.0
    ref_len = min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]
    brevity_penalty = 1.0 if len(hyp) >= ref_len else math.exp(1 - ref_len / len(hyp))
    log_precisions, num_unmatched_orders = [], 0
    for c, t in zip(correct, total, strict=True):
        if t == 0:
            break
        if c == 0:
            num_unmatched_orders += 1
            log_precisions.append(math.log(1 / (2**num_unmatched_orders * t)))
        else:
            log_precisions.append(math.log(c / t))
    return 100 * brevity_penalty * math.exp(sum(log_precisions) / len(log_precisions))


def reference_self_bleu(samples_per_input: list[list[str]]) -> float:
    per_input = [
        np.mean(
            [
                reference_sentence_bleu(s, samples[:i] + samples[i + 1 :])
                for i, s in enumerate(samples)
            ]
        )
        for samples in samples_per_input
    ]
    return float(np.mean(per_input))


SAMPLES_PER_INPUT = [
    # Clipping with repeated words, several references, a zero 4-gram order (smoothing).
    [
        "the cat sat on the mat",
        "the the cat sat on a mat",
        "a cat sat on the mat today",
        "the dog lay on the rug",
    ],
    # "home" is shorter than every reference (brevity penalty) and has only unigrams (effective
    # order); for "we went home" the references of length 1 and 5 tie, and the shorter one counts.
    ["home", "we went home", "we went to old home"],
    # Two orders without matches, so the smoothing doubles twice.
    ["alpha beta gamma delta epsilon", "alpha zeta beta eta gamma", "theta alpha iota kappa"],
    # Only two samples: one reference each.
    ["one two three four five six", "one two three four five seven"],
]


def test_self_bleu_matches_from_scratch_bleu():
    expected = reference_self_bleu(SAMPLES_PER_INPUT)
    assert 0 < expected < 100
    assert self_bleu(SAMPLES_PER_INPUT)["self_bleu"] == pytest.approx(expected, abs=1e-6)
    for samples in SAMPLES_PER_INPUT:  # per input too, so one group cannot hide another's error
        assert self_bleu([samples])["self_bleu"] == pytest.approx(
            reference_self_bleu([samples]), abs=1e-6
        )


def test_self_bleu_hand_value():
    # Each sample vs the other: precisions 3/4, 2/3, 1/2 and, smoothed, 1/(2*1) for 4-grams.
    result = self_bleu([["a b c d", "a b c e"]])["self_bleu"]
    assert result == pytest.approx(100 * (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25, abs=1e-9)


def test_self_bleu_extremes():
    assert self_bleu([["x y z w v"] * 4, ["p q"] * 3])["self_bleu"] == pytest.approx(100.0)
    disjoint = [["a b c d", "e f g h", "i j k l", "m n o p"]]
    assert self_bleu(disjoint)["self_bleu"] == pytest.approx(0.0, abs=1e-9)


def test_self_bleu_needs_two_samples_per_input():
    with pytest.raises(ValueError, match="input 1"):
        self_bleu([["a b", "a c"], ["only one"]])
    with pytest.raises(ValueError):
        self_bleu([])


def test_distinct_n():
    samples = ["a b a b", "a b c"]
    # Unigrams: a b a b a b c -> {a, b, c} of 7.
    assert distinct_n(samples, 1) == pytest.approx(3 / 7)
    # Bigrams: (a b) (b a) (a b) | (a b) (b c) -> 3 distinct of 5; none spans the two samples.
    assert distinct_n(samples, 2) == pytest.approx(3 / 5)
    assert distinct_n(samples, 3) == pytest.approx(3 / 3)
    assert distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert distinct_n(["a b"], 3) == 0.0
    with pytest.raises(ValueError):
        distinct_n(samples, 0)


def test_ids_to_text():
    assert ids_to_text(np.array([5, 0, 7, 1, 9, 0])) == "5 7"
    assert ids_to_text([4, 4, 6]) == "4 4 6"
    assert ids_to_text([1, 3]) == ""
    assert ids_to_text([9, 2, 3], eos_id=2, pad_id=9) == ""

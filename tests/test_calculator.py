"""The GSM8k calculator: safe arithmetic on the real annotations, and decoding with it."""

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from irl_lm import decoding
from irl_lm.data import calculator

GSM8K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gsm8k", "test.jsonl")


def test_every_gsm8k_test_annotation_is_recomputed():
    if not os.path.exists(GSM8K):
        pytest.skip(f"shared data not found at {GSM8K} (see shared/data/README.md)")
    with open(GSM8K) as f:
        answers = [json.loads(line)["answer"] for line in f]
    annotations = [m for a in answers for m in re.findall(r"<<([^=<>]*)=([^<>]*)>>", a)]
    agree = sum(
        (value := calculator.evaluate(expr)) is not None
        and np.isclose(value, float(result.replace(",", "")), rtol=1e-4, atol=1e-2)
        for expr, result in annotations
        if re.fullmatch(r"-?[\d.,]+", result.strip())
    )
    print(f"\ncalculator: {agree} of {len(annotations)} GSM8k test annotations recomputed")
    assert len(annotations) > 3000 and agree / len(annotations) > 0.99


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('ls')",
        "x + 1",
        "open('f')",
        "2**10000",
        "1/0",
        "'a' * 3",
        "(lambda: 1)()",
        "[1, 2]",
        "9**9**9",
        "",
    ],
)
def test_non_arithmetic_is_refused(expression):
    assert calculator.evaluate(expression) is None


def test_insertion_after_an_open_annotation():
    assert calculator.insertion("She has <<48/2=") == "24"
    assert calculator.insertion("<<1,000*3=") == "3000"
    assert calculator.insertion("<<1/3=") == "0.333333"
    assert calculator.insertion("<<2*3=6>> and 4=") is None  # no open annotation
    assert calculator.insertion("<<os.system(1)=") is None


class Scripted(nn.Module):
    """A stand-in model that writes a fixed byte string, one byte per step, whatever it is
    fed: only the calculator's insertions can change what comes out."""

    script: tuple[int, ...]
    vocab_size: int = 259

    def prefill(self, batch, max_len):
        rows = batch["encoder_input_tokens"].shape[0]
        return {"inputs": {"rows": jnp.zeros((rows,))}, "decode": {"seen": jnp.zeros((rows,))}}

    def decode_step(self, cache, tokens_B, index):
        token = jnp.asarray(self.script)[jnp.minimum(index, len(self.script) - 1)]
        logits = jax.nn.one_hot(jnp.full(tokens_B.shape, token), self.vocab_size) * 10.0
        return logits, cache


def test_greedy_with_calculator_inserts_the_result():
    vocab = seqio.ByteVocabulary()
    script = tuple(vocab.encode("<<3*14=??>>42") + [1])
    model = Scripted(script)
    batch = {"encoder_input_tokens": np.ones((2, 3), np.int32)}
    plain = jax.device_get(decoding.greedy(model, {}, batch, max_len=16))
    assert vocab.decode(plain["tokens"][0, 0].tolist()) == "<<3*14=??>>42"
    out = jax.device_get(
        decoding.greedy_with_insertions(
            model, {}, batch, vocab, calculator.insertion, max_len=16, eos_id=1
        )
    )
    assert vocab.decode(out["tokens"][0, 0].tolist()) == "<<3*14=42>>42"
    assert out["calls"].tolist() == [1, 1] and out["lengths"][0, 0] == len(script)

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


def test_greedy_with_insertions_on_two_processes_gives_the_one_process_tokens(processes, tmp_path):
    """The calculator's host loop on a mesh over two processes' devices (4 CPU devices each):
    both processes read back the tokens and insertions of one process on 8 devices; and each
    token is either inserted text (replayed here from the tokens) or the argmax of the model's
    teacher-forced logits (a full forward pass, no cache) given the tokens before it."""
    import subprocess
    import sys

    import calculator_two_processes as two
    from test_preemption import free_port

    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    script = os.path.join(os.path.dirname(__file__), "calculator_two_processes.py")
    outs = [str(tmp_path / f"process_{i}.npz") for i in range(2)]
    started = [
        processes.start(
            [sys.executable, script, str(port), str(i), outs[i]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    model, params, inputs = two.model_and_inputs()
    expected = two.decode(model, params, inputs)  # this process's 8 devices
    for i, proc in enumerate(started):
        log, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"process {i}:\n{log[-3000:]}"
        got = dict(np.load(outs[i]))
        for key in ("tokens", "lengths", "calls"):
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"process {i} {key}")

    vocab, checked = two.Bytes(), 0
    assert expected["calls"].sum() >= 4 and len(set(expected["calls"].tolist())) > 1
    for row in range(two.ROWS):
        y = expected["tokens"][row, 0, : expected["lengths"][row, 0]].tolist()
        batch = {
            "encoder_input_tokens": inputs[row : row + 1],
            "decoder_input_tokens": np.array([[0, *y[:-1]]], np.int32),
        }
        logits = np.asarray(model.apply({"params": params}, batch))[0]
        queued, calls = [], 0
        for t, token in enumerate(y):
            if queued:
                assert token == queued.pop(0), (row, t)
            else:  # the model's own choice (a near tie may go either way)
                assert logits[t, token] >= logits[t].max() - 1e-4, (row, t)
                checked += 1
            inserted = two.insert(vocab.decode(y[: t + 1])) if token != 1 else None
            if inserted is not None:
                queued, calls = vocab.encode(inserted), calls + 1
        assert calls == expected["calls"][row], row
    assert checked >= two.ROWS

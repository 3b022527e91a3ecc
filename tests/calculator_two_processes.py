"""Greedy decoding with insertions on a mesh over every process's devices: one process of a
two-process run (tests/test_calculator.py starts both, and runs `decode` in one process).

    python tests/calculator_two_processes.py PORT PROCESS_ID OUT.npz

Each process builds the same tiny T5 (random weights) and the same 8 inputs, decodes them
with `decoding.greedy_with_insertions` on a {"data": 8} mesh and writes what it read back.
"""

from __future__ import annotations

import sys

import jax
import numpy as np

ROWS, MAX_LEN = 8, 24


class Bytes:
    """seqio.ByteVocabulary's ids (byte + 3; 0 PAD, 1 EOS, 2 UNK), without importing seqio."""

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode()]

    def decode(self, ids) -> str:
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="ignore")


def insert(text: str) -> str | None:
    """After a character of the model's own whose code is a multiple of 3 (not a digit): the
    calculator's answer to `<<len(text)*7=`, so the inserted text differs from row to row."""
    from irl_lm.data import calculator

    if not text or text[-1].isdigit() or ord(text[-1]) % 3:
        return None
    return calculator.insertion(f"<<{len(text)}*7=")


def model_and_inputs():
    """The tiny T5, random parameters (NumPy's, the same in every process) and the inputs."""
    from irl_lm.models import build_model
    from irl_lm.sharding import unbox

    model = build_model(
        dict(
            name="t5",
            vocab_size=259,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_heads=4,
            num_layers=1,
            num_decoder_layers=2,
        )
    )
    inputs = np.random.default_rng(0).integers(3, 259, (ROWS, 6)).astype(np.int32)
    example = {"encoder_input_tokens": inputs[:1], "decoder_input_tokens": inputs[:1]}
    # Shapes only: model.init itself compiles for longer than the decoding takes.
    shapes = unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), example)["params"])
    rng = np.random.default_rng(1)
    random = lambda x: rng.normal(0, 2 / np.sqrt(x.shape[0]), x.shape).astype(np.float32)
    ones = lambda x: np.ones(x.shape, np.float32)  # the norms' scales
    params = jax.tree.map(lambda x: random(x) if x.ndim > 1 else ones(x), shapes)
    return model, params, inputs


def decode(model, params, inputs) -> dict:
    """`greedy_with_insertions` on a mesh over all devices (of every process), the
    parameters replicated and the inputs sharded over the rows, as the decode evaluator has
    them."""
    from irl_lm import decoding, sharding

    mesh = sharding.make_mesh({"data": -1})
    replicated = sharding.replicated(mesh)
    place = lambda x: jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])
    with sharding.use_mesh(mesh):
        return decoding.greedy_with_insertions(
            model,
            jax.tree.map(place, params),
            sharding.shard_global_batch({"encoder_input_tokens": inputs}, mesh),
            Bytes(),
            insert,
            max_len=MAX_LEN,
            eos_id=1,
            mesh=mesh,
        )


def main(port: str, process_id: str, out_path: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
    assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
    out = decode(*model_and_inputs())
    np.savez(out_path, **out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""MLE and IQLearn train-step time, tokens/s, TFLOP/s per device and MFU of a model preset,
per attention implementation and logits chunking, with XLA's memory plan of each step.

    python scripts/bench_mfu.py --model=t5_base --batch=128 --input_len=512 --target_len=128 \
        --dtype=bfloat16 --attention=einsum,cudnn                       # GPU (gpu_check.sh)
    python scripts/bench_mfu.py --model=decoder_only --vocab_size=262144 --hidden_size=256 \
        --num_hidden_layers=2 --batch=2 --input_len=512 --target_len=512 \
        --logits_chunk_size=0,256                                       # CPU: chunked logits

FLOPs are `irl_lm.perf`'s model FLOPs (MaxText's convention); MFU against the device's
peak bf16 dense FLOP/s (none on CPU). Each variant's MLE and IQLearn steps are compiled,
warmed up and then timed in turn (MLE, IQLearn, MLE, ...); medians. A variant that does not
fit halves its batch (and says so). `--out FILE` appends the rows as JSON lines. Imports no
TensorFlow or seqio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np

from irl_lm import perf, sharding
from irl_lm.config_utils import trainer_defaults
from irl_lm.learners import common, policy
from irl_lm.losses import loss_fields, make_loss
from irl_lm.models import build_model, is_decoder_only

MODEL_FIELDS = (
    "vocab_size",
    "d_model",
    "d_ff",
    "num_layers",
    "num_heads",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="t5_base", help="a preset (t5_base, gemma3_1b, ...) or family"
    )
    for field in MODEL_FIELDS:
        p.add_argument(f"--{field}", type=int, default=0, help="overrides the preset (0: keep)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input_len", type=int, default=512)
    p.add_argument(
        "--target_len", type=int, default=128, help="decoder-only: the row is input+target"
    )
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--attention", default="einsum", help="comma list of attention_impl values")
    p.add_argument("--logits_chunk_size", default="0", help="comma list (0: whole logits)")
    p.add_argument("--remat", default="none", choices=["none", "dots_saveable", "full"])
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default="", help="append result rows (JSON lines) to this file")
    return p.parse_args(argv)


def make_batch(model, batch: int, input_len: int, target_len: int, vocab: int) -> dict:
    """Random tokens; targets of random lengths ending in EOS, then padding (counted by the
    FLOPs, as MaxText does)."""
    rng = np.random.default_rng(0)
    targets = rng.integers(3, vocab, (batch, target_len), dtype=np.int32)
    for row, n in enumerate(rng.integers(target_len // 2, target_len + 1, batch)):
        targets[row, n - 1], targets[row, n:] = 1, 0
    if is_decoder_only(model):  # prefix LM: inputs then targets, loss on the targets
        inputs = rng.integers(3, vocab, (batch, input_len), dtype=np.int32)
        tokens = np.concatenate([inputs, targets], axis=1)
        weights = np.concatenate([np.zeros_like(inputs), targets > 0], axis=1)
        return {
            "decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": tokens,
            "decoder_loss_weights": weights.astype(np.float32),
        }
    return {
        "encoder_input_tokens": rng.integers(3, vocab, (batch, input_len), dtype=np.int32),
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }


def measure(args, attention: str, chunk: int, batch_size: int) -> list[dict]:
    fields = {k: getattr(args, k) for k in MODEL_FIELDS if getattr(args, k)}
    model = build_model(
        {
            "name": args.model,
            "dtype": args.dtype,
            "attention_impl": attention,
            "remat": args.remat,
            **fields,
        }
    )
    vocab = model.config.vocab_size
    batch_np = make_batch(model, batch_size, args.input_len, args.target_len, vocab)
    config = trainer_defaults()
    config.total_steps = 10_000
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    mesh = sharding.make_mesh({"data": -1})
    losses = {name: make_loss(loss_fields(name, lam=args.lam)) for name in ("mle", "iqlearn")}
    with sharding.use_mesh(mesh):
        example = {k: v[:1] for k, v in batch_np.items()}
        _, shardings = common.state_shardings(model, tx, example, mesh)
        batch = sharding.shard_global_batch(batch_np, mesh)
        state = common.init_state(model, tx, example, shardings, jax.random.PRNGKey(0))
        rng = jax.random.PRNGKey(1)
        steps, memory = {}, {}
        for name, loss_fn in losses.items():
            step = policy.jit_train_step(
                model, loss_fn, tx, mesh, shardings, logits_chunk_size=chunk
            )
            compiled = step.lower(state, batch, rng).compile()
            analysis = compiled.memory_analysis()
            memory[name] = None if analysis is None else analysis.temp_size_in_bytes
            steps[name] = compiled

        def run(name):
            nonlocal state
            started = time.perf_counter()
            state, metrics = steps[name](state, batch, rng)
            jax.block_until_ready(metrics["loss"])
            return time.perf_counter() - started

        for _ in range(args.warmup):
            for name in losses:
                run(name)
        times = {name: [] for name in losses}
        for _ in range(args.steps):
            for name in losses:
                times[name].append(run(name))
    shapes = {k: v.shape for k, v in batch_np.items()}
    positions = ("encoder_input_tokens", "decoder_target_tokens")  # as the trainer counts
    tokens = sum(batch_np[k].size for k in positions if k in batch_np)
    cost = perf.StepCost(perf.train_flops_per_step(model, shapes), 0.0, tokens)
    kind = jax.devices()[0].device_kind
    rows = []
    for name in losses:
        seconds = statistics.median(times[name])
        row = cost.perf(1.0 / seconds, jax.device_count(), kind)
        rows.append(
            {
                "model": args.model,
                "loss": name,
                "attention": attention,
                "logits_chunk_size": chunk,
                "remat": args.remat,
                "dtype": args.dtype,
                "batch": batch_size,
                "input_len": args.input_len,
                "target_len": args.target_len,
                "ms_per_step": seconds * 1e3,
                "scratch_gb": None if memory[name] is None else memory[name] / 2**30,
                "device": kind,
                "jax": jax.__version__,
                **row,
            }
        )
    rows[1]["iqlearn_over_mle"] = rows[1]["ms_per_step"] / rows[0]["ms_per_step"]
    return rows


def main(argv=None):
    args = parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}")
    print(
        "model       loss     attention chunk batch  ms/step  tokens/s  TFLOP/s/dev   MFU  "
        "scratch GB  IQ/MLE"
    )
    for attention in args.attention.split(","):
        for chunk in (int(c) for c in args.logits_chunk_size.split(",")):
            batch, rows = args.batch, []
            while batch and not rows:
                try:
                    rows = measure(args, attention, chunk, batch)
                except Exception as e:  # out of memory: halve the batch; else report, go on
                    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e):
                        print(f"  {attention}, chunk {chunk} failed: {first_line}")
                        break
                    print(f"  batch {batch} does not fit ({attention}, chunk {chunk}): halving")
                    batch //= 2
            for row in rows:
                mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
                scratch = "-" if row["scratch_gb"] is None else f"{row['scratch_gb']:.2f}"
                print(
                    f"{row['model']:11s} {row['loss']:8s} {attention:9s} {chunk:5d} "
                    f"{row['batch']:5d} {row['ms_per_step']:8.1f} {row['tokens_per_s']:9.0f} "
                    f"{row['tflops_per_s_per_device']:11.2f} {mfu:>6s} {scratch:>10s}  "
                    f"{row.get('iqlearn_over_mle', 1.0):.3f}"
                )
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

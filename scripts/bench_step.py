"""Train-step time of every loss, and policy sampling, on the same T5 config, in one run.

    python scripts/bench_step.py                     # CPU default: d_model 256, 4+4 layers
    python scripts/bench_step.py --dtype=bfloat16 --d_model=768 --num_heads=12 --d_ff=2048 \
        --num_layers=12 --batch=32 --input_len=512 --target_len=128      # ~T5-base, GPU

Timed, each as a ratio to the MLE update: the update of MLE, MLE + entropy, IQLearn,
online IQLearn (its update: the data batch plus the teacher-forced pass over alpha * batch
policy samples), and drawing one sample per input for the whole batch (`sample`, up to
target_len tokens at temperature 1, no EOS stop). All are compiled first, then timed in turn
(MLE, MLE + entropy, ..., MLE, ...) so machine noise hits them alike; prints medians. The
paper measured 196 ms / 189 ms = 1.04 for IQLearn / MLE on TPU for T5-base, and sampling a
batch at about 2.3 MLE updates. Imports no TensorFlow or seqio.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import jax
import numpy as np

from irl_lm import sharding
from irl_lm.config_utils import trainer_defaults
from irl_lm.learners import common
from irl_lm.learners import policy as policy_learner
from irl_lm.learners import sampler as policy_sampler
from irl_lm.losses import LOSSES, loss_fields, make_loss
from irl_lm.models import build_model


def parse_args(argv, extra: bool = False):
    """The benchmark shape; `extra` adds bench_t5.py's `--preset`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    if extra:
        p.add_argument("--preset", default="", help="a T5 preset (t5_small, ...) over the dims")
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--d_kv", type=int, default=64)
    p.add_argument("--d_ff", type=int, default=1024)
    p.add_argument("--num_heads", type=int, default=4)
    p.add_argument("--num_layers", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=32128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input_len", type=int, default=256)
    p.add_argument("--target_len", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--beta", type=float, default=0.01, help="MLE + entropy bonus weight")
    p.add_argument("--alpha", type=float, default=0.1, help="online IQLearn sampled fraction")
    p.add_argument("--steps", type=int, default=20, help="timed steps per loss (>= 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per loss after compile")
    return p.parse_args(argv)


def time_in_turn(run, names, *, warmup: int, steps: int) -> dict[str, list[float]]:
    """`run(name)`'s seconds for each name, `steps` times, in turn (name 1, name 2, ...,
    name 1, ...) so that machine noise hits them alike, after `warmup` untimed rounds."""
    for _ in range(warmup):
        for name in names:
            run(name)
    times = {name: [] for name in names}
    for _ in range(steps):
        for name in names:
            times[name].append(run(name))
    return times


def random_batch(args, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random tokens; targets end with EOS (1) at random lengths, then padding."""
    enc = rng.integers(3, args.vocab_size, (args.batch, args.input_len), dtype=np.int32)
    targets = rng.integers(3, args.vocab_size, (args.batch, args.target_len), dtype=np.int32)
    lengths = rng.integers(args.target_len // 2, args.target_len + 1, args.batch)
    for row, length in enumerate(lengths):
        targets[row, length - 1] = 1
        targets[row, length:] = 0
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }


def main(argv=None):
    args = parse_args(argv)
    model = build_model(
        {
            "name": "t5",
            "vocab_size": args.vocab_size,
            "d_model": args.d_model,
            "d_kv": args.d_kv,
            "d_ff": args.d_ff,
            "num_heads": args.num_heads,
            "num_layers": args.num_layers,
            "dtype": args.dtype,
        }
    )
    config = trainer_defaults()
    config.total_steps = 10_000
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    mesh = sharding.make_mesh({"data": -1})
    batch_np = random_batch(args, np.random.default_rng(0))
    losses = {
        name: make_loss(
            loss_fields(name, lam=args.lam, gamma=args.gamma, beta=args.beta, alpha=args.alpha)
        )
        for name in ("mle", "mle_entropy", "iqlearn", "iqlearn_online")
    }
    with sharding.use_mesh(mesh):
        example = {k: v[:1] for k, v in batch_np.items()}
        _, shardings = common.state_shardings(model, tx, example, mesh)
        batch = sharding.shard_host_batch(batch_np, mesh)
        states, steps = {}, {}
        for name, loss_fn in losses.items():
            states[name] = common.init_state(model, tx, example, shardings, jax.random.PRNGKey(0))
            steps[name] = policy_learner.jit_train_step(
                model, loss_fn, tx, mesh, shardings, online=LOSSES[name].online
            )
        rng = jax.random.PRNGKey(1)
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        sampler = {  # rows -> jitted sampler; EOS never ends a row (-1): full length
            rows: jax.jit(
                functools.partial(
                    policy_sampler.policy_batch,
                    model,
                    rows=rows,
                    max_len=args.target_len,
                    eos_id=-1,
                )
            )
            for rows in {
                args.batch,
                policy_sampler.num_sampled_rows(args.batch, args.alpha, shards),
            }
        }
        policy_rows = policy_sampler.num_sampled_rows(args.batch, args.alpha, shards)
        policy = sampler[policy_rows](states["mle"].params, batch, rng)

        def run(name):
            started = time.perf_counter()
            if name == "sample":
                jax.block_until_ready(sampler[args.batch](states["mle"].params, batch, rng))
                return time.perf_counter() - started
            extra = (policy,) if LOSSES[name].online else ()
            states[name], metrics = steps[name](states[name], batch, rng, *extra)
            jax.block_until_ready(metrics["loss"])
            return time.perf_counter() - started

        timed = [*losses, "sample"]
        compile_s = {name: run(name) for name in timed}
        times = time_in_turn(run, timed, warmup=args.warmup, steps=args.steps)

    median = {name: statistics.median(t) for name, t in times.items()}
    params = sum(x.size for x in jax.tree.leaves(states["mle"].params))
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  "
        f"dtype {args.dtype}  params {params / 1e6:.1f}M  batch {args.batch}x"
        f"({args.input_len}->{args.target_len})  vocab {args.vocab_size}"
    )
    for name in timed:
        q1, q3 = np.percentile(times[name], [25, 75])
        what = {
            "sample": f"sampling {args.batch}x{args.target_len} tokens",
            "iqlearn_online": f"update incl. {policy_rows} sampled rows",
        }.get(name, "update")
        print(
            f"{name:15s} median {median[name] * 1e3:8.1f} ms  ({median[name] / median['mle']:5.2f}"
            f" x MLE; IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}, first call incl. compile "
            f"{compile_s[name]:.1f} s, n={args.steps})  {what}"
        )
    ratio = median["iqlearn"] / median["mle"]
    print(f"IQLearn/MLE step-time ratio: {ratio:.3f}  (paper, TPU T5-base: 1.04; target <= 1.05)")
    print(f"sampling/MLE ratio: {median['sample'] / median['mle']:.2f}  (paper: about 2.3)")
    return ratio


if __name__ == "__main__":
    main(sys.argv[1:])

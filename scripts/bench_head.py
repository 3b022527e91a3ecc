"""The output head's precision in bf16 training: the train-step time of three heads, in one run.

    python scripts/bench_head.py                  # CPU default: d_model 256, 4+4 layers, vocab 32k

The same T5 (bf16 compute, float32 parameters), batch and IQLearn loss, with the head's
matmul (`irl_lm.models.layers.logits_einsum`) in three forms:

- `bf16_logits`: bf16 in, bf16 out (the logits are rounded to bf16 before the losses);
- `f32_accumulate` (ours): bf16 in, float32 out, the backward matmuls in bf16;
- `f32_out_autodiff`: bf16 in, float32 out, the backward left to autodiff (its two gradient
  matmuls then take a float32 cotangent).

Each is compiled first, then they are timed in turn so machine noise hits them alike;
prints medians and each one's ratio to `bf16_logits`. Imports no TensorFlow or seqio.
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_step import parse_args, random_batch, time_in_turn

from irl_lm import sharding
from irl_lm.config_utils import trainer_defaults
from irl_lm.learners import common
from irl_lm.learners import policy as policy_learner
from irl_lm.losses import loss_fields, make_loss
from irl_lm.models import build_model, layers

HEADS = {
    "bf16_logits": lambda spec, x, w: jnp.einsum(spec, x, w),
    "f32_accumulate": layers.logits_einsum,
    "f32_out_autodiff": lambda spec, x, w: jnp.einsum(
        spec, x, w, preferred_element_type=jnp.float32
    ),
}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    fields = {k: getattr(args, k) for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads")}
    model = build_model(
        {"name": "t5", "num_layers": args.num_layers, "dtype": "bfloat16", **fields}
    )
    config = trainer_defaults()
    tx = common.make_optimizer(config.optimizer, config.schedule, 10_000)
    loss_fn = make_loss(loss_fields("iqlearn", lam=args.lam, gamma=args.gamma))
    mesh = sharding.make_mesh({"data": -1})
    batch_np = random_batch(args, np.random.default_rng(0))
    with sharding.use_mesh(mesh):
        example = {k: v[:1] for k, v in batch_np.items()}
        _, shardings = common.state_shardings(model, tx, example, mesh)
        batch = sharding.shard_host_batch(batch_np, mesh)
        rng = jax.random.PRNGKey(1)
        states, steps, compile_s = {}, {}, {}
        original = layers.logits_einsum
        for name, head in HEADS.items():
            states[name] = common.init_state(model, tx, example, shardings, jax.random.PRNGKey(0))
            steps[name] = policy_learner.jit_train_step(model, loss_fn, tx, mesh, shardings)
            layers.logits_einsum = head  # traced (and compiled) with this head
            started = time.perf_counter()
            states[name], metrics = steps[name](states[name], batch, rng)
            jax.block_until_ready(metrics["loss"])
            compile_s[name] = time.perf_counter() - started
            layers.logits_einsum = original

        def run(name):
            started = time.perf_counter()
            states[name], metrics = steps[name](states[name], batch, rng)
            jax.block_until_ready(metrics["loss"])
            return time.perf_counter() - started

        times = time_in_turn(run, list(HEADS), warmup=args.warmup, steps=args.steps)

    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  "
        f"bf16 compute  batch {args.batch}x({args.input_len}->{args.target_len})  "
        f"vocab {args.vocab_size}  IQLearn λ={args.lam}"
    )
    for name in HEADS:
        q1, q3 = np.percentile(times[name], [25, 75])
        print(
            f"{name:17s} median {median[name] * 1e3:8.1f} ms  "
            f"({median[name] / median['bf16_logits']:5.3f} x bf16_logits; IQR "
            f"{q1 * 1e3:.1f}-{q3 * 1e3:.1f}, first call incl. compile {compile_s[name]:.1f} s, "
            f"n={args.steps})"
        )


if __name__ == "__main__":
    main()

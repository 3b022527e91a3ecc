"""Our T5 train step against Hugging Face's PyTorch T5, same weights, shape, batch, precision.

    python scripts/bench_t5.py                    # CPU default: d_model 256, 4+4 layers
    python scripts/bench_t5.py --preset=t5_small  # the public T5 v1.1 small shape
    python scripts/bench_t5.py --dtype=bfloat16   # bf16 compute (torch: CPU autocast)

One step on each side is the same work: teacher-forced forward, token-mean cross-entropy
over the target tokens, backward, global-norm clip 1.0, AdamW. The PyTorch model is built
first, saved with `save_pretrained`, and imported with `load_hf`, so both start from the
same weights: the script checks their first losses agree before timing. Steps are timed
alternately (ours, theirs, ours, ...) so machine noise hits both alike; it prints medians and
the ratio PyTorch / ours (> 1: ours is faster). Both use every core of the machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import torch
import transformers
from bench_step import parse_args, random_batch

from irl_lm import sharding
from irl_lm.config_utils import trainer_defaults
from irl_lm.learners import common, policy
from irl_lm.losses import make_loss
from irl_lm.models import PRESETS
from irl_lm.models.hf import load_hf


def hf_model(args) -> transformers.T5ForConditionalGeneration:
    if args.preset:
        fields = dict(PRESETS[args.preset][1])
    else:
        fields = {k: getattr(args, k) for k in ("d_model", "d_kv", "d_ff", "num_heads")}
        fields["num_layers"] = args.num_layers
    config = transformers.T5Config(
        vocab_size=args.vocab_size,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        **fields,
    )
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config)
    # Untied, at the scale v1.1's head has after pre-training (transformers' init uses std 1).
    head = torch.randn(model.lm_head.weight.shape) * config.d_model**-0.5
    model.lm_head.weight = torch.nn.Parameter(head)
    return model


def torch_step_fn(model, batch, args):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0)
    inputs = {
        "input_ids": torch.tensor(batch["encoder_input_tokens"], dtype=torch.long),
        "attention_mask": torch.tensor(batch["encoder_input_tokens"] > 0, dtype=torch.long),
        "decoder_input_ids": torch.tensor(batch["decoder_input_tokens"], dtype=torch.long),
    }
    targets = torch.tensor(batch["decoder_target_tokens"], dtype=torch.long)
    weights = torch.tensor(batch["decoder_loss_weights"])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = model(**inputs).logits
        nll = torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), reduction="none"
        )
        loss = (nll * weights.flatten()).sum() / weights.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    return step


def main(argv=None):
    args = parse_args(argv, extra=True)
    torch.set_num_threads(os.cpu_count())
    reference = hf_model(args).train()
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model, params = load_hf(folder, dtype=args.dtype)
    batch_np = random_batch(args, np.random.default_rng(0))

    config = trainer_defaults()
    config.total_steps = 10_000
    config.schedule.name, config.schedule.warmup_steps = "constant", 0
    config.optimizer.learning_rate = 1e-4
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
    with sharding.use_mesh(mesh):
        example = {k: v[:1] for k, v in batch_np.items()}
        _, shardings = common.state_shardings(model, tx, example, mesh)
        state = common.state_from_params(tx, params, shardings)
        step_fn = policy.jit_train_step(model, make_loss({"name": "mle"}), tx, mesh, shardings)
        batch = sharding.shard_host_batch(batch_np, mesh)
        rng = jax.random.PRNGKey(0)
        torch_step = torch_step_fn(reference, batch_np, args)

        def ours():
            nonlocal state
            started = time.perf_counter()
            state, metrics = step_fn(state, batch, rng)
            loss = float(metrics["loss"])  # waits for the step
            return time.perf_counter() - started, loss

        def theirs():
            started = time.perf_counter()
            loss = torch_step()
            return time.perf_counter() - started, loss

        (compile_s, first_ours), (_, first_theirs) = ours(), theirs()
        print(f"first-step loss: ours {first_ours:.5f}  PyTorch {first_theirs:.5f}")
        tolerance = 1e-3 if args.dtype == "float32" else 5e-2
        if abs(first_ours - first_theirs) > tolerance * max(1.0, abs(first_theirs)):
            raise SystemExit("the two steps compute different losses: not the same work")
        for _ in range(args.warmup):
            ours(), theirs()
        times = {"ours (JAX)": [], "PyTorch": []}
        for _ in range(args.steps):
            times["ours (JAX)"].append(ours()[0])
            times["PyTorch"].append(theirs()[0])

    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(
        f"device: {jax.devices()[0].device_kind}, {os.cpu_count()} cores  jax {jax.__version__}  "
        f"torch {torch.__version__}  transformers {transformers.__version__}\n"
        f"model: {args.preset or 'custom'} {n_params / 1e6:.1f}M params  dtype {args.dtype}  "
        f"batch {args.batch}x({args.input_len}->{args.target_len})  vocab {args.vocab_size}"
    )
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, values in times.items():
        q1, q3 = np.percentile(values, [25, 75])
        print(
            f"{name:11s} median {median[name] * 1e3:8.1f} ms/step  "
            f"(IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}, n={args.steps})"
        )
    print(f"(our first call incl. compile: {compile_s:.1f} s)")
    ratio = median["PyTorch"] / median["ours (JAX)"]
    print(f"PyTorch / ours step-time ratio: {ratio:.3f}  (target >= 1.0: at least as fast)")
    return ratio


if __name__ == "__main__":
    main(sys.argv[1:])

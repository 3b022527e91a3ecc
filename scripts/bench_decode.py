"""Our cached decoder against Hugging Face `generate` (PyTorch), same T5 weights, on CPU.

    python scripts/bench_decode.py                    # d_model 256, 4+4 layers, vocab 32k
    python scripts/bench_decode.py --preset=t5_small --batch=8 --input_len=128 --target_len=64

For greedy, sampling (temperature 1, no top-k / top-p) and beam search (4 beams): tokens/s of
each side and the ratio ours / HF (target >= 2). Both decode exactly `--target_len` tokens
per input (EOS disabled on both sides, so neither stops early), from the same weights: the
PyTorch model is saved and imported with `load_hf`, and the script checks that greedy
decoding gives the same tokens on both sides before timing. Runs alternate (ours, HF, ...)
after compilation; medians are reported. Both use every core.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
import torch
from bench_step import parse_args, random_batch
from bench_t5 import hf_model

from irl_lm import decoding, sharding
from irl_lm.models.hf import load_hf

NO_EOS = -1  # an id no token has: rows never finish early


def main(argv=None):
    args = parse_args(argv, extra=True)
    torch.set_num_threads(os.cpu_count())
    reference = hf_model(args).eval()
    reference.generation_config.eos_token_id = None
    reference.generation_config.pad_token_id = 0
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        model, params = load_hf(folder, dtype=args.dtype)
    enc_np = random_batch(args, np.random.default_rng(0))["encoder_input_tokens"]
    enc_torch = torch.tensor(enc_np, dtype=torch.long)
    steps = args.target_len
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
    decoder = functools.partial(decoding.make_decoder, model, max_len=steps, eos_id=NO_EOS)
    methods = {  # name -> (ours: (params, batch, rng) -> outputs, HF generate arguments)
        "greedy": (
            decoder("greedy"),
            dict(do_sample=False, num_beams=1),
        ),
        "sample": (
            decoder("temperature", temperature=1.0),
            dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_beams=1),
        ),
        "beam 4": (
            decoder("beam", num_beams=4, alpha=0.6),
            dict(do_sample=False, num_beams=4, length_penalty=0.6, early_stopping=False),
        ),
    }
    results = {}
    with sharding.use_mesh(mesh):
        batch = sharding.shard_host_batch({"encoder_input_tokens": enc_np}, mesh)
        for name, (ours_fn, hf_kwargs) in methods.items():
            decode = jax.jit(ours_fn)

            def ours(seed, decode=decode):
                started = time.perf_counter()
                out = jax.device_get(decode(params, batch, jax.random.PRNGKey(seed))["tokens"])
                return time.perf_counter() - started, out[:, 0]

            def theirs(seed, hf_kwargs=hf_kwargs):
                torch.manual_seed(seed)
                started = time.perf_counter()
                with torch.no_grad(), autocast:
                    out = reference.generate(
                        input_ids=enc_torch,
                        attention_mask=(enc_torch > 0).long(),
                        max_new_tokens=steps,
                        min_new_tokens=steps,
                        **hf_kwargs,
                    )
                return time.perf_counter() - started, out[:, 1:].numpy()

            compile_s, ours_tokens = ours(0)
            _, hf_tokens = theirs(0)
            assert ours_tokens.shape == hf_tokens.shape == (args.batch, steps)
            if name == "greedy" and args.dtype == "float32":
                agree = float((ours_tokens == hf_tokens).mean())
                print(f"greedy tokens equal to HF's: {agree:.1%}")
                if agree < 1.0:
                    raise SystemExit("greedy decoding differs from HF: not the same work")
            times = {"ours": [], "hf": []}
            for i in range(args.warmup + args.steps):
                for side, fn in (("ours", ours), ("hf", theirs)):
                    seconds, _ = fn(i + 1)
                    if i >= args.warmup:
                        times[side].append(seconds)
            tokens = args.batch * steps
            results[name] = {side: tokens / statistics.median(t) for side, t in times.items()}
            results[name]["compile_s"] = compile_s

    n_params = sum(x.size for x in jax.tree.leaves(params)) / 1e6
    print(
        f"device: cpu, {os.cpu_count()} cores  jax {jax.__version__}  torch {torch.__version__}"
        f"  model {args.preset or 'custom'} ({n_params:.1f}M)"
        f"  dtype {args.dtype}  batch {args.batch}, input {args.input_len}, output {steps} tokens"
    )
    print(f"{'method':8s} {'ours tok/s':>11s} {'HF tok/s':>10s} {'ours/HF':>8s}")
    for name, r in results.items():
        print(
            f"{name:8s} {r['ours']:11.0f} {r['hf']:10.0f} {r['ours'] / r['hf']:8.2f}"
            f"   (our first call incl. compile {r['compile_s']:.1f} s)"
        )
    print(f"medians of {args.steps} runs each; target ours/HF >= 2")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])

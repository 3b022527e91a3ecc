"""Scores (input, target) pairs with the reward IQLearn extracts from a checkpoint.

    python -m irl_lm.reward --workdir workdirs/xsum_iq --input-file pairs.jsonl \
        --output-file scored.jsonl
    python -m irl_lm.reward --hf /ckpts/flan-t5-base --input-file pairs.jsonl \
        --output-file scored.jsonl --gamma 0.99

Each input line holds text, `{"inputs": ..., "targets": ...}` (encoded with the
checkpoint's vocabulary; the input formatted as `irl_lm.sample` formats it, the target
followed by EOS), or token ids, `{"input_ids": [...], "target_ids": [...]}` (the input as
`irl_lm.sample` reads it, the target exactly as given: without EOS it is scored as a
sequence that ends after its last token). Each output line, in input order, repeats the
input line and adds `"reward"`, R = Σ_t r_t, and `"token_rewards"`, one r_t per target
token (EOS included): r_t = δ_t = ℓ_t[a_t] − γ V_{t+1}, V = 0 after the last token, the
loss's own TD residual (`irl_lm.losses.iqlearn.sequence_rewards`). `--gamma` defaults to
the workdir's `config.loss.gamma`, else 0.99. Rows are padded to one shape (compiled once)
and sharded over the local devices.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import jax
import numpy as np
from tqdm import tqdm

from irl_lm import files, sharding
from irl_lm.evaluators.common import make_reward_fn, teacher_forced_rows
from irl_lm.losses import DEFAULT_GAMMA
from irl_lm.sample import add_source_args, load_checkpoint, prompt_ids, record_ids


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_source_args(p)
    p.add_argument("--gamma", type=float, default=None, help="default: the run's, else 0.99")
    return p.parse_args(argv)


def read_pairs(path: str, loaded) -> tuple[list[dict], list[list[int]], list[list[int]]]:
    """The records and their prompt and target ids; a bad line fails naming FILE:LINE."""
    records, prompts, targets = [], [], []
    for where, record in files.read_jsonl_records(path):
        prompt = prompt_ids(record, where, loaded)
        target = record_ids(
            record,
            where,
            ids_key="target_ids",
            text_key="targets",
            vocab=loaded.vocab,
            vocab_size=loaded.model.config.vocab_size,
            text_format=((), [loaded.eos_id]),
        )
        if not target:
            raise ValueError(f"{where}: empty target; a target holds at least one token")
        records.append(record)
        prompts.append(prompt)
        targets.append(target)
    if not records:
        raise ValueError(f"{path}: no pairs")
    return records, prompts, targets


def _gamma(args) -> float:
    if args.gamma is not None:
        return args.gamma
    if args.workdir and files.path(args.workdir, "config.json").exists():
        loss = files.read_json(files.path(args.workdir, "config.json")).get("loss", {})
        return loss.get("gamma", DEFAULT_GAMMA)
    return DEFAULT_GAMMA


def main(argv=None) -> dict:
    args = parse_args(argv)
    loaded = load_checkpoint(args)
    records, prompts, targets = read_pairs(args.input_file, loaded)
    gamma = _gamma(args)
    mesh = loaded.mesh
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = math.ceil(args.batch_size / shards) * shards
    prompt_width, target_width = max(map(len, prompts)), max(map(len, targets))
    reward_fn = make_reward_fn(loaded.model, gamma=gamma, eos_id=loaded.eos_id)
    with sharding.use_mesh(mesh):
        params = loaded.load_params()
        rewards_fn = jax.jit(reward_fn)
        with open(args.output_file, "w") as out:
            for start in tqdm(range(0, len(records), batch_size), desc="scoring", unit="batch"):
                ys = targets[start : start + batch_size]
                batch, offsets = teacher_forced_rows(
                    loaded.model,
                    prompts[start : start + batch_size],
                    ys,
                    prompt_width=prompt_width,
                    target_width=target_width,
                    rows=batch_size,
                )
                rewards = jax.device_get(rewards_fn(params, sharding.shard_host_batch(batch, mesh)))
                for row, (y, offset) in enumerate(zip(ys, offsets, strict=True)):
                    token_rewards = rewards[row, offset : offset + len(y)].astype(np.float64)
                    scored = records[start + row] | {
                        "reward": float(token_rewards.sum()),
                        "token_rewards": token_rewards.tolist(),
                    }
                    out.write(json.dumps(scored) + "\n")
    summary = {"pairs": len(records), "gamma": gamma, "output": args.output_file}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])

"""Scores (input, target) pairs with the reward IQLearn extracts from a checkpoint.

    python -m irl_lm.reward --workdir workdirs/xsum_iq --input-file pairs.jsonl \
        --output-file scored.jsonl
    python -m irl_lm.reward --hf /ckpts/flan-t5-base --task xsum --input-file pairs.jsonl \
        --output-file scored.jsonl --gamma 0.99

Each input line holds text, `{"inputs": ..., "targets": ...}` (encoded with the
checkpoint's vocabulary; the input formatted by the task's template, as the run trained on
it: a workdir's own task, `--task` a paper task's, `--template` any; then as `irl_lm.sample`
formats it; the target followed by EOS), or token ids, `{"input_ids": [...], "target_ids":
[...]}` (the input as `irl_lm.sample` reads it, the target exactly as given: without EOS it
is scored as a sequence that ends after its last token). Each output line, in input order,
repeats the input line and adds `"reward"`, R = Σ_t r_t, `"token_rewards"`, one r_t per
target token (EOS included): r_t = δ_t = ℓ_t[a_t] − γ V_{t+1}, V = 0 after the last token,
the loss's own TD residual (`irl_lm.losses.iqlearn.sequence_rewards`), and `"log_prob"`,
log π(y | x). `--gamma` defaults to the workdir's `config.loss.gamma`, else 0.99. Rows are
padded to one shape (compiled once) and sharded over the local devices.

In Python, `RewardModel` scores pairs for use as a reward model in another loop:

    from irl_lm.reward import RewardModel
    rm = RewardModel.load("workdirs/xsum_iq")          # or "hf:/ckpts/..."
    scored = rm.score(["An article ..."], ["A summary."])  # [{"reward", "token_rewards", ...}]

What R measures. With ℓ_t[a] = log π(a | s_t) + V_t, R = Σ_t log π(a_t | s_t) + Σ_t (V_t −
γ V_{t+1}): a sum over the tokens, not a mean (pass `normalize=True` to `score`, or divide
by `len(token_rewards)`, for a per-token reward). At γ = 1 the second sum telescopes to V_0,
which depends on the input alone: R = log π(y | x) + V(x), so among outputs of one input R
ranks as log π(y | x) does (and, like it, favours short outputs). At γ < 1, R = log π(y | x)
+ V_0 − (1 − γ) Σ_{t≥1} V_t: each further token also pays (1 − γ) V_t, a length term whose
sign follows the values (negative V_t, as a trained policy's usually are, make it a bonus).
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
from irl_lm.evaluators.common import make_reward_fn, teacher_forced_rows, token_log_probs_fn
from irl_lm.losses import DEFAULT_GAMMA
from irl_lm.sample import (
    ReadyCheckpoint,
    add_source_args,
    load_checkpoint,
    prompt_ids,
    ready_checkpoint,
    record_ids,
)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_source_args(p)
    p.add_argument("--gamma", type=float, default=None, help="default: the run's, else 0.99")
    return p.parse_args(argv)


def target_ids(record: dict, where: str, loaded: ReadyCheckpoint) -> list[int]:
    """A line's target: `target_ids` as given, or the text `targets` and EOS."""
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
    return target


def read_pairs(path: str, loaded) -> tuple[list[dict], list[list[int]], list[list[int]]]:
    """The records and their prompt and target ids; a bad line fails naming FILE:LINE."""
    records, prompts, targets = [], [], []
    for where, record in files.read_jsonl_records(path):
        prompts.append(prompt_ids(record, where, loaded))
        targets.append(target_ids(record, where, loaded))
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no pairs")
    return records, prompts, targets


def run_gamma(source: ReadyCheckpoint, gamma: float | None = None) -> float:
    """`gamma`, else the training run's `config.loss.gamma`, else 0.99."""
    if gamma is not None:
        return gamma
    config_path = files.path(source.source.folder, "config.json")
    if source.source.kind == "workdir" and config_path.exists():
        loss = files.read_json(config_path).get("loss") or {}
        return loss.get("gamma", DEFAULT_GAMMA)
    return DEFAULT_GAMMA


class RewardModel:
    """The reward IQLearn extracts from a checkpoint, as a model that scores (input, output)
    pairs (the module docstring says what R measures). `score` takes text (formatted and
    encoded as the CLI does) or token ids; rows are padded to widths rounded up to 32, so a
    loop over similar lengths compiles a few shapes only."""

    def __init__(self, loaded: ReadyCheckpoint, params, *, gamma: float, batch_size: int = 32):
        self.loaded, self.params, self.gamma = loaded, params, gamma
        shards = loaded.mesh.shape["data"] * loaded.mesh.shape["fsdp"]
        self.batch_size = math.ceil(batch_size / shards) * shards
        model = loaded.model
        self._rewards = jax.jit(make_reward_fn(model, gamma=gamma, eos_id=loaded.eos_id))
        self._log_probs = jax.jit(token_log_probs_fn(model))

    @classmethod
    def load(
        cls,
        source: str,
        *,
        gamma: float | None = None,
        template: str = "auto",
        batch_size: int = 32,
        dtype: str = "float32",
    ) -> RewardModel:
        """From `hf:DIR`, a training workdir or a converted folder; `gamma` defaults to the
        run's; `template` as `irl_lm.sample.ready_checkpoint` reads it."""
        loaded = ready_checkpoint(source, dtype=dtype, template=template)
        with sharding.use_mesh(loaded.mesh):
            params = loaded.load_params()
        return cls(loaded, params, gamma=run_gamma(loaded, gamma), batch_size=batch_size)

    def score(self, inputs, outputs, *, normalize: bool = False) -> list[dict]:
        """One dict per pair: `reward` (R, or R / |y| with `normalize`), `token_rewards`,
        `log_prob` (log π(y | x)) and `length` (|y|). An input is text or a list of ids, an
        output text (EOS appended) or ids (as given)."""
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        prompts, targets = [], []
        for i, (x, y) in enumerate(zip(inputs, outputs, strict=True)):
            record = {"input_ids" if isinstance(x, list) else "inputs": x}
            record |= {"target_ids" if isinstance(y, list) else "targets": y}
            prompts.append(prompt_ids(record, f"pair {i}", self.loaded))
            targets.append(target_ids(record, f"pair {i}", self.loaded))
        round_up = lambda n: -(-n // 32) * 32
        scored = self.score_ids(
            prompts,
            targets,
            prompt_width=round_up(max(map(len, prompts))),
            target_width=round_up(max(map(len, targets))),
        )
        if normalize:
            scored = [s | {"reward": s["reward"] / s["length"]} for s in scored]
        return scored

    def score_ids(self, prompts, targets, *, prompt_width=0, target_width=0) -> list[dict]:
        """`score` of prompt and target ids as `irl_lm.sample` forms them (an encoder's
        prompt ends in EOS), at least `prompt_width` x `target_width`."""
        prompt_width = max(prompt_width, *map(len, prompts))
        target_width = max(target_width, *map(len, targets))
        out = []
        with sharding.use_mesh(self.loaded.mesh):
            for start in range(0, len(prompts), self.batch_size):
                ys = targets[start : start + self.batch_size]
                batch, offsets = teacher_forced_rows(
                    self.loaded.model,
                    prompts[start : start + self.batch_size],
                    ys,
                    prompt_width=prompt_width,
                    target_width=target_width,
                    rows=self.batch_size,
                )
                batch = sharding.shard_host_batch(batch, self.loaded.mesh)
                rewards = jax.device_get(self._rewards(self.params, batch))
                log_probs = jax.device_get(self._log_probs(self.params, batch))
                for row, (y, offset) in enumerate(zip(ys, offsets, strict=True)):
                    span = slice(offset, offset + len(y))
                    token_rewards = rewards[row, span].astype(np.float64)
                    out.append(
                        {
                            "reward": float(token_rewards.sum()),
                            "token_rewards": token_rewards.tolist(),
                            "log_prob": float(log_probs[row, span].astype(np.float64).sum()),
                            "length": len(y),
                        }
                    )
        return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    loaded = load_checkpoint(args)
    records, prompts, targets = read_pairs(args.input_file, loaded)
    with sharding.use_mesh(loaded.mesh):
        params = loaded.load_params()
    gamma = run_gamma(loaded, args.gamma)
    reward_model = RewardModel(loaded, params, gamma=gamma, batch_size=args.batch_size)
    scored = []
    step = reward_model.batch_size
    widths = max(map(len, prompts)), max(map(len, targets))  # one shape for the whole file
    for start in tqdm(range(0, len(records), step), desc="scoring", unit="batch"):
        scored += reward_model.score_ids(
            prompts[start : start + step],
            targets[start : start + step],
            prompt_width=widths[0],
            target_width=widths[1],
        )
    with files.path(args.output_file).open("w") as out:
        for record, s in zip(records, scored, strict=True):
            fields = {k: s[k] for k in ("reward", "token_rewards", "log_prob")}
            out.write(json.dumps(record | fields) + "\n")
    summary = {"pairs": len(records), "gamma": gamma, "output": args.output_file}
    if loaded.template:
        summary["template"] = loaded.template
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])

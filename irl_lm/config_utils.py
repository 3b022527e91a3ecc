"""Shared pieces of the `configs/*.py` files: trainer defaults and `arg` parsing."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

# The command-line flag that asks for the mesh, remat and gradient accumulation to be picked
# for the devices (`irl_lm.preflight.layouts`); config.mesh itself is a dict of axis sizes.
AUTO_MESH = "--config.mesh=auto"


def parse_arg(arg: str | None, **defaults: str) -> dict[str, str]:
    """`"loss=iqlearn,lam=0.1"` -> {"loss": "iqlearn", "lam": "0.1"} over `defaults`.

    Keys not in `defaults` are rejected so a typo in `--config=file.py:arg` fails loudly.
    """
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(
                f"config arg {item!r}: expected key=value with key in {sorted(defaults)}"
            )
        values[key] = value
    return values


def trainer_defaults() -> ml_collections.ConfigDict:
    """Everything but task, model and loss, with the values most runs keep."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Parameters to start from (fresh optimizer): "hf:<Hugging Face folder>", one of our
    # workdirs / WORKDIR/checkpoints/<step> / converted folders, or "" (random init).
    # The architecture and the vocabulary then come from there.
    config.init_from = ""
    config.total_steps = 1000  # 0 with init_from: evaluate those parameters, no training
    config.batch_size = 64  # global, in sequences
    config.eval_batch_size = 64
    config.grad_accum_steps = 1
    # > 0: the head and the losses' per-token terms taken this many target positions at a
    # time, so the [B, T, V] float32 logits never exist whole (large vocabularies).
    config.logits_chunk_size = 0
    config.log_every = 50
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # shard_by_host: each host reads only its shard of the training source (by file when
    # there are enough files) and makes its rows of each batch; the stream then depends on
    # the host count. False: every host reads the whole stream, the same for any count.
    config.data = ml_collections.ConfigDict({"pack": False, "shard_by_host": False})
    config.optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",  # or "adafactor"
            "learning_rate": 1e-3,
            "b1": 0.9,
            "b2": 0.98,
            "weight_decay": 0.0,
            "grad_clip": 1.0,  # global-norm clip; 0 disables
        }
    )
    config.schedule = ml_collections.ConfigDict(
        {"name": "cosine", "warmup_steps": 100, "final_fraction": 0.1}
    )
    config.checkpoint = ml_collections.ConfigDict({"every": 500, "keep": 3})
    config.evals = ml_collections.ConfigDict()
    # GAIL's discriminator (config.loss.name="gail", irl_lm/learners/gail.py): "model" fields over
    # the policy's model config (a smaller discriminator needs init="scratch"), initialised
    # from the policy's (initial) parameters or from scratch, its logit ("scalar": a linear
    # head on its final state, "token" or "log_ratio": see learners/gail.py), its learning
    # rate (0: the policy's), the
    # discriminator updates before each policy update, and the first steps in which only
    # the discriminator learns.
    config.discriminator = ml_collections.ConfigDict(
        {
            "model": {},
            "init": "policy",
            "head": "scalar",
            "learning_rate": 0.0,
            "updates_per_step": 1,
            "warmup_steps": 0,
        }
    )
    return config


# `--config=FILE:ARG` keys that set `config.loss` fields ("" keeps the loss's default)
LOSS_ARGS = {
    "loss": "mle",
    **dict.fromkeys(["lam", "gamma", "beta", "alpha", "mle_weight", "kl_coef", "entropy_coef"], ""),
    "reward": "",
}


def loss_config(args: dict[str, str]) -> ml_collections.ConfigDict:
    """`config.loss` from parsed config args: `loss` names it, the loss's own fields among
    the other `LOSS_ARGS` override their defaults (`irl_lm.losses.LOSSES`)."""
    from irl_lm.losses import loss_fields

    values = {}
    for key, value in args.items():
        if key == "loss" or key not in LOSS_ARGS or not value:
            continue
        try:
            values[key] = value if key == "reward" else float(value)
        except ValueError:
            raise ValueError(
                f"config arg {key}={value!r} is not a number; give one, e.g. {key}=0.1"
            ) from None
    return ml_collections.ConfigDict(loss_fields(args["loss"], **values))


# mode=tiny models (vocab_size 0: the task's); "" is the default
_TINY_T5 = dict(
    name="t5", d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=2, num_decoder_layers=2
)
# A T5Gemma 2-shaped stack at the tiny T5's width: merged attention, q/k norms, one sliding
# (window 8) and one global layer, grouped-query.
_TINY_T5GEMMA2_STACK = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    sliding_window=8,
    layer_types=("sliding_attention", "full_attention"),
)
TINY_MODELS = {
    "": _TINY_T5,
    "t5": _TINY_T5,
    "t5gemma2": dict(
        name="t5gemma",
        model_type="t5gemma2",
        eoi_token_index=None,  # the tiny vocabularies have no end-of-image token
        encoder=dict(_TINY_T5GEMMA2_STACK),  # copies: each stack is overridden on its own
        decoder=dict(_TINY_T5GEMMA2_STACK),
    ),
    "decoder_only": dict(
        name="decoder_only",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


SMOKE_DATA = "../shared/data"  # mode=tiny's small files (the tests' data folder)
FULL_DATA = "~/.cache/irl_lm/data"  # mode=full's: `python -m irl_lm.data.fetch --task=TASK`
LARGE_VOCABULARY = 100_000  # presets with at least this many tokens chunk their logits


def _vocab_size(preset: str) -> int:
    from irl_lm.models import resolve_preset

    return int(resolve_preset({"name": preset}).get("vocab_size", 0))


def text_task_config(
    task: str,
    arg: str | None,
    *,
    files: dict[str, str] | None = None,
    lengths: tuple[int, int],
    task_fields: dict | None = None,
):
    """The config of a paper task (`configs/xsum.py` ...). `arg` keys:

    mode   "tiny" (the default): a smoke run: a byte-level model with 2 layers per stack, 30
           steps on the small shared files `files` (split -> path under `data`, default
           ../shared/data; the same file may serve training and evaluation, which only this
           mode allows), greedy decode evaluation of 8 examples (about 20 s on a CPU);
           `model` picks its family: "t5" (default), "t5gemma2" (T5Gemma 2-shaped) or
           "decoder_only".
           "full": the paper's run: `model` (a preset, e.g. t5_base, gemma3_1b; default
           t5_base), fine-tuned from `--config.init_from`, with the vocabulary of that
           checkpoint, on the paper's splits `DATA/<task>/{train,validation,test}.jsonl`
           that `python -m irl_lm.data.fetch --task=<task> --out=DATA` writes (`data`, default
           ~/.cache/irl_lm/data; a gs:// folder on a pod); validation every 1000 steps and
           the whole test split decoded at the end (evaluator `test`).
    loss (mle, mle_entropy, iqlearn, iqlearn_online, gail) and its fields (lam, gamma,
    beta, alpha, mle_weight, kl_coef, entropy_coef, reward), model, data, evals (the
    evaluators to keep, "+"-separated; default all). `--config.task.files.<split>` points a
    split elsewhere. Without `files`, `task` is any registered seqio task or mixture, or
    "jsonl", with `task_fields` (`modules`; jsonl's `files`, `inputs`, ...) in
    `config.task` (configs/seqio_task.py).
    """
    args = parse_arg(arg, **LOSS_ARGS, mode="tiny", model="", data="", evals="")
    if args["mode"] not in ("tiny", "full"):
        raise ValueError(f"config arg mode={args['mode']!r}; allowed: tiny, full")
    tiny = args["mode"] == "tiny"
    if tiny and args["model"] not in TINY_MODELS:
        raise ValueError(
            f"config arg model={args['model']!r}: mode=tiny builds a tiny model of a family; "
            f"allowed: {sorted(k for k in TINY_MODELS if k)} (presets need mode=full)"
        )
    config = trainer_defaults()
    if files is not None:  # one of ours
        data = args["data"] or (SMOKE_DATA if tiny else os.path.expanduser(FULL_DATA))
        if not tiny:  # the paper's splits, as irl_lm.data.fetch writes them
            files = {split: f"{task}/{split}.jsonl" for split in ("train", "validation", "test")}
        config.task = dict(
            name=f"irl_lm.{task}",
            source="jsonl",
            files={split: f"{data}/{path}" for split, path in files.items()},
            allow_overlap=tiny,
            vocabulary="byte" if tiny else "",  # "": taken from config.init_from's checkpoint
            max_input_len=128 if tiny else lengths[0],
            max_target_len=48 if tiny else lengths[1],
            num_train_examples=256 if tiny else 0,
        )
    else:  # a seqio task of the user's, or the config-only jsonl task
        max_input_len, max_target_len = lengths
        config.task = dict(
            name=task,
            max_input_len=max_input_len,
            max_target_len=max_target_len,
            **(task_fields or {}),
        )
    config.loss = loss_config(args)
    if tiny:
        config.model = dict(TINY_MODELS[args["model"]], vocab_size=0)
        config.total_steps, config.batch_size, config.eval_batch_size = 30, 8, 8
        config.log_every, config.checkpoint.every = 10, 30
        config.schedule.warmup_steps = 5
        config.optimizer.learning_rate = 3e-3
        config.evals = dict(
            validation=dict(kind="loss", every=0, max_examples=16),
            decode=dict(
                kind="decode",
                every=0,
                max_examples=8,
                method="greedy",
                temperature=1.0,
                num_decodes=1,
            ),
            reward=dict(kind="reward", every=0, num_examples=4, num_samples=4, num_bootstrap=100),
        )
        if task == "gsm8k":  # the paper's second GSM8k metric
            config.evals.calculator = dict(
                kind="decode", every=0, max_examples=4, method="greedy", calculator=True
            )
    else:
        # At full size: bfloat16 compute (float32 parameters and Adam state), parameters and
        # optimizer state sharded over every device (FSDP), and the head taken in chunks of
        # target positions where the vocabulary is large (GAIL takes whole logits). What
        # this gives on each slice: docs/preflight.md (`python -m irl_lm.preflight`).
        preset = args["model"] or "t5_base"
        config.model = dict(name=preset, dropout_rate=0.1, dtype="bfloat16")
        config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
        if _vocab_size(preset) >= LARGE_VOCABULARY and args["loss"] != "gail":
            config.logits_chunk_size = 64
        config.total_steps, config.batch_size = 20_000, 64
        config.optimizer.learning_rate = 1e-4
        config.schedule.warmup_steps = 1000
        config.checkpoint.every = 1000
        config.evals = dict(
            validation=dict(kind="loss", every=1000, max_examples=1024),
            decode=dict(
                kind="decode",
                every=1000,
                max_examples=512,
                method="greedy",
                temperature=1.0,
                num_decodes=1,
            ),
            samples=dict(
                kind="decode",
                every=5000,
                max_examples=256,
                method="temperature",
                temperature=1.0,
                num_decodes=4,
            ),
            reward=dict(kind="reward", every=5000, num_examples=256, num_samples=8),
        )
        if files is not None:  # the paper's score: the whole test split, at the end
            config.evals.test = dict(
                kind="decode", every=0, split="test", max_examples=0, method="greedy"
            )
        if task == "gsm8k":
            config.evals.calculator = dict(
                kind="decode", every=5000, max_examples=512, method="greedy", calculator=True
            )
    if args["evals"]:  # keep only these evaluators, e.g. for an evaluation-only run
        keep = args["evals"].split("+")
        unknown = sorted(set(keep) - set(config.evals))
        if unknown:
            raise ValueError(f"config arg evals: {unknown} not in {sorted(config.evals)}")
        config.evals = {name: config.evals[name] for name in keep}
    return config


# ----------------------------------------------------------------------------- sweeps
# `sweep(arg)` in a config file lists its points (`python -m irl_lm.sweep`): dicts of dotted
# config fields, optionally with the point's `config_arg`.


def format_value(value: Any) -> str:
    """A value as `--config.x=` takes it (and as it reads in a point name)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        short = format(value, "g")
        return short if float(short) == value else repr(value)
    return str(value)


_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


def point_names(points: Sequence[dict]) -> list[str]:
    """Readable, filesystem-safe names: `lam=0.3,seed=1`. A field is named by its last
    component unless two swept fields share it; the `config_arg` leads when points differ
    in it; an explicit `name` wins."""
    fields = {k for p in points for k in p if k not in ("config_arg", "name")}
    leaves = [k.rsplit(".", 1)[-1] for k in fields]
    label = {
        k: k if leaves.count(k.rsplit(".", 1)[-1]) > 1 else k.rsplit(".", 1)[-1] for k in fields
    }
    varied_arg = len({p.get("config_arg") for p in points}) > 1
    names = []
    for p in points:
        if "name" in p:
            names.append(_UNSAFE.sub("_", str(p["name"])))
            continue
        parts = [p["config_arg"]] if varied_arg and p.get("config_arg") else []
        parts += [
            f"{label[k]}={format_value(v)}" for k, v in p.items() if k not in ("config_arg", "name")
        ]
        names.append(_UNSAFE.sub("_", ",".join(parts)) or "default")
    return names


PAPER_LAMBDAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)  # IQLearn's λ grid (PAPER.md; 0 is MLE)
SEEDS = (0, 1, 2)


def grid(config_arg: str | None = None, **axes) -> list[dict]:
    """The product of `axes` (dotted field -> values), the first axis slowest, e.g.
    `grid("loss=iqlearn", **{"loss.lam": PAPER_LAMBDAS, "seed": SEEDS})`."""
    points = [{"config_arg": config_arg} if config_arg else {}]
    for field, values in axes.items():
        points = [p | {field: v} for p in points for v in values]
    return points


ENTROPY_BETAS = (0.01, 0.03, 0.1, 0.3)  # MLE + entropy's grid in the studies
TEMPERATURES = (0.1, 0.25, 0.5, 0.75, 1.0)  # the decoding study's


def decoders() -> list[tuple[str, str, float]]:
    """The decoding study's (name, method, temperature): greedy, beam search with 4 beams
    (no temperature: 0 in the tables) and sampling at each of `TEMPERATURES`."""
    return [
        ("greedy", "greedy", 0.0),
        ("beam4", "beam", 0.0),
        *((f"t={t:g}", "temperature", t) for t in TEMPERATURES),
    ]

"""Shared pieces of the `configs/*.py` files: trainer defaults and `arg` parsing."""

from __future__ import annotations

import ml_collections


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
    # GAIL's discriminator (config.loss.name="gail", irl_lm/gail.py): "model" fields over
    # the policy's model config (a smaller discriminator needs init="scratch"), initialised
    # from the policy's (initial) parameters or from scratch, its logit ("log_ratio" against
    # the initial policy, or "token"), its learning rate (0: the policy's), the
    # discriminator updates before each policy update, and the first steps in which only
    # the discriminator learns.
    config.discriminator = ml_collections.ConfigDict(
        {
            "model": {},
            "init": "policy",
            "head": "log_ratio",
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
TINY_MODELS = {
    "": _TINY_T5,
    "t5": _TINY_T5,
    "decoder_only": dict(
        name="decoder_only",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}


def text_task_config(
    task: str,
    arg: str | None,
    *,
    files: dict[str, str] | None = None,
    lengths: tuple[int, int],
    task_fields: dict | None = None,
):
    """The config of a paper task (`configs/xsum.py` ...). `arg` keys:

    mode   "tiny" (the default): a byte-level model with 2 layers per stack, 30 steps on the
           shared files, greedy decode evaluation of 8 examples (a CPU smoke run, about
           20 s); `model` picks its family: "t5" (default) or "decoder_only".
           "full": `model` (a preset, e.g. t5_base, gemma3_1b; default t5_base), fine-tuned
           from `--config.init_from`, with the vocabulary of that checkpoint and evaluation
           every 1000 steps.
    loss (mle, mle_entropy, iqlearn, iqlearn_online, gail) and its fields (lam, gamma,
    beta, alpha, mle_weight, kl_coef, entropy_coef, reward), model, data (the folder of the
    shared JSONL files), evals (the evaluators to keep, "+"-separated; default all).
    `files` maps splits to paths under `data`; point `--config.task.files.<split>` at the
    full corpora for real runs. Without `files`, `task` is any registered seqio task or
    mixture, or "jsonl", with `task_fields` (`modules`; jsonl's `files`, `inputs`, ...) in
    `config.task` (configs/seqio_task.py).
    """
    args = parse_arg(arg, **LOSS_ARGS, mode="tiny", model="", data="../shared/data", evals="")
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
        config.task = dict(
            name=f"irl_lm.{task}",
            source="jsonl",
            files={split: f"{args['data']}/{path}" for split, path in files.items()},
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
        config.model = dict(name=args["model"] or "t5_base", dropout_rate=0.1)
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
# The model-size study's T5 presets and the Hugging Face folders (under `ckpts=`) they load
T5_SIZES = {"t5_base": "t5-v1_1-base", "t5_large": "t5-v1_1-large", "t5_xl": "t5-v1_1-xl"}
STUDIES = ("lambda", "lambda_entropy", "model_size", "decoding", "data_size", "reward_correlation")


def decoders() -> list[tuple[str, str, float]]:
    """The decoding study's (name, method, temperature): greedy, beam search with 4 beams
    (no temperature: 0 in the tables) and sampling at each of `TEMPERATURES`."""
    return [
        ("greedy", "greedy", 0.0),
        ("beam4", "beam", 0.0),
        *((f"t={t:g}", "temperature", t) for t in TEMPERATURES),
    ]


def text_task_sweep(arg: str | None = None) -> list[dict]:
    """The sweeps of the paper-task configs, the synthetic-expert studies' layout
    (experiments/README.md) for a real task. `arg` keys:

    study   "lambda" (the default): the paper's λ grid × 3 seeds of IQLearn;
            "lambda_entropy": that grid and MLE + entropy β ∈ `ENTROPY_BETAS`;
            "model_size": MLE and IQLearn at `lam` for each of `T5_SIZES` (mode=full
            fine-tunes `ckpts`/<folder>; mode=tiny widens the tiny T5: d_model 32/64/128);
            "decoding": `source`'s MLE and IQLearn-at-`lam` runs evaluated (no training) by
            the decode evaluator with each of `decoders()`;
            "data_size": MLE, IQLearn at `lam` and MLE + entropy at `beta` on 250 / 1000 /
            4000 / all training examples (mode=tiny: 32 / 64 / 128 / 256);
            "reward_correlation": `source`'s λ grid evaluated by the reward evaluator,
            plus online IQLearn (α = 0.1) at `lam`.
    mode    "full" (the default) or "tiny" (the smoke config; "tiny" alone is
            study=lambda,mode=tiny).
    lam, beta  the λ and β of the studies after the first (default 0.1, 0.01);
    source  the lambda_entropy sweep folder that decoding and reward_correlation evaluate;
    ckpts   the folder of the Hugging Face checkpoints of `T5_SIZES` (default /ckpts).
    Each point of a seed: 3 seeds each.
    """
    arg = "study=lambda,mode=tiny" if arg == "tiny" else arg
    args = parse_arg(
        arg,
        study="lambda",
        mode="full",
        lam="0.1",
        beta="0.01",
        source="workdirs/lambda_entropy",
        ckpts="/ckpts",
    )
    study, mode = args["study"], args["mode"]
    if study not in STUDIES:
        raise ValueError(f"sweep arg study={study!r}; allowed: {', '.join(STUDIES)}")
    if mode not in ("full", "tiny"):
        raise ValueError(f"sweep arg mode={mode!r}; allowed: full, tiny")
    lam, beta = float(args["lam"]), float(args["beta"])
    iqlearn, entropy = f"mode={mode},loss=iqlearn", f"mode={mode},loss=mle_entropy"
    seeds = {"seed": SEEDS}
    lambdas = grid(iqlearn, **{"loss.lam": PAPER_LAMBDAS, **seeds})
    lambda_entropy = lambdas + grid(entropy, **{"loss.beta": ENTROPY_BETAS, **seeds})
    if study == "lambda":
        return lambdas
    if study == "lambda_entropy":
        return lambda_entropy
    if study == "model_size":
        return [
            {"name": f"{size},lam={p['loss.lam']:g},seed={p['seed']}", **p, **fields}
            for size, model_arg, fields in _model_sizes(mode, args["ckpts"])
            for p in grid(iqlearn + model_arg, **{"loss.lam": (0.0, lam), **seeds})
        ]
    if study == "data_size":
        sizes = (250, 1000, 4000, 0) if mode == "full" else (32, 64, 128, 256)
        axes = {"task.num_train_examples": sizes, **seeds}
        return grid(iqlearn, **{"loss.lam": (0.0, lam)}, **axes) + grid(
            entropy, **{"loss.beta": (beta,)}, **axes
        )
    # decoding and reward_correlation evaluate the runs of study lambda_entropy in `source`,
    # named as that sweep named them (its λ points come first)
    from irl_lm.sweep import point_names

    run_names = point_names(lambda_entropy)[: len(lambdas)]
    source_names = {(p["loss.lam"], p["seed"]): n for p, n in zip(lambdas, run_names, strict=True)}

    def evaluate(lam_value, seed, evals, **fields):
        source = f"{args['source']}/{source_names[(lam_value, seed)]}"
        return {
            "config_arg": f"{iqlearn},evals={evals}",
            "init_from": source,
            "total_steps": 0,
            "loss.lam": lam_value,
            "seed": seed,
            **fields,
        }

    if study == "decoding":
        return [
            evaluate(
                lam_value,
                seed,
                "decode",
                name=f"lam={lam_value:g},seed={seed},{name}",
                **{
                    "evals.decode.method": method,
                    "evals.decode.temperature": temperature,
                    "evals.decode.num_decodes": 4 if method == "temperature" else 1,
                },
            )
            for lam_value in (0.0, lam)
            for seed in SEEDS
            for name, method, temperature in decoders()
        ]
    offline = [
        evaluate(p["loss.lam"], p["seed"], "reward", name=f"lam={p['loss.lam']:g},seed={p['seed']}")
        for p in lambdas
    ]
    online = [
        p | {"name": f"online,lam={lam:g},alpha=0.1,seed={p['seed']}"}
        for p in grid(
            f"mode={mode},loss=iqlearn_online,evals=reward",
            **{"loss.lam": (lam,), "loss.alpha": (0.1,), **seeds},
        )
    ]
    return offline + online


def _model_sizes(mode: str, ckpts: str) -> list[tuple[str, str, dict]]:
    """(name, config_arg suffix, fields) per size: `T5_SIZES` fine-tuned from `ckpts`, or
    (mode=tiny) the tiny T5 at d_model 32 / 64 / 128."""
    if mode == "full":
        return [
            (preset, f",model={preset}", {"init_from": f"hf:{ckpts}/{folder}"})
            for preset, folder in T5_SIZES.items()
        ]
    return [
        (f"d_model={d}", "", {"model.d_model": d, "model.d_ff": 2 * d, "model.d_kv": d // 4})
        for d in (32, 64, 128)
    ]

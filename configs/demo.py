"""The demo: a small T5 learns the synthetic expert from scratch (the embedded default).

Run one loss:
    python -m irl_lm.main --config=configs/demo.py:loss=iqlearn,lam=0.1 --workdir=/tmp/demo
    python -m irl_lm.main --config=configs/demo.py:loss=mle --workdir=/tmp/demo_mle \
        --config.total_steps=2000 --config.task.expert.temperature=0.5
or the whole comparison (every loss, with the expert's row): `make demo`. GAIL fine-tunes
an MLE run, as in the paper (500 steps):
    python -m irl_lm.main --config=configs/demo.py:loss=gail --workdir=/tmp/demo_gail \
        --config.init_from=/tmp/demo_mle

`model=t5gemma2` trains the same loss on a T5Gemma 2-shaped model of the same width (Gemma 3
layers, merged attention, a sliding and a global layer per stack); `model=decoder_only` on a
Llama-style decoder-only model of the T5's parameter count (4 layers of width 64: 194k
parameters against the T5's 203k; it reads input and output as one sequence, so a step
costs more):
    python -m irl_lm.main --config=configs/demo.py:loss=iqlearn,model=t5gemma2 --workdir=/tmp/g2

Expected: about 1-2 minutes per run on 2 CPU cores; validity well above 0.9 and forward /
reverse KL per token of a few hundredths of a nat for both losses after 1200 steps.

Sweeps (`sweep(arg)` below; experiments/lambda_sweep/ has the first one, run):
    python -m irl_lm.sweep --config=configs/demo.py --workdir=workdirs/lambda --parallel=2
    python -m irl_lm.sweep --config=configs/demo.py --sweep_arg=entropy --workdir=workdirs/beta
    python -m irl_lm.report workdirs/lambda
"""

from irl_lm.config_utils import (
    LOSS_ARGS,
    PAPER_LAMBDAS,
    SEEDS,
    TINY_MODELS,
    grid,
    loss_config,
    parse_arg,
    trainer_defaults,
)


def get_config(arg=None):
    args = parse_arg(arg, **{**LOSS_ARGS, "loss": "iqlearn"}, model="t5")
    if args["model"] not in ("t5", "t5gemma2", "decoder_only"):
        raise ValueError(f"config arg model={args['model']!r}; allowed: t5, t5gemma2, decoder_only")
    config = trainer_defaults()
    config.total_steps = 3000
    config.batch_size = 64
    config.log_every = 250
    config.optimizer.learning_rate = 3e-3
    config.schedule.warmup_steps = 100
    config.checkpoint.every = 1000

    config.task = dict(
        name="irl_lm.synthetic_expert",
        num_train_examples=20_000,
        num_eval_examples=512,
        max_input_len=0,  # 0: the expert's longest input (+EOS); set longer rows for packing
        max_target_len=0,  # 0: the expert's longest output (+EOS)
        expert=dict(
            num_symbols=12,
            num_output_tokens=24,
            num_states=3,
            branching=3,
            temperature=1.0,  # the entropy knob
            filler_prob=0.1,
            min_input_len=4,
            max_input_len=8,
            max_fillers=2,
            seed=0,
        ),
    )
    config.model = dict(
        name="t5",
        vocab_size=0,  # 0: taken from the task's vocabulary
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        dropout_rate=0.0,
    )
    if args["model"] == "t5gemma2":
        config.model = dict(TINY_MODELS["t5gemma2"], vocab_size=0, dropout_rate=0.0)
    if args["model"] == "decoder_only":  # the T5's parameter count (194k against 203k)
        config.model = dict(
            name="decoder_only",
            vocab_size=0,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            dropout_rate=0.0,
        )
    config.loss = loss_config(args)
    if config.loss.name == "gail":  # fine-tunes an MLE run (`make demo` points init_from at it)
        config.total_steps, config.checkpoint.every = 500, 500
        config.optimizer.learning_rate, config.schedule.warmup_steps = 1e-4, 10
        if not args["kl_coef"]:
            config.loss.kl_coef = 0.05
        if not args["gamma"]:
            config.loss.gamma = 0.9
        # The log-ratio head: on this expert the scalar head (the default) stays at chance
        # within 500 steps and GAIL then drifts (experiments/gail_from_mle/README.md).
        config.discriminator.update(
            init="policy", head="log_ratio", learning_rate=1e-3, warmup_steps=100
        )
    config.evals = dict(
        validation=dict(kind="loss", every=1000, max_examples=512),
        expert=dict(kind="synthetic_expert", every=1000, num_examples=128, num_samples=4),
    )
    return config


def sweep(arg=None):
    """ "lambda" (default): IQLearn over the paper's λ grid (λ = 0 is MLE) × 3 seeds;
    "entropy": MLE + entropy bonus, β ∈ {0, 0.01, 0.03, 0.1, 0.3} × 3 seeds;
    "data": training-set size {1000, 4000, 20000} × λ ∈ {0, 0.1} × 3 seeds."""
    sweeps = {
        "lambda": lambda: grid("loss=iqlearn", **{"loss.lam": PAPER_LAMBDAS, "seed": SEEDS}),
        "entropy": lambda: grid(
            "loss=mle_entropy", **{"loss.beta": (0.0, 0.01, 0.03, 0.1, 0.3), "seed": SEEDS}
        ),
        "data": lambda: grid(
            "loss=iqlearn",
            **{
                "task.num_train_examples": (1000, 4000, 20_000),
                "loss.lam": (0.0, 0.1),
                "seed": SEEDS,
            },
        ),
    }
    if (arg or "lambda") not in sweeps:
        raise ValueError(f"sweep arg {arg!r}; allowed: {sorted(sweeps)}")
    return sweeps[arg or "lambda"]()

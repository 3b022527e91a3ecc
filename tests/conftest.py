"""Test set-up: 8 fake CPU devices (before jax is imported) and tiny shared fixtures."""

import contextlib
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


def tiny_config(loss: str = "iqlearn", **overrides):
    """The demo config shrunk to run a few steps in seconds."""
    from configs import demo

    config = demo.get_config(f"loss={loss}")
    config.total_steps = 4
    config.batch_size = 8
    config.eval_batch_size = 8
    config.log_every = 1
    config.schedule.warmup_steps = 1
    config.checkpoint.every = 2
    config.task.num_train_examples = 64
    config.task.num_eval_examples = 16
    config.task.expert.max_input_len = 5
    config.model.update(
        d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1, num_decoder_layers=1
    )
    config.evals = dict(
        validation=dict(kind="loss", every=2, max_examples=16),
        expert=dict(kind="synthetic_expert", every=4, num_examples=4, num_samples=2),
    )
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


@pytest.fixture
def make_config():
    return tiny_config


# A config file with a 2 λ × 2 seed sweep of a few steps per point (tests/test_sweep.py,
# tests/test_report.py).
TINY_SWEEP_CONFIG = """
import sys

sys.path.insert(0, ROOT)  # configs/ of this checkout, from any working directory

from configs import demo
from irl_lm.config_utils import grid


def get_config(arg=None):
    config = demo.get_config(arg)
    config.total_steps, config.batch_size, config.eval_batch_size = 6, 8, 8
    config.log_every, config.checkpoint.every = 2, 3
    config.schedule.warmup_steps = 1
    config.task.num_train_examples, config.task.num_eval_examples = 64, 16
    config.task.expert.max_input_len = 5
    config.model.update(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1)
    config.evals = dict(
        validation=dict(kind="loss", every=3, max_examples=16),
        expert=dict(kind="synthetic_expert", every=3, num_examples=8, num_samples=2),
    )
    return config


def sweep(arg=None):
    if arg == "broken":  # the second point's optimizer does not exist: it fails at start
        return [{"seed": 0}, {"optimizer.name": "sgd"}]
    return grid("loss=iqlearn", **{"loss.lam": (0.0, 0.3), "seed": (0, 1)})
"""


def write_tiny_sweep_config(folder) -> str:
    path = os.path.join(str(folder), "tiny_sweep.py")
    with open(path, "w") as f:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        f.write(TINY_SWEEP_CONFIG.replace("ROOT)", f"{root!r})"))
    return path


# Subprocesses that only train a point run on one CPU device: 8 fake devices cost each one
# about 5 s more start-up (sharding itself is tested in-process).
SINGLE_DEVICE_ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


@contextlib.contextmanager
def single_device_children():
    """The sweep runner's children (which inherit os.environ) on one CPU device."""
    import jax

    jax.devices()  # this process keeps its 8 devices
    saved = os.environ["XLA_FLAGS"]
    os.environ["XLA_FLAGS"] = ""
    try:
        yield
    finally:
        os.environ["XLA_FLAGS"] = saved


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory):
    """(config file, sweep dir, exit code, seconds) of the tiny sweep run with --parallel=2."""
    import time

    from irl_lm import sweep

    folder = tmp_path_factory.mktemp("sweep")
    config = write_tiny_sweep_config(folder)
    started = time.perf_counter()
    with single_device_children():
        code = sweep.run_sweep(config, str(folder / "lam"), parallel=2)
    return config, str(folder / "lam"), code, time.perf_counter() - started


def tiny_model(family: str, **fields):
    """A tiny T5 (1 + 2 layers) or decoder-only model (2 layers, grouped-query heads), vocab 97."""
    from irl_lm.models import build_model

    if family == "t5":
        base = dict(
            name="t5", d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1, num_decoder_layers=2
        )
    else:
        base = dict(
            name="decoder_only",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
        )
    return build_model(base | {"vocab_size": 97} | fields)


def tiny_batch(family: str, seed: int = 0) -> dict:
    """8 rows of 10 target positions: EOS, then two of padding (T5: 6 input tokens)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    targets = rng.integers(2, 97, (8, 10)).astype(np.int32)
    targets[:, -3], targets[:, -2:] = 1, 0
    batch = {
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }
    if family == "t5":
        batch["encoder_input_tokens"] = rng.integers(2, 97, (8, 6)).astype(np.int32)
    return batch


def train_tiny(model, batch, *, steps: int = 1, logits_chunk_size: int = 0):
    """(state, losses, learner) after `steps` IQLearn updates (λ 0.5, γ 0.9, AdamW 1e-2) on
    `batch`, from the same initial parameters, on all devices."""
    import jax

    from irl_lm import sharding, train_step
    from irl_lm.config_utils import trainer_defaults
    from irl_lm.losses import loss_fields, make_loss

    config = trainer_defaults()
    config.total_steps, config.schedule.warmup_steps = 10, 0
    config.optimizer.learning_rate = 1e-2
    tx = train_step.make_optimizer(config)
    mesh = sharding.make_mesh({"data": -1})
    loss_fn = make_loss(loss_fields("iqlearn", lam=0.5, gamma=0.9))
    with sharding.use_mesh(mesh):
        example = {k: v[:1] for k, v in batch.items()}
        learner = train_step.policy_learner(
            model,
            loss_fn,
            tx,
            example,
            mesh,
            jax.random.PRNGKey(0),
            sampler=None,
            grad_accum_steps=1,
            eos_id=1,
            logits_chunk_size=logits_chunk_size,
        )
        state, losses = learner.init(), []
        for _ in range(steps):
            placed = sharding.shard_global_batch(batch, mesh)
            state, metrics = learner.step(state, placed, jax.random.PRNGKey(1))
            losses.append(jax.device_get(metrics))
    return jax.device_get(state), losses, learner

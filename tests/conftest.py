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

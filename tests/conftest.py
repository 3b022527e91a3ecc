"""Test set-up: 8 fake CPU devices (before jax is imported) and tiny shared fixtures."""

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

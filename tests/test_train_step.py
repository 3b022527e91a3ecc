"""The jitted train step: same numbers on a 2x2x2 mesh as on one device; accumulation."""

import jax
import numpy as np
import pytest

from irl_lm import sharding, train
from irl_lm.data import pipeline
from irl_lm.learners import common, policy
from irl_lm.losses import make_loss
from irl_lm.models import build_model


def run_steps(config, mesh_shape, devices, num_steps=2):
    """Returns (params, per-step metrics, param shardings) after `num_steps` updates."""
    mesh = sharding.make_mesh(mesh_shape, devices)
    model = build_model(train.resolve_model_config(config))
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    batches = pipeline.TrainIterator(pipeline.train_data(config))
    history = []
    with sharding.use_mesh(mesh):
        _, shardings = common.state_shardings(model, tx, train.dummy_batch(config, model, 1), mesh)
        state = common.init_state(
            model, tx, train.dummy_batch(config, model, 1), shardings, jax.random.PRNGKey(0)
        )
        step = policy.jit_train_step(
            model,
            make_loss(config.loss),
            tx,
            mesh,
            shardings,
            grad_accum_steps=config.grad_accum_steps,
        )
        for _ in range(num_steps):
            batch = sharding.shard_host_batch(next(batches), mesh)
            state, metrics = step(state, batch, jax.random.PRNGKey(1))
            history.append(jax.device_get(metrics))
    return jax.device_get(state.params), history, shardings.params


@pytest.mark.parametrize("loss", ["mle", "iqlearn"])
def test_2x2x2_mesh_matches_single_device(make_config, loss):
    assert jax.device_count() == 8, "tests run with 8 fake CPU devices (tests/conftest.py)"
    config = make_config(loss)
    one = {"data": 1, "fsdp": 1, "tensor": 1}
    params_1, metrics_1, _ = run_steps(config, one, jax.devices()[:1])
    cube = {"data": 2, "fsdp": 2, "tensor": 2}
    params_8, metrics_8, shardings_8 = run_steps(config, cube, jax.devices())
    # The mesh really splits parameters over fsdp and tensor.
    specs = {str(s.spec) for s in jax.tree.leaves(shardings_8)}
    assert any("fsdp" in s for s in specs) and any("tensor" in s for s in specs), specs
    for m1, m8 in zip(metrics_1, metrics_8, strict=True):
        np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), params_1, params_8
    )


def test_gradient_accumulation_matches_full_batch(make_config):
    config = make_config("iqlearn")
    mesh_shape = {"data": 2, "fsdp": 1, "tensor": 1}
    devices = jax.devices()[:2]
    params_full, metrics_full, _ = run_steps(config, mesh_shape, devices, num_steps=1)
    config.grad_accum_steps = 2
    params_acc, metrics_acc, _ = run_steps(config, mesh_shape, devices, num_steps=1)
    np.testing.assert_allclose(metrics_full[0]["loss"], metrics_acc[0]["loss"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_full, params_acc
    )


def test_schedule_warms_up_linearly_then_decays(make_config):
    config = make_config(total_steps=110)
    config.optimizer.learning_rate = 1e-3
    config.schedule.update(name="cosine", warmup_steps=10, final_fraction=0.1)
    schedule = common.make_schedule(config.optimizer, config.schedule, config.total_steps)
    np.testing.assert_allclose(float(schedule(5)), 0.5e-3, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
    # Cosine from peak to 10% of it over the remaining 100 steps: halfway is the mean.
    np.testing.assert_allclose(float(schedule(60)), 0.55e-3, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 1e-4, rtol=1e-5)
    config.schedule.name = "linear"
    np.testing.assert_allclose(
        float(common.make_schedule(config.optimizer, config.schedule, config.total_steps)(60)),
        0.55e-3,
        rtol=1e-5,
    )


def test_adafactor_step_updates_parameters(make_config):
    config = make_config("mle")
    config.optimizer.name = "adafactor"
    mesh_shape = {"data": 2, "fsdp": 2, "tensor": 2}
    initial, _, _ = run_steps(config, mesh_shape, jax.devices(), num_steps=0)
    params, history, _ = run_steps(config, mesh_shape, jax.devices(), num_steps=3)
    assert all(np.isfinite(m["loss"]) for m in history)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), initial, params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert min(jax.tree.leaves(moved)) > 0, "every parameter is updated"

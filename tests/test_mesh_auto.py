"""`--config.mesh=auto`: the layouts tried, fastest first, and the first whose train step
fits in a device's memory, compiled on the 8 CPU devices against a given capacity (the TPU
and GPU targets: tests/test_preflight.py)."""

from __future__ import annotations

import os

import jax
import ml_collections
import pytest
from test_configs import CONFIG_DIR, load

from irl_lm import preflight
from irl_lm.preflight import Layout


def xsum_config(loss: str = "mle") -> ml_collections.ConfigDict:
    """configs/xsum.py at mode=full with a one-layer T5 of the preset's family, its 32k
    stand-in vocabulary: the logits of 64 rows dominate what a step needs."""
    config = load(os.path.join(CONFIG_DIR, "xsum.py")).get_config(f"mode=full,loss={loss}")
    config.model.update(dict(d_model=64, d_kv=16, d_ff=128, num_heads=4, num_layers=1))
    config.task.max_input_len, config.task.max_target_len = 128, 64
    config.batch_size = 64
    config.evals = {}
    return preflight.offline_config(config)[0]


def test_the_ladder_keeps_the_batch_and_every_device_busy():
    config = xsum_config()
    assert preflight.layouts(config, 8) == [
        Layout("none", 1),
        Layout("full", 1),
        Layout("full", 2),
        Layout("full", 4),
        Layout("full", 8),  # 64 rows / 8 steps / 8 devices: one row each
    ]
    # The online losses sample the whole batch at once: no accumulation.
    assert preflight.layouts(xsum_config("iqlearn_online"), 8) == [
        Layout("none", 1),
        Layout("full", 1),
    ]
    config.batch_size = 12
    with pytest.raises(ValueError, match="config.batch_size=12 is not a multiple of 8"):
        preflight.layouts(config, 8)
    assert Layout("full", 2).flags() == (
        "--config.mesh.data=1 --config.mesh.fsdp=-1 --config.mesh.tensor=1 "
        "--config.model.remat=full --config.grad_accum_steps=2"
    )


def _needs(config, layout: Layout) -> tuple[int, int]:
    """What `layout`'s train step needs per device, compiled on its own, and the state."""
    config = ml_collections.ConfigDict(config.to_dict())
    layout.apply(config)
    with preflight.stand_in_vocabularies():
        run, (step,) = preflight.compile_train(config, jax.devices(), lambda line: None)
    return step.needs(step.resident), preflight.shard_bytes(run.state)


def test_auto_compiles_until_the_step_fits_and_stops_where_no_layout_can():
    config = xsum_config()
    halves, _ = _needs(config, Layout("full", 2))
    capacity = halves + 1
    picked = ml_collections.ConfigDict(config.to_dict())
    with preflight.stand_in_vocabularies():
        run, compiled, tried = preflight.pick_layout(picked, jax.devices(), capacity)
    assert [layout for layout, _ in tried] == preflight.layouts(config, 8)[:3]
    assert all(needs > capacity for _, needs in tried[:-1])  # the whole batch did not fit
    assert tried[-1] == (Layout("full", 2), halves)
    assert run.mesh.shape == {"data": 1, "fsdp": 8, "tensor": 1}
    assert (picked.model.remat, picked.grad_accum_steps) == ("full", 2)
    assert compiled[0].needs(compiled[0].resident) == halves

    # A capacity below the sharded train state: no layout can help, so none is tried after
    # the first.
    _, state = _needs(config, Layout("none", 1))
    with preflight.stand_in_vocabularies():
        _, _, tried = preflight.pick_layout(
            ml_collections.ConfigDict(config.to_dict()), jax.devices(), state - 1
        )
    assert [layout for layout, _ in tried] == [Layout("none", 1)]


def test_auto_on_devices_of_unknown_memory_takes_the_first_layout():
    config = xsum_config()
    assert jax.devices()[0].memory_stats() is None  # CPU
    resolved = preflight.auto_config(config, log=lambda line: None)
    assert dict(resolved.mesh) == {"data": 1, "fsdp": -1, "tensor": 1}
    assert (resolved.model.remat, resolved.grad_accum_steps) == ("none", 1)
    assert preflight.split_auto(["main", "--config=x.py", "--config.mesh=auto"]) == (
        ["main", "--config=x.py"],
        True,
    )

"""Preflight on real TPU topologies and GPU nodes, compiled on this CPU machine.

The models are reduced in width and depth (a full-size compile takes minutes of a CPU core:
docs/preflight.md has those figures), but each keeps its family's structure: T5 v1.1
(gated GELU, relative position buckets) and Gemma 3 (grouped-query attention with one
key/value head, sliding-window layers with a window shorter than the sequence, a
262,144-token vocabulary with chunked logits), sharded by the configs' default FSDP mesh
over 16 chips. Skipped, saying how to install them, where the compilers are missing.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_configs import CONFIG_DIR, load

from irl_lm import gpu_compile, perf, preflight, sweep
from irl_lm.models import build_model

ROOT = os.path.dirname(CONFIG_DIR)


def _tpu_compiler() -> str | None:
    try:
        preflight.tpu_library()
        return None
    except RuntimeError as e:
        return str(e)


pytestmark = pytest.mark.skipif(_tpu_compiler() is not None, reason=f"{_tpu_compiler()}")

T5_SHAPE = dict(d_model=128, d_kv=32, d_ff=256, num_heads=4, num_layers=2)
GEMMA_SHAPE = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=6,
    layer_types=("sliding_attention",) * 5 + ("full_attention",),
    sliding_window=64,
)


def xsum(arg: str, model: dict, *, lengths=(64, 16), batch=16, evals=()):
    """configs/xsum.py at mode=full with a reduced model of the preset's family."""
    config = load(os.path.join(CONFIG_DIR, "xsum.py")).get_config(f"mode=full,{arg}")
    config.model.update(model)
    config.task.max_input_len, config.task.max_target_len = lengths
    config.batch_size = config.eval_batch_size = batch
    config.evals = {k: v for k, v in config.evals.items() if k in evals}
    return config


@pytest.fixture(scope="module")
def t5_fsdp():
    config = xsum("model=t5_base", T5_SHAPE, lengths=(128, 32), batch=32, evals=("validation",))
    return config, preflight.preflight(config, preflight.get_target("v4-32"))


def test_t5_compiles_with_fsdp_on_v4_32(t5_fsdp):
    config, report = t5_fsdp
    assert report.num_devices == 16 and report.mesh == {"data": 1, "fsdp": 16, "tensor": 1}
    step = next(c for c in report.calls if c.name == "train_step")
    # The step's inputs besides the state: one device's rows of the batch, and the rng key.
    rows = config.batch_size // 16
    assert step.other_inputs == rows * (128 + 3 * 32) * 4 + 8  # encoder; decoder x3
    # The state is sharded: Adam's two moments and the parameters, in float32, 16 ways
    # (norm scales and relative position tables stay replicated: a few KiB). On the chip,
    # TPU tiles pad the 8-wide FSDP shards of d_model=128: XLA counts more.
    sharded = 12 * report.parameters / 16
    assert sharded <= report.state_bytes_by_shape < sharded * 1.05
    assert report.state_bytes_by_shape <= report.state_bytes < 2 * report.state_bytes_by_shape
    assert step.aliased >= report.state_bytes_by_shape  # the state is updated in place
    for call in report.calls:
        assert 0 < call.needs(report.state_bytes) < report.capacity, call.name
    # Forward FLOPs: the validation step is one teacher-forced pass over an eval batch.
    model = build_model(dict(preflight.offline_config(config)[0].model))  # 32128 rows
    want = sum(
        perf.flops_breakdown(
            model, {"encoder_input_tokens": (32, 128), "decoder_target_tokens": (32, 32)}
        ).values()
    )
    forward = next(c for c in report.calls if c.name == "validation/step")
    assert forward.flops * 16 == pytest.approx(want, rel=0.05)
    # The training step's matmuls, loops counted: 3 x the forward pass, where the decoder's
    # causal self-attention is computed as a full square (perf counts the unmasked half).
    masked_half = model.config.decoder_layers * 32 * 32 * 32 / 2 * 4 * 4 * 32  # B T T/2, 4hd
    want = 3 * (report.update_flops / 3 + masked_half)
    assert report.compiled_flops == pytest.approx(want, rel=0.05)
    assert report.step_seconds > 0 and 0 < report.mfu <= 1


def test_gemma3_shape_compiles_with_chunked_logits_on_v5e_16():
    config = xsum("model=gemma3_1b", GEMMA_SHAPE, lengths=(448, 64), batch=32)
    assert config.logits_chunk_size == 64  # the preset's 262k vocabulary: chunked
    report = preflight.preflight(config, preflight.get_target("v5e-16"))
    assert report.mesh == {"data": 1, "fsdp": 16, "tensor": 1}
    (step,) = report.calls
    assert 0 < step.needs(report.state_bytes) < report.capacity
    # Whole float32 logits of one device's rows would be [2, 512, 262144] (1 GiB): chunks
    # of 64 positions keep the step's temporaries well below them.
    whole_logits = 2 * 512 * 262_144 * 4
    assert step.temporaries < whole_logits / 2
    # Its matmuls, loops counted (the chunks of the head, FSDP's windowed einsums): 3 x a
    # forward pass whose attention scores are a full square (sliding windows and causality
    # are masks), and the head once more (each chunk's logits are recomputed backward).
    model = build_model(dict(preflight.offline_config(config)[0].model))
    parts = perf.flops_breakdown(model, {"decoder_target_tokens": (32, 512)})
    cfg = model.config
    full_square = (
        cfg.num_hidden_layers * 32 * 512 * 512 * 4 * cfg.num_attention_heads * cfg.head_size
    )
    want = 3 * (parts["decoder_matmul"] + full_square + parts["head"]) + parts["head"]
    assert report.compiled_flops == pytest.approx(want, rel=0.05)
    assert report.xla_flops < 0.5 * want  # XLA's cost analysis: each loop body once


@pytest.mark.parametrize("loss", ["iqlearn_online", "gail"])
def test_online_losses_compile_with_their_samplers(loss):
    config = xsum(f"model=t5_base,loss={loss}", T5_SHAPE | {"num_layers": 1}, batch=8)
    report = preflight.preflight(config, preflight.get_target("v5e-4"))
    assert [c.name for c in report.calls] == ["sampler", "train_step"]
    assert all(0 < c.needs(report.state_bytes) < report.capacity for c in report.calls)
    assert report.sampling_flops > 0 and report.step_seconds > 0


UNFIT = """
    import os, sys
    sys.path.insert(0, {tests!r})
    from test_configs import load
    from test_preflight import T5_SHAPE

    def get_config(arg=None):
        config = load({xsum!r}).get_config("mode=full,model=t5_base")
        config.model.update(T5_SHAPE | {{"num_layers": 1}})
        config.task.max_input_len, config.task.max_target_len = 64, 16
        config.mesh.data, config.mesh.fsdp = -1, 1
        config.batch_size = int((arg or "batch=16").split("=")[1])
        config.evals = {{}}
        return config

    def sweep(arg=None):
        return [{{"config_arg": "batch=16", "seed": 0}}, {{"config_arg": "batch=16", "seed": 1}},
                {{"config_arg": "batch=32768", "seed": 0}}]
"""


@pytest.fixture(scope="module")
def unfit_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("preflight") / "unfit.py"
    tests = os.path.join(ROOT, "tests")
    path.write_text(textwrap.dedent(UNFIT.format(tests=tests, xsum=f"{CONFIG_DIR}/xsum.py")))
    return str(path)


def test_a_run_that_does_not_fit_exits_1_naming_the_changes(unfit_config, tmp_path):
    """The CLI, as a user runs it: 32768 rows of float32 logits over a 32k vocabulary on
    4 v5e chips data-parallel cannot fit in 16 GiB. A persistent compilation cache set in
    the environment is left alone (a compile-only program cannot be loaded back)."""
    out, cache = tmp_path / "report.json", tmp_path / "jax_cache"
    cache.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "irl_lm.preflight",
        f"--config={unfit_config}:batch=32768",
        "--topology=v5e-4",
        f"--json={out}",
    ]
    env = os.environ | {"JAX_COMPILATION_CACHE_DIR": str(cache)}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "DOES NOT FIT: train_step" in result.stdout
    assert not list(cache.iterdir())
    for change in (
        "--config.mesh=auto: preflight tries",
        "--config.mesh.data=1 --config.mesh.fsdp=-1",
        "--config.model.remat=full",
        "--config.logits_chunk_size=64",
        "--config.batch_size=16384",
    ):
        assert change in result.stdout
    figures = json.loads(out.read_text())
    assert figures["fits"] is False and figures["too_big"] == ["train_step"]
    assert figures["calls"][0]["needs_bytes"] > figures["capacity_bytes"]


def test_sweep_preflight_refuses_a_sweep_with_a_point_that_does_not_fit(unfit_config, capsys):
    points = sweep.build_points(unfit_config, "/tmp/unused-sweep")
    assert sweep.preflight_points(points, "v5e-4") == 1
    out = capsys.readouterr().out
    assert "3 points, 2 distinct shapes" in out  # the seeds share one compile
    assert "refused: batch=32768,seed=0 do not fit on v5e-4; nothing was run" in out
    assert "chip-hours" in out


def test_cpu_runs_never_see_the_compilers(t5_fsdp):
    """After a preflight in this process, a JAX process started from it (as a sweep starts
    its points) finds no libtpu and no CUDA plugin: it never tries to start a TPU or GPU.
    The GPU compiler's devices first: they put the compilers' folder on `sys.path`, where
    importing the `libtpu` package sets TPU_LIBRARY_PATH."""
    if gpu_compile.plugin_available():
        preflight.compile_devices(preflight.get_target("h100x8"))
    preflight.compile_devices(preflight.get_target("v4-32"))
    assert "TPU_LIBRARY_PATH" not in os.environ
    code = (
        "import jax; from jax._src import cloud_tpu_init; "
        "print(cloud_tpu_init.get_tpu_library_path(), jax.devices()[0].platform)"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.stdout.split() == ["None", "cpu"], result.stderr[-2000:]
    assert "libtpu" not in result.stderr and "cuda" not in result.stderr.lower()


def test_compiled_programs_are_freed_once_measured():
    """JAX's caches would keep each executable alive after its figures are taken (a full-size
    train step: several GiB of host memory on top of the next call's compile). Compiled on
    this machine's CPU devices, where the client counts the executables it holds."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    client = jax.devices("cpu")[0].client
    mesh = jax.sharding.Mesh(np.array(jax.devices("cpu")), ("fsdp",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    x = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=rows)
    call = preflight.Call("gram", jax.jit(lambda a: (a @ a.T).sum()), (x,), "params")
    gc.collect()
    held = len(client.live_executables())
    compiled = preflight.compile_call(call, mesh)
    assert compiled.flops == 2 * 64 * 64 * 32 / len(mesh.devices.flat)  # the figures, taken
    # None kept; the caches it clears may have held this process's earlier programs too.
    assert len(client.live_executables()) <= held


def test_unknown_targets_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="v4-32.*v5e-16.*v5p-8.*h100x8"):
        preflight.get_target("v4-31")


@pytest.mark.skipif(not gpu_compile.plugin_available(), reason="jaxlib's CUDA plugin missing")
def test_t5_compiles_for_an_h100_node():
    config = xsum("model=t5_base", T5_SHAPE | {"num_layers": 1}, batch=16)
    report = preflight.preflight(config, preflight.get_target("h100x8"))
    (step,) = report.calls
    assert report.num_devices == 8
    assert 0 < step.needs(report.state_bytes) < report.capacity
    assert report.compiled_flops / report.model_flops == pytest.approx(1.0, abs=0.25)

"""irl_lm.gpu_compile: GPU programs compiled on the CPU, their bytes and FLOPs by hand."""

from __future__ import annotations

import json
import os
import sys

import jax
import pytest

from irl_lm import gpu_compile

needs_plugin = pytest.mark.skipif(
    not gpu_compile.plugin_available(),
    reason="jaxlib's CUDA plugin is not installed (`make install-preflight` puts it in "
    f"{gpu_compile.PLUGIN_DIR})",
)

# One process for all compiles (JAX_PLATFORMS must be "cpu" before JAX starts, and this
# process's backends are started already). It first asks with JAX_PLATFORMS set otherwise,
# then starts the CPU backend before the plugin is loaded, so the plugin is registered late.
CHILD = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from irl_lm import gpu_compile, perf

out = {}
jax.config.update("jax_platforms", "cuda")
try:
    gpu_compile.devices("h100")
except RuntimeError as e:
    out["platforms_error"] = str(e)
jax.config.update("jax_platforms", "cpu")
jax.devices()

for kind in ("h100", "h200", "a100"):
    devices = gpu_compile.devices(kind)
    mesh = Mesh(np.array(devices), ("data",))
    x = jax.ShapeDtypeStruct((1024, 4096), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
    w = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    compiled = jax.jit(lambda x, w: x @ w).lower(x, w).compile()
    cost = gpu_compile.cost_analysis(compiled)
    out[kind] = dict(
        count=len(devices),
        platform=devices[0].platform,
        device_kind=devices[0].device_kind,
        peak=perf.peak_flops_per_device(devices[0].device_kind),
        argument_bytes=compiled.memory_analysis().argument_size_in_bytes,
        flops=cost["flops"],
        bytes_accessed=cost["bytes accessed"],
    )
print("RESULT", json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled_for_gpus():
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=pythonpath)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@needs_plugin
def test_h100_matmul_bytes_and_flops_per_device(compiled_for_gpus):
    h100 = compiled_for_gpus["h100"]
    assert h100["count"] == 8 and h100["platform"] == "gpu"
    assert h100["device_kind"] == gpu_compile.GPU_SPECS["h100"]["device_kind"]
    # x's row shard and all of w, bf16.
    assert h100["argument_bytes"] == 1024 // 8 * 4096 * 2 + 4096 * 4096 * 2
    assert h100["flops"] == pytest.approx(2 * 128 * 4096 * 4096, rel=0.01)
    assert h100["bytes_accessed"] > 0


@needs_plugin
@pytest.mark.parametrize("kind, peak", [("h200", 989e12), ("a100", 312e12), ("h100", 989e12)])
def test_each_kind_compiles_and_finds_its_peak(compiled_for_gpus, kind, peak):
    result = compiled_for_gpus[kind]
    assert result["device_kind"] == gpu_compile.GPU_SPECS[kind]["device_kind"]
    assert result["peak"] == peak
    assert result["flops"] == pytest.approx(2 * 128 * 4096 * 4096, rel=0.01)


@needs_plugin
def test_needs_jax_platforms_cpu(compiled_for_gpus):
    message = compiled_for_gpus["platforms_error"]
    assert "JAX_PLATFORMS=cpu" in message and "'cuda'" in message


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="known: a100, h100, h200"):
        gpu_compile.devices("b200")
    with pytest.raises(ValueError, match="known"):
        gpu_compile.target_config("v100")


def test_missing_plugin_names_the_fix(monkeypatch, tmp_path):
    from jax._src import xla_bridge as xb

    if jax.config.jax_platforms != "cpu":
        pytest.skip("the platform check comes first: JAX_PLATFORMS is not cpu here")
    monkeypatch.setattr(gpu_compile, "PLUGIN_DIR", str(tmp_path / "jax-cuda"))
    monkeypatch.setattr(gpu_compile, "_importable", lambda: False)
    monkeypatch.setattr(xb, "_topology_factories", {})
    monkeypatch.setattr(gpu_compile, "_topologies", {})
    assert not gpu_compile.plugin_available()
    version = jax.__version__
    with pytest.raises(RuntimeError) as error:
        gpu_compile.devices("h100")
    message = str(error.value)
    assert "make install-preflight" in message and str(tmp_path / "jax-cuda") in message
    assert f"jax-cuda12-plugin=={version} jax-cuda12-pjrt=={version}" in message


def test_target_config_carries_the_spec():
    text = gpu_compile.target_config("a100")
    spec = gpu_compile.GPU_SPECS["a100"]
    assert "core_count: 108\n" in text and "major: 8 minor: 0" in text
    assert f'device_description_str: "{spec["device_kind"]}"' in text
    assert "feature_extension: NONE" in text
    assert "feature_extension: ACCELERATED_FEATURES" in gpu_compile.target_config("h100")

"""Compile JAX programs for NVIDIA GPUs on a machine that has none.

`devices(kind, count)` returns compile-only devices of an H100, H200 or A100 node. Put them
in a `jax.sharding.Mesh`, give `jax.jit(f).lower(...)` abstract arguments
(`jax.ShapeDtypeStruct` with a `NamedSharding`) and `.compile()`: XLA's GPU compiler builds
the real per-device program, so `compiled.memory_analysis()` gives its bytes per GPU and
`cost_analysis(compiled)` its FLOPs and bytes accessed per GPU. Nothing runs::

    JAX_PLATFORMS=cpu python -c '
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from irl_lm import gpu_compile
    mesh = Mesh(np.array(gpu_compile.devices("h100", 8)), ("data",))
    x = jax.ShapeDtypeStruct((1024, 4096), jnp.bfloat16, sharding=NamedSharding(mesh, P("data")))
    compiled = jax.jit(lambda x: x @ x.T).lower(x).compile()
    print(compiled.memory_analysis(), gpu_compile.cost_analysis(compiled)["flops"])'

Needs `JAX_PLATFORMS=cpu` in the environment before JAX starts (otherwise the CUDA plugin
looks for CUDA libraries and a GPU and fails), and jaxlib's CUDA plugin: the packages
`jax-cuda12-plugin` and `jax-cuda12-pjrt` at the installed jax's version, installed normally
or by `make install-preflight` into the environment's `compilers` folder, which is only put
on `sys.path` here so that ordinary runs never load the plugin. No NVIDIA libraries are
needed, but XLA runs `ptxas` to build its kernels: that of a CUDA toolkit installed on the
machine, or of the `nvidia-cuda-nvcc-cu12` package installed beside the plugin.

The device facts in `GPU_SPECS` (from NVIDIA's data sheets and the CUDA device query) drive
XLA's fusion, tiling and scheduling choices; `target_config(kind)` writes them as the
`stream_executor.GpuTargetConfigProto` text the compiler reads.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

# Where `make install-preflight` puts the CUDA plugin (`pip install --target`).
PLUGIN_DIR = os.path.join(sys.prefix, "compilers")

# The CUDA and cuDNN a target machine runs: those jaxlib's CUDA 12 plugin is built against.
CUDA_VERSION = (12, 9, 0)
CUDNN_VERSION = (9, 8, 0)

# Limits shared by compute capabilities 8.0 and 9.0 (CUDA programming guide).
_CUDA_LIMITS: dict[str, Any] = {
    "threads_per_warp": 32,
    "threads_per_block_limit": 1024,
    "threads_per_core_limit": 2048,
    "thread_dim_limit": (1024, 1024, 64),
    "block_dim_limit": (2**31 - 1, 65535, 65535),
    "shared_memory_per_block": 48 * 1024,
    "registers_per_core_limit": 65536,
    "registers_per_block_limit": 65536,
    "device_address_bits": 64,
    "ecc_enabled": True,
}

# Per GPU kind: `device_kind` as the compile-only devices report it (and
# `irl_lm.perf.peak_flops_per_device` reads); SMs (`core_count`) and FP32 lanes per SM;
# shared memory per SM and per block opted in; L2, boost clock, HBM size as CUDA reports it
# (the data sheet's less what the driver keeps), HBM bandwidth, PCIe bandwidth per
# direction and NVLink links.
_H100: dict[str, Any] = {
    **_CUDA_LIMITS,
    "device_kind": "NVIDIA H100 80GB HBM3",
    "compute_capability": (9, 0),
    "accelerated_features": True,  # sm_90a: wgmma, TMA
    "core_count": 132,
    "fpus_per_core": 128,
    "shared_memory_per_core": 228 * 1024,
    "shared_memory_per_block_optin": 227 * 1024,
    "l2_cache_size": 50 * 1024**2,
    "clock_rate_ghz": 1.98,
    "device_memory_size": 81089 * 1024**2,
    "memory_bandwidth": 3.35e12,
    "pcie_bandwidth": 64e9,
    "nvlink_links": 18,
}

GPU_SPECS: dict[str, dict[str, Any]] = {
    "h100": _H100,
    "h200": {  # the H100's chip with more and faster memory
        **_H100,
        "device_kind": "NVIDIA H200",
        "l2_cache_size": 60 * 1024**2,
        "device_memory_size": 143156 * 1024**2,
        "memory_bandwidth": 4.8e12,
    },
    "a100": {
        **_CUDA_LIMITS,
        "device_kind": "NVIDIA A100-SXM4-80GB",
        "compute_capability": (8, 0),
        "accelerated_features": False,
        "core_count": 108,
        "fpus_per_core": 64,
        "shared_memory_per_core": 164 * 1024,
        "shared_memory_per_block_optin": 163 * 1024,
        "l2_cache_size": 40 * 1024**2,
        "clock_rate_ghz": 1.41,
        "device_memory_size": 81251 * 1024**2,
        "memory_bandwidth": 2.039e12,
        "pcie_bandwidth": 32e9,
        "nvlink_links": 12,
    },
}

# GpuDeviceInfoProto's scalar fields that are copied from a spec as they are.
_SCALAR_FIELDS = (
    "threads_per_block_limit",
    "threads_per_warp",
    "shared_memory_per_block",
    "shared_memory_per_core",
    "threads_per_core_limit",
    "core_count",
    "fpus_per_core",
    "memory_bandwidth",
    "l2_cache_size",
    "clock_rate_ghz",
    "device_memory_size",
    "shared_memory_per_block_optin",
    "registers_per_core_limit",
    "registers_per_block_limit",
    "device_address_bits",
    "pcie_bandwidth",
    "ecc_enabled",
)

_topologies: dict[tuple[str, int, int], list] = {}


def _spec(kind: str) -> dict[str, Any]:
    if kind not in GPU_SPECS:
        raise ValueError(f"unknown GPU kind {kind!r}; known: {', '.join(sorted(GPU_SPECS))}")
    return GPU_SPECS[kind]


def _text(value: Any) -> str:
    """A protobuf text-format scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and value.is_integer() and value >= 1e6:
        return str(int(value))  # bandwidths: int64 fields
    return repr(value)


def _version(numbers: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in numbers)


def target_config(kind: str) -> str:
    """The `stream_executor.GpuTargetConfigProto` (text format) of one GPU of this kind."""
    spec = _spec(kind)
    major, minor = spec["compute_capability"]
    suffix = "a" if spec["accelerated_features"] else ""
    info = [f"{name}: {_text(spec[name])}" for name in _SCALAR_FIELDS]
    for axis, limit in zip("xyz", spec["block_dim_limit"], strict=True):
        info.append(f"block_dim_limit_{axis}: {limit}")
    for axis, limit in zip("xyz", spec["thread_dim_limit"], strict=True):
        info.append(f"thread_dim_limit_{axis}: {limit}")
    feature = "ACCELERATED_FEATURES" if spec["accelerated_features"] else "NONE"
    info += [
        f"cuda_compute_capability {{ major: {major} minor: {minor} feature_extension: {feature} }}",
        f"device_interconnect_info {{ active_links: {spec['nvlink_links']} }}",
        'device_vendor: "NVIDIA Corporation"',
        f'platform_version: "Compute Capability {major}.{minor}{suffix}"',
        f"name: {_text(spec['device_kind'])}",
        f'runtime_version: "{_version(CUDA_VERSION)}"',
        f'compile_time_toolkit_version: "{_version(CUDA_VERSION)}"',
        f'dnn_version: "{_version(CUDNN_VERSION)}"',
    ]
    cuda, cudnn = CUDA_VERSION, CUDNN_VERSION
    lines = [
        "gpu_device_info {",
        *(f"  {line}" for line in info),
        "}",
        'platform_name: "CUDA"',
        f"dnn_version_info {{ major: {cudnn[0]} minor: {cudnn[1]} patch: {cudnn[2]} }}",
        f"runtime_version {{ major: {cuda[0]} minor: {cuda[1]} patch: {cuda[2]} }}",
        # The compile-only devices' `device_kind`.
        f"device_description_str: {_text(spec['device_kind'])}",
    ]
    return "\n".join(lines) + "\n"


def _importable() -> bool:
    """Whether jaxlib's CUDA plugin can be imported from `sys.path` as it is."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("jax_cuda12_plugin", "jax_plugins.xla_cuda12")
        )
    except ImportError:  # no `jax_plugins` namespace package at all
        return False


def _in_plugin_dir() -> bool:
    return all(
        os.path.isdir(os.path.join(PLUGIN_DIR, *parts))
        for parts in (("jax_cuda12_plugin",), ("jax_plugins", "xla_cuda12"))
    )


def plugin_available() -> bool:
    """Whether jaxlib's CUDA plugin is installed, normally or in `PLUGIN_DIR` (this only
    looks: `devices` puts `PLUGIN_DIR` on `sys.path`)."""
    return _importable() or _in_plugin_dir()


def _find_plugin() -> bool:
    """Makes the plugin importable, adding `PLUGIN_DIR` to `sys.path` if need be."""
    if _importable():
        return True
    if _in_plugin_dir() and PLUGIN_DIR not in sys.path:
        sys.path.append(PLUGIN_DIR)
        importlib.invalidate_caches()
    return _importable()


def _missing_plugin_message() -> str:
    import jax

    v = jax.__version__
    return (
        "compiling for GPUs needs jaxlib's CUDA plugin, which is not installed: run "
        f"`make install-preflight` (the CUDA compiler plugin into {PLUGIN_DIR}) or "
        f"`pip install jax-cuda12-plugin=={v} jax-cuda12-pjrt=={v}`"
    )


def _register_plugin() -> None:
    """Registers the CUDA plugin with JAX: by JAX's own plugin discovery when it has not run
    yet, else (backends already started) by calling the plugin's `initialize` directly."""
    import jax
    from jax._src import xla_bridge as xb

    platforms = jax.config.jax_platforms
    if platforms != "cpu":
        got = f"it is {platforms!r}" if platforms else "it is unset"
        raise RuntimeError(
            "compiling for GPUs needs JAX_PLATFORMS=cpu in the environment before JAX starts "
            f"({got}): otherwise jaxlib's CUDA plugin checks for CUDA libraries and a GPU, "
            "and fails on a machine without one"
        )
    if "cuda" in xb._topology_factories:
        return
    if not _find_plugin():
        raise RuntimeError(_missing_plugin_message())
    if not xb._plugins_registered:
        xb._discover_and_register_pjrt_plugins()
    if "cuda" not in xb._topology_factories:
        # JAX looked for plugins before the plugin folder was on `sys.path`.
        try:
            importlib.import_module("jax_plugins.xla_cuda12").initialize()
        except Exception as e:
            raise RuntimeError(f"jaxlib's CUDA plugin failed to load: {e}") from e
    if "cuda" not in xb._topology_factories:
        raise RuntimeError("jaxlib's CUDA plugin loaded but registered no CUDA compiler")


def devices(kind: str, count: int = 8, *, per_host: int = 8) -> list:
    """`count` compile-only devices of GPUs of this kind (`GPU_SPECS`), `per_host` to a host
    (hosts of 8 GPUs by default, as SXM nodes have), for a `Mesh` to compile against."""
    _spec(kind)
    if count < 1 or per_host < 1:
        raise ValueError(f"count and per_host must be positive, got {count} and {per_host}")
    per_host = min(per_host, count)
    if count % per_host:
        raise ValueError(f"{count} GPUs do not split into hosts of {per_host}")
    key = (kind, count, per_host)
    if key not in _topologies:
        _register_plugin()
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(
            platform="cuda",
            topology_name=kind,
            topology=f"1x{count // per_host}x{per_host}",
            target_config=target_config(kind),
        )
        _topologies[key] = list(topology.devices)
    return list(_topologies[key])


def cost_analysis(compiled) -> dict[str, float]:
    """XLA's cost analysis of a compiled function, per device ("flops", "bytes accessed",
    ...). The GPU compiler gives none, so its optimised HLO is then analysed by the CPU
    backend's HLO cost model: same FLOPs count, bytes as that HLO's fusions read and write."""
    try:
        cost = compiled.cost_analysis()
    except NotImplementedError:
        cost = None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if cost:
        return dict(cost)
    from jax._src import xla_bridge as xb
    from jax._src.lib import _jax

    modules = compiled._executable.xla_extension_executable().hlo_modules()
    return dict(_jax.hlo_module_cost_analysis(xb.get_backend("cpu"), modules[0]))

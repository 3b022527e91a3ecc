"""Device mesh, logical-axis rules and state shardings, all in one place.

Parameters and activations are annotated with logical axis names in the models
(`embed`, `heads`, `activation_batch`, ...). `LOGICAL_AXIS_RULES` maps each name to
mesh axes; nothing else in the codebase names a mesh axis.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes shard over fsdp (weights) and tensor (heads / mlp / vocab);
# activation axes shard the batch over data + fsdp.
LOGICAL_AXIS_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query attention: replicated when not divisible
    ("kv", None),
    ("relpos_buckets", None),
    ("norm", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_vocab", "tensor"),
)


def make_mesh(mesh_shape: Mapping[str, int], devices=None) -> Mesh:
    """Builds a mesh over `MESH_AXES`; one axis may be -1 (takes the remaining devices)."""
    devices = jax.devices() if devices is None else devices
    unknown = set(mesh_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh: unknown axes {sorted(unknown)}; allowed: {MESH_AXES}")
    sizes = [int(mesh_shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(mesh_shape)}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ValueError(
                f"config.mesh {dict(mesh_shape)}: {len(devices)} devices not divisible by {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"config.mesh {dict(mesh_shape)} needs {math.prod(sizes)} devices, "
            f"found {len(devices)}; set one axis to -1 to use all devices"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


@contextlib.contextmanager
def use_mesh(mesh: Mesh):
    """Activates the mesh and the logical-axis rules (flax constraints need both)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        yield


def _fit_to_shape(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    """Replicates a dimension whose size the assigned mesh axes do not divide."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = math.prod(mesh.shape[name] for name in names)
        fitted.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*fitted)


def logical_to_sharding(logical_tree, shape_tree, mesh: Mesh):
    """Maps a tree of logical PartitionSpecs (from nn.get_partition_spec) to NamedShardings."""
    mesh_specs = nn.logical_to_mesh(logical_tree, LOGICAL_AXIS_RULES)

    def to_sharding(spec, leaf):
        spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
        return NamedSharding(mesh, _fit_to_shape(spec, leaf.shape, mesh))

    return jax.tree.map(
        to_sharding,
        mesh_specs,
        shape_tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
    )


def unbox(tree):
    """Strips flax's logical-axis boxes (the shardings are applied by jit, not here)."""
    return jax.tree.map(
        lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.LogicallyPartitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
    )


def cast_params(model: nn.Module, tree):
    """`tree`'s floating-point leaves in the model's `param_dtype` (float32 by default;
    bfloat16 halves the parameters' and optimizer state's memory; compute runs in `dtype`)."""
    dtype = jnp.dtype(getattr(model.config, "param_dtype", "float32"))
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


def abstract_params(model: nn.Module, mesh: Mesh, example_batch=None):
    """(ShapeDtypeStructs of the parameters, their NamedShardings), without allocating.

    Parameter shapes do not depend on the batch: the default is one token per input feature.
    """
    if example_batch is None:
        example_batch = {k: np.ones((1, 1), np.int32) for k in type(model).input_features}
    init = lambda rng, batch: cast_params(model, model.init(rng, batch, deterministic=True))
    # An abstract key: no array is placed (the mesh may hold compile-only devices).
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    boxed = jax.eval_shape(init, rng, example_batch)["params"]
    abstract = unbox(boxed)
    return abstract, logical_to_sharding(nn.get_partition_spec(boxed), abstract, mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays [B, ...] shard their leading dimension over data + fsdp."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Places a global batch (the same on every host) on the mesh: each device takes its
    rows, so which host holds which rows is the mesh's business, not the data's."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
        for name, value in batch.items()
    }


def shard_host_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Turns this host's slice of the global batch into globally sharded arrays."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }

"""`--jax_distributed`: `jax.distributed.initialize` with what the cluster provides."""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping

from absl import logging

# The coordinator's port on the first SkyPilot node (any free port; the same on every node).
COORDINATOR_PORT_ENV = "IRL_LM_COORDINATOR_PORT"
DEFAULT_COORDINATOR_PORT = 8476


def on_tpu_vm() -> bool:
    """A Cloud TPU VM (its chips appear as /dev/accel* or /dev/vfio/<n>)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def distributed_init_args(environ: Mapping[str, str], tpu_vm: bool) -> tuple[dict | None, str]:
    """The arguments of `jax.distributed.initialize` (None: one SkyPilot node, nothing to
    initialise) and what they were found from.

    On a TPU VM JAX finds the pod's hosts itself. On a multi-node SkyPilot cluster (GPU
    nodes) the coordinator is the first line of SKYPILOT_NODE_IPS, the process id
    SKYPILOT_NODE_RANK and the process count SKYPILOT_NUM_NODES. Elsewhere JAX's own
    detection (SLURM, Open MPI, ...) decides.
    """
    if tpu_vm:
        return {}, "a Cloud TPU VM: JAX finds the pod's hosts itself"
    ips = environ.get("SKYPILOT_NODE_IPS", "").split()
    num_nodes = int(environ.get("SKYPILOT_NUM_NODES", "0") or 0)
    if ips and num_nodes == 1:
        return None, "one SkyPilot node: a single process, no distributed runtime needed"
    if ips and num_nodes > 1:
        if "SKYPILOT_NODE_RANK" not in environ or len(ips) != num_nodes:
            raise RuntimeError(
                f"--jax_distributed on SkyPilot: SKYPILOT_NUM_NODES={num_nodes}, "
                f"SKYPILOT_NODE_IPS lists {len(ips)} nodes, SKYPILOT_NODE_RANK="
                f"{environ.get('SKYPILOT_NODE_RANK')!r}: expected one IP a node and a rank"
            )
        port = int(environ.get(COORDINATOR_PORT_ENV, DEFAULT_COORDINATOR_PORT))
        args = dict(
            coordinator_address=f"{ips[0]}:{port}",
            num_processes=num_nodes,
            process_id=int(environ["SKYPILOT_NODE_RANK"]),
        )
        return args, (
            f"SkyPilot: node {args['process_id']} of {num_nodes}, coordinator "
            f"{args['coordinator_address']}"
        )
    return {}, "no TPU VM or SkyPilot cluster: JAX's own detection (SLURM, Open MPI, ...)"


def initialize(environ: Mapping[str, str] = os.environ) -> None:
    import jax

    args, found = distributed_init_args(environ, on_tpu_vm())
    if args is None:
        logging.info("--jax_distributed: %s", found)
        return
    logging.info("jax.distributed.initialize(%s): %s", args, found)
    jax.distributed.initialize(**args)
    logging.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )

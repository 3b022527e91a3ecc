"""Multi-process runs: `--jax_distributed` (`jax.distributed.initialize` with what the
flags, the environment or the cluster provide) and the preemption signal every host obeys
at the same step."""

from __future__ import annotations

import glob
import os
import signal
import threading
from collections.abc import Mapping

from absl import logging

# The coordinator's port on the first SkyPilot node (any free port; the same on every node).
COORDINATOR_PORT_ENV = "IRL_LM_COORDINATOR_PORT"
DEFAULT_COORDINATOR_PORT = 8476


def on_tpu_vm() -> bool:
    """A Cloud TPU VM (its chips appear as /dev/accel* or /dev/vfio/<n>)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


# The standard variables for an explicit cluster (JAX reads the first itself too).
EXPLICIT_ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def explicit_init_args(environ: Mapping[str, str], **flags) -> dict:
    """Coordinator address, process count and process id from flags (when set) or the
    `EXPLICIT_ENV` variables; {} when neither names any. All three, or none, must be given."""
    args = {}
    for name, var in EXPLICIT_ENV.items():
        value = flags.get(name)
        if value is None or value == "":
            value = environ.get(var) or None
        if value is not None:
            args[name] = value if name == "coordinator_address" else int(value)
    if args and len(args) < len(EXPLICIT_ENV):
        missing = [f"--{n} (or {v})" for n, v in EXPLICIT_ENV.items() if n not in args]
        raise ValueError(
            f"--jax_distributed got {sorted(args)} but not {', '.join(missing)}: give the "
            "coordinator address, the number of processes and this process's id together"
        )
    return args


def distributed_init_args(
    environ: Mapping[str, str], tpu_vm: bool, **flags
) -> tuple[dict | None, str]:
    """The arguments of `jax.distributed.initialize` (None: one SkyPilot node, nothing to
    initialise) and what they were found from.

    Explicit flags (`--coordinator_address`, `--num_processes`, `--process_id`) or their
    `EXPLICIT_ENV` variables come first. On a TPU VM JAX finds the pod's hosts itself. On a
    multi-node SkyPilot cluster (GPU nodes) the coordinator is the first line of
    SKYPILOT_NODE_IPS, the process id SKYPILOT_NODE_RANK and the process count
    SKYPILOT_NUM_NODES. Elsewhere JAX's own detection (Slurm, Open MPI, Kubernetes, ...)
    decides.
    """
    explicit = explicit_init_args(environ, **flags)
    if explicit:
        return explicit, (
            f"explicit: process {explicit['process_id']} of {explicit['num_processes']}, "
            f"coordinator {explicit['coordinator_address']}"
        )
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


def initialize(environ: Mapping[str, str] = os.environ, **flags) -> None:
    import jax

    args, found = distributed_init_args(environ, on_tpu_vm(), **flags)
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


class Preemption:
    """Whether to save and stop at a step, as a context manager around the train loop.

    Several processes: JAX's preemption sync protocol (a SIGTERM to any host is caught by
    its runtime and propagated; `reached_preemption_sync_point` turns True at the same step
    on every host, so all save the same step). One process: a SIGTERM handler sets a flag.
    """

    def __init__(self):
        import jax

        self.multiprocess = jax.process_count() > 1
        self._flag = threading.Event()
        self._previous = None

    def __enter__(self) -> Preemption:
        if not self.multiprocess:  # (a handler here would replace the runtime's own)
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def reached(self, step: int) -> bool:
        """Call once per step, on every host."""
        if self.multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

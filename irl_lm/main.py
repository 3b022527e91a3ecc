"""Trains and evaluates one config:

python -m irl_lm.main --config=configs/demo.py:loss=iqlearn --workdir=DIR [--config.x=y]
    [--config.mesh=auto]

`--config.mesh=auto` picks the mesh, remat and gradient accumulation on the devices at
start-up (`irl_lm.preflight.auto_config`: FSDP over every device, then remat, then
accumulation, each train step compiled against the devices' memory until one fits).

A workdir whose `results.json` records a finished run exits at once with status 0, so a
rerun of a pod job or a sweep does no work twice. `--log_to_workdir` (the cluster task files
of scripts/launch/ set it) appends process 0's log lines to `WORKDIR/log.txt` when the run
ends, stopped (SIGTERM) or failed included; a killed process leaves it to the launcher's own
log (`sky jobs logs`). `irl_lm.sweep` writes that file itself, with everything its points
print.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from irl_lm import distributed, files, preflight, sweep, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed",
    False,
    "Call jax.distributed.initialize() first (multi-host runs). The cluster comes from "
    "--coordinator_address/--num_processes/--process_id, else JAX_COORDINATOR_ADDRESS/"
    "JAX_NUM_PROCESSES/JAX_PROCESS_ID, else SkyPilot's variables, else JAX's own detection "
    "(TPU pods, Slurm, Open MPI, Kubernetes).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (with --jax_distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0 first.")
_LOG_TO_WORKDIR = flags.DEFINE_bool(
    "log_to_workdir", False, "Append process 0's log to WORKDIR/log.txt when the run ends."
)


def main(argv, auto: bool = False):
    del argv
    train.quiet_library_logs()
    if _DISTRIBUTED.value:
        distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    if not (_LOG_TO_WORKDIR.value and jax.process_index() == 0):
        return run(auto)
    # What the console shows (every Python logger: irl_lm's and the libraries' warnings).
    folder = tempfile.mkdtemp(prefix="irl_lm_log_")
    handler = logging.FileHandler(os.path.join(folder, sweep.LOG_FILE))
    handler.setFormatter(absl_logging.PythonFormatter())
    handler.addFilter(train.own_info_and_warnings)
    logger = logging.getLogger()
    logger.addHandler(handler)
    try:
        absl_logging.info("irl_lm.main %s", " ".join(sys.argv[1:]))
        run(auto)
    except BaseException:
        absl_logging.exception("The run stopped with an error")
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
        log = files.path(_WORKDIR.value, sweep.LOG_FILE)
        try:
            files.append(handler.baseFilename, log)
        except Exception as e:  # the run's own outcome stands
            absl_logging.warning("Could not append this run's log to %s: %s", log, e)
        shutil.rmtree(folder, ignore_errors=True)


def run(auto: bool) -> None:
    config = preflight.auto_config(_CONFIG.value) if auto else _CONFIG.value
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    argv, auto = preflight.split_auto(sys.argv)
    app.run(lambda argv: main(argv, auto), argv=argv)

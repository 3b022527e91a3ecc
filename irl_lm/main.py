"""Trains and evaluates one config:

python -m irl_lm.main --config=configs/demo.py:loss=iqlearn --workdir=DIR [--config.x=y]
"""

from absl import app, flags
from ml_collections import config_flags

from irl_lm import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host runs)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if _DISTRIBUTED.value:
        import jax

        jax.distributed.initialize()
    train.quiet_library_logs()
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

"""Restart-to-first-step time of the demo at data positions 0, 1k, 10k and 100k batches,
resuming the data stream by skipping (before: no iterator state in the checkpoint) and by
restoring the iterator state saved with the checkpoint (now).

    python scripts/bench_resume.py [--positions=0,1000,10000,100000] [--config=configs/demo.py]

For each position P: a real checkpoint at step P (a fresh train state, data position P and
no iterator state) is written; restart 1 trains one step from it, which has to skip P
batches, and saves step P + 1 with the iterator's state; restart 2 trains one more step
from that one, restoring the state. Each restart is `train.train_and_evaluate` in this
process (restore, data, compilation, one step, the final save): the process's own start
(imports, ~15 s) is the same for both and not counted. Also prints the iterator state's
size and the share of it the shuffle buffer takes (the same state saved from an unshuffled
stream). Lines are printed as they come; the skip at 100k batches takes about 10 minutes
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from irl_lm import checkpointing, files, sharding, train  # noqa: E402
from irl_lm.data import pipeline  # noqa: E402
from irl_lm.learners import common  # noqa: E402
from irl_lm.models import build_model  # noqa: E402


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("loss=iqlearn")
    config.evals = {}  # the restart, not the evaluation
    return config


def write_checkpoint(config, workdir: str, position: int) -> None:
    """A checkpoint at step `position` with data position `position` and no iterator state
    (what every checkpoint looked like before the state was saved)."""
    model_config = train.resolve_model_config(config)
    model = build_model(model_config)
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    mesh = sharding.make_mesh(config.mesh)
    with sharding.use_mesh(mesh):
        example = train.dummy_batch(config, model, 1)
        _, shardings = common.state_shardings(model, tx, example, mesh)
        state = common.init_state(model, tx, example, shardings, jax.random.PRNGKey(0))
        state = state.replace(step=jax.device_put(np.int32(position), shardings.step))
        ckpt = checkpointing.Checkpointer(workdir, keep=3)
        ckpt.save(position, state, {"data_position": position})
        ckpt.close()
    checkpointing.write_model_config(workdir, model_config)


def restart(config, workdir: str, total_steps: int) -> float:
    config = config.copy_and_resolve_references()
    config.total_steps = total_steps
    started = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    return time.perf_counter() - started


def state_size(folder) -> int:
    return sum(os.path.getsize(p) for p in files.path(folder).glob("process_*"))


def shuffle_share(config) -> tuple[int, int]:
    """(bytes of the iterator state after one batch, the same from an unshuffled stream)."""
    sizes = []
    for shuffle in (True, False):
        stream = pipeline.TrainIterator._stream(config, decoder_only=False, shuffle=shuffle)
        next(stream)
        with tempfile.TemporaryDirectory() as folder:
            tf.train.Checkpoint(iterator=stream).write(os.path.join(folder, "process_0"))
            sizes.append(state_size(folder))
    return sizes[0], sizes[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.py"))
    p.add_argument("--positions", default="0,1000,10000,100000")
    args = p.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    config = load_config(args.config)
    print(
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs; {args.config}: batch "
        f"{config.batch_size}, {config.task.name}"
    )
    shuffled, unshuffled = shuffle_share(config)
    print(
        f"iterator state: {shuffled / 1e6:.2f} MB, of which the shuffle buffer "
        f"{(shuffled - unshuffled) / 1e6:.2f} MB ({1 - unshuffled / shuffled:.0%})"
    )
    print("position  restart, skipping (s)  restart, iterator state (s)  ratio  state (MB)")
    for position in (int(x) for x in args.positions.split(",")):
        with tempfile.TemporaryDirectory() as workdir:
            write_checkpoint(config, workdir, position)
            skipping = restart(config, workdir, position + 1)
            restoring = restart(config, workdir, position + 2)
            size = state_size(checkpointing.Checkpointer(workdir, keep=3).data_dir(position + 1))
        print(
            f"{position:>8}  {skipping:>21.2f}  {restoring:>27.2f}  "
            f"{skipping / restoring:>5.1f}  {size / 1e6:>10.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

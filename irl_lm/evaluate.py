"""Evaluates a training workdir's latest checkpoint without training.

    python -m irl_lm.evaluate --workdir=workdirs/xsum_iq [--step=N] [--evals=decode,validation]

Runs the evaluators of the workdir's `config.json` (`config.evals`) on the saved parameters,
writes their scalars to TensorBoard under `eval/<name>/` at that step and to
`workdir/eval-<step>.json`; decode evaluators also write `workdir/predictions/<name>/<step>.jsonl`.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from absl import app, flags, logging
from clu import metric_writers

from irl_lm import checkpointing, evaluators, files, sharding, train
from irl_lm.data import tasks
from irl_lm.losses import make_loss
from irl_lm.models import build_model

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint step (default: the latest).")
_EVALS = flags.DEFINE_list("evals", [], "Evaluators to run (default: all of config.evals).")


def evaluate(workdir: str, step: int | None = None, names=()) -> dict:
    config = ml_collections.ConfigDict(files.read_json(files.path(workdir, "config.json")))
    unknown = sorted(set(names) - set(config.evals))
    if unknown:
        raise ValueError(f"--evals {unknown} not in config.evals: {sorted(config.evals)}")
    if names:
        config.evals = {name: config.evals[name] for name in names}
    path = workdir if step is None else str(files.path(workdir, "checkpoints", str(step)))
    source = checkpointing.parse_init_from(path)
    model = build_model(source.model_config())
    mesh = sharding.make_mesh(config.mesh)
    task = tasks.build(config.task)
    with sharding.use_mesh(mesh):
        abstract, shardings = sharding.abstract_params(
            model, mesh, train.dummy_batch(task, model, 1)
        )
        params = source.load_params(model, abstract, shardings)
        ctx = evaluators.EvalContext.from_config(
            config, task, model, mesh, loss_fn=make_loss(config.loss), workdir=workdir
        )
        writer = metric_writers.create_default_writer(
            workdir, just_logging=jax.process_index() != 0
        )
        results = {}
        for name, (_, evaluator) in evaluators.make_evaluators(ctx, config.evals).items():
            scalars, texts = evaluator(params, source.step)
            writer.write_scalars(source.step, {f"eval/{name}/{k}": v for k, v in scalars.items()})
            if texts:
                writer.write_texts(source.step, {f"eval/{name}/{k}": v for k, v in texts.items()})
            results[name] = scalars
            logging.info("eval/%s at step %d: %s", name, source.step, scalars)
        writer.flush()
    if jax.process_index() == 0:
        path = files.path(workdir, f"eval-{source.step}.json")
        files.write_json(path, {"step": source.step, "eval": results})
    return {"step": source.step, "eval": results}


def main(argv):
    del argv
    train.quiet_library_logs()
    print(json.dumps(evaluate(_WORKDIR.value, _STEP.value, _EVALS.value), default=float))


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)

"""The trainer: one loop for every loss, readable top to bottom.

Sections: config checks -> the task, built once -> workdir files -> the learner (its state,
step and sampler) -> its first state (the latest checkpoint that restores,
`config.init_from`, or fresh) -> the loop (data, one-step-late metrics, checkpoints,
evaluation, TensorBoard, preemption).
A learner (`irl_lm.learners`) is what differs between objectives: the policy learner of MLE
and IQLearn (optimizer, state, jitted update) or GAIL's policy + discriminator. Evaluators
live in `irl_lm.evaluators`, checkpoint fallback in `checkpointing.py`, the data stream and
its saved state in `data/pipeline.py`, the preemption signal in `distributed.py`.
"""

from __future__ import annotations

import logging as pylogging
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from irl_lm import checkpointing, distributed, evaluators, files, learners, perf, sharding
from irl_lm.data import pipeline, tasks
from irl_lm.losses import make_loss
from irl_lm.models import build_model, is_decoder_only, resolve_preset
from irl_lm.models.hf import RUNTIME_FIELDS, save_vocabulary_files

# ----------------------------------------------------------------------------- config


OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("constant", "cosine", "linear", "rsqrt")


def validate_config(config) -> None:
    """Fails at start, naming the field and the allowed values, before anything is built."""
    task_config = config.task
    if config.get("init_from") and tasks.takes_vocabulary(task_config):
        if not task_config.get("vocabulary"):
            # `resolve_config` fills it in from config.init_from's tokenizer, after this
            # check: check the task's other fields with bytes in its place (the jsonl task
            # refuses an empty vocabulary).
            task_config = dict(task_config) | {"vocabulary": "byte"}
    tasks.get_task(task_config)  # checks task name, modules and fields
    tasks.feature_lengths(config.task)  # and that the lengths are known
    make_loss(config.loss)
    build_model(config.model)  # checks model name and fields
    choices = {"optimizer.name": OPTIMIZERS, "schedule.name": SCHEDULES}
    for field, allowed in choices.items():
        group, key = field.split(".")
        if config[group][key] not in allowed:
            raise ValueError(
                f"config.{field}={config[group][key]!r} is not allowed; allowed: {allowed}"
            )
    learners.validate(config)
    positive = ("batch_size", "eval_batch_size", "total_steps", "grad_accum_steps")
    for field in positive:
        if field == "total_steps" and config.total_steps == 0:
            if config.get("init_from"):
                continue  # evaluation only: config.evals on config.init_from's parameters
            raise ValueError(
                "config.total_steps=0 evaluates the parameters of config.init_from, which is "
                "empty: set --config.init_from (or a positive number of steps)"
            )
        if int(config[field]) <= 0:
            raise ValueError(f"config.{field}={config[field]} must be a positive integer")
    chunk = config.get("logits_chunk_size", 0)
    if not isinstance(chunk, int) or chunk < 0:
        raise ValueError(
            f"config.logits_chunk_size={chunk!r} must be an integer >= 0 (0: whole logits)"
        )
    if config.batch_size % config.grad_accum_steps:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by "
            f"config.grad_accum_steps={config.grad_accum_steps}"
        )


def resolve_config(config) -> tuple[ml_collections.ConfigDict, checkpointing.InitSource | None]:
    """A copy of `config` that reads the vocabulary of the checkpoint in `config.init_from`
    (when it has one and `config.task.vocabulary` is unset), and that checkpoint."""
    config = ml_collections.ConfigDict(config.to_dict())
    source = checkpointing.parse_init_from(config.get("init_from", ""))
    takes_vocabulary = tasks.takes_vocabulary(config.task)
    if source is not None and takes_vocabulary and not config.task.get("vocabulary"):
        folder = source.vocabulary_folder()
        if folder is not None:
            config.task.vocabulary = folder
        else:
            logging.warning(
                "config.init_from: %s has no tokenizer; the task keeps its own vocabulary",
                source.folder,
            )
    elif source is not None and source.vocabulary_folder() is not None:
        # A vocabulary set by hand must tokenize as the checkpoint's own does.
        where = f"config.init_from={config.init_from!r}"
        tasks.check_vocabulary_matches(config.task, source.vocabulary_folder(), where)
    return config, source


def resolve_model_config(
    config, source: checkpointing.InitSource | None = None, task: tasks.Task | None = None
) -> dict:
    """`config.model` with presets expanded, the architecture of `config.init_from` (when
    set; `config.model` keeps only the runtime fields), and `vocab_size` taken from the
    task's vocabulary when unset; checks the model's vocabulary covers the task's."""
    model_config = resolve_preset(config.model)
    task_vocab = task.vocabulary if task is not None else tasks.vocabulary(config.task)
    if source is None:
        source = checkpointing.parse_init_from(config.get("init_from", ""))
    if source is not None:
        architecture = source.model_config()
        replaced = {
            k: (v, architecture.get(k))
            for k, v in model_config.items()
            if k not in RUNTIME_FIELDS and v and v != architecture.get(k)
        }
        if replaced:
            logging.info(
                "config.model fields taken from %s instead: %s",
                source.describe(),
                {k: f"{a!r} -> {b!r}" for k, (a, b) in replaced.items()},
            )
        runtime = {k: model_config[k] for k in RUNTIME_FIELDS if k in model_config}
        model_config = architecture | runtime
    if not model_config.get("vocab_size"):
        model_config["vocab_size"] = task_vocab.vocab_size
    swap = getattr(task_vocab, "zero_token_swap", None)
    if source is None and swap:  # from scratch: export moves the tokenizer's token 0 back
        model_config["token_zero_row"] = swap
    if model_config["vocab_size"] < task_vocab.vocab_size and source is not None:
        raise ValueError(
            f"config.init_from={config.get('init_from')!r}: the checkpoint's vocab_size "
            f"{model_config['vocab_size']} is smaller than the task's vocabulary "
            f"({task_vocab.vocab_size} tokens); start from a checkpoint made with the task's "
            "vocabulary, or set config.task.vocabulary='' to take the checkpoint's tokenizer"
        )
    if model_config["vocab_size"] < task_vocab.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={model_config['vocab_size']} is smaller than the task's "
            f"vocabulary ({task_vocab.vocab_size} tokens); set it to 0 to take the task's size"
        )
    return model_config


def initial_state(learner, checkpointer, source, model):
    """(state, metadata, step restored or None): the latest checkpoint that restores, else
    `config.init_from`'s parameters (`source`), else a fresh state."""
    target = checkpointing.abstract_like(learner.abstract_state, learner.shardings)
    restored = checkpointer.restore_latest(target)
    if restored is not None:
        step, state, metadata = restored
        logging.info("Resumed from step %d in %s", step, checkpointer.directory)
        if source is not None:
            logging.info("config.init_from ignored: resuming takes precedence")
        return state, metadata, step
    if source is not None:
        params = source.load_params(model, learner.abstract_state.params, learner.shardings.params)
        logging.info("Initialised parameters from %s", source.describe())
        return learner.from_params(params), {"data_position": 0}, None
    return learner.init(), {"data_position": 0}, None


def build_learner(config, task: tasks.Task, model, model_config: dict, mesh, rng):
    """(the model's batch feature lengths, the learner `config` calls for) for `task`;
    called under `sharding.use_mesh(mesh)`."""
    lengths = pipeline.model_feature_lengths(task, decoder_only=is_decoder_only(model))
    learner = learners.make_learner(
        config,
        model,
        model_config,
        mesh,
        batch_lengths=lengths,
        lengths=task.lengths,
        eos_id=task.eos_id,
        rng=rng,
    )
    return lengths, learner


def dummy_batch(task_or_config, model, batch_size: int) -> dict[str, np.ndarray]:
    """Ones in the shapes of `model`'s input features for a task (or a config's task), for
    initialisation and shapes."""
    task = task_or_config
    if not isinstance(task, tasks.Task):
        task = tasks.build(task_or_config.task)
    lengths = pipeline.model_feature_lengths(task, decoder_only=is_decoder_only(model))
    return learners.example_batch(model, lengths, batch_size)


# ----------------------------------------------------------------------------- workdir files


def write_model_info(path: str, params, param_shardings) -> None:
    lines, total = [], 0
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (keys, leaf), s in zip(flat, jax.tree.leaves(param_shardings), strict=True):
        name = "/".join(str(k.key) for k in keys)
        total += math.prod(leaf.shape)
        lines.append(f"{name}\t{tuple(leaf.shape)}\t{leaf.dtype}\t{s.spec}")
    lines.append(f"total parameters: {total:,}")
    files.write_text(path, "path\tshape\tdtype\tsharding\n" + "\n".join(lines) + "\n")


def own_info_and_warnings(record) -> bool:
    """A log filter: INFO lines of irl_lm, and warnings and up of every library."""
    return record.levelno >= pylogging.WARNING or "site-packages" not in record.pathname


def quiet_library_logs() -> None:
    """Keeps INFO lines of irl_lm only; libraries (orbax, seqio, ...) log warnings and up."""
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().python_handler.addFilter(own_info_and_warnings)


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming from its latest checkpoint); returns results.

    A workdir whose `results.json` records a finished run (`config.total_steps` reached)
    is not trained again: its results are returned at once. `results.json` is written only
    when the run reaches `config.total_steps` (a SIGTERM stop leaves its checkpoint).
    `config.total_steps=0` with `config.init_from` evaluates those parameters (every
    evaluator of `config.evals`, at step 0) and saves no checkpoint.
    """
    validate_config(config)
    done = files.finished_results(workdir, config.total_steps)
    if done is not None:
        logging.info(
            "%s already finished (%s says step %d of %d): nothing to do",
            workdir,
            files.RESULTS_FILE,
            done["step"],
            config.total_steps,
        )
        return done
    config, source = resolve_config(config)
    task = tasks.build(config.task)
    if config.total_steps:
        tasks.check_disjoint(config.task)
    files.path(workdir).mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    model_config = resolve_model_config(config, source, task)
    if is_main and config.total_steps and task.expert is None:
        tasks.report_truncation(task, "train")  # warns with counts and the fix
    if is_main:
        files.write_text(files.path(workdir, "config.json"), config.to_json_best_effort(indent=2))
        checkpointing.write_model_config(workdir, model_config)
        if config.task.get("vocabulary"):  # the workdir carries its tokenizer, for export
            save_vocabulary_files(config.task.vocabulary, workdir)

    mesh = sharding.make_mesh(config.mesh)
    model = build_model(model_config)
    decoder_only = is_decoder_only(model)
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
    checkpointer = checkpointing.Checkpointer(workdir, keep=config.checkpoint.keep)
    rng = jax.random.PRNGKey(config.seed)

    with sharding.use_mesh(mesh), distributed.Preemption() as preemption:
        lengths, learner = build_learner(
            config, task, model, model_config, mesh, jax.random.fold_in(rng, 0)
        )
        if learner.sampled_rows:
            logging.info(
                "Online loss: %d of %d rows per step sampled from the policy",
                learner.sampled_rows,
                config.batch_size,
            )
        state, metadata, latest = initial_state(learner, checkpointer, source, model)
        if is_main:
            write_model_info(
                files.path(workdir, "model-info.txt"), state.params, learner.shardings.params
            )
        ctx = evaluators.EvalContext.from_config(
            config, task, model, mesh, loss_fn=make_loss(config.loss), workdir=workdir
        )
        evals = evaluators.make_evaluators(ctx, config.evals)
        train_iter = pipeline.TrainIterator(
            pipeline.train_data(config, task, decoder_only=decoder_only),
            metadata["data_position"],
            saved=None if latest is None else checkpointer.data_dir(latest),
        )
        step = int(jax.device_get(state.step))
        results: dict[str, Any] = {"eval": {}, "eval_reference": {}}
        for name, (_, evaluator) in evals.items():
            if hasattr(evaluator, "reference"):  # a ground-truth row, e.g. the expert's own
                results["eval_reference"][name] = evaluator.reference()
        last_saved = latest
        timer = _Throughput()
        tokens = sum(config.batch_size * lengths[k] for k in perf.COUNTED_FEATURES if k in lengths)
        cost = perf.StepCost(learner.update_flops, learner.sampling_flops, tokens)
        device_kind = jax.devices()[0].device_kind
        step_perf = lambda rate: cost.perf(rate, jax.device_count(), device_kind)
        peak = perf.peak_flops_per_device(device_kind)
        logging.info(
            "Model FLOPs per step: %.4g (update) + %.4g (sampling); %s peak: %s",
            cost.update_flops,
            cost.sampling_flops,
            device_kind,
            f"{peak:.4g} FLOP/s" if peak else "unknown (no MFU)",
        )

        def save(step):
            nonlocal last_saved
            if step != last_saved:
                metadata = {"data_position": train_iter.position}
                checkpointer.save(step, state, metadata, data_iterator=train_iter)
                last_saved = step

        final_evals_done = False
        lowest: dict[str, float] = {}  # each held-out loss's lowest value so far

        def run_evals(step, final=False):
            nonlocal final_evals_done
            final_evals_done |= final
            for name, (every, evaluator) in evals.items():
                if final or (every and step % every == 0):
                    started = time.perf_counter()
                    scalars, texts = evaluator(state.params, step)
                    timer.pause(time.perf_counter() - started)
                    writer.write_scalars(step, {f"eval/{name}/{k}": v for k, v in scalars.items()})
                    if texts:
                        writer.write_texts(step, {f"eval/{name}/{k}": v for k, v in texts.items()})
                    results["eval"][name] = scalars
                    logging.info("eval/%s at step %d: %s", name, step, _fmt(scalars))
                    for warning in divergence_warnings(f"eval/{name}", step, scalars, lowest):
                        logging.warning(warning)

        pending = None  # (step, device metrics) of the last step, fetched one step late
        sample_rng, update_started = jax.random.fold_in(rng, 1), None
        try:
            while step < config.total_steps and not preemption.reached(step):
                place = (
                    sharding.shard_host_batch
                    if train_iter.per_host
                    else sharding.shard_global_batch
                )
                batch = place(next(train_iter), mesh)
                if learner.sampler is None:
                    state, metrics = learner.step(state, batch, rng)
                else:  # times sampling and the previous update apart (both block)
                    jax.block_until_ready(state)
                    now = time.perf_counter()
                    timing = {"time/update_s": now - update_started} if update_started else {}
                    policy_rng = jax.random.fold_in(sample_rng, step)
                    policy = learner.sampler(state.params, batch, policy_rng)
                    jax.block_until_ready(policy)
                    timing["time/sample_s"] = time.perf_counter() - now
                    update_started = time.perf_counter()
                    state, metrics = learner.step(state, batch, rng, policy)
                    metrics = metrics | timing
                step += 1
                if pending is not None:
                    _report(pending, writer, timer, config, last_saved, checkpointer, step_perf)
                pending = (step, metrics)
                boundary = step % config.checkpoint.every == 0 or any(
                    every and step % every == 0 for every, _ in evals.values()
                )
                if boundary or step == config.total_steps:
                    _report(pending, writer, timer, config, last_saved, checkpointer, step_perf)
                    pending = None
                    if step % config.checkpoint.every == 0 or step == config.total_steps:
                        save(step)
                    run_evals(step, final=step == config.total_steps)
            if pending is not None:
                _report(pending, writer, timer, config, last_saved, checkpointer, step_perf)
            if config.total_steps:  # (0: evaluation only, nothing trained to save)
                save(step)
            if step < config.total_steps:
                logging.info("Preempted: saved step %d; the same command resumes it", step)
            if step >= config.total_steps and not final_evals_done:  # resumed at the end
                run_evals(step, final=True)
        finally:
            checkpointer.close()
            writer.flush()

    results |= {
        "step": step,
        "steps_per_sec": timer.steps_per_sec(),
        "perf": step_perf(timer.steps_per_sec()),
        "loss": dict(config.loss),
    }
    if is_main and step >= config.total_steps:
        files.write_json(files.path(workdir, files.RESULTS_FILE), results)
    return results


class _Throughput:
    """Steps/s and ETA over the reported steps, excluding compilation and evaluation time."""

    def __init__(self):
        self.first = self.last = None  # (step, time)
        self.paused = self.pending_pause = 0.0

    def update(self, step: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        else:  # only pauses between the first and the latest reported step count
            self.paused += self.pending_pause
        self.pending_pause = 0.0
        self.last = (step, now)

    def pause(self, seconds: float) -> None:
        self.pending_pause += seconds

    def steps_per_sec(self) -> float:
        if self.first is None or self.last[0] == self.first[0]:
            return float("nan")
        return (self.last[0] - self.first[0]) / (self.last[1] - self.first[1] - self.paused)


def _report(pending, writer, timer, config, last_saved, checkpointer, step_perf) -> None:
    """Fetches one step's metrics, stops on a non-finite loss, logs progress and throughput
    (`perf/*`: tokens/s, TFLOP/s per device, MFU where the device's peak is known)."""
    step, device_metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    if not np.isfinite(metrics["loss"]):
        checkpointer.wait()
        kept = f"step {last_saved}" if last_saved is not None else "none yet"
        raise FloatingPointError(
            f"Non-finite loss ({metrics['loss']}) at step {step}; training stopped. "
            f"Last good checkpoint: {kept} in {checkpointer.directory}. "
            "Try a lower config.optimizer.learning_rate or config.optimizer.grad_clip."
        )
    timer.update(step)
    if step % config.log_every == 0 or step == config.total_steps:
        writer.write_scalars(step, {f"train/{k}": v for k, v in metrics.items()})
        rate = timer.steps_per_sec()
        throughput = step_perf(rate)
        writer.write_scalars(
            step,
            {f"perf/{k}": throughput[k] for k in PERF_SCALARS if throughput[k] is not None},
        )
        eta = (config.total_steps - step) / rate if rate and np.isfinite(rate) else float("nan")
        logging.info(
            "step %d/%d  loss %.4f  %.2f steps/s  ETA %s",
            step,
            config.total_steps,
            metrics["loss"],
            rate,
            _fmt_seconds(eta),
        )


PERF_SCALARS = ("tokens_per_s", "tflops_per_s_per_device", "mfu")
EXPLODED = 2.0  # a held-out NLL this many times its lowest so far is warned about


def divergence_warnings(
    prefix: str, step: int, scalars: Mapping[str, float], lowest: dict[str, float]
) -> list[str]:
    """Warnings for a diverging run, which trains on with a finite training loss: a held-out
    loss (a scalar named `*loss` or `*nll`) that is not finite, or an NLL above `EXPLODED`
    times its lowest at an earlier evaluation (`lowest`, updated here)."""
    warnings = []
    for key, value in scalars.items():
        tag = f"{prefix}/{key}"
        if not key.endswith(("loss", "nll")):
            continue
        if not math.isfinite(value):
            warnings.append(f"{tag} is {value} at step {step}: the run has diverged")
        elif key.endswith("nll"):
            if value > EXPLODED * lowest.get(tag, math.inf):
                warnings.append(
                    f"{tag} is {value:.4g} at step {step}, over {EXPLODED:g} times its lowest "
                    f"({lowest[tag]:.4g}): diverging or overfitting"
                )
            lowest[tag] = min(value, lowest.get(tag, math.inf))
    return warnings


def _fmt(scalars: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in scalars.items())


def _fmt_seconds(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"

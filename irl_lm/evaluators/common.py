"""What the evaluators share: the `EvalContext` they are built with, prompts and teacher-forced
rows, the jitted reward and log-probability functions, a task's examples and metrics, and the
predictions file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping

import jax
import numpy as np
import seqio
from absl import logging
from jax.sharding import Mesh

from irl_lm import decoding, files, sharding
from irl_lm.data import pipeline, tasks, text_tasks
from irl_lm.data.synthetic import EOS_ID
from irl_lm.losses import DEFAULT_GAMMA
from irl_lm.losses.common import action_and_state_values
from irl_lm.losses.iqlearn import sequence_rewards
from irl_lm.metrics import text as text_metrics
from irl_lm.models import is_decoder_only, model_logits


@dataclasses.dataclass(frozen=True)
class EvalContext:
    """What every evaluator is built with: the run's task, model and mesh, the training loss
    (the held-out loss evaluator's), and the config fields evaluators share."""

    task: tasks.Task
    model: object
    mesh: Mesh
    loss_fn: Callable | None = None
    workdir: str | None = None  # where evaluators write files (predictions); None: nowhere
    eval_batch_size: int = 64  # `config.eval_batch_size`
    logits_chunk_size: int = 0  # `config.logits_chunk_size`: teacher-forced passes in chunks
    gamma: float = DEFAULT_GAMMA  # `config.loss.gamma` (the reward evaluator's default)
    seed: int = 0  # `config.seed`

    @property
    def eos_id(self) -> int:
        return self.task.eos_id

    @classmethod
    def from_config(cls, config, task: tasks.Task, model, mesh, *, loss_fn=None, workdir=None):
        return cls(
            task,
            model,
            mesh,
            loss_fn=loss_fn,
            workdir=workdir,
            eval_batch_size=config.eval_batch_size,
            logits_chunk_size=config.get("logits_chunk_size", 0),
            gamma=config.loss.get("gamma", DEFAULT_GAMMA),
            seed=config.seed,
        )


def global_array(values: np.ndarray, mesh: Mesh) -> jax.Array:
    """A batch-sharded global array from a NumPy array every host holds in full."""
    return jax.make_array_from_callback(
        values.shape, sharding.batch_sharding(mesh), lambda index: values[index]
    )


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def expert_prompts(ctx: EvalContext, expert, split: str, num_examples: int):
    """Held-out expert inputs, and their prompts as training reads them: x + EOS (T5's
    encoder), BOS + x + EOS (decoder-only)."""
    prefix = pipeline.prompt_prefix(is_decoder_only(ctx.model), ctx.task.vocabulary)
    inputs = [expert.example(split, i)["inputs"] for i in range(num_examples)]
    prompts = [[*prefix, *x, EOS_ID] for x in inputs]
    return inputs, prompts, len(prefix) + expert.spec.max_input_len_with_eos


def prompt_array(prompts, width: int, rows: int) -> np.ndarray:
    """Prompts right-padded to `width`, in `rows` rows (zero rows after the last prompt)."""
    tokens = np.zeros((rows, width), np.int32)
    for i, prompt in enumerate(prompts):
        tokens[i, : len(prompt)] = prompt
    return tokens


def teacher_forced_rows(model, prompts, ys, *, prompt_width: int, target_width: int, rows: int):
    """A batch that reads each (prompt, y) pair teacher-forced, one pair a row (`rows` rows,
    zero rows after the pairs), and the position of each y's first token in its row.

    T5 reads the prompt with its encoder and y with its decoder; a decoder-only model reads
    prompt + y in one row. `decoder_loss_weights` is 1 on y's tokens.
    """
    if is_decoder_only(model):
        width = prompt_width + target_width - 1
        decoder_inputs = np.zeros((rows, width), np.int32)
        targets, weights = np.zeros_like(decoder_inputs), np.zeros_like(decoder_inputs)
        offsets = [len(prompt) - 1 for prompt in prompts]
        for row, (prompt, y) in enumerate(zip(prompts, ys, strict=True)):
            sequence = [*prompt, *y]
            decoder_inputs[row, : len(sequence) - 1] = sequence[:-1]
            targets[row, : len(sequence) - 1] = sequence[1:]
            weights[row, offsets[row] : len(sequence) - 1] = 1
        batch = {}
    else:
        targets = np.zeros((rows, target_width), np.int32)
        weights = np.zeros_like(targets)
        for row, y in enumerate(ys):
            targets[row, : len(y)] = y
            weights[row, : len(y)] = 1
        decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
        offsets = [0] * len(ys)
        batch = {"encoder_input_tokens": prompt_array(prompts, prompt_width, rows)}
    batch |= {
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": weights,
    }
    return batch, offsets


def make_reward_fn(model, *, gamma: float, eos_id: int, logits_chunk_size: int = 0):
    """`(params, batch) -> r_BxT`: IQLearn's per-token reward of a `teacher_forced_rows` batch
    (`losses.iqlearn.sequence_rewards`, the loss's own δ_t), 0 off the targets."""

    def rewards(params, batch):
        # The model reads the input features only: a sampled PAD token (which a barely
        # trained policy can emit) is then read as the sampler fed it back, not as padding.
        inputs = {k: batch[k] for k in type(model).input_features}
        logits = model_logits(model, params, inputs, logits_chunk_size=logits_chunk_size)
        rewards_BxT, _ = sequence_rewards(
            logits,
            batch["decoder_target_tokens"],
            batch["decoder_loss_weights"],
            gamma=gamma,
            eos_id=eos_id,
        )
        return rewards_BxT

    return rewards


def token_log_probs_fn(model, logits_chunk_size: int = 0):
    """`(params, batch) -> log π(target_t)` per position of a teacher-forced batch."""

    def token_log_probs(params, batch):
        logits = model_logits(model, params, batch, logits_chunk_size=logits_chunk_size)
        q_BxT, v_BxT = action_and_state_values(logits, batch["decoder_target_tokens"])
        return q_BxT - v_BxT

    return token_log_probs


def check_method(name: str, method: str) -> None:
    """Fails before an evaluator does any work when its decoding method does not exist."""
    if method not in decoding.METHODS:
        raise ValueError(
            f"config.evals.{name}.method={method!r} is not a decoding method; "
            f"allowed: {list(decoding.METHODS)}"
        )


@dataclasses.dataclass(frozen=True)
class TextExamples:
    task: seqio.Task
    vocab: object
    inputs: list[str]
    targets: list[str]  # as the data holds them (`targets_pretokenized`)
    examples: list[dict]  # the task's examples, for its postprocess_fn
    target_ids: list[list[int]]  # the tokenized targets, EOS included
    prompts: list[list[int]]  # as training saw them: inputs (T5), BOS + inputs (decoder-only)
    width: int  # the longest prompt the task allows

    def postprocess(self, texts: list[str], *, is_target: bool) -> list:
        """seqio's convention: `task.postprocess_fn(text, example=..., is_target=...)`."""
        return [
            self.task.postprocess_fn(text, example=example, is_target=is_target)
            for text, example in zip(texts, self.examples, strict=True)
        ]


def text_examples(ctx: EvalContext, split: str, max_examples: int, task) -> TextExamples:
    lengths = dict(ctx.task.lengths)
    ds = task.get_dataset(lengths, split=split, shuffle=False, use_cached=False)
    examples = list(text_tasks.read(ds.take(max_examples or -1)))
    vocab = ctx.task.vocabulary
    prefix = pipeline.prompt_prefix(is_decoder_only(ctx.model), vocab)

    def text(ex, feature):  # a task that tokenizes without keeping the text: decode it
        if f"{feature}_pretokenized" in ex:
            return ex[f"{feature}_pretokenized"].decode()
        return vocab.decode(ex[feature].tolist())

    return TextExamples(
        task,
        vocab,
        inputs=[text(ex, "inputs") for ex in examples],
        targets=[text(ex, "targets") for ex in examples],
        examples=examples,
        target_ids=[ex["targets"].tolist() for ex in examples],
        prompts=[[*prefix, *ex["inputs"].tolist()] for ex in examples],
        width=len(prefix) + lengths["inputs"],
    )


def metric_scalars(values: Mapping, where: str) -> dict[str, float]:
    """A metric function's result as floats (numbers, or seqio.metrics values with a
    `.value`); other values (text, histograms) are left out, saying so."""
    out = {}
    for key, value in values.items():
        value = getattr(value, "value", value)
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            logging.warning(
                "%s: metric %r is not a number (%s); not reported", where, key, type(value).__name__
            )
    return out


def task_metrics(task, targets, predictions, scores=None) -> dict[str, float]:
    """The task's `metric_fns`: `fn(targets, predictions)` and, given `scores` (each
    target's log-likelihood under the model), `fn(targets, scores)`."""
    results = {}
    for fn in task.predict_metric_fns:
        results |= metric_scalars(fn(targets, predictions), f"task {task.name}")
    for fn in task.score_metric_fns if scores is not None else ():
        results |= metric_scalars(fn(targets, scores), f"task {task.name}")
    return results


def per_example_metrics(task, targets, predictions) -> dict[str, list[float]]:
    """The task's prediction metrics per example, to rank samples: ours through
    `metrics.text.PER_EXAMPLE`, any other by calling it on one example at a time."""
    ours = {fn: name for name, fn in text_metrics.METRICS.items()}
    scores: dict[str, list[float]] = {}
    for fn in task.predict_metric_fns:
        if fn in ours:
            scores |= text_metrics.PER_EXAMPLE[ours[fn]](targets, predictions)
            continue
        rows = [
            metric_scalars(fn([t], [p]), f"task {task.name}")
            for t, p in zip(targets, predictions, strict=True)
        ]
        scores |= {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
    return scores


def task_examples(ctx: EvalContext, name: str, split: str, max_examples: int):
    """The examples of each (sub-)task of the config's task that has `split`."""
    task = ctx.task.seqio_task
    parts = [
        text_examples(ctx, split, max_examples, sub)
        for sub in ctx.task.subtasks
        if split in sub.splits
    ]
    empty = [part.task.name for part in parts if not part.prompts]
    if empty:
        logging.warning("config.evals.%s: sub-tasks with no %r examples: %s", name, split, empty)
    parts = [part for part in parts if part.prompts]
    skipped = [sub.name for sub in ctx.task.subtasks if split not in sub.splits]
    if skipped:
        logging.warning(
            "config.evals.%s: %d sub-tasks have no %r split: %s", name, len(skipped), split, skipped
        )
    for part in parts:  # what seqio tasks may define that needs a t5x model's outputs
        if part.task.predict_with_aux_metric_fns:
            logging.warning(
                "task %s: its fn(targets, predictions, aux_values) metrics are not "
                "computed (they need a t5x model's aux values)",
                part.task.name,
            )
        if part.task.metric_objs and not (
            part.task.predict_metric_fns or part.task.score_metric_fns
        ):
            logging.warning(
                "task %s: only metric_objs, which irl-lm does not run; give the task metric_fns",
                part.task.name,
            )
    if not parts:
        raise ValueError(
            f"config.evals.{name}: task {task.name!r} has no {split!r} examples (its "
            f"splits: {sorted(task.splits)}); set config.evals.{name}.split"
        )
    return parts


def write_predictions(ctx: EvalContext, name: str, step: int, records) -> None:
    """`workdir/predictions/<name>/<step>.jsonl`, one record a line (process 0; none without
    a workdir)."""
    if ctx.workdir and jax.process_index() == 0:
        lines = "".join(json.dumps(record) + "\n" for record in records)
        files.write_text(files.path(ctx.workdir, "predictions", name, f"{step}.jsonl"), lines)

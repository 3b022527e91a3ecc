"""Evaluators, picked from `config.evals` (name -> {kind, every, ...}) through `EVALUATORS`.

An evaluator is built once with an `EvalContext` and its own config fields, and called as
`evaluator(params, step) -> (scalars, texts)`; the trainer writes them under `eval/<name>/`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import seqio
from absl import logging
from jax.sharding import Mesh

from irl_lm import decoding, files, sharding, train_step
from irl_lm.data import pipeline, tasks, text_tasks
from irl_lm.data.synthetic import EOS_ID
from irl_lm.data.tasks import expert_from_config, feature_lengths, get_task
from irl_lm.losses import DEFAULT_GAMMA
from irl_lm.losses.common import action_and_state_values
from irl_lm.losses.iqlearn import sequence_rewards
from irl_lm.metrics import ids_to_text, self_bleu
from irl_lm.metrics import text as text_metrics
from irl_lm.models import is_decoder_only


@dataclasses.dataclass(frozen=True)
class EvalContext:
    config: Mapping
    model: object
    mesh: Mesh
    loss_fn: Callable
    eos_id: int
    workdir: str | None = None  # where evaluators write files (predictions); None: nowhere

    @property
    def logits_chunk_size(self) -> int:
        """`config.logits_chunk_size`: teacher-forced passes score in chunks, as training."""
        return self.config.get("logits_chunk_size", 0)


class LossEvaluator:
    """The training loss and its terms, teacher-forced on a held-out split."""

    def __init__(self, ctx: EvalContext, name: str, *, split="validation", max_examples=0):
        del name
        self.ctx, self.split, self.max_examples = ctx, split, max_examples

        def summed_metrics(params, batch):
            chunk = ctx.logits_chunk_size
            logits = train_step.model_logits(ctx.model, params, batch, logits_chunk_size=chunk)
            weights = batch["decoder_loss_weights"]
            _, metrics = ctx.loss_fn(
                logits, batch["decoder_target_tokens"], weights, eos_id=ctx.eos_id
            )
            num_tokens = jnp.sum(weights.astype(jnp.float32))
            return {k: v * num_tokens for k, v in metrics.items()} | {"num_tokens": num_tokens}

        self._step = jax.jit(summed_metrics, out_shardings=sharding.replicated(ctx.mesh))

    def __call__(self, params, step):
        del step
        totals: dict[str, float] = {}
        batches = pipeline.eval_batches(self.ctx.config, self.split, self.max_examples,
                                        decoder_only=is_decoder_only(self.ctx.model))  # fmt: skip
        for batch, _ in batches:
            sums = jax.device_get(
                self._step(params, sharding.shard_host_batch(batch, self.ctx.mesh))
            )
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        num_tokens = max(totals.pop("num_tokens", 0.0), 1.0)
        return {k: v / num_tokens for k, v in totals.items()}, {}


def _global_array(values: np.ndarray, mesh: Mesh) -> jax.Array:
    """A batch-sharded global array from a NumPy array every host holds in full."""
    return jax.make_array_from_callback(
        values.shape, sharding.batch_sharding(mesh), lambda index: values[index]
    )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _expert_prompts(ctx: EvalContext, expert, split: str, num_examples: int):
    """Held-out expert inputs, and their prompts as training reads them: x + EOS (T5's
    encoder), BOS + x + EOS (decoder-only)."""
    vocab = tasks.vocabulary(ctx.config.task)
    prefix = pipeline.prompt_prefix(is_decoder_only(ctx.model), vocab)
    inputs = [expert.example(split, i)["inputs"] for i in range(num_examples)]
    prompts = [[*prefix, *x, EOS_ID] for x in inputs]
    return inputs, prompts, len(prefix) + expert.spec.max_input_len_with_eos


def _prompt_array(prompts, width: int, rows: int) -> np.ndarray:
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
        batch = {"encoder_input_tokens": _prompt_array(prompts, prompt_width, rows)}
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
        logits = train_step.model_logits(model, params, inputs, logits_chunk_size=logits_chunk_size)
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
        logits = train_step.model_logits(model, params, batch, logits_chunk_size=logits_chunk_size)
        q_BxT, v_BxT = action_and_state_values(logits, batch["decoder_target_tokens"])
        return q_BxT - v_BxT

    return token_log_probs


def _check_method(name: str, method: str) -> None:
    """Fails before an evaluator does any work when its decoding method does not exist."""
    if method not in decoding.METHODS:
        raise ValueError(
            f"config.evals.{name}.method={method!r} is not a decoding method; "
            f"allowed: {list(decoding.METHODS)}"
        )


class ExpertEvaluator:
    """Policy vs the synthetic expert, from samples and exact expert log-probabilities.

    Per input, `num_samples` policy outputs and as many expert samples. `method`:
    "temperature" (samples at `temperature`), or "greedy" / "beam" (`num_beams`, the best
    beam; one output per input, so no Self-BLEU). Validity (fraction of outputs with
    p_E > 0, truncated ones count as invalid); reverse KL per token of the decoding
    distribution q (temperature-scaled; a point mass for greedy and beam) restricted to
    valid sequences and renormalised (the true reverse KL is infinite once any invalid
    sequence has mass); forward KL per token of the policy on the expert samples; Self-BLEU;
    mean per-token entropy of the policy (not for beam) and length. `reference()` gives the
    expert's own row.
    """

    def __init__(
        self,
        ctx: EvalContext,
        name: str,
        *,
        num_examples=64,
        num_samples=4,
        method="temperature",
        temperature=1.0,
        num_beams=4,
        split="validation",
        seed=0,
    ):
        _check_method(name, method)
        self.ctx, self.num_samples = ctx, num_samples
        self.outputs_per_input = num_samples if method == "temperature" else 1
        self.expert = expert_from_config(ctx.config.task)
        self.max_len = self.expert.spec.max_target_len
        self.inputs, prompts, width = _expert_prompts(ctx, self.expert, split, num_examples)
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        self.rows = num_examples * num_samples
        policy_prompts = _prompt_array(prompts, width, _round_up(num_examples, shards))
        # Expert samples: num_samples per input (row = input * num_samples + sample).
        rng = np.random.default_rng([seed, 7])
        self.expert_samples = [
            self.expert.sample(self.inputs[row // num_samples], rng) for row in range(self.rows)
        ]
        expert_batch, self.offsets = teacher_forced_rows(
            ctx.model,
            [prompts[row // num_samples] for row in range(self.rows)],
            self.expert_samples,
            prompt_width=width,
            target_width=self.max_len,
            rows=_round_up(self.rows, shards),
        )
        self._policy_batch = {
            type(ctx.model).input_features[0]: _global_array(policy_prompts, ctx.mesh)
        }
        self._expert_batch = {k: _global_array(v, ctx.mesh) for k, v in expert_batch.items()}
        replicated = sharding.replicated(ctx.mesh)
        decode = decoding.make_decoder(
            ctx.model,
            method,
            max_len=self.max_len,
            eos_id=ctx.eos_id,
            temperature=temperature,
            num_decodes=self.outputs_per_input,
            num_beams=num_beams,
        )

        # [E, N, T] -> rows [E * N, T] (the best beam only).
        def flat(params, batch, rng):
            out = decode(params, batch, rng)
            if method == "beam":
                out = {k: out[k][:, :1] for k in ("tokens", "log_probs", "mask", "lengths")}
                out["sample_log_probs"] = jnp.zeros_like(out["log_probs"])
            else:
                del out["num_steps"]
            return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)

        self._decode = jax.jit(flat, out_shardings=replicated)
        self._token_log_probs = jax.jit(
            token_log_probs_fn(ctx.model, ctx.logits_chunk_size),
            out_shardings=replicated,
        )
        self._rng = jax.random.PRNGKey(seed)

    def reference(self) -> dict[str, float]:
        """The expert's own row: exact KLs of 0, validity 1."""
        entropies = [self.expert.entropies(self.inputs[i // self.num_samples], y)
                     for i, y in enumerate(self.expert_samples)]  # fmt: skip
        return {
            "validity": 1.0,
            "forward_kl": 0.0,
            "reverse_kl": 0.0,
            "self_bleu": self._self_bleu(self.expert_samples, self.num_samples),
            "entropy": float(np.mean(np.concatenate(entropies))),
            "length": float(np.mean([len(y) for y in self.expert_samples])),
        }

    @staticmethod
    def _self_bleu(samples, per_input: int) -> float:
        texts = [ids_to_text(y) for y in samples]
        groups = [texts[i : i + per_input] for i in range(0, len(texts), per_input)]
        return self_bleu(groups)["self_bleu"]

    def __call__(self, params, step):
        del step  # the same rng every time: differences between evals come from the policy
        out = jax.device_get(self._decode(params, self._policy_batch, self._rng))
        per_input = self.outputs_per_input
        rows = len(self.inputs) * per_input
        policy_samples, valid, reverse_terms, reverse_tokens = [], 0, 0.0, 0
        for row in range(rows):
            length = int(out["lengths"][row])
            y = out["tokens"][row, :length]
            policy_samples.append(y)
            log_p_expert = self.expert.log_prob(self.inputs[row // per_input], y)
            if np.isfinite(log_p_expert):
                valid += 1
                reverse_terms += float(out["sample_log_probs"][row, :length].sum()) - log_p_expert
                reverse_tokens += length
        mask = out["mask"][:rows]
        log_q = jax.device_get(self._token_log_probs(params, self._expert_batch))
        forward_terms, forward_tokens = 0.0, 0
        for row, y in enumerate(self.expert_samples):
            x, start = self.inputs[row // self.num_samples], self.offsets[row]
            log_q_y = float(log_q[row, start : start + len(y)].sum())
            forward_terms += self.expert.log_prob(x, y) - log_q_y
            forward_tokens += len(y)
        # E_valid[log q − log p_E] = KL(q restricted to valid, renormalised ‖ p_E) + log P(valid).
        if valid:
            reverse_terms -= valid * np.log(valid / rows)
        scalars = {
            "validity": valid / rows,
            "forward_kl": forward_terms / forward_tokens,
            "reverse_kl": reverse_terms / max(reverse_tokens, 1) if valid else float("nan"),
            "length": float(mask.sum() / rows),
        }
        if per_input > 1:
            scalars["self_bleu"] = self._self_bleu(policy_samples, per_input)
        if "entropies" in out:
            scalars["entropy"] = float((out["entropies"][:rows] * mask).sum() / mask.sum())
        texts = {
            "samples": "\n\n".join(
                f"input: {ids_to_text(self.inputs[i])}  \n"
                f"policy: {ids_to_text(policy_samples[i * per_input])}  \n"
                f"expert: {ids_to_text(self.expert_samples[i * self.num_samples])}"
                for i in range(min(len(self.inputs), 4))
            )
        }
        return scalars, texts


@dataclasses.dataclass(frozen=True)
class _TextExamples:
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


def _text_examples(ctx: EvalContext, split: str, max_examples: int, task) -> _TextExamples:
    lengths = feature_lengths(ctx.config.task)
    ds = task.get_dataset(lengths, split=split, shuffle=False, use_cached=False)
    examples = list(text_tasks.read(ds.take(max_examples or -1)))
    vocab = tasks.vocabulary(ctx.config.task)
    prefix = pipeline.prompt_prefix(is_decoder_only(ctx.model), vocab)

    def text(ex, feature):  # a task that tokenizes without keeping the text: decode it
        if f"{feature}_pretokenized" in ex:
            return ex[f"{feature}_pretokenized"].decode()
        return vocab.decode(ex[feature].tolist())

    return _TextExamples(
        task,
        vocab,
        inputs=[text(ex, "inputs") for ex in examples],
        targets=[text(ex, "targets") for ex in examples],
        examples=examples,
        target_ids=[ex["targets"].tolist() for ex in examples],
        prompts=[[*prefix, *ex["inputs"].tolist()] for ex in examples],
        width=len(prefix) + lengths["inputs"],
    )


def _scalars(values: Mapping, where: str) -> dict[str, float]:
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
        results |= _scalars(fn(targets, predictions), f"task {task.name}")
    for fn in task.score_metric_fns if scores is not None else ():
        results |= _scalars(fn(targets, scores), f"task {task.name}")
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
            _scalars(fn([t], [p]), f"task {task.name}")
            for t, p in zip(targets, predictions, strict=True)
        ]
        scores |= {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
    return scores


# config.evals.<name>.kind -> evaluator class
class DecodeEvaluator:
    """Decodes held-out inputs and scores them with the task's own `metric_fns` after its
    `postprocess_fn` (seqio's conventions; for a mixture, each sub-task's on its own
    examples, named `<task>/<metric>`), beside Self-BLEU, length and entropy.

    `method`: "greedy", "temperature" (with `temperature`, `top_k`, `top_p`, `num_decodes`
    samples per input: Self-BLEU when several) or "beam" (`num_beams`, `alpha`; the best beam
    is scored). `calculator=True` (greedy only) inserts the GSM8k calculator's results.
    Writes `workdir/predictions/<name>/<step>.jsonl` (input, target, predictions, scores;
    `task` for a mixture) and a few examples as text.
    """

    def __init__(
        self,
        ctx: EvalContext,
        name: str,
        *,
        split="validation",
        max_examples=64,
        method="greedy",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_decodes=1,
        num_beams=4,
        alpha=0.6,
        max_decode_len=0,
        calculator=False,
        seed=0,
    ):
        _check_method(name, method)
        if calculator and method != "greedy":
            raise ValueError(f"config.evals.{name}: calculator=True needs method='greedy'")
        self.ctx, self.name, self.method = ctx, name, method
        self.parts = _task_examples(ctx, name, split, max_examples)
        self.vocab = self.parts[0].vocab
        prompts = [p for part in self.parts for p in part.prompts]
        self.num_examples = len(prompts)
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        self.rows = rows = _round_up(max(ctx.config.eval_batch_size, 1), shards)
        self.prompt_feature = type(ctx.model).input_features[0]
        self.width = self.parts[0].width
        tokens = _prompt_array(prompts, self.width, _round_up(len(prompts), rows))
        self.batches = [tokens[i : i + rows] for i in range(0, len(tokens), rows)]
        self.target_width = feature_lengths(ctx.config.task)["targets"]
        max_len = max_decode_len or self.target_width
        if calculator:
            self._decode = lambda p, b, r: decoding.greedy_with_calculator(
                ctx.model, p, b, self.vocab, max_len=max_len, eos_id=ctx.eos_id
            )
        else:
            decode = decoding.make_decoder(
                ctx.model, method, max_len=max_len, eos_id=ctx.eos_id, temperature=temperature,
                top_k=top_k, top_p=top_p, num_decodes=num_decodes, num_beams=num_beams,
                alpha=alpha,
            )  # fmt: skip
            self._decode = jax.jit(decode, out_shardings=_replicated(ctx))
        self._token_log_probs = None
        if any(part.task.score_metric_fns for part in self.parts):
            self._token_log_probs = jax.jit(
                token_log_probs_fn(ctx.model, ctx.logits_chunk_size),
                out_shardings=_replicated(ctx),
            )
        self.rng = jax.random.PRNGKey(seed)

    def _decode_all(self, params):
        predictions, scores, entropies = [], [], []
        for i, tokens in enumerate(self.batches):
            batch = {self.prompt_feature: _global_array(tokens, self.ctx.mesh)}
            out = jax.device_get(self._decode(params, batch, jax.random.fold_in(self.rng, i)))
            for row in range(len(tokens)):
                lengths = out["lengths"][row]
                predictions.append(
                    [
                        self.vocab.decode(seq[:n].tolist())
                        for seq, n in zip(out["tokens"][row], lengths, strict=True)
                    ]
                )
                if "scores" in out:
                    scores.append(out["scores"][row].tolist())
                elif "log_probs" in out:
                    scores.append(out["log_probs"][row].sum(-1).tolist())
                else:  # the calculator's host loop: the number of insertions
                    scores.append([int(out["calls"][row])])
                if "entropies" in out:
                    entropies.append(out["entropies"][row].sum() / max(lengths.sum(), 1))
        n = self.num_examples
        return predictions[:n], scores[:n], entropies[:n]

    def target_scores(self, params, part: _TextExamples) -> list[float]:
        """Each target's log-likelihood under the model, teacher-forced (for the task's
        `fn(targets, scores)` metrics)."""
        out = []
        for start in range(0, len(part.prompts), self.rows):
            ys = part.target_ids[start : start + self.rows]
            batch, offsets = teacher_forced_rows(
                self.ctx.model,
                part.prompts[start : start + self.rows],
                ys,
                prompt_width=self.width,
                target_width=self.target_width,
                rows=self.rows,
            )
            batch = {k: _global_array(v, self.ctx.mesh) for k, v in batch.items()}
            log_p = jax.device_get(self._token_log_probs(params, batch))
            out += [
                float(log_p[r, o : o + len(y)].sum())
                for r, (o, y) in enumerate(zip(offsets, ys, strict=True))
            ]
        return out

    def __call__(self, params, step):
        predictions, scores, entropies = self._decode_all(params)
        results, start, records = {}, 0, []
        for part in self.parts:
            end = start + len(part.prompts)
            first = [p[0] for p in predictions[start:end]]
            target_scores = None
            if part.task.score_metric_fns:
                target_scores = self.target_scores(params, part)
            metrics = task_metrics(
                part.task,
                part.postprocess(part.targets, is_target=True),
                part.postprocess(first, is_target=False),
                target_scores,
            )
            prefix = f"{part.task.name}/" if len(self.parts) > 1 else ""
            results |= {prefix + k: v for k, v in metrics.items()}
            for i in range(start, end):
                x, y = part.inputs[i - start], part.targets[i - start]
                record = {
                    "input": x,
                    "target": y,
                    "predictions": predictions[i],
                    "scores": scores[i],
                }
                records.append(record | ({"task": part.task.name} if prefix else {}))
            start = end
        if len(predictions[0]) > 1 and self.method != "beam":
            results |= self_bleu(predictions)
        results["length"] = float(np.mean([len(p[0]) for p in predictions]))
        if entropies:
            results["entropy"] = float(np.mean(entropies))
        _write_predictions(self.ctx, self.name, step, records)
        texts = {
            "samples": "\n\n".join(
                f"input: {r['input'][:300]}  \ntarget: {r['target']}  \n"
                f"prediction: {r['predictions'][0]}"
                for r in records[:3]
            )
        }
        return results, texts


def _task_examples(ctx: EvalContext, name: str, split: str, max_examples: int):
    """The examples of each (sub-)task of the config's task that has `split`."""
    task = get_task(ctx.config.task)
    parts = [
        _text_examples(ctx, split, max_examples, sub)
        for sub in tasks.subtasks(task)
        if split in sub.splits
    ]
    empty = [part.task.name for part in parts if not part.prompts]
    if empty:
        logging.warning("config.evals.%s: sub-tasks with no %r examples: %s", name, split, empty)
    parts = [part for part in parts if part.prompts]
    skipped = [sub.name for sub in tasks.subtasks(task) if split not in sub.splits]
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


def rank_correlations(rewards, scores, groups, *, num_bootstrap=1000, seed=0) -> dict:
    """Spearman's ρ of `rewards` against `scores` (one per sample; NaN scores are left out),
    with `groups` naming each sample's input:

    - `spearman`: pooled over all samples;
    - `within_spearman`: the mean over inputs of ρ among that input's samples (how well the
      reward ranks the samples of one prompt); inputs with fewer than 2 samples, or whose
      rewards or scores are all equal, have no ρ and are left out (`within_inputs` counts
      those kept);
    each with a bootstrap standard error over inputs (`_se`; NaN with fewer than 2 inputs).
    """
    rewards, scores, groups = (np.asarray(a, np.float64) for a in (rewards, scores, groups))
    keep = np.isfinite(scores)
    rewards, scores, groups = rewards[keep], scores[keep], groups[keep]
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]

    def pooled(indices):
        rows = np.concatenate([members[i] for i in indices])
        if np.ptp(rewards[rows]) == 0 or np.ptp(scores[rows]) == 0:
            return np.nan
        return scipy.stats.spearmanr(rewards[rows], scores[rows]).statistic

    within = np.array(
        [
            scipy.stats.spearmanr(rewards[m], scores[m]).statistic
            for m in members
            if len(m) > 1 and np.ptp(rewards[m]) > 0 and np.ptp(scores[m]) > 0
        ]
    )
    out = {
        "spearman": pooled(range(len(ids))) if len(ids) else np.nan,
        "within_spearman": float(np.mean(within)) if len(within) else np.nan,
        "within_inputs": len(within),
    }
    rng = np.random.default_rng(seed)
    for name, data, statistic in (
        ("spearman", np.arange(len(ids)), pooled),
        ("within_spearman", within, np.mean),
    ):
        se = np.nan
        if len(data) > 1 and np.isfinite(out[name]):
            result = scipy.stats.bootstrap(
                (data,),
                statistic,
                n_resamples=num_bootstrap,
                vectorized=False,
                method="percentile",
                rng=rng,
            )
            se = float(result.standard_error)
        out[name] = float(out[name])
        out[f"{name}_se"] = se
    return out


class RewardEvaluator:
    """IQLearn's extracted reward R(y) = Σ_t r_t of policy samples (r_t = δ_t, the loss's
    own TD residual, `make_reward_fn`) against a per-sample task score (PAPER.md §5, claim 5).

    For `num_examples` held-out inputs, `num_samples` samples each at `temperature`, scored
    by the task: for the synthetic expert `validity` (1 if p_E(y|x) > 0) and
    `expert_log_prob` (log p_E(y|x) per token; valid samples only), for a text task its
    metrics per sample (`metrics.text.PER_EXAMPLE`). Scalars per score: `spearman_<score>`
    and `within_spearman_<score>` with their bootstrap standard errors
    (`rank_correlations`), `mean_<score>`; the same for the policy's own sequence
    log-probability log π(y) as the ranker (`logprob_spearman_<score>`, ...), the baseline;
    and `reward_mean`, `reward_per_token`, `length`.
    `gamma`: the discount in δ_t (0: `config.loss.gamma`, else 0.99). Writes every sample
    with its reward, per-token rewards and scores to
    `workdir/predictions/<name>/<step>.jsonl`.
    """

    def __init__(
        self,
        ctx: EvalContext,
        name: str,
        *,
        num_examples=64,
        num_samples=8,
        temperature=1.0,
        split="validation",
        gamma=0.0,
        max_decode_len=0,
        num_bootstrap=1000,
        seed=0,
    ):
        self.ctx, self.name, self.num_samples = ctx, name, num_samples
        self.num_bootstrap, self.seed = num_bootstrap, seed
        self.gamma = gamma or ctx.config.loss.get("gamma", DEFAULT_GAMMA)
        if tasks.is_synthetic_expert(ctx.config.task):
            self.expert = expert_from_config(ctx.config.task)
            self.inputs, prompts, self.width = _expert_prompts(
                ctx, self.expert, split, num_examples
            )
            self.max_len = max_decode_len or self.expert.spec.max_target_len
            self.decode_text = ids_to_text
        else:
            self.expert = None
            parts = _task_examples(ctx, name, split, num_examples)
            if len(parts) > 1:
                raise ValueError(
                    f"config.evals.{name}: the reward evaluator scores one task's samples; "
                    f"{ctx.config.task.name!r} is a mixture of {[p.task.name for p in parts]}: "
                    "evaluate with config.task.name set to one of them"
                )
            self.examples = examples = parts[0]
            self.inputs, self.targets = examples.inputs, examples.targets
            prompts, self.width = examples.prompts, examples.width
            self.max_len = max_decode_len or feature_lengths(ctx.config.task)["targets"]
            self.decode_text = lambda ids: examples.vocab.decode([int(t) for t in ids])
        self.prompts = prompts
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        # Inputs per call: eval_batch_size rows of samples (a multiple of the mesh's shards).
        self.chunk = _round_up(max(ctx.config.eval_batch_size // num_samples, 1), shards)
        decode = decoding.make_decoder(
            ctx.model,
            "temperature",
            max_len=self.max_len,
            eos_id=ctx.eos_id,
            temperature=temperature,
            num_decodes=num_samples,
        )
        replicated = sharding.replicated(ctx.mesh)
        self._decode = jax.jit(decode, out_shardings=replicated)
        reward_fn = make_reward_fn(
            ctx.model,
            gamma=self.gamma,
            eos_id=ctx.eos_id,
            logits_chunk_size=ctx.logits_chunk_size,
        )
        self._rewards = jax.jit(reward_fn, out_shardings=replicated)
        self._rng = jax.random.PRNGKey(seed)

    def samples(self, params) -> list[dict]:
        """Every sample: input index, tokens, R, per-token rewards and log π(y)."""
        out_rows = []
        for start in range(0, len(self.prompts), self.chunk):
            prompts = self.prompts[start : start + self.chunk]
            tokens = _prompt_array(prompts, self.width, self.chunk)
            batch = {type(self.ctx.model).input_features[0]: _global_array(tokens, self.ctx.mesh)}
            rng = jax.random.fold_in(self._rng, start)
            out = jax.device_get(self._decode(params, batch, rng))
            pairs, log_probs = [], []
            for i in range(len(prompts)):
                for n in range(self.num_samples):
                    length = out["lengths"][i, n]
                    pairs.append((start + i, out["tokens"][i, n, :length].tolist()))
                    log_probs.append(float(out["log_probs"][i, n, :length].sum()))
            scored, offsets = teacher_forced_rows(
                self.ctx.model,
                [self.prompts[i] for i, _ in pairs],
                [y for _, y in pairs],
                prompt_width=self.width,
                target_width=self.max_len,
                rows=self.chunk * self.num_samples,
            )
            scored = {k: _global_array(v, self.ctx.mesh) for k, v in scored.items()}
            rewards = jax.device_get(self._rewards(params, scored))
            for row, ((index, y), offset) in enumerate(zip(pairs, offsets, strict=True)):
                token_rewards = rewards[row, offset : offset + len(y)].astype(np.float64)
                out_rows.append(
                    {
                        "input_index": index,
                        "tokens": y,
                        "reward": float(token_rewards.sum()),
                        "token_rewards": token_rewards.tolist(),
                        "log_prob": log_probs[row],
                    }
                )
        return out_rows

    def _scores(self, samples) -> dict[str, list[float]]:
        """Per-sample scores, NaN where a score does not exist."""
        if self.expert is not None:
            log_p = [
                self.expert.log_prob(self.inputs[s["input_index"]], s["tokens"]) / len(s["tokens"])
                for s in samples
            ]
            return {
                "validity": [float(np.isfinite(lp)) for lp in log_p],
                "expert_log_prob": [lp if np.isfinite(lp) else np.nan for lp in log_p],
            }
        task, examples = self.examples.task, self.examples.examples
        pairs = [
            (
                task.postprocess_fn(
                    s["target"], example=examples[s["input_index"]], is_target=True
                ),
                task.postprocess_fn(
                    s["prediction"], example=examples[s["input_index"]], is_target=False
                ),
            )
            for s in samples
        ]
        return per_example_metrics(task, [t for t, _ in pairs], [p for _, p in pairs])

    def __call__(self, params, step):
        samples = self.samples(params)
        for s in samples:
            x = self.inputs[s["input_index"]]
            if self.expert is None:
                s |= {"input": x, "target": self.targets[s["input_index"]]}
            else:
                s["input"] = ids_to_text(x)
            s["prediction"] = self.decode_text(s["tokens"])
        scores = self._scores(samples)
        rewards = [s["reward"] for s in samples]
        groups = [s["input_index"] for s in samples]
        lengths = [len(s["tokens"]) for s in samples]
        scalars = {
            "reward_mean": float(np.mean(rewards)),
            "reward_per_token": float(np.sum(rewards) / np.sum(lengths)),
            "length": float(np.mean(lengths)),
        }
        # The policy's own log π(y) ranks samples too: the baseline R has to beat (for any
        # policy R = log π(y) + V_0 + (1 − γ) Σ_{t≥1} V_t: within an input V_0 is shared).
        rankers = {"": rewards, "logprob_": [s["log_prob"] for s in samples]}
        for score, values in scores.items():
            finite = np.asarray(values)[np.isfinite(values)]
            scalars[f"mean_{score}"] = float(np.mean(finite)) if len(finite) else float("nan")
            for prefix, ranker in rankers.items():
                stats = rank_correlations(
                    ranker, values, groups, num_bootstrap=self.num_bootstrap, seed=self.seed
                )
                scalars |= {
                    f"{prefix}{k.replace('spearman', f'spearman_{score}', 1)}": v
                    for k, v in stats.items()
                    if k != "within_inputs"
                }
                if not prefix:
                    scalars[f"within_inputs_{score}"] = stats["within_inputs"]
        records = (
            s | {"scores": {k: None if np.isnan(v[i]) else v[i] for k, v in scores.items()}}
            for i, s in enumerate(samples)
        )
        _write_predictions(self.ctx, self.name, step, records)
        return scalars, {}


def _write_predictions(ctx: EvalContext, name: str, step: int, records) -> None:
    """`workdir/predictions/<name>/<step>.jsonl`, one record a line (process 0; none without
    a workdir)."""
    if ctx.workdir and jax.process_index() == 0:
        lines = "".join(json.dumps(record) + "\n" for record in records)
        files.write_text(files.path(ctx.workdir, "predictions", name, f"{step}.jsonl"), lines)


def _replicated(ctx: EvalContext):
    return sharding.replicated(ctx.mesh)


EVALUATORS = {
    "loss": LossEvaluator,
    "synthetic_expert": ExpertEvaluator,
    "decode": DecodeEvaluator,
    "reward": RewardEvaluator,
}


def make_evaluators(ctx: EvalContext) -> dict[str, tuple[int, object]]:
    """name -> (every, evaluator) for each entry of `config.evals`."""
    evaluators = {}
    for name, eval_config in ctx.config.evals.items():
        fields = dict(eval_config)
        kind = fields.pop("kind", None)
        every = int(fields.pop("every", 0))  # 0: only at the end of training
        if kind not in EVALUATORS:
            raise ValueError(
                f"config.evals.{name}.kind={kind!r} is not an evaluator; "
                f"allowed: {sorted(EVALUATORS)}"
            )
        allowed = set(inspect.signature(EVALUATORS[kind]).parameters) - {"ctx", "name"}
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(
                f"config.evals.{name}: unknown fields {unknown} for kind {kind!r}; "
                f"allowed: {sorted(allowed | {'kind', 'every'})}"
            )
        try:
            evaluators[name] = (every, EVALUATORS[kind](ctx, name, **fields))
        except TypeError as e:
            raise ValueError(f"config.evals.{name}: {e}") from None
    return evaluators

"""Evaluators, picked from `config.evals` (name -> {kind, every, ...}) through `EVALUATORS`.

An evaluator is built once with an `EvalContext` and its own config fields, and called as
`evaluator(params, step) -> (scalars, texts)`; the trainer writes them under `eval/<name>/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from irl_lm import decoding, files, sharding
from irl_lm.data import pipeline, text_tasks
from irl_lm.data.synthetic import EOS_ID
from irl_lm.data.tasks import expert_from_config, feature_lengths, get_task
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


class LossEvaluator:
    """The training loss and its terms, teacher-forced on a held-out split."""

    def __init__(self, ctx: EvalContext, name: str, *, split="validation", max_examples=0):
        del name
        self.ctx, self.split, self.max_examples = ctx, split, max_examples

        def summed_metrics(params, batch):
            logits = ctx.model.apply({"params": params}, batch, deterministic=True)
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


class ExpertEvaluator:
    """Policy vs the synthetic expert, from samples and exact expert log-probabilities.

    Per input, `num_samples` policy samples (at `temperature`) and as many expert samples:
    validity (fraction of policy samples with p_E > 0, truncated samples count as invalid),
    reverse KL per token of the policy restricted to valid sequences and renormalised
    (the true reverse KL is infinite once any invalid sequence has mass; at temperature 1),
    forward KL per token on the expert samples, Self-BLEU, mean per-token entropy and length.
    `reference()` gives the expert's own row.
    """

    def __init__(
        self,
        ctx: EvalContext,
        name: str,
        *,
        num_examples=64,
        num_samples=4,
        temperature=1.0,
        split="validation",
        seed=0,
    ):
        del name
        self.ctx, self.num_samples, self.temperature = ctx, num_samples, temperature
        self.expert = expert_from_config(ctx.config.task)
        spec = self.expert.spec
        self.max_len = spec.max_target_len
        examples = [self.expert.example(split, i) for i in range(num_examples)]
        self.inputs = [e["inputs"] for e in examples]
        # Prompts as training reads them: x + EOS (T5's encoder), BOS + x + EOS (decoder-only).
        decoder_only = is_decoder_only(ctx.model)
        vocab = get_task(ctx.config.task).output_features["targets"].vocabulary
        prefix = pipeline.prompt_prefix(ctx.model, vocab)
        prompts = [[*prefix, *x, EOS_ID] for x in self.inputs]
        # Policy samples: num_samples per input (row = input * num_samples + sample); expert
        # samples in the same rows. Both padded to a multiple of the batch-sharded mesh size.
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        rows = num_examples * num_samples
        self.rows = rows
        width = len(prefix) + spec.max_input_len_with_eos
        policy_prompts = np.zeros((_round_up(num_examples, shards), width), np.int32)
        for i, prompt in enumerate(prompts):
            policy_prompts[i, : len(prompt)] = prompt
        rng = np.random.default_rng([seed, 7])
        self.expert_samples = [
            self.expert.sample(self.inputs[row // num_samples], rng) for row in range(rows)
        ]
        # Expert samples teacher-forced: T5 reads the prompt with its encoder and y with its
        # decoder; a decoder-only model reads prompt + y in one row, y's log-probabilities
        # starting at `self.offsets[row]`.
        padded = _round_up(rows, shards)
        feature = type(ctx.model).input_features[0]
        if decoder_only:
            targets = np.zeros((padded, width + self.max_len - 1), np.int32)
            decoder_inputs = np.zeros_like(targets)
            self.offsets = [len(prompts[row // num_samples]) - 1 for row in range(rows)]
            for row, y in enumerate(self.expert_samples):
                sequence = [*prompts[row // num_samples], *y]
                decoder_inputs[row, : len(sequence) - 1] = sequence[:-1]
                targets[row, : len(sequence) - 1] = sequence[1:]
            expert_batch = {}
        else:
            targets = np.zeros((padded, self.max_len), np.int32)
            for row, y in enumerate(self.expert_samples):
                targets[row, : len(y)] = y
            decoder_inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
            self.offsets = [0] * rows
            source_rows = np.minimum(np.arange(padded) // num_samples, num_examples - 1)
            expert_batch = {feature: policy_prompts[source_rows]}
        self._policy_batch = {feature: _global_array(policy_prompts, ctx.mesh)}
        expert_batch |= {"decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets}
        self._expert_batch = {k: _global_array(v, ctx.mesh) for k, v in expert_batch.items()}
        replicated = sharding.replicated(ctx.mesh)
        sample = functools.partial(
            decoding.sample, ctx.model, max_len=self.max_len, num_decodes=num_samples,
            eos_id=ctx.eos_id,
        )  # fmt: skip

        # [E, N, T] -> rows [E * N, T] in the order of the expert rows.
        def flat(*args, **kwargs):
            out = sample(*args, **kwargs)
            del out["num_steps"]
            return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), out)

        self._sample = jax.jit(flat, out_shardings=replicated)
        self._token_log_probs = jax.jit(self._teacher_forced_log_probs, out_shardings=replicated)
        self._rng = jax.random.PRNGKey(seed)

    def _teacher_forced_log_probs(self, params, batch):
        logits = self.ctx.model.apply({"params": params}, batch, deterministic=True)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
        targets = batch["decoder_target_tokens"]
        return jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]

    def reference(self) -> dict[str, float]:
        """The expert's own row: exact KLs of 0, validity 1."""
        entropies = [self.expert.entropies(self.inputs[i // self.num_samples], y)
                     for i, y in enumerate(self.expert_samples)]  # fmt: skip
        return {
            "validity": 1.0,
            "forward_kl": 0.0,
            "reverse_kl": 0.0,
            "self_bleu": self._self_bleu(self.expert_samples),
            "entropy": float(np.mean(np.concatenate(entropies))),
            "length": float(np.mean([len(y) for y in self.expert_samples])),
        }

    def _self_bleu(self, samples) -> float:
        texts = [ids_to_text(y) for y in samples]
        n = self.num_samples
        return self_bleu([texts[i : i + n] for i in range(0, len(texts), n)])["self_bleu"]

    def __call__(self, params, step):
        del step  # the same rng every time: differences between evals come from the policy
        out = jax.device_get(
            self._sample(params, self._policy_batch, self._rng, temperature=self.temperature)
        )
        policy_samples, valid, reverse_terms, reverse_tokens = [], 0, 0.0, 0
        for row in range(self.rows):
            length = int(out["lengths"][row])
            y = out["tokens"][row, :length]
            policy_samples.append(y)
            log_p_expert = self.expert.log_prob(self.inputs[row // self.num_samples], y)
            if np.isfinite(log_p_expert):
                valid += 1
                reverse_terms += float(out["log_probs"][row, :length].sum()) - log_p_expert
                reverse_tokens += length
        mask = out["mask"][: self.rows]
        log_q = jax.device_get(self._token_log_probs(params, self._expert_batch))
        forward_terms, forward_tokens = 0.0, 0
        for row, y in enumerate(self.expert_samples):
            x, start = self.inputs[row // self.num_samples], self.offsets[row]
            log_q_y = float(log_q[row, start : start + len(y)].sum())
            forward_terms += self.expert.log_prob(x, y) - log_q_y
            forward_tokens += len(y)
        # E_valid[log π − log p_E] = KL(π restricted to valid, renormalised ‖ p_E) + log P(valid).
        if valid:
            reverse_terms -= valid * np.log(valid / self.rows)
        scalars = {
            "validity": valid / self.rows,
            "forward_kl": forward_terms / forward_tokens,
            "reverse_kl": reverse_terms / max(reverse_tokens, 1) if valid else float("nan"),
            "self_bleu": self._self_bleu(policy_samples),
            "entropy": float((out["entropies"][: self.rows] * mask).sum() / mask.sum()),
            "length": float(mask.sum() / self.rows),
        }
        texts = {
            "samples": "\n\n".join(
                f"input: {ids_to_text(self.inputs[i // self.num_samples])}  \n"
                f"policy: {ids_to_text(policy_samples[i])}  \n"
                f"expert: {ids_to_text(self.expert_samples[i])}"
                for i in range(0, min(self.rows, 4 * self.num_samples), self.num_samples)
            )
        }
        return scalars, texts


# config.evals.<name>.kind -> evaluator class
class DecodeEvaluator:
    """Decodes held-out inputs and scores them with the task's metrics (`TextTask.metrics`).

    `method`: "greedy", "temperature" (with `temperature`, `top_k`, `top_p`, `num_decodes`
    samples per input: Self-BLEU when several) or "beam" (`num_beams`, `alpha`; the best beam
    is scored). `calculator=True` (greedy only) inserts the GSM8k calculator's results.
    Writes `workdir/predictions/<name>/<step>.jsonl` (input, target, predictions, scores)
    and a few examples as text.
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
        if calculator and method != "greedy":
            raise ValueError("calculator=True needs method='greedy'")
        task = get_task(ctx.config.task)
        self.ctx, self.name, self.method = ctx, name, method
        self.metrics = text_tasks.TEXT_TASKS[ctx.config.task.name].metrics
        self.vocab = task.output_features["targets"].vocabulary
        lengths = feature_lengths(ctx.config.task)
        examples = list(
            task.get_dataset(lengths, split=split, shuffle=False, use_cached=False)
            .take(max_examples or -1)
            .as_numpy_iterator()
        )
        self.inputs = [ex["inputs_pretokenized"].decode() for ex in examples]
        self.targets = [ex["targets_pretokenized"].decode() for ex in examples]
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        rows = _round_up(max(ctx.config.eval_batch_size, 1), shards)
        # The prompt as training saw it: encoder inputs (T5), or BOS + inputs (decoder-only).
        prefix = pipeline.prompt_prefix(ctx.model, self.vocab)
        self.prompt_feature = type(ctx.model).input_features[0]
        width = len(prefix) + lengths["inputs"]
        tokens = np.zeros((_round_up(len(examples), rows), width), np.int32)
        for i, ex in enumerate(examples):
            tokens[i, : len(prefix) + len(ex["inputs"])] = [*prefix, *ex["inputs"]]
        self.batches = [tokens[i : i + rows] for i in range(0, len(tokens), rows)]
        max_len = max_decode_len or lengths["targets"]
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
        self.rng = jax.random.PRNGKey(seed)

    def __call__(self, params, step):
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
        predictions, scores = predictions[: len(self.targets)], scores[: len(self.targets)]
        first = [p[0] for p in predictions]
        results = {}
        for metric in self.metrics:
            results |= getattr(text_metrics, metric)(self.targets, first)
        if len(predictions[0]) > 1 and self.method != "beam":
            results |= self_bleu(predictions)
        results["length"] = float(np.mean([len(p) for p in first]))
        if entropies:
            results["entropy"] = float(np.mean(entropies[: len(self.targets)]))
        if self.ctx.workdir and jax.process_index() == 0:
            rows = zip(self.inputs, self.targets, predictions, scores, strict=True)
            lines = [
                json.dumps({"input": x, "target": y, "predictions": p, "scores": s}) + "\n"
                for x, y, p, s in rows
            ]
            path = files.path(self.ctx.workdir, "predictions", self.name, f"{step}.jsonl")
            files.write_text(path, "".join(lines))
        texts = {
            "samples": "\n\n".join(
                f"input: {x[:300]}  \ntarget: {y}  \nprediction: {p[0]}"
                for x, y, p in list(zip(self.inputs, self.targets, predictions, strict=True))[:3]
            )
        }
        return results, texts


def _replicated(ctx: EvalContext):
    return sharding.replicated(ctx.mesh)


EVALUATORS = {
    "loss": LossEvaluator,
    "synthetic_expert": ExpertEvaluator,
    "decode": DecodeEvaluator,
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
        try:
            evaluators[name] = (every, EVALUATORS[kind](ctx, name, **fields))
        except TypeError as e:
            raise ValueError(f"config.evals.{name}: {e}") from None
    return evaluators

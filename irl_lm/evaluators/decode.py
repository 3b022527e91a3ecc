"""The decode evaluator (`kind="decode"`): the task's own metrics on decoded held-out inputs."""

from __future__ import annotations

import jax
import numpy as np

from irl_lm import decoding, sharding
from irl_lm.data.calculator import insertion
from irl_lm.evaluators.common import (
    EvalContext,
    TextExamples,
    check_method,
    global_array,
    prompt_array,
    round_up,
    task_examples,
    task_metrics,
    teacher_forced_rows,
    token_log_probs_fn,
    write_predictions,
)
from irl_lm.metrics import self_bleu


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
        check_method(name, method)
        if calculator and method != "greedy":
            raise ValueError(f"config.evals.{name}: calculator=True needs method='greedy'")
        self.ctx, self.name, self.method = ctx, name, method
        self.parts = task_examples(ctx, name, split, max_examples)
        self.vocab = self.parts[0].vocab
        prompts = [p for part in self.parts for p in part.prompts]
        self.num_examples = len(prompts)
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        self.rows = rows = round_up(max(ctx.eval_batch_size, 1), shards)
        self.prompt_feature = type(ctx.model).input_features[0]
        self.width = self.parts[0].width
        tokens = prompt_array(prompts, self.width, round_up(len(prompts), rows))
        self.batches = [tokens[i : i + rows] for i in range(0, len(tokens), rows)]
        self.target_width = ctx.task.lengths["targets"]
        max_len = max_decode_len or self.target_width
        if calculator:
            self._decode = lambda p, b, r: decoding.greedy_with_insertions(
                ctx.model,
                p,
                b,
                self.vocab,
                insertion,
                max_len=max_len,
                eos_id=ctx.eos_id,
                mesh=ctx.mesh,
            )
        else:
            decode = decoding.make_decoder(
                ctx.model,
                method,
                max_len=max_len,
                eos_id=ctx.eos_id,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                num_decodes=num_decodes,
                num_beams=num_beams,
                alpha=alpha,
            )
            self._decode = jax.jit(decode, out_shardings=sharding.replicated(ctx.mesh))
        self._token_log_probs = None
        if any(part.task.score_metric_fns for part in self.parts):
            self._token_log_probs = jax.jit(
                token_log_probs_fn(ctx.model, ctx.logits_chunk_size),
                out_shardings=sharding.replicated(ctx.mesh),
            )
        self.rng = jax.random.PRNGKey(seed)

    def _decode_all(self, params):
        predictions, scores, entropies = [], [], []
        for i, tokens in enumerate(self.batches):
            batch = {self.prompt_feature: global_array(tokens, self.ctx.mesh)}
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

    def target_scores(self, params, part: TextExamples) -> list[float]:
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
            batch = {k: global_array(v, self.ctx.mesh) for k, v in batch.items()}
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
        write_predictions(self.ctx, self.name, step, records)
        texts = {
            "samples": "\n\n".join(
                f"input: {r['input'][:300]}  \ntarget: {r['target']}  \n"
                f"prediction: {r['predictions'][0]}"
                for r in records[:3]
            )
        }
        return results, texts

"""The held-out loss evaluator (`kind="loss"`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irl_lm import sharding
from irl_lm.data import pipeline
from irl_lm.evaluators.common import EvalContext
from irl_lm.models import is_decoder_only, model_logits


class LossEvaluator:
    """The training loss and its terms, teacher-forced on a held-out split."""

    def __init__(self, ctx: EvalContext, name: str, *, split="validation", max_examples=0):
        del name
        self.ctx, self.split, self.max_examples = ctx, split, max_examples

        def summed_metrics(params, batch):
            chunk = ctx.logits_chunk_size
            logits = model_logits(ctx.model, params, batch, logits_chunk_size=chunk)
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
        batches = pipeline.eval_batches(
            self.ctx.task,
            self.split,
            self.ctx.eval_batch_size,
            self.max_examples,
            decoder_only=is_decoder_only(self.ctx.model),
            seed=self.ctx.seed,
        )
        for batch, _ in batches:
            sums = jax.device_get(
                self._step(params, sharding.shard_host_batch(batch, self.ctx.mesh))
            )
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        num_tokens = max(totals.pop("num_tokens", 0.0), 1.0)
        return {k: v / num_tokens for k, v in totals.items()}, {}

"""The synthetic expert evaluator (`kind="synthetic_expert"`): exact KLs, validity, diversity."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from irl_lm import decoding, sharding
from irl_lm.evaluators.common import (
    EvalContext,
    check_method,
    expert_prompts,
    global_array,
    prompt_array,
    round_up,
    teacher_forced_rows,
    token_log_probs_fn,
)
from irl_lm.metrics import ids_to_text, self_bleu


class ExpertEvaluator:
    """Policy vs the synthetic expert, from samples and exact expert log-probabilities.

    Per input, `num_samples` policy outputs and as many expert samples. `method`:
    "temperature" (samples at `temperature`), or "greedy" / "beam" (`num_beams`, the best
    beam; one output per input, so no Self-BLEU). Validity (fraction of outputs with
    p_E > 0, truncated ones count as invalid: 1 - validity is the share outside the
    expert's support); reverse KL per token of the decoding distribution q
    (temperature-scaled; a point mass for greedy and beam) restricted to valid sequences and
    renormalised, +inf when no output is valid (the true reverse KL is infinite once any
    invalid sequence has mass); forward KL per token of the policy on the expert samples;
    Self-BLEU; mean per-token entropy of the policy (not for beam) and length. `reference()`
    gives the expert's own row.
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
        check_method(name, method)
        self.ctx, self.num_samples = ctx, num_samples
        self.outputs_per_input = num_samples if method == "temperature" else 1
        self.expert = ctx.task.expert
        if self.expert is None:
            raise ValueError(
                f"config.evals.{name}: kind 'synthetic_expert' needs the synthetic expert's "
                f"task; config.task.name is {ctx.task.name!r}"
            )
        self.max_len = self.expert.spec.max_target_len
        self.inputs, prompts, width = expert_prompts(ctx, self.expert, split, num_examples)
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        self.rows = num_examples * num_samples
        policy_prompts = prompt_array(prompts, width, round_up(num_examples, shards))
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
            rows=round_up(self.rows, shards),
        )
        self._policy_batch = {
            type(ctx.model).input_features[0]: global_array(policy_prompts, ctx.mesh)
        }
        self._expert_batch = {k: global_array(v, ctx.mesh) for k, v in expert_batch.items()}
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
        entropies = [
            self.expert.entropies(self.inputs[i // self.num_samples], y)
            for i, y in enumerate(self.expert_samples)
        ]
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
        # No valid output (a diverged policy): all of q's mass is outside p_E's support.
        reverse_kl = math.inf
        if valid:
            reverse_kl = (reverse_terms - valid * np.log(valid / rows)) / reverse_tokens
        scalars = {
            "validity": valid / rows,
            "forward_kl": forward_terms / forward_tokens,
            "reverse_kl": float(reverse_kl),
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

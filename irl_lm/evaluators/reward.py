"""The extracted-reward evaluator (`kind="reward"`): IQLearn's R(y) against task scores."""

from __future__ import annotations

import jax
import numpy as np
import scipy.stats

from irl_lm import decoding, sharding
from irl_lm.evaluators.common import (
    EvalContext,
    expert_prompts,
    global_array,
    make_reward_fn,
    per_example_metrics,
    prompt_array,
    round_up,
    task_examples,
    teacher_forced_rows,
    write_predictions,
)
from irl_lm.metrics import ids_to_text


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
        self.gamma = gamma or ctx.gamma
        if ctx.task.expert is not None:
            self.expert = ctx.task.expert
            self.inputs, prompts, self.width = expert_prompts(ctx, self.expert, split, num_examples)
            self.max_len = max_decode_len or self.expert.spec.max_target_len
            self.decode_text = ids_to_text
        else:
            self.expert = None
            parts = task_examples(ctx, name, split, num_examples)
            if len(parts) > 1:
                raise ValueError(
                    f"config.evals.{name}: the reward evaluator scores one task's samples; "
                    f"{ctx.task.name!r} is a mixture of {[p.task.name for p in parts]}: "
                    "evaluate with config.task.name set to one of them"
                )
            self.examples = examples = parts[0]
            self.inputs, self.targets = examples.inputs, examples.targets
            prompts, self.width = examples.prompts, examples.width
            self.max_len = max_decode_len or ctx.task.lengths["targets"]
            self.decode_text = lambda ids: examples.vocab.decode([int(t) for t in ids])
        self.prompts = prompts
        shards = ctx.mesh.shape["data"] * ctx.mesh.shape["fsdp"]
        # Inputs per call: eval_batch_size rows of samples (a multiple of the mesh's shards).
        self.chunk = round_up(max(ctx.eval_batch_size // num_samples, 1), shards)
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
            tokens = prompt_array(prompts, self.width, self.chunk)
            batch = {type(self.ctx.model).input_features[0]: global_array(tokens, self.ctx.mesh)}
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
            scored = {k: global_array(v, self.ctx.mesh) for k, v in scored.items()}
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
        write_predictions(self.ctx, self.name, step, records)
        return scalars, {}

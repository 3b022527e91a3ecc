"""The extracted-reward evaluator (`kind="reward"`): IQLearn's R(y) against task scores."""

from __future__ import annotations

import jax
import numpy as np
import scipy.special
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
    token_log_probs_fn,
    write_predictions,
)
from irl_lm.losses.iqlearn import RANKERS
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


def _ranked_lowest_if_nan(values) -> np.ndarray:
    """A NaN ranker value (a diverged model's reward, say) ranks below every number."""
    values = np.asarray(values, np.float64)
    return np.where(np.isnan(values), -np.inf, values)


def best_of_n_weights(values, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-of-n from a pool of M ≥ n samples of one input (y_j ~ π) ranked by `values`:

    - `weights[j]`: the probability that sample j is kept when n of the M are drawn at
      random without replacement and the highest value is kept (ties broken at random).
      Σ_j weights[j] g(y_j) is an unbiased estimate of E[g] under the best-of-n
      distribution q_n (a U-statistic over all n-subsets of the pool);
    - `log_ratios[j]`: an estimate of log q_n(y_j)/π(y_j). Without ties q_n = π · n F^{n−1}
      (F: the ranker's CDF under π) and, at the j-th lowest of M, E[log F] = ψ(j) − ψ(M+1),
      which makes Σ_j weights[j] log_ratios[j] an unbiased estimate of KL(q_n ‖ π) =
      log n − (n−1)/n. A value that repeats (one sequence sampled twice, an atom of π) has
      ratio (F_hi^n − F_lo^n)/(F_hi − F_lo), plugged in from the pool.
    """
    values = _ranked_lowest_if_nan(values)
    m = len(values)
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} needs 1 ≤ n ≤ the {m} samples of an input")
    order = np.argsort(values, kind="stable")
    position = np.arange(1, m + 1)  # ascending
    w_sorted = scipy.special.comb(position - 1, n - 1) / scipy.special.comb(m, n)
    l_sorted = np.log(n) + (n - 1) * (
        scipy.special.digamma(position) - scipy.special.digamma(m + 1)
    )
    _, first, group, count = np.unique(
        values[order], return_index=True, return_inverse=True, return_counts=True
    )
    w_group = np.bincount(group, weights=w_sorted) / count
    lo, hi = first / m, (first + count) / m
    l_group = np.log((hi**n - lo**n) / (hi - lo))
    tied = count[group] > 1
    weights, log_ratios = np.empty(m), np.empty(m)
    weights[order] = w_group[group]
    log_ratios[order] = np.where(tied, l_group[group], l_sorted)
    return weights, log_ratios


def best_of_n_log_ratio(values, n: int, query: float) -> float:
    """An estimate of log q_n(y)/π(y) (`best_of_n_weights`) at a y that is not one of the
    pool's samples (an expert sample, for the forward KL), ranked `query`: with c of the M
    pool values below it, F ~ Beta(c + 1, M − c + 1) and E[log F] = ψ(c + 1) − ψ(M + 2); a
    value the pool holds too is an atom (plug-in, as there). The estimate averages to the
    exact E_π[log q_n/π] = log n − (n − 1) over a query drawn from π; at a y ranked below
    the whole pool it cannot go below log n + (n − 1)(ψ(1) − ψ(M + 2)) (−3.4 (n − 1) at
    M = 16), so where π puts little mass on what the expert emits, a forward KL built on it
    is underestimated at large n."""
    values, query = _ranked_lowest_if_nan(values), _ranked_lowest_if_nan([query])[0]
    m = len(values)
    below, equal = int(np.sum(values < query)), int(np.sum(values == query))
    if equal:
        lo, hi = below / m, (below + equal) / m
        return float(np.log((hi**n - lo**n) / (hi - lo)))
    return float(
        np.log(n) + (n - 1) * (scipy.special.digamma(below + 1) - scipy.special.digamma(m + 2))
    )


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

    `best_of` (e.g. (1, 2, 4, 8, 16), each ≤ `num_samples`): best-of-N reranking with the
    samples as the pool (`best_of_n_weights`: every N-subset of an input's samples, not one
    draw). For each N and each ranker (`RANKERS`: R, log π, log π per token; and `random`)
    `best_of_<N>_<ranker>_<score>`, the mean score of the kept sample (over kept samples
    that have the score); for the synthetic expert at temperature 1 also
    `best_of_<N>_<ranker>_reverse_kl` and `_forward_kl`, per token, estimated as the
    synthetic_expert evaluator defines them (reverse: the kept samples' distribution q_N
    restricted to valid outputs and renormalised; forward: on `num_samples` expert samples
    per input) with log q_N = log π + the estimated log q_N/π. `random` keeps a sample at
    random: q_N = π, the policy's own KLs.
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
        best_of=(),
        seed=0,
    ):
        self.best_of = tuple(int(n) for n in best_of)
        if any(not 1 <= n <= num_samples for n in self.best_of):
            raise ValueError(
                f"config.evals.{name}.best_of={best_of}: each N must lie in 1..num_samples "
                f"({num_samples}); raise num_samples or drop the larger N"
            )
        self.ctx, self.name, self.num_samples = ctx, name, num_samples
        self.num_bootstrap, self.seed = num_bootstrap, seed
        expert = ctx.task.expert
        if self.best_of and expert and 0 < max_decode_len < expert.spec.max_target_len:
            raise ValueError(
                f"config.evals.{name}: best_of scores the expert's own samples, up to "
                f"{expert.spec.max_target_len} tokens; max_decode_len={max_decode_len} is "
                "shorter: leave it 0"
            )
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
        # The forward KL of best-of-N needs expert samples, scored by π and R.
        self.expert_samples = []
        if self.best_of and self.expert is not None and temperature == 1.0:
            self._log_probs = jax.jit(
                token_log_probs_fn(ctx.model, ctx.logits_chunk_size), out_shardings=replicated
            )
            rng = np.random.default_rng([seed, 7])
            self.expert_samples = [
                (i, self.expert.sample(x, rng))
                for i, x in enumerate(self.inputs)
                for _ in range(num_samples)
            ]

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
            scored = self._score(params, pairs)
            for (index, y), log_prob, (token_rewards, _) in zip(
                pairs, log_probs, scored, strict=True
            ):
                out_rows.append(
                    {
                        "input_index": index,
                        "tokens": y,
                        "reward": float(token_rewards.sum()),
                        "token_rewards": token_rewards.tolist(),
                        "log_prob": log_prob,
                    }
                )
        return out_rows

    def _score(self, params, pairs, *, log_probs=False) -> list[tuple]:
        """Per (input index, y) pair, teacher-forced: R's per-token rewards, and log π(y|x)
        when `log_probs` (else None)."""
        rows, out = self.chunk * self.num_samples, []
        for start in range(0, len(pairs), rows):
            part = pairs[start : start + rows]
            batch, offsets = teacher_forced_rows(
                self.ctx.model,
                [self.prompts[i] for i, _ in part],
                [y for _, y in part],
                prompt_width=self.width,
                target_width=self.max_len,
                rows=rows,
            )
            batch = {k: global_array(v, self.ctx.mesh) for k, v in batch.items()}
            rewards = jax.device_get(self._rewards(params, batch)).astype(np.float64)
            lp = jax.device_get(self._log_probs(params, batch)) if log_probs else None
            for row, ((_, y), offset) in enumerate(zip(part, offsets, strict=True)):
                span = slice(offset, offset + len(y))
                log_prob = float(lp[row, span].astype(np.float64).sum()) if log_probs else None
                out.append((rewards[row, span], log_prob))
        return out

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
        if self.best_of:
            scalars |= self._best_of(params, samples, scores)
        records = (
            s | {"scores": {k: None if np.isnan(v[i]) else v[i] for k, v in scores.items()}}
            for i, s in enumerate(samples)
        )
        write_predictions(self.ctx, self.name, step, records)
        return scalars, {}

    def _best_of(self, params, samples, scores) -> dict[str, float]:
        """`best_of_<N>_<ranker>_<score>` (and the KLs): see the class docstring."""
        by_input: dict[int, list[int]] = {}
        for k, sample in enumerate(samples):
            by_input.setdefault(sample["input_index"], []).append(k)
        lengths = np.array([len(s["tokens"]) for s in samples], np.float64)

        def ranked(rows):
            values = {
                name: np.array([f(s["reward"], s["log_prob"], len(s["tokens"])) for s in rows])
                for name, f in RANKERS.items()
            }
            return values | {"random": np.zeros(len(rows))}  # all tied: kept at random

        # One value per sequence: a sequence sampled twice (or also drawn from the expert)
        # is one atom of π, ranked once, whatever the last bits of its two computations.
        first: dict[tuple, int] = {}
        for k, s in enumerate(samples):
            first.setdefault((s["input_index"], tuple(s["tokens"])), k)
        same = [first[(s["input_index"], tuple(s["tokens"]))] for s in samples]
        values = {name: v[same] for name, v in ranked(samples).items()}
        scores = {k: np.asarray(v, np.float64) for k, v in scores.items()}
        kls = bool(self.expert_samples)
        if kls:
            log_pi = np.array([s["log_prob"] for s in samples])
            log_p = scores["expert_log_prob"] * lengths  # NaN: invalid
            expert = [
                {"input_index": i, "tokens": y, "reward": float(r.sum()), "log_prob": lp}
                for (i, y), (r, lp) in zip(
                    self.expert_samples,
                    self._score(params, self.expert_samples, log_probs=True),
                    strict=True,
                )
            ]
            expert_values = ranked(expert)
            for k, e in enumerate(expert):
                pooled = first.get((e["input_index"], tuple(e["tokens"])))
                if pooled is not None:  # the same sequence as a pool sample: its value
                    for name, v in expert_values.items():
                        v[k] = values[name][pooled]
            expert_rows: dict[int, list[int]] = {}
            for k, e in enumerate(expert):
                expert_rows.setdefault(e["input_index"], []).append(k)
            forward_terms = np.array(
                [self.expert.log_prob(self.inputs[e["input_index"]], e["tokens"]) for e in expert]
            ) - np.array([e["log_prob"] for e in expert])
            forward_tokens = sum(len(e["tokens"]) for e in expert)
        out = {}
        for ranker, ranker_values in values.items():
            for n in self.best_of:
                sums = dict.fromkeys(["rev", "valid", "valid_len", "fwd"], 0.0)
                sums |= {key: 0.0 for score in scores for key in (score, f"{score}_w")}
                for index, rows in by_input.items():
                    w, log_ratio = best_of_n_weights(ranker_values[rows], n)
                    for score, score_values in scores.items():
                        v = score_values[rows]
                        ok = np.isfinite(v)
                        sums[score] += float(np.sum(w[ok] * v[ok]))
                        sums[f"{score}_w"] += float(np.sum(w[ok]))
                    if kls:
                        ok = np.isfinite(log_p[rows])
                        terms = log_pi[rows] + log_ratio - log_p[rows]
                        sums["rev"] += float(np.sum(w[ok] * terms[ok]))
                        sums["valid"] += float(np.sum(w[ok]))
                        sums["valid_len"] += float(np.sum(w[ok] * lengths[rows][ok]))
                        for e in expert_rows[index]:
                            query = expert_values[ranker][e]
                            sums["fwd"] += forward_terms[e] - best_of_n_log_ratio(
                                ranker_values[rows], n, query
                            )
                key = f"best_of_{n}_{ranker}_"
                for score in scores:
                    weight = sums[f"{score}_w"]
                    out[key + score] = sums[score] / weight if weight > 0 else float("nan")
                if kls:
                    # As the synthetic_expert evaluator: q_N restricted to valid outputs.
                    valid, inputs = sums["valid"], len(by_input)
                    out[key + "reverse_kl"] = (
                        (sums["rev"] - valid * np.log(valid / inputs)) / sums["valid_len"]
                        if valid > 0
                        else float("inf")
                    )
                    out[key + "forward_kl"] = sums["fwd"] / forward_tokens
        return {k: float(v) for k, v in out.items()}

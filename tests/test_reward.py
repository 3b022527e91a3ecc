"""IQLearn's extracted reward: the loss's δ_t, the reward evaluator and `irl_lm.reward`."""

import itertools
import json
import os

import jax
import numpy as np
import pytest
import scipy.special
import scipy.stats
from conftest import TINY_DECODER_ONLY, teacher_forced_logits
from test_configs import CONFIG_DIR, load

from irl_lm import evaluators, reward, sharding, train
from irl_lm.data import pipeline, tasks, text_tasks
from irl_lm.data.synthetic import EOS_ID
from irl_lm.losses import make_loss
from irl_lm.losses.iqlearn import data_terms, sequence_rewards
from irl_lm.models import build_model, is_decoder_only

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def reference_rewards(logits_TxV, y, gamma):
    """r_t = ℓ_t[y_t] − γ V_{t+1}, V = logsumexp ℓ, 0 after the sequence's last token."""
    logits = np.asarray(logits_TxV, np.float64)
    values = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    rewards = []
    for t, token in enumerate(y):
        terminal = token == EOS_ID or t == len(y) - 1
        rewards.append(logits[t, token] - gamma * (0.0 if terminal else values[t + 1]))
    return np.array(rewards)


def test_sequence_rewards_are_the_losses_td_residuals_and_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 11)).astype(np.float32) * 3
    targets = np.array([[4, 5, 1, 0, 0, 0], [7, 8, 9, 3, 2, 6], [1, 0, 0, 0, 0, 0]], np.int32)
    weights = (np.arange(6)[None] < np.array([[3], [6], [1]])).astype(np.float32)
    gamma = 0.9
    rewards, totals = jax.device_get(
        sequence_rewards(logits, targets, weights, gamma=gamma, eos_id=EOS_ID)
    )
    for row, length in enumerate([3, 6, 1]):
        expected = reference_rewards(logits[row, :length], targets[row, :length], gamma)
        np.testing.assert_allclose(rewards[row, :length], expected, rtol=1e-5, atol=1e-5)
        assert np.all(rewards[row, length:] == 0)
        assert totals[row] == pytest.approx(expected.sum(), rel=1e-5, abs=1e-5)
    # Where the loss knows V_{t+1} (not the truncated row's last token), the same δ_t.
    *_, delta, mask, _ = data_terms(
        logits, targets, weights, gamma=gamma, eos_id=EOS_ID, segment_ids_BxT=None
    )
    known = np.asarray(mask) > 0
    np.testing.assert_array_equal(np.asarray(delta)[known], rewards[known])
    assert not known[1, 5]  # the row without EOS: the loss drops its last TD term


def test_rank_correlations_match_scipy_loops():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), 5)
    scores = rng.normal(size=60)
    rewards = scores + rng.normal(size=60) + groups * 0.3
    scores[[3, 17]] = np.nan  # left out
    scores[20:25] = 1.0  # one input's scores all equal: no within-input ρ
    out = evaluators.reward.rank_correlations(rewards, scores, groups, num_bootstrap=400)
    keep = np.isfinite(scores)
    assert out["spearman"] == pytest.approx(
        scipy.stats.spearmanr(rewards[keep], scores[keep]).statistic
    )
    within = [
        scipy.stats.spearmanr(rewards[m & keep], scores[m & keep]).statistic
        for m in (groups[:, None] == np.arange(12)).T
        if np.ptp(scores[m & keep]) > 0
    ]
    assert out["within_inputs"] == 11
    assert out["within_spearman"] == pytest.approx(np.mean(within))
    # The within-input error is the standard error of a mean; the bootstrap's is close.
    assert out["within_spearman_se"] == pytest.approx(scipy.stats.sem(within, ddof=0), rel=0.25)
    assert 0 < out["spearman_se"] < 0.5


def brute_force_best_of(values, n):
    """The probability that each sample is kept by best-of-n, over every n-subset of the
    pool (ties: the kept one drawn uniformly among the highest)."""
    kept = np.zeros(len(values))
    subsets = list(itertools.combinations(range(len(values)), n))
    for subset in subsets:
        top = max(values[j] for j in subset)
        winners = [j for j in subset if values[j] == top]
        kept[winners] += 1 / len(winners) / len(subsets)
    return kept


def test_best_of_n_weights_match_every_subset_and_the_kl_identity():
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=7)
    tied = np.array([0.5, 2.0, 0.5, -1.0, 2.0, 2.0, 0.1])
    for values in (distinct, tied):
        for n in (1, 2, 3, 7):
            weights, log_ratios = evaluators.reward.best_of_n_weights(values, n)
            np.testing.assert_allclose(weights, brute_force_best_of(values, n), atol=1e-12)
            if values is distinct:
                # KL(best-of-n ‖ π) = log n − (n − 1)/n for a ranker without ties
                # (Beirami et al., 2024); the estimate is exact for every pool.
                kl = np.sum(weights * log_ratios)
                assert kl == pytest.approx(np.log(n) - (n - 1) / n, abs=1e-12)
    # All tied (the random ranker): kept uniformly, q_n = π.
    weights, log_ratios = evaluators.reward.best_of_n_weights(np.zeros(5), 4)
    np.testing.assert_allclose(weights, 0.2)
    np.testing.assert_allclose(log_ratios, 0.0, atol=1e-12)
    # An atom (a sample drawn twice) at the top of a pool of 4, F_lo = 1/2, F_hi = 1:
    # q_n/π = (1 − 2^−n) / (1/2).
    _, log_ratios = evaluators.reward.best_of_n_weights(np.array([0.0, 1.0, 3.0, 3.0]), 3)
    assert log_ratios[2] == log_ratios[3] == pytest.approx(np.log((1 - 0.125) / 0.5))
    with pytest.raises(ValueError, match="best-of-5 needs 1 ≤ n ≤ the 4 samples"):
        evaluators.reward.best_of_n_weights(np.zeros(4), 5)


def test_best_of_n_log_ratio_of_a_new_sample_estimates_n_f_to_the_n_minus_1():
    """At a y outside the pool whose CDF under π is u, log q_n/π = log n + (n − 1) log u
    (the estimate's bias shrinks as 1/M: about 0.04 at n = 16 with M = 400)."""
    rng = np.random.default_rng(4)
    for u, n in ((0.5, 4), (0.9, 16), (0.2, 2)):
        estimates = [
            evaluators.reward.best_of_n_log_ratio(rng.uniform(size=4000), n, u) for _ in range(1000)
        ]
        assert np.mean(estimates) == pytest.approx(np.log(n) + (n - 1) * np.log(u), abs=0.03)
    assert evaluators.reward.best_of_n_log_ratio(np.array([1.0, 2.0]), 1, 5.0) == 0.0
    # Exact: over a query drawn from π its rank among M pool values is uniform on 0..M, and
    # the estimate averages to E_π[log q_n/π] = log n + (n − 1) E[log U] = log n − (n − 1).
    pool = np.arange(16.0)
    for n in (2, 7, 16):
        estimates = [evaluators.reward.best_of_n_log_ratio(pool, n, c - 0.5) for c in range(17)]
        assert np.mean(estimates) == pytest.approx(np.log(n) - (n - 1), abs=1e-12)
    # A value the pool holds twice, at the top of 4: F_lo = 1/2, F_hi = 1.
    atom = evaluators.reward.best_of_n_log_ratio(np.array([0.0, 1.0, 3.0, 3.0]), 3, 3.0)
    assert atom == pytest.approx(np.log((1 - 0.125) / 0.5))
    # NaN ranks below every number (a diverged model's reward is never the one kept).
    weights, _ = evaluators.reward.best_of_n_weights(np.array([np.nan, 0.0, 1.0]), 2)
    np.testing.assert_allclose(weights, [0, 1 / 3, 2 / 3])


def _context(config, model, tmp_path):
    mesh = sharding.make_mesh({"data": -1})
    task = tasks.build(config.task)
    assert task.eos_id == task.seqio_task.output_features["targets"].vocabulary.eos_id
    return evaluators.EvalContext.from_config(
        config, task, model, mesh, loss_fn=make_loss(config.loss), workdir=str(tmp_path)
    )


def _scaled_params(config, model):
    params = model.init(jax.random.PRNGKey(1), train.dummy_batch(config, model, 1))["params"]
    return jax.tree.map(lambda p: 3 * p, sharding.unbox(params))


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_reward_evaluator_matches_numpy_on_its_own_samples(family, make_config, tmp_path):
    config = make_config(**{"loss.gamma": 0.9})
    if family == "decoder_only":
        config.model = TINY_DECODER_ONLY
    model = build_model(train.resolve_model_config(config))
    params = _scaled_params(config, model)
    ctx = _context(config, model, tmp_path)
    with sharding.use_mesh(ctx.mesh):
        evaluator = evaluators.RewardEvaluator(
            ctx, "reward", num_examples=3, num_samples=3, num_bootstrap=50
        )
        scalars, _ = evaluator(params, 7)
    with open(tmp_path / "predictions" / "reward" / "7.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 9 and [r["input_index"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    vocab = tasks.get_task(config.task).output_features["targets"].vocabulary
    prefix = pipeline.prompt_prefix(is_decoder_only(model), vocab)
    expert = evaluator.expert
    for row in rows:
        x = evaluator.inputs[row["input_index"]]
        y = row["tokens"]
        logits = teacher_forced_logits(model, params, [*prefix, *x, EOS_ID], y)
        expected = reference_rewards(logits[: len(y)], y, gamma=0.9)
        context = f"input {row['input_index']} {list(x)}, sample {y}"
        np.testing.assert_allclose(
            row["token_rewards"], expected, rtol=1e-4, atol=1e-4, err_msg=context
        )
        assert row["reward"] == pytest.approx(expected.sum(), rel=1e-4, abs=1e-4)
        # The sampler's log π(y), the baseline ranker; R − log π(y) telescopes to
        # V_0 + (1 − γ) Σ_{t≥1} V_t.
        logits = logits[: len(y)].astype(np.float64)
        values = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        log_pi = sum(logits[t, a] - values[t] for t, a in enumerate(y))
        assert row["log_prob"] == pytest.approx(log_pi, rel=1e-4, abs=1e-4)
        identity = log_pi + values[0] + 0.1 * values[1:].sum()
        assert row["reward"] == pytest.approx(identity, rel=1e-4, abs=1e-4)
        log_p = expert.log_prob(x, y)
        assert row["scores"]["validity"] == float(np.isfinite(log_p))
        if np.isfinite(log_p):
            assert row["scores"]["expert_log_prob"] == pytest.approx(log_p / len(y))
        else:
            assert row["scores"]["expert_log_prob"] is None
    rewards = [r["reward"] for r in rows]
    assert scalars["reward_mean"] == pytest.approx(np.mean(rewards))
    assert {"logprob_spearman_validity", "logprob_within_spearman_expert_log_prob_se"} < set(
        scalars
    )
    assert scalars["mean_validity"] == pytest.approx(
        np.mean([r["scores"]["validity"] for r in rows])
    )


def test_reward_evaluator_best_of_n_keeps_what_every_subset_keeps(make_config, tmp_path):
    """best_of scalars against every n-subset of the evaluator's samples; at n = 1 (and for
    the random ranker) the KLs are the policy's: the forward KL equals the synthetic_expert
    evaluator's on the same expert samples. An untrained policy's samples are all invalid,
    so validity and expert log-likelihoods are also given to the same samples by hand."""
    config = make_config()
    model = build_model(train.resolve_model_config(config))
    params = _scaled_params(config, model)
    ctx = _context(config, model, tmp_path)
    with sharding.use_mesh(ctx.mesh):
        evaluator = evaluators.RewardEvaluator(
            ctx, "reward", num_examples=5, num_samples=4, best_of=(1, 2, 4), num_bootstrap=20
        )
        scalars, _ = evaluator(params, 3)
        expert_scalars, _ = evaluators.ExpertEvaluator(
            ctx, "expert", num_examples=5, num_samples=4
        )(params, 3)
        samples = evaluator.samples(params)
        rng = np.random.default_rng(0)
        valid = (rng.uniform(size=len(samples)) < 0.5).astype(float)
        log_p = np.where(valid > 0, -rng.uniform(0.5, 2, size=len(samples)), np.nan)
        made_up = evaluator._best_of(params, samples, {"validity": valid, "expert_log_prob": log_p})
        with pytest.raises(ValueError, match=r"config.evals.r.best_of=\(8,\): each N must"):
            evaluators.RewardEvaluator(ctx, "r", num_samples=4, best_of=(8,))
        with pytest.raises(ValueError, match="config.evals.r: best_of scores the expert's"):
            evaluators.RewardEvaluator(ctx, "r", num_samples=4, best_of=(2,), max_decode_len=2)
    with open(tmp_path / "predictions" / "reward" / "3.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["tokens"] for r in rows] == [s["tokens"] for s in samples]  # one rng
    assert scalars["best_of_4_reward_validity"] == 0.0  # an untrained policy
    assert scalars["best_of_4_reward_reverse_kl"] == np.inf
    # A sequence sampled twice for one input is ranked once (its first sample's values).
    first = {}
    for r in rows:
        first.setdefault((r["input_index"], tuple(r["tokens"])), r)
    same = [first[(r["input_index"], tuple(r["tokens"]))] for r in rows]
    rankers = {
        "reward": [r["reward"] for r in same],
        "logprob": [r["log_prob"] for r in same],
        "mean_logprob": [r["log_prob"] / len(r["tokens"]) for r in same],
        "random": [0.0] * len(rows),
    }
    lengths = np.array([len(r["tokens"]) for r in rows])
    log_pi = np.array([r["log_prob"] for r in rows])
    ok = valid > 0
    for ranker, values in rankers.items():
        for n in (1, 2, 4):
            kept = np.concatenate(
                [brute_force_best_of(values[i : i + 4], n) for i in range(0, len(rows), 4)]
            )
            key = f"best_of_{n}_{ranker}_"
            assert made_up[key + "validity"] == pytest.approx(np.sum(kept * valid) / 5), key
            mean_log_p = np.sum(kept[ok] * log_p[ok]) / np.sum(kept[ok])
            assert made_up[key + "expert_log_prob"] == pytest.approx(mean_log_p), key
            if n == 1 or ranker == "random":  # q_n = π
                for out in (scalars, made_up):
                    assert out[key + "forward_kl"] == pytest.approx(
                        expert_scalars["forward_kl"], rel=1e-5
                    ), key
            # log q_n/π at each sample from its rank in its input's pool (scipy's ranks):
            # log n + (n − 1)(ψ(j) − ψ(M + 1)) for a value held once, the atom's
            # (F_hi^n − F_lo^n)/(F_hi − F_lo) for one held more often.
            log_ratio = []
            for i in range(0, len(rows), 4):
                pool = np.asarray(values[i : i + 4], float)
                lo = scipy.stats.rankdata(pool, method="min") - 1
                hi = scipy.stats.rankdata(pool, method="max")
                for low, high in zip(lo, hi, strict=True):
                    if high - low == 1:
                        psi = scipy.special.digamma([high, 5])
                        log_ratio.append(np.log(n) + (n - 1) * (psi[0] - psi[1]))
                    else:
                        f_lo, f_hi = low / 4, high / 4
                        log_ratio.append(np.log((f_hi**n - f_lo**n) / (f_hi - f_lo)))
            terms = (log_pi + np.array(log_ratio) - log_p * lengths)[ok]
            v = np.sum(kept[ok])
            reverse = (np.sum(kept[ok] * terms) - v * np.log(v / 5)) / np.sum(
                kept[ok] * lengths[ok]
            )
            assert made_up[key + "reverse_kl"] == pytest.approx(reverse, rel=1e-5), key
    # Keeping what the policy likes most moves the kept samples away from the expert's
    # spread: a larger forward KL than the policy's own.
    assert made_up["best_of_4_logprob_forward_kl"] > made_up["best_of_1_logprob_forward_kl"]


@pytest.fixture(scope="module")
def wmt22_tiny(tmp_path_factory):
    """A byte-level T5 on the shared WMT22 subset, 2 steps: its samples are near-random
    bytes, whose sentence chrF against the references still varies from sample to sample."""
    if not os.path.isdir(DATA):
        pytest.skip(f"shared data not found at {DATA} (see shared/data/README.md)")
    config = load_config()
    config.total_steps, config.checkpoint.every = 2, 2
    config.task.max_target_len = 24
    config.evals = dict(
        reward=dict(kind="reward", every=0, num_examples=6, num_samples=4, num_bootstrap=100)
    )
    workdir = tmp_path_factory.mktemp("wmt22_reward")
    results = train.train_and_evaluate(config, str(workdir))
    with open(workdir / "predictions" / "reward" / "2.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return workdir, results["eval"]["reward"], rows


def test_reward_evaluator_correlations_equal_scipy_on_the_predictions_file(wmt22_tiny):
    _, scalars, rows = wmt22_tiny
    assert len(rows) == 24
    import sacrebleu

    for metric in ("chrf", "bleu"):
        scores = np.array([r["scores"][metric] for r in rows])
        score_fn = sacrebleu.sentence_chrf if metric == "chrf" else sacrebleu.sentence_bleu
        # the per-sample score is sacreBLEU's sentence score against the reference
        expected = [score_fn(r["prediction"], [r["target"]]).score for r in rows]
        np.testing.assert_allclose(scores, expected)
        rewards = np.array([r["reward"] for r in rows])
        if np.ptp(scores) == 0:
            continue
        assert scalars[f"spearman_{metric}"] == pytest.approx(
            scipy.stats.spearmanr(rewards, scores).statistic
        )
        groups = np.array([r["input_index"] for r in rows])
        within = [
            scipy.stats.spearmanr(rewards[groups == g], scores[groups == g]).statistic
            for g in range(6)
            if np.ptp(scores[groups == g]) > 0
        ]
        assert scalars[f"within_inputs_{metric}"] == len(within)
        assert scalars[f"within_spearman_{metric}"] == pytest.approx(np.mean(within))
    assert np.ptp([r["scores"]["chrf"] for r in rows]) > 0  # the check above ran for chrF


def test_reward_cli_scores_pairs_as_the_evaluator_does(wmt22_tiny, tmp_path):
    workdir, _, rows = wmt22_tiny
    vocab = tasks.get_task(load_config().task).output_features["targets"].vocabulary
    pairs = tmp_path / "pairs.jsonl"
    lines = [  # the evaluator's prompts: the input's bytes, cut as seqio cuts them, and EOS
        {"input_ids": [*vocab.encode(r["input"])[:127], 1], "target_ids": r["tokens"]}
        for r in rows[:6]
    ]
    # Text is formatted by the run's task template and encoded with its vocabulary, EOS
    # after the target.
    template = text_tasks.input_template(load_config().task)
    assert template.endswith("{en}")
    lines += [
        {"inputs": "Hallo Welt", "targets": "Hello world"},
        {
            "input_ids": [*vocab.encode(template.format(en="Hallo Welt")), 1],
            "target_ids": [*vocab.encode("Hello world"), 1],
        },
    ]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "scored.jsonl"
    summary = reward.main(
        [
            "--workdir",
            str(workdir),
            "--input-file",
            str(pairs),
            "--output-file",
            str(out),
            "--batch-size",
            "4",
        ]
    )
    assert summary == {"pairs": 8, "gamma": 0.99, "output": str(out), "template": template}
    scored = [json.loads(line) for line in open(out)]
    for line, s in zip(lines, scored, strict=True):
        assert {k: s[k] for k in line} == line  # each output line repeats its input
        assert s["log_prob"] < 0
    for r, s in zip(rows[:6], scored, strict=False):
        assert s["reward"] == pytest.approx(r["reward"], rel=1e-4, abs=1e-4)
        np.testing.assert_allclose(s["token_rewards"], r["token_rewards"], rtol=1e-4, atol=1e-4)
    assert scored[6]["reward"] == pytest.approx(scored[7]["reward"], rel=1e-6)
    assert len(scored[6]["token_rewards"]) == len("Hello world") + 1


def load_config():
    return load(os.path.join(CONFIG_DIR, "wmt22.py")).get_config(f"mode=tiny,data={DATA}")


@pytest.mark.parametrize(
    "line, error",
    [
        ("not json", r"pairs.jsonl:2: not a JSON object"),
        ('{"inputs": "a"}', r"pairs.jsonl:2: needs 'targets' \(text\) or 'target_ids'"),
        (
            '{"input_ids": [3], "target_ids": [3, "x"]}',
            r"pairs.jsonl:2: 'target_ids' must be a list of integers",
        ),
        (
            '{"input_ids": [3], "target_ids": [99999]}',
            r"pairs.jsonl:2: token ids \[99999\] outside",
        ),
        ('{"input_ids": [3], "target_ids": []}', r"pairs.jsonl:2: empty target"),
    ],
)
def test_reward_cli_names_the_bad_line(wmt22_tiny, tmp_path, line, error):
    workdir, _, _ = wmt22_tiny
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"inputs": "Hallo", "targets": "Hello"}\n' + line + "\n")
    with pytest.raises(ValueError, match=error):
        reward.main(
            [
                "--workdir",
                str(workdir),
                "--input-file",
                str(pairs),
                "--output-file",
                str(tmp_path / "out.jsonl"),
            ]
        )


def test_reward_cli_on_a_hugging_face_folder_matches_transformers_logits(tmp_path):
    """--hf: R and r_t from our model of the folder equal Σ δ_t computed from the PyTorch
    model's own logits (transformers), γ = 0.99, with and without EOS at the end."""
    pytest.importorskip("torch", reason="torch is a test requirement (make test)")
    from hf_fixtures import hf_logits, save_hf_model

    reference = save_hf_model(tmp_path, "t5_v1_1", vocab_size=64)
    pairs = [([5, 9, 17, 1], [7, 8, 1]), ([12, 1], [30, 31, 32, 33]), ([4, 4, 4, 4, 4, 1], [1])]
    lines = "".join(json.dumps({"input_ids": x, "target_ids": y}) + "\n" for x, y in pairs)
    (tmp_path / "pairs.jsonl").write_text(lines)
    out = tmp_path / "scored.jsonl"
    reward.main(
        [
            "--hf",
            str(tmp_path),
            "--input-file",
            str(tmp_path / "pairs.jsonl"),
            "--output-file",
            str(out),
        ]
    )
    scored = [json.loads(line) for line in open(out)]
    for (x, y), s in zip(pairs, scored, strict=True):
        batch = {
            "encoder_input_tokens": np.array([x]),
            "decoder_input_tokens": np.array([[0, *y[:-1]]]),
        }
        expected = reference_rewards(hf_logits(reference, batch)[0], y, gamma=0.99)
        np.testing.assert_allclose(s["token_rewards"], expected, rtol=1e-4, atol=1e-4)
        assert s["reward"] == pytest.approx(expected.sum(), rel=1e-4, abs=1e-4)


def numpy_scores(model, params, x, y, gamma):
    """(r_t, log π(y | x)) of one unpadded pair, in float64, from the model's own logits."""
    batch = {
        "encoder_input_tokens": np.array([x]),
        "decoder_input_tokens": np.array([[0, *y[:-1]]]),
    }
    logits = np.asarray(model.apply({"params": params}, batch)[0], np.float64)
    values = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    log_prob = sum(logits[t, a] - values[t] for t, a in enumerate(y))
    return reference_rewards(logits, y, gamma), log_prob, values[0]


def test_reward_model_scores_as_numpy_and_ranks_as_log_prob_at_gamma_one(wmt22_tiny):
    """The Python API: R, r_t and log π(y|x) against NumPy on the model's own logits; at
    γ = 1, R = log π(y|x) + V_0(x) (the sum telescopes), so R ranks one input's outputs as
    log π does; `normalize` divides R by |y|."""
    workdir, _, rows = wmt22_tiny
    for gamma in (0.9, 1.0):
        rm = reward.RewardModel.load(str(workdir), gamma=gamma, batch_size=4)
        xs = [[5, 9, 17, 1], [12, 1]]
        ys = [[7, 8, 1], [30, 31, 32, 33], [40, 1], [41, 42, 43, 44, 1]]
        inputs, outputs = [xs[0]] * 2 + [xs[1]] * 2, ys
        scored = rm.score(inputs, outputs)
        params = jax.device_get(rm.params)
        for x, y, s in zip(inputs, outputs, scored, strict=True):
            rewards, log_prob, v0 = numpy_scores(rm.loaded.model, params, x, y, gamma)
            np.testing.assert_allclose(s["token_rewards"], rewards, rtol=1e-4, atol=1e-4)
            assert s["reward"] == pytest.approx(rewards.sum(), rel=1e-4, abs=1e-4)
            assert s["log_prob"] == pytest.approx(log_prob, rel=1e-4, abs=1e-4)
            if gamma == 1.0:
                assert s["reward"] == pytest.approx(log_prob + v0, rel=1e-4, abs=1e-4)
        normalized = rm.score(inputs, outputs, normalize=True)
        for s, n, y in zip(scored, normalized, outputs, strict=True):
            assert n["reward"] == pytest.approx(s["reward"] / len(y))
    text = rm.score(["Hallo Welt"], ["Hello world"])[0]  # text: the run's template, EOS
    assert text["length"] == len("Hello world") + 1


def test_sample_cli_reranks_decodes_by_the_extracted_reward(wmt22_tiny, tmp_path):
    """Best-of-N: 4 samples per input ordered by R (each R the API's for that pair); keeping
    1 keeps the first; ordering by log π agrees with the sampler's own log-probabilities."""
    from irl_lm import sample

    workdir, _, _ = wmt22_tiny
    lines = [{"input_ids": [5, 9, 17, 1]}, {"input_ids": [12, 13, 1]}, {"inputs": "Hallo"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    common = ["--workdir", str(workdir), "--input-file", str(tmp_path / "in.jsonl")]
    common += ["--method", "temperature", "--num-decodes", "4", "--max-decode-len", "12"]
    outputs = {}
    for ranker, keep in (("reward", 0), ("reward", 1), ("logprob", 0)):
        out = tmp_path / f"{ranker}{keep}.jsonl"
        summary = sample.main(
            [*common, "--output-file", str(out), "--rerank", ranker, "--keep", str(keep)]
        )
        assert summary["ranked_by"] == ranker and summary["gamma"] == 0.99
        outputs[ranker, keep] = [json.loads(line) for line in open(out)]
    rm = reward.RewardModel.load(str(workdir))
    for row, line in enumerate(outputs["reward", 0]):
        assert len(line["output_ids"]) == 4
        assert line["rewards"] == sorted(line["rewards"], reverse=True)
        prompt = lines[row].get("input_ids", lines[row].get("inputs"))
        again = rm.score([prompt] * 4, line["output_ids"])
        np.testing.assert_allclose(line["rewards"], [s["reward"] for s in again], rtol=1e-5)
        best = outputs["reward", 1][row]
        assert (
            best["output_ids"] == line["output_ids"][:1] and best["rewards"] == line["rewards"][:1]
        )
        by_log_prob = outputs["logprob", 0][row]
        assert by_log_prob["log_probs"] == sorted(by_log_prob["log_probs"], reverse=True)
        np.testing.assert_allclose(by_log_prob["scores"], by_log_prob["log_probs"], atol=1e-3)


def test_a_template_reading_several_fields_needs_them_by_name(wmt22_tiny, tmp_path):
    workdir, _, _ = wmt22_tiny
    rm = reward.RewardModel.load(str(workdir), template="question: {q} context: {c}")
    with pytest.raises(ValueError, match=r"pair 0: the input template .* reads \['q', 'c'\]"):
        rm.score(["just one text"], ["y"])
    with pytest.raises(ValueError, match=r"--task='nope' is not a paper task; known: \["):
        reward.RewardModel.load(str(workdir), template="task:nope")

"""Losses against an independent NumPy reference written from PAPER.md §2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irl_lm.losses import (
    iqlearn_loss,
    iqlearn_online_loss,
    make_loss,
    mle_entropy_loss,
    mle_loss,
)

EOS = 1


def reference_iqlearn(logits, targets, weights, lam, gamma, segment_ids=None):
    """Loops over each sequence in float64: mean over target tokens of −log π + λ δ²."""
    logits = np.asarray(logits, np.float64)
    total_nll = total_td2 = count = 0.0
    batch, length, _ = logits.shape
    for b in range(batch):
        for t in range(length):
            if weights[b, t] == 0:
                continue
            row = logits[b, t]
            v_t = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            q_t = row[targets[b, t]]
            total_nll += weights[b, t] * (v_t - q_t)
            count += weights[b, t]
            same_segment = segment_ids is None or (
                t + 1 < length and segment_ids[b, t + 1] == segment_ids[b, t]
            )
            if targets[b, t] == EOS:
                next_v = 0.0
            elif t + 1 < length and weights[b, t + 1] > 0 and same_segment:
                nxt = logits[b, t + 1]
                next_v = np.log(np.sum(np.exp(nxt - nxt.max()))) + nxt.max()
            else:  # truncated without EOS: no TD term
                continue
            total_td2 += weights[b, t] * (q_t - gamma * next_v) ** 2
    return (total_nll + lam * total_td2) / count, total_nll / count, total_td2 / count


def random_batch(seed=0, batch=4, length=9, vocab=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 3
    targets = rng.integers(2, vocab, size=(batch, length))
    weights = np.zeros((batch, length), np.float32)
    # EOS at several positions, padding after; row 3 is truncated (no EOS, no padding).
    for b, eos_at in zip(range(batch), [2, 5, 8, None], strict=False):
        if eos_at is None:
            weights[b] = 1
            continue
        targets[b, eos_at] = EOS
        targets[b, eos_at + 1 :] = 0
        weights[b, : eos_at + 1] = 1
    return logits, targets, weights


@pytest.mark.parametrize("lam,gamma", [(0.1, 0.99), (1.0, 0.9), (0.3, 1.0)])
def test_iqlearn_matches_numpy_reference(lam, gamma):
    logits, targets, weights = random_batch()
    loss, metrics = iqlearn_loss(logits, targets, weights, lam=lam, gamma=gamma)
    ref_loss, ref_nll, ref_td2 = reference_iqlearn(logits, targets, weights, lam, gamma)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["iqlearn/nll"], ref_nll, rtol=1e-5)
    np.testing.assert_allclose(metrics["iqlearn/td2"], ref_td2, rtol=1e-5)


def test_truncated_row_drops_only_its_last_td_term():
    logits, targets, weights = random_batch()
    # Changing the (nonexistent) successor of a truncated row's last token changes nothing,
    # while a real successor's logits enter through V_{t+1}.
    _, metrics = iqlearn_loss(logits, targets, weights, lam=1.0, gamma=0.9)
    ref = reference_iqlearn(logits, targets, weights, 1.0, 0.9)
    np.testing.assert_allclose(metrics["iqlearn/td2"], ref[2], rtol=1e-5)
    padded_logits = logits.copy()
    padded_logits[0, 3:] += 100.0  # row 0 ends with EOS at 2: positions 3+ are padding
    _, metrics_padded = iqlearn_loss(padded_logits, targets, weights, lam=1.0, gamma=0.9)
    assert float(metrics_padded["iqlearn/td2"]) == pytest.approx(float(metrics["iqlearn/td2"]))


def test_lam_zero_is_mle_bit_for_bit():
    logits, targets, weights = random_batch(seed=3)
    mle, _ = mle_loss(logits, targets, weights)
    iq, _ = iqlearn_loss(logits, targets, weights, lam=0.0, gamma=0.99)
    assert np.asarray(mle).tobytes() == np.asarray(iq).tobytes()
    grad_mle = jax.grad(lambda x: mle_loss(x, targets, weights)[0])(jnp.asarray(logits))
    grad_iq = jax.grad(lambda x: iqlearn_loss(x, targets, weights, lam=0.0, gamma=0.99)[0])(
        jnp.asarray(logits)
    )
    assert np.asarray(grad_mle).tobytes() == np.asarray(grad_iq).tobytes()


def test_packed_equals_unpacked():
    logits, targets, weights = random_batch(seed=5, batch=2, length=6)
    # Two sequences per row ending in EOS, plus one truncated sequence.
    targets[0, :3], targets[0, 3:6] = [4, 5, EOS], [6, 7, EOS]
    targets[1, :2], targets[1, 2:6] = [8, EOS], [9, 3, 4, 5]  # second one truncated
    weights[:] = 1
    unpacked_rows = [(0, 0, 3), (0, 3, 6), (1, 0, 2), (1, 2, 6)]
    u_logits = np.zeros((4, 6, logits.shape[-1]), np.float32)
    u_targets = np.zeros((4, 6), np.int64)
    u_weights = np.zeros((4, 6), np.float32)
    segments = np.zeros((2, 6), np.int32)
    for i, (b, start, end) in enumerate(unpacked_rows):
        n = end - start
        u_logits[i, :n], u_targets[i, :n], u_weights[i, :n] = (
            logits[b, start:end],
            targets[b, start:end],
            1,
        )
        segments[b, start:end] = i + 1
    kwargs = dict(lam=0.5, gamma=0.95)
    packed, _ = iqlearn_loss(logits, targets, weights, segment_ids=segments, **kwargs)
    unpacked, _ = iqlearn_loss(u_logits, u_targets, u_weights, **kwargs)
    np.testing.assert_allclose(packed, unpacked, rtol=1e-6)
    ref, _, _ = reference_iqlearn(logits, targets, weights, 0.5, 0.95, segment_ids=segments)
    np.testing.assert_allclose(packed, ref, rtol=1e-5)
    # Segment ids matter where a segment ends without EOS: without them, V_{t+1} would be
    # read from the next segment's first token.
    targets2 = targets.copy()
    targets2[1, 1] = 3  # first segment of row 1 now ends without EOS (truncated)
    with_ids, _ = iqlearn_loss(logits, targets2, weights, segment_ids=segments, **kwargs)
    without_ids, _ = iqlearn_loss(logits, targets2, weights, **kwargs)
    assert not np.isclose(with_ids, without_ids)


def test_bfloat16_logits_use_float32_logsumexp():
    logits, targets, weights = random_batch(seed=7)
    loss32, _ = iqlearn_loss(logits, targets, weights, lam=0.1, gamma=0.99)
    loss16, _ = iqlearn_loss(
        jnp.asarray(logits, jnp.bfloat16), targets, weights, lam=0.1, gamma=0.99
    )
    assert loss16.dtype == jnp.float32
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)


@pytest.mark.parametrize(
    "loss_config,match",
    [
        (
            {"name": "iqlern", "lam": 0.1, "gamma": 0.9},
            r"config.loss.name='iqlern'.*allowed.*iqlearn",
        ),
        ({"name": "iqlearn", "lam": -0.1, "gamma": 0.9}, r"config.loss.lam=-0.1.*>= 0"),
        ({"name": "iqlearn", "lam": 0.1, "gamma": 0.0}, r"config.loss.gamma=0.0.*\(0, 1\]"),
        ({"name": "iqlearn", "lam": 0.1, "gamma": 1.5}, r"config.loss.gamma=1.5"),
        ({"name": "mle", "lam": 0.1}, r"unknown fields \['lam'\]"),
    ],
)
def test_make_loss_rejects_bad_config(loss_config, match):
    with pytest.raises(ValueError, match=match):
        make_loss(loss_config)


# ----------------------------------------------------------------------------- MLE + entropy


def test_mle_entropy_matches_numpy_and_beta_zero_is_mle_bit_for_bit():
    logits, targets, weights = random_batch(seed=11)
    loss, metrics = mle_entropy_loss(logits, targets, weights, beta=0.3)
    x = np.asarray(logits, np.float64)
    log_p = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    entropy = -(np.exp(log_p) * log_p).sum(-1)
    expected = ((nll - 0.3 * entropy) * weights).sum() / weights.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["mle_entropy/entropy"], (entropy * weights).sum() / weights.sum(), rtol=1e-5
    )
    logits = jnp.asarray(logits)
    mle, grad_mle = jax.value_and_grad(lambda x: mle_loss(x, targets, weights)[0])(logits)
    zero, grad_zero = jax.value_and_grad(
        lambda x: mle_entropy_loss(x, targets, weights, beta=0.0)[0]
    )(logits)
    assert np.asarray(mle).tobytes() == np.asarray(zero).tobytes()
    assert np.asarray(grad_mle).tobytes() == np.asarray(grad_zero).tobytes()


# ----------------------------------------------------------------------------- online IQLearn


def policy_samples(seed=13, batch=3, length=7, vocab=11):
    """Sampled continuations: row 0 ends with EOS at 3, row 1 at 6 (the last slot), row 2
    is cut at max length without EOS (terminal there too)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 3
    tokens = rng.integers(2, vocab, size=(batch, length))
    weights = np.ones((batch, length), np.int32)
    tokens[0, 3], tokens[0, 4:], weights[0, 4:] = EOS, 0, 0
    tokens[1, 6] = EOS
    return {"logits": logits, "targets": tokens, "weights": weights}


def reference_value_diffs(logits, targets, weights, gamma, *, terminal_at_end):
    """Mean over counted tokens of V_t − γ V_{t+1}, one token at a time in float64."""
    logits = np.asarray(logits, np.float64)
    values = np.log(np.exp(logits).sum(-1))
    total = count = 0.0
    batch, length = targets.shape
    for b in range(batch):
        for t in range(length):
            if weights[b, t] == 0:
                continue
            successor = t + 1 < length and weights[b, t + 1] > 0
            if targets[b, t] == EOS or (terminal_at_end and not successor):
                next_v = 0.0
            elif successor:
                next_v = values[b, t + 1]
            else:
                continue
            total += values[b, t] - gamma * next_v
            count += 1
    return total / count


def test_online_iqlearn_matches_numpy_reference():
    logits, targets, weights = random_batch(seed=17)
    policy = policy_samples()
    lam, gamma, alpha = 0.3, 0.9, 0.25
    loss, metrics = iqlearn_online_loss(
        logits, targets, weights, lam=lam, gamma=gamma, alpha=alpha, policy=policy
    )
    offline, _, _ = reference_iqlearn(logits, targets, weights, lam, gamma)
    expert = reference_value_diffs(logits, targets, weights, gamma, terminal_at_end=False)
    sampled = reference_value_diffs(**policy, gamma=gamma, terminal_at_end=True)
    np.testing.assert_allclose(metrics["iqlearn_online/policy_value_diff"], sampled, rtol=1e-5)
    np.testing.assert_allclose(metrics["iqlearn_online/expert_value_diff"], expert, rtol=1e-5)
    np.testing.assert_allclose(loss, offline + alpha * (sampled - expert), rtol=1e-5)

    # χ² on the mixture: (1 − α) on data + α on samples (terminal at their last token).
    mixed, _ = iqlearn_online_loss(
        logits,
        targets,
        weights,
        lam=lam,
        gamma=gamma,
        alpha=alpha,
        chi2_on_mixture=1,
        policy=policy,
    )
    _, nll, td2 = reference_iqlearn(logits, targets, weights, lam, gamma)
    p_logits = np.asarray(policy["logits"], np.float64)
    p_v = np.log(np.exp(p_logits).sum(-1))
    p_q = np.take_along_axis(p_logits, policy["targets"][..., None], -1)[..., 0]
    squares = []
    for b in range(3):
        n = int(policy["weights"][b].sum())
        for t in range(n):
            next_v = 0.0 if t == n - 1 else p_v[b, t + 1]  # EOS or cut: terminal at the end
            squares.append((p_q[b, t] - gamma * next_v) ** 2)
    expected = nll + lam * ((1 - alpha) * td2 + alpha * np.mean(squares))
    np.testing.assert_allclose(mixed, expected + alpha * (sampled - expert), rtol=1e-5)


def test_online_alpha_zero_is_offline_iqlearn_bit_for_bit():
    logits, targets, weights = random_batch(seed=19)
    policy = policy_samples()
    offline = lambda x: iqlearn_loss(x, targets, weights, lam=0.1, gamma=0.99)[0]
    online = lambda x: iqlearn_online_loss(
        x, targets, weights, lam=0.1, gamma=0.99, alpha=0.0, policy=policy
    )[0]
    a, grad_a = jax.value_and_grad(offline)(jnp.asarray(logits))
    b, grad_b = jax.value_and_grad(online)(jnp.asarray(logits))
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert np.asarray(grad_a).tobytes() == np.asarray(grad_b).tobytes()


def test_online_gradient_reaches_the_policy_logits_only_through_values():
    """d loss / d policy logits is α ∂ mean_policy[V_t − γ V_{t+1}]: softmax weights, zero on
    unsampled positions; the sampled tokens themselves enter only as indices."""
    logits, targets, weights = random_batch(seed=23)
    policy = policy_samples()
    alpha, gamma = 0.5, 0.9

    def loss_of_policy_logits(p_logits):
        return iqlearn_online_loss(
            logits,
            targets,
            weights,
            lam=0.1,
            gamma=gamma,
            alpha=alpha,
            policy=policy | {"logits": p_logits},
        )[0]

    grad = np.asarray(jax.grad(loss_of_policy_logits)(jnp.asarray(policy["logits"])))
    x = np.asarray(policy["logits"], np.float64)
    softmax = np.exp(x - x.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    mask = policy["weights"].astype(np.float64)
    # ∂/∂ℓ_t of Σ_t (V_t − γ V_{t+1}) / N: softmax_t (1 − γ [t has a predecessor counted]).
    coefficient = mask.copy()
    coefficient[:, 1:] -= gamma * mask[:, 1:] * mask[:, :-1]
    expected = alpha * coefficient[..., None] * softmax / mask.sum()
    np.testing.assert_allclose(grad, expected, atol=1e-6)

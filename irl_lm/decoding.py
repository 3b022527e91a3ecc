"""Decoding with a key/value cache: greedy, temperature / top-k / top-p sampling, beam search.

One decoder for evaluation, the sampling CLI and online training. A model takes part through
two methods (both families implement them; the batch holds `encoder_input_tokens` for T5,
right-padded prompts `decoder_input_tokens` for a decoder-only model):

    cache = model.prefill(batch, max_len)        # encoder pass (or prompt), empty caches
    logits_BxV, cache = model.decode_step(cache, tokens_B, index)

Every cache leaf has the batch first. `cache['decode']` (what each row writes) is repeated
for the samples or beams of an input and reordered between beams; `cache['inputs']` (what
depends on the input only, e.g. T5's cross-attention keys and values) stays one row per
input: `decode_step` reads rows `[i * N, (i + 1) * N)` as the N continuations of input i
(T5 attends to the input once for all N, as N queries, rather than N copies of it). Each
decoder is one `jax.lax.while_loop` over fixed shapes that stops when every row has emitted
EOS; temperature, top-k, top-p and the length penalty are arrays, so changing them does not
recompile. After EOS a row emits padding (0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from irl_lm import sharding

NEG_INF = -jnp.inf


def _batch_size(batch) -> int:
    """Rows of a batch: encoder inputs (encoder-decoder) or prompts (decoder-only)."""
    return jax.tree.leaves(batch)[0].shape[0]


def _prefill(model, params, batch, max_len: int, repeat: int):
    cache = model.apply({"params": params}, batch, max_len, method=model.prefill)
    decode = jax.tree.map(lambda x: jnp.repeat(x, repeat, axis=0), cache["decode"])
    return cache | {"decode": decode}


def _step(model, params, cache, tokens_B, index):
    logits, cache = model.apply(
        {"params": params}, cache, tokens_B, index, method=model.decode_step
    )
    # The barrier keeps XLA:CPU from fusing the normalisation into the output projection,
    # which made the two 1.5x slower together than apart (d_model 256, vocab 32k, 32 rows).
    logits = jax.lax.optimization_barrier(logits.astype(jnp.float32))
    return jax.nn.log_softmax(logits), cache


def _argmax(x_BxV):
    """argmax over the last axis (first index of the maximum), as two plain reductions:
    XLA:CPU's argmax is 4x slower than this at vocab 32k."""
    is_max = x_BxV == jnp.max(x_BxV, axis=-1, keepdims=True)
    vocab = x_BxV.shape[-1]
    return jnp.min(jnp.where(is_max, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def filter_logits(logits_BxV, top_k, top_p):
    """Keeps the `top_k` largest logits (0: all), then the smallest set whose probability
    reaches `top_p` (1: all); the rest become -inf. Ties at a threshold are kept."""

    def apply(logits_BxV):
        vocab = logits_BxV.shape[-1]
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        k = jnp.where((top_k > 0) & (top_k < vocab), top_k, vocab)
        kth_Bx1 = jax.lax.dynamic_slice_in_dim(sorted_BxV, k - 1, 1, axis=-1)
        sorted_BxV = jnp.where(sorted_BxV < kth_Bx1, NEG_INF, sorted_BxV)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        # A token stays if the probability of the tokens before it is still below top_p.
        keep_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p
        kept_B = jnp.maximum(jnp.sum(keep_BxV, axis=-1), 1)
        threshold_Bx1 = jnp.take_along_axis(sorted_BxV, kept_B[:, None] - 1, axis=-1)
        return jnp.where(logits_BxV < threshold_Bx1, NEG_INF, logits_BxV)

    return jax.lax.cond((top_k > 0) | (top_p < 1.0), apply, lambda x: x, logits_BxV)


def sample(
    model,
    params,
    batch,
    rng,
    *,
    max_len: int,
    num_decodes: int = 1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    eos_id: int = 1,
):
    """`num_decodes` samples per input; temperature 0 is greedy decoding.

    Returns `[B, N, T]` arrays (N = num_decodes): `tokens`; `log_probs` under the unmodified
    model; `sample_log_probs` under the distribution sampled from (after temperature, top-k,
    top-p; 0 when greedy); `entropies` of the unmodified next-token distribution; `mask`
    (1 up to and including EOS); `lengths` `[B, N]`; and `num_steps`, the decoding steps
    run (fewer than `max_len` when every row ended early). Zero past each row's end.
    """
    batch_size = _batch_size(batch)
    rows = batch_size * num_decodes
    cache = _prefill(model, params, batch, max_len, num_decodes)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_k, top_p = jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32)
    greedy = temperature <= 0.0

    def body(carry):
        t, previous_B, out, done_B, cache, rng = carry
        log_p_BxV, cache = _step(model, params, cache, previous_B, t)
        scaled_BxV = filter_logits(log_p_BxV / jnp.maximum(temperature, 1e-6), top_k, top_p)
        log_q_BxV = jax.nn.log_softmax(scaled_BxV)
        rng, key = jax.random.split(rng)
        token_B = jax.lax.cond(
            greedy,
            lambda: _argmax(log_p_BxV),
            lambda: _inverse_cdf_sample(key, log_q_BxV),
        )
        token_B = jnp.where(done_B, 0, token_B).astype(jnp.int32)
        live_B = ~done_B
        pick = lambda x_BxV: jnp.take_along_axis(x_BxV, token_B[:, None], axis=-1)[:, 0]
        entropy_B = -jnp.sum(jnp.exp(log_p_BxV) * log_p_BxV, axis=-1)
        values = {
            "tokens": token_B,
            "log_probs": jnp.where(live_B, pick(log_p_BxV), 0.0),
            "sample_log_probs": jnp.where(live_B & ~greedy, pick(log_q_BxV), 0.0),
            "entropies": jnp.where(live_B, entropy_B, 0.0),
        }
        out = {k: out[k].at[:, t].set(v) for k, v in values.items()}
        return t + 1, token_B, out, done_B | (token_B == eos_id), cache, rng

    def cond(carry):
        t, _, _, done_B, _, _ = carry
        return (t < max_len) & ~jnp.all(done_B)

    out = {
        "tokens": jnp.zeros((rows, max_len), jnp.int32),
        "log_probs": jnp.zeros((rows, max_len), jnp.float32),
        "sample_log_probs": jnp.zeros((rows, max_len), jnp.float32),
        "entropies": jnp.zeros((rows, max_len), jnp.float32),
    }
    start = jnp.zeros((rows,), jnp.int32)
    init = (jnp.int32(0), start, out, jnp.zeros((rows,), bool), cache, rng)
    steps, _, out, _, _, _ = jax.lax.while_loop(cond, body, init)
    out |= _mask_and_lengths(out["tokens"], eos_id)
    out = jax.tree.map(lambda x: x.reshape(batch_size, num_decodes, *x.shape[1:]), out)
    return out | {"num_steps": steps}


def _inverse_cdf_sample(key, log_q_BxV):
    """One token per row from exp(log_q): a single uniform per row against the cumulative
    distribution (a Gumbel draw per vocabulary entry costs far more on CPU)."""
    cdf_BxV = jnp.cumsum(jnp.exp(log_q_BxV), axis=-1)
    u_Bx1 = jax.random.uniform(key, (cdf_BxV.shape[0], 1)) * cdf_BxV[:, -1:]
    token_B = jnp.sum(cdf_BxV <= u_Bx1, axis=-1)
    return jnp.minimum(token_B, cdf_BxV.shape[-1] - 1).astype(jnp.int32)


def greedy(model, params, batch, *, max_len: int, eos_id: int = 1):
    """The most likely token at every step: `sample` at temperature 0, N = 1."""
    return sample(
        model,
        params,
        batch,
        jax.random.PRNGKey(0),
        max_len=max_len,
        temperature=0.0,
        eos_id=eos_id,
    )


def length_penalty(length, alpha):
    """The t5x / Google NMT length normalisation: ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(model, params, batch, *, max_len: int, num_beams: int, alpha=0.6, eos_id: int = 1):
    """Beam search scoring a finished sequence by log p(y) / length_penalty(len(y)), EOS
    counted in its length; a sequence still unfinished at `max_len` competes at that length.
    Each step extends the W beams to their 2W best continuations; those ending in EOS within
    the W best are finished, the W best others go on.

    Returns `tokens` `[B, W, T]` best first, `scores` `[B, W]`, `log_probs` (per token, under
    the model) `[B, W, T]`, `mask`, `lengths` `[B, W]` and `num_steps`.
    """
    batch_size, beams = _batch_size(batch), num_beams
    alpha = jnp.asarray(alpha, jnp.float32)
    cache = _prefill(model, params, batch, max_len, beams)
    offsets_Bx1 = (jnp.arange(batch_size) * beams)[:, None]

    def body(carry):
        t, alive, finished, cache = carry
        previous = jnp.where(t > 0, alive["tokens"][:, :, jnp.maximum(t - 1, 0)], 0)
        log_p, cache = _step(model, params, cache, previous.reshape(-1), t)
        # The 2W best continuations (enough that W of them are not EOS): each beam's 2W best
        # tokens first, then the best of those W * 2W (cheaper than one top-k over W * V).
        k = min(2 * beams, log_p.shape[-1])
        top_lp_BxWxK, top_token_BxWxK = jax.lax.top_k(log_p.reshape(batch_size, beams, -1), k)
        total_BxWK = (alive["score"][:, :, None] + top_lp_BxWxK).reshape(batch_size, -1)
        cand_score, flat = jax.lax.top_k(total_BxWK, min(2 * beams, beams * k))
        origin = flat // k
        token = jnp.take_along_axis(top_token_BxWxK.reshape(batch_size, -1), flat, axis=1)
        token_lp = jnp.take_along_axis(top_lp_BxWxK.reshape(batch_size, -1), flat, axis=1)
        gather = lambda x: jnp.take_along_axis(x, origin[..., None], axis=1)
        cand_tokens = gather(alive["tokens"]).at[:, :, t].set(token)
        cand_lps = gather(alive["log_probs"]).at[:, :, t].set(token_lp)
        is_eos = token == eos_id

        # Unfinished candidates continue: the W best by log-probability.
        alive_score, pick = jax.lax.top_k(jnp.where(is_eos, NEG_INF, cand_score), beams)
        take = lambda x: jnp.take_along_axis(x, pick.reshape(pick.shape + (1,) * (x.ndim - 2)), 1)
        alive = {"tokens": take(cand_tokens), "log_probs": take(cand_lps), "score": alive_score}
        rows = (offsets_Bx1 + take(origin)).reshape(-1)
        cache = cache | {"decode": jax.tree.map(lambda x: x[rows], cache["decode"])}

        # EOS candidates among the W best join the W best finished so far, by normalised score
        # (only the W best: with one beam, beam search is greedy decoding).
        in_beam = jnp.arange(cand_score.shape[1]) < beams
        new_score = jnp.where(
            is_eos & in_beam, cand_score / length_penalty(t + 1.0, alpha), NEG_INF
        )
        finished = _top_beams(
            finished,
            {
                "tokens": cand_tokens,
                "log_probs": cand_lps,
                "score": new_score,
                "length": jnp.full(new_score.shape, t + 1, jnp.int32),
            },
            beams,
        )
        return t + 1, alive, finished, cache

    def cond(carry):
        t, alive, finished, _ = carry
        # An input is done once it has W finished beams, all scoring at least as well as the
        # best unfinished one would if it ended now (the usual heuristic; with alpha > 0 a
        # longer continuation could still score higher).
        best_now = jnp.max(alive["score"], axis=1) / length_penalty(t, alpha)
        done = jnp.min(finished["score"], axis=1) >= best_now
        return (t < max_len) & ~jnp.all(done)

    empty = lambda dtype: jnp.zeros((batch_size, beams, max_len), dtype)
    first = jnp.concatenate(
        [jnp.zeros((batch_size, 1)), jnp.full((batch_size, beams - 1), NEG_INF)], axis=1
    )
    alive = {"tokens": empty(jnp.int32), "log_probs": empty(jnp.float32), "score": first}
    finished = {
        "tokens": empty(jnp.int32),
        "log_probs": empty(jnp.float32),
        "score": jnp.full((batch_size, beams), NEG_INF),
        "length": jnp.zeros((batch_size, beams), jnp.int32),
    }
    t, alive, finished, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), alive, finished, cache))
    truncated = {
        **alive,
        "score": jnp.where(t >= max_len, alive["score"] / length_penalty(max_len, alpha), NEG_INF),
        "length": jnp.full((batch_size, beams), max_len, jnp.int32),
    }
    best = _top_beams(finished, truncated, beams)
    mask = jnp.arange(max_len)[None, None, :] < best["length"][..., None]
    return {
        "tokens": jnp.where(mask, best["tokens"], 0),
        "log_probs": jnp.where(mask, best["log_probs"], 0.0),
        "scores": best["score"],
        "mask": mask,
        "lengths": best["length"],
        "num_steps": t,
    }


def _top_beams(a: dict, b: dict, beams: int) -> dict:
    """The `beams` highest-scoring of two sets of beams (each `[B, W', ...]`), best first."""
    both = jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), a, b)
    _, pick = jax.lax.top_k(both["score"], beams)
    return jax.tree.map(
        lambda x: jnp.take_along_axis(x, pick.reshape(pick.shape + (1,) * (x.ndim - 2)), 1),
        both,
    )


def _mask_and_lengths(tokens_BxT, eos_id: int) -> dict:
    """mask: up to and including the first EOS (a row without EOS was cut at max_len)."""
    is_eos = tokens_BxT == eos_id
    after_eos = jnp.cumsum(is_eos, axis=1) - is_eos > 0
    mask = ~after_eos
    return {"mask": mask, "lengths": jnp.sum(mask, axis=1)}


METHODS = ("greedy", "temperature", "beam")


def make_decoder(
    model,
    method: str,
    *,
    max_len: int,
    eos_id: int = 1,
    temperature=1.0,
    top_k=0,
    top_p=1.0,
    num_decodes: int = 1,
    num_beams: int = 4,
    alpha=0.6,
):
    """`(params, batch, rng) -> outputs` for a decoding method named in a config or on the
    command line: "greedy", "temperature" (`sample`) or "beam" (`beam_search`)."""
    if method not in METHODS:
        raise ValueError(f"decoding method={method!r}; allowed: {list(METHODS)}")
    if method == "beam":
        return lambda params, batch, rng: beam_search(
            model,
            params,
            batch,
            max_len=max_len,
            num_beams=num_beams,
            alpha=alpha,
            eos_id=eos_id,
        )
    temperature = 0.0 if method == "greedy" else temperature
    return lambda params, batch, rng: sample(
        model,
        params,
        batch,
        rng,
        max_len=max_len,
        num_decodes=num_decodes,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
    )


def greedy_with_insertions(
    model, params, batch, vocabulary, insert, *, max_len: int, eos_id: int = 1, mesh=None
):
    """Greedy decoding with a tool's text inserted: after each token, `insert(text so far)`
    returns text (or None), whose tokens are fed to the model as its next outputs; e.g. the
    GSM8k calculator (`irl_lm.data.calculator.insertion`), which answers an open
    `<<expression=`. A host loop over one jitted step (the text has to be read between
    steps), so slower than `greedy`; returns `tokens` `[B, 1, T]`, `lengths` `[B, 1]` and
    `calls` `[B]`, the number of insertions per row.

    `mesh`: the mesh `batch` is sharded over (its leading dimension over data + fsdp). The
    cache stays sharded so; each step's predicted tokens come back replicated, so that every
    process (each runs this same loop over the same global rows) reads all of them, inserts
    the same text and feeds the same tokens back. None: one process, jit places everything.
    """
    rows = _batch_size(batch)
    prefill = lambda p, b: _prefill(model, p, b, max_len, 1)

    def step(params, cache, tokens_B, index):
        log_p, cache = _step(model, params, cache, tokens_B, index)
        return _argmax(log_p), cache

    if mesh is None:
        prefill, step = jax.jit(prefill), jax.jit(step)
        place = jnp.asarray
    else:
        rows_sharding = sharding.batch_sharding(mesh)  # every cache leaf has the batch first
        prefill = jax.jit(prefill, out_shardings=rows_sharding)
        step = jax.jit(step, out_shardings=(sharding.replicated(mesh), rows_sharding))
        place = lambda tokens_B: jax.make_array_from_callback(
            tokens_B.shape, rows_sharding, lambda index: tokens_B[index]
        )
    cache = prefill(params, batch)

    tokens = [[] for _ in range(rows)]
    queued = [[] for _ in range(rows)]  # forced tokens (inserted text) still to feed
    done, calls = [False] * rows, [0] * rows
    previous = place(np.zeros((rows,), np.int32))
    for t in range(max_len):
        if all(done):
            break
        predicted, cache = step(params, cache, previous, t)
        predicted = jax.device_get(predicted)
        chosen = []
        for row in range(rows):
            token = queued[row].pop(0) if queued[row] else int(predicted[row])
            if done[row]:
                token = 0
            else:
                tokens[row].append(token)
                done[row] = token == eos_id
                result = None if done[row] else insert(vocabulary.decode(tokens[row]))
                if result is not None:
                    queued[row] = list(vocabulary.encode(result))
                    calls[row] += 1
            chosen.append(token)
        previous = place(np.asarray(chosen, np.int32))
    out = np.zeros((rows, 1, max_len), np.int32)
    for row, seq in enumerate(tokens):
        out[row, 0, : len(seq)] = seq
    lengths = np.array([[len(seq)] for seq in tokens], np.int32)
    return {"tokens": out, "lengths": lengths, "calls": np.array(calls)}

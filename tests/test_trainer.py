"""The training loop end to end: workdir contents, TensorBoard, resume, NaN stop, config errors."""

import glob
import hashlib
import json
import os

import jax
import numpy as np
import pytest
from conftest import TINY_DECODER_ONLY, batch_sequences, numpy_iqlearn, restore_final
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from irl_lm import checkpointing, perf, sharding, train
from irl_lm.data import pipeline, tasks
from irl_lm.learners import common
from irl_lm.models import build_model


def read_events(workdir):
    """tag -> [(step, value)] from the event files; scalars as floats, texts as str."""
    events = EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    out = {}
    for tag in events.Tags()["tensors"]:
        values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]
        out[tag] = [(s, v.item().decode() if v.dtype == object else float(v)) for s, v in values]
    return out


def test_workdir_holds_config_model_info_checkpoints_and_events(make_config, tmp_path, monkeypatch):
    workdir = str(tmp_path)
    # A made-up peak for this CPU, so the MFU a GPU or TPU run reports is computed here too.
    monkeypatch.setattr(perf, "PEAK_BF16_FLOPS_PER_DEVICE", (("cpu", 1e12),))
    config = make_config("iqlearn")
    results = train.train_and_evaluate(config, workdir)
    assert results["step"] == 4
    assert json.load(open(os.path.join(workdir, "config.json")))["loss"]["name"] == "iqlearn"
    info = open(os.path.join(workdir, "model-info.txt")).read()
    assert "token_embedder/embedding\t(40, 32)\tfloat32" in info
    assert "total parameters:" in info
    steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*"))
    assert steps == [2, 4]
    scalars = read_events(workdir)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert all(np.isfinite(v) for _, v in scalars["train/loss"])
    assert [s for s, _ in scalars["eval/validation/iqlearn/nll"]] == [2, 4]
    validity = dict(scalars["eval/expert/validity"])[4]
    assert validity == results["eval"]["expert"]["validity"]
    assert 0.0 <= validity <= 1.0
    assert "policy:" in dict(scalars["eval/expert/samples"])[4]
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert saved["eval_reference"]["expert"]["validity"] == 1.0

    # Throughput: the step's model FLOPs from the model and the batch's padded shapes.
    model = build_model(train.resolve_model_config(config))
    lengths = pipeline.model_feature_lengths(tasks.build(config.task), decoder_only=False)
    shapes = {k: (8, lengths[k]) for k in ("encoder_input_tokens", "decoder_target_tokens")}
    got = saved["perf"]
    assert got["model_flops_per_step"] == perf.train_flops_per_step(model, shapes) > 0
    assert got["sampling_flops_per_step"] == 0.0
    tokens = 8 * (lengths["encoder_input_tokens"] + lengths["decoder_target_tokens"])
    assert got["tokens_per_s"] == pytest.approx(tokens * saved["steps_per_sec"], rel=1e-9)
    achieved = got["model_flops_per_step"] * saved["steps_per_sec"] / jax.device_count()
    assert got["tflops_per_s_per_device"] == pytest.approx(achieved / 1e12, rel=1e-9)
    assert got["mfu"] == pytest.approx(achieved / 1e12, rel=1e-9)
    for name in ("perf/tokens_per_s", "perf/tflops_per_s_per_device", "perf/mfu"):
        assert [s for s, _ in scalars[name]] == [2, 3, 4]  # from the second reported step
        assert all(v > 0 for _, v in scalars[name])


_ORIGINAL_NEXT = pipeline.TrainIterator.__next__


class _Recorder:
    """Wraps TrainIterator.__next__ to fingerprint batches and optionally crash."""

    def __init__(self, monkeypatch, crash_at=None):
        self.fingerprints, self.crash_at = [], crash_at

        def wrapped(it):
            if self.crash_at is not None and len(self.fingerprints) + 1 == self.crash_at:
                raise RuntimeError("simulated crash")
            batch = _ORIGINAL_NEXT(it)
            digest = hashlib.sha1(batch["decoder_target_tokens"].tobytes()).hexdigest()
            self.fingerprints.append(digest)
            return batch

        monkeypatch.setattr(pipeline.TrainIterator, "__next__", wrapped)


def final_params(workdir, config):
    from irl_lm.models import build_model

    model = build_model(train.resolve_model_config(config))
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    mesh = train.sharding.make_mesh(config.mesh)
    with train.sharding.use_mesh(mesh):
        abstract, shardings = common.state_shardings(
            model, tx, train.dummy_batch(config, model, 1), mesh
        )
        ckpt = checkpointing.Checkpointer(workdir, keep=5)
        state, metadata = ckpt.restore(
            ckpt.latest_step(), checkpointing.abstract_like(abstract, shardings)
        )
        ckpt.close()
    return jax.device_get(state.params), metadata


def test_resume_after_crash_continues_from_checkpoint_without_replay(
    make_config, tmp_path, monkeypatch
):
    config = make_config("iqlearn", total_steps=6, evals={})
    straight = _Recorder(monkeypatch)
    train.train_and_evaluate(config, str(tmp_path / "straight"))
    params_straight, _ = final_params(str(tmp_path / "straight"), config)

    crashed = _Recorder(monkeypatch, crash_at=4)  # steps 1-3 run, checkpoint at 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(config, str(tmp_path / "resumed"))
    resumed = _Recorder(monkeypatch)
    results = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert results["step"] == 6
    # The second run consumed exactly the batches of steps 3-6: nothing replayed or skipped.
    assert resumed.fingerprints == straight.fingerprints[2:6]
    assert crashed.fingerprints == straight.fingerprints[:3]
    params_resumed, metadata = final_params(str(tmp_path / "resumed"), config)
    assert metadata["data_position"] == 6
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
        params_straight,
        params_resumed,
    )


def test_nonfinite_loss_names_the_step_and_keeps_last_good_checkpoint(
    make_config, tmp_path, monkeypatch
):
    workdir = str(tmp_path)
    config = make_config("mle", total_steps=2, evals={})
    train.train_and_evaluate(config, workdir)

    def nan_loss(logits, targets, weights, **kw):
        loss = jax.numpy.sum(logits) * jax.numpy.nan
        return loss, {}

    monkeypatch.setattr("irl_lm.learners.make_loss", lambda loss_config: nan_loss)
    config.total_steps = 6
    with pytest.raises(FloatingPointError, match=r"at step 3.*Last good checkpoint: step 2"):
        train.train_and_evaluate(config, workdir)
    assert checkpointing.Checkpointer(workdir, keep=3).latest_step() == 2


def test_a_diverging_held_out_loss_is_warned_about_naming_step_and_tag():
    """Non-finite held-out losses, and an NLL above twice its lowest at an earlier
    evaluation; other scalars (a reverse KL of +inf, a falling NLL) pass silently."""
    lowest = {}
    evals = [
        (100, {"iqlearn/nll": 2.0, "iqlearn/loss": 2.5, "iqlearn/td2": 9.0}),
        (200, {"iqlearn/nll": 1.5, "iqlearn/loss": 1.8}),
        (300, {"iqlearn/nll": 3.5, "iqlearn/loss": float("nan")}),
        (400, {"iqlearn/nll": float("inf"), "reverse_kl": float("inf")}),
    ]
    warnings = [train.divergence_warnings("eval/validation", s, v, lowest) for s, v in evals]
    assert warnings[:2] == [[], []]
    assert warnings[2] == [
        "eval/validation/iqlearn/nll is 3.5 at step 300, over 2 times its lowest (1.5): "
        "diverging or overfitting",
        "eval/validation/iqlearn/loss is nan at step 300: the run has diverged",
    ]
    assert warnings[3] == ["eval/validation/iqlearn/nll is inf at step 400: the run has diverged"]
    assert lowest == {"eval/validation/iqlearn/nll": 1.5}


@pytest.mark.parametrize(
    "field,value,match",
    [
        (
            "task.name",
            "synthetic_exper",
            r"config.task.name='synthetic_exper'.*close matches: \['irl_lm.synthetic_expert'\]",
        ),
        (
            "model.name",
            "t55",
            r"config.model.name='t55'.*allowed: \['decoder_only', 't5', .*'gemma3_1b'.*'t5_base'",
        ),
        (
            "loss.name",
            "iqleran",
            r"config.loss.name='iqleran'.*allowed: \['gail', 'iqlearn', 'iqlearn_online', 'mle', "
            r"'mle_entropy'\]",
        ),
        ("loss.lam", -1.0, r"config.loss.lam=-1.0.*>= 0"),
        ("loss.gamma", 0.0, r"config.loss.gamma=0.0.*\(0, 1\]"),
        ("loss.gamma", 1.01, r"config.loss.gamma=1.01.*\(0, 1\]"),
        ("optimizer.name", "adam", r"config.optimizer.name='adam'.*allowed"),
        ("task.expert.branching", 0, r"branching"),
    ],
)
def test_bad_config_fails_at_start_naming_the_field(make_config, tmp_path, field, value, match):
    config = make_config("iqlearn")
    target = config
    *parents, leaf = field.split(".")
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_packed_training_loss_is_the_loss_of_its_examples_one_by_one(make_config, tmp_path):
    """Rows packed with several examples (segment ids): the loss logged at step 3 is NumPy's
    IQLearn loss of batch 3's examples, each read alone, under the step-2 parameters."""
    config = make_config(
        "iqlearn",
        evals={},
        **{"data.pack": True, "task.max_input_len": 24, "task.max_target_len": 24},
    )
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == config.total_steps
    losses = dict(read_events(str(tmp_path))["train/loss"])
    assert sorted(losses) == [1, 2, 3, 4]
    state, metadata, batch = restore_final(str(tmp_path), config, step=2)
    assert metadata["data_position"] == 2 and int(state.step) == 2
    assert batch["decoder_segment_ids"].max() >= 3  # packed: three examples in a row or more
    model = build_model(train.resolve_model_config(config))
    sequences = batch_sequences(batch)
    assert len(sequences) > config.batch_size
    lam, gamma = config.loss.lam, config.loss.gamma
    expected = numpy_iqlearn(model, state.params, sequences, lam=lam, gamma=gamma)
    assert losses[3] == pytest.approx(expected["loss"], rel=1e-4)


def test_sigterm_saves_a_checkpoint_and_stops(make_config, tmp_path, monkeypatch):
    import signal

    def next_then_terminate(it):
        batch = _ORIGINAL_NEXT(it)
        if it.position == 3:  # a scheduler's preemption notice, mid-run
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    monkeypatch.setattr(pipeline.TrainIterator, "__next__", next_then_terminate)
    config = make_config("mle", total_steps=10, evals={}, **{"checkpoint.every": 100})
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 3
    assert checkpointing.Checkpointer(str(tmp_path), keep=3).latest_step() == 3
    assert not os.path.exists(tmp_path / "results.json")  # unfinished: a rerun resumes


def test_decoder_only_model_trains_on_the_synthetic_expert(make_config, tmp_path):
    """Packed prefix-LM rows: the held-out loss of the final parameters is NumPy's, one
    BOS + x + EOS + y sequence at a time, and it fell from step 2 to step 4."""
    config = make_config(**{"data.pack": True})
    config.model = TINY_DECODER_ONLY
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 4
    state, _, _ = restore_final(str(tmp_path), config)
    model = build_model(train.resolve_model_config(config))
    task = tasks.build(config.task)
    prefix = pipeline.prompt_prefix(True, task.vocabulary)
    examples = [task.expert.example("validation", i) for i in range(16)]
    sequences = [([*prefix, *e["inputs"], task.eos_id], e["targets"].tolist()) for e in examples]
    lam, gamma = config.loss.lam, config.loss.gamma
    expected = numpy_iqlearn(model, state.params, sequences, lam=lam, gamma=gamma)
    for name in ("loss", "nll", "td2"):
        got = results["eval"]["validation"][f"iqlearn/{name}"]
        assert got == pytest.approx(expected[name], rel=1e-4), name
    nll = dict(read_events(str(tmp_path))["eval/validation/iqlearn/nll"])
    assert nll[4] < nll[2] - 0.01, nll  # measured: 4.045 -> 4.012


def _scaled_model_and_context(config):
    """A model of `config` with its initial parameters × 4 (peakier than at init), and an
    evaluation context on all devices."""
    from irl_lm import evaluators
    from irl_lm.data import tasks
    from irl_lm.data.synthetic import EOS_ID
    from irl_lm.losses import make_loss
    from irl_lm.models import build_model

    model = build_model(train.resolve_model_config(config))
    params = model.init(jax.random.PRNGKey(1), train.dummy_batch(config, model, 1))["params"]
    params = jax.tree.map(lambda p: 4 * p, sharding.unbox(params))
    mesh = sharding.make_mesh({"data": -1})
    task = tasks.build(config.task)
    assert task.eos_id == EOS_ID
    ctx = evaluators.EvalContext.from_config(
        config, task, model, mesh, loss_fn=make_loss(config.loss)
    )
    return model, params, ctx


def test_expert_evaluator_scores_a_decoder_only_model_as_a_direct_computation(make_config):
    """Forward KL: the evaluator's batched prompt + sample rows give the log-probabilities of
    one unpadded BOS + x + EOS + y sequence at a time."""
    from irl_lm import evaluators
    from irl_lm.data import pipeline, tasks
    from irl_lm.data.synthetic import EOS_ID

    config = make_config()
    config.model = TINY_DECODER_ONLY
    model, params, ctx = _scaled_model_and_context(config)
    with sharding.use_mesh(ctx.mesh):
        evaluator = evaluators.ExpertEvaluator(ctx, "expert", num_examples=3, num_samples=2)
        scalars, _ = evaluator(params, 0)
    bos = pipeline.bos_id(tasks.get_task(config.task).output_features["targets"].vocabulary)
    terms, tokens = 0.0, 0
    for row, y in enumerate(evaluator.expert_samples):
        x = evaluator.inputs[row // 2]
        sequence = np.array([[bos, *x, EOS_ID, *y[:-1]]], np.int32)
        logits = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": sequence}))
        logits = logits[0].astype(np.float64)
        log_q = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        start = len(x) + 1  # the position whose input is the prompt's EOS predicts y_0
        log_q_y = sum(log_q[start + j, token] for j, token in enumerate(y))
        terms += evaluator.expert.log_prob(x, y) - log_q_y
        tokens += len(y)
    assert scalars["forward_kl"] == pytest.approx(terms / tokens, rel=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_expert_evaluator_scores_greedy_and_beam_outputs(make_config, method):
    """One output per input (the best beam): validity and the reverse KL of a point mass,
    −log p_E per token of the valid outputs (+ log P(valid)), from the decoder's outputs."""
    from irl_lm import decoding, evaluators
    from irl_lm.data.synthetic import EOS_ID

    model, params, ctx = _scaled_model_and_context(make_config())
    with sharding.use_mesh(ctx.mesh):
        evaluator = evaluators.ExpertEvaluator(
            ctx, "expert", num_examples=8, num_samples=2, method=method
        )
        scalars, _ = evaluator(params, 0)
        prompts = np.zeros((8, evaluator.expert.spec.max_input_len_with_eos), np.int32)
        for i, x in enumerate(evaluator.inputs):
            prompts[i, : len(x) + 1] = [*x, EOS_ID]
        decode = decoding.make_decoder(model, method, max_len=evaluator.max_len, num_beams=4)
        batch = {"encoder_input_tokens": prompts}
        out = jax.device_get(decode(params, batch, jax.random.PRNGKey(0)))
    assert "self_bleu" not in scalars
    log_ps = [
        evaluator.expert.log_prob(x, out["tokens"][i, 0, : out["lengths"][i, 0]])
        for i, x in enumerate(evaluator.inputs)
    ]
    valid = [(lp, int(out["lengths"][i, 0])) for i, lp in enumerate(log_ps) if np.isfinite(lp)]
    assert scalars["validity"] == len(valid) / 8
    if valid:
        expected = (-sum(lp for lp, _ in valid) - len(valid) * np.log(len(valid) / 8)) / sum(
            n for _, n in valid
        )
        assert scalars["reverse_kl"] == pytest.approx(expected, rel=1e-5)


def test_step_cost_counts_online_samples_and_every_gail_pass(make_config):
    """Online IQLearn: the data rows and the sampled rows in the update, their drawing
    apart; GAIL: 2 discriminator updates over data and samples with the reference policy
    ("log_ratio"), the samples' rewards and reference logits, the policy update with its
    NLL term, each pass counted by `perf` on the data's shapes."""
    from irl_lm.data import tasks

    config = make_config("iqlearn_online")
    model_config = train.resolve_model_config(config)
    model = build_model(model_config)
    task = tasks.build(config.task)
    lengths = pipeline.model_feature_lengths(task, decoder_only=False)
    features = ("encoder_input_tokens", "decoder_target_tokens")
    shapes = lambda rows: {k: (rows, lengths[k]) for k in features}
    train_flops = lambda rows: perf.train_flops_per_step(model, shapes(rows))
    mesh = sharding.make_mesh({"data": 2}, jax.devices()[:2])  # α·8 rows, rounded up to 2

    def learner_for(config):
        with sharding.use_mesh(mesh):
            return train.build_learner(
                config, task, model, model_config, mesh, jax.random.PRNGKey(0)
            )[1]

    cost = learner_for(config)
    assert cost.sampled_rows == 2
    assert cost.update_flops == train_flops(8) + train_flops(2)
    inputs, targets = lengths["encoder_input_tokens"], lengths["decoder_target_tokens"]
    assert cost.sampling_flops == perf.sampling_flops(model, 2, inputs, targets) > 0

    config = make_config("gail", **{"loss.mle_weight": 0.5, "discriminator.updates_per_step": 2})
    cost = learner_for(config)
    assert cost.sampled_rows == 8
    forward = train_flops(8) / 3  # the discriminator is the policy's shape here
    disc_updates = 2 * (2 * 3 * forward + 2 * forward)  # 2 x (D fwd+bwd, reference fwd) x 2
    rewards, reference_logits, policy_update = 2 * forward, forward, 2 * 3 * forward
    assert cost.update_flops == pytest.approx(
        disc_updates + rewards + reference_logits + policy_update, rel=1e-12
    )
    assert cost.sampling_flops == perf.sampling_flops(model, 8, inputs, targets)

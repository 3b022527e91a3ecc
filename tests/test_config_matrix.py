"""Every config at its full size x every loss x each model family, checked abstractly.

Each case follows the trainer's start (`train.train_and_evaluate`): the config validates
(as its documented command runs it, with `config.init_from`), resolves and builds its task,
model, learner and evaluators (`test_config_builds_at_full_size`); then the learner's
jitted step (after the online sampler; GAIL's two-model step) and every evaluator's jitted
functions are traced with `jax.eval_shape` on abstract parameters (ShapeDtypeStructs with
their shardings) and batches of the config's shapes, on the tests' 8-device mesh
(`test_steps_trace_at_full_size`). Nothing is compiled, no parameters are allocated, no
data is read, and `init_from` is never opened: a mode=full run's checkpoint tokenizer is
stood in for (`CHECKPOINTS`: the public checkpoints' sizes and ids, not available offline),
and the evaluators' held-out examples are two short prompts of the task's width.

Cost on 2 CPU cores (2026-12-03): the builds ~35 s; the traces ~3.5 min by default (a Latin
square, see `traced_by_default`), ~6.5 min for every case (IRL_LM_CONFIG_MATRIX=full).
Tracing is Python work in proportion to the layers; GAIL's step on Gemma 3 1B alone takes
~20-30 s. Traces that depend on the same things are shared between cases (`traced`); the
end of the run prints what was built, traced, shared and skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import pytest
from test_configs import CONFIG_DIR, load

from irl_lm import evaluators, preflight, sharding
from irl_lm.data import pipeline
from irl_lm.learners.gail import GAILState
from irl_lm.losses import make_loss
from irl_lm.models import PUBLIC_PARAM_COUNTS, is_decoder_only

LOSS_NAMES = ("mle", "mle_entropy", "iqlearn", "iqlearn_online", "gail")
# A full-size model of each family: the paper-task configs' default and the decoder-only
# preset their docstrings run (sliding-window and global layers, 262k vocabulary).
FULL_MODELS = {"t5": "t5_base", "decoder_only": "gemma3_1b", "t5gemma": "t5gemma2_1b_1b"}
TEXT_CONFIGS = ("gsm8k", "seqio_task", "tldr", "wmt22", "xsum")
# The demo and its study base have no `mode` (their one size is the full one) and no
# presets (they train a tiny T5, or the demo a tiny T5Gemma 2).
EXPERT_CONFIGS = ("demo", "expert_study")
# Metrics each loss's step reports besides loss, grad_norm and num_tokens (its own terms).
LOSS_TERMS = {
    "mle": ("mle/nll",),
    "mle_entropy": ("mle_entropy/nll", "mle_entropy/loss"),
    "iqlearn": ("iqlearn/nll", "iqlearn/td2"),
    "iqlearn_online": ("iqlearn_online/td2", "iqlearn_online/online_term"),
    "gail": ("gail/disc_loss", "gail/pg_loss", "gail/kl_to_reference"),
}
# A term of each loss's held-out evaluation (the loss evaluator: no samples, no
# discriminator, so online IQLearn's offline terms and GAIL's policy NLL).
HELD_OUT_TERMS = {
    "mle": "mle/nll",
    "mle_entropy": "mle_entropy/nll",
    "iqlearn": "iqlearn/td2",
    "iqlearn_online": "iqlearn/td2",
    "gail": "gail/nll",
}
# By default the text configs' steps are traced for a Latin square of (config, loss) per
# family, so that every (config, family) and every (family, loss) is traced once; the demo
# and its study base (tiny models) for every loss. IRL_LM_CONFIG_MATRIX=full: every case.
FULL_MATRIX = os.environ.get("IRL_LM_CONFIG_MATRIX") == "full"
_SQUARE_SHIFT = {"t5": 0, "decoder_only": 2, "t5gemma": 4}


def traced_by_default(config_name: str, loss: str, family: str) -> bool:
    if config_name in EXPERT_CONFIGS:  # tiny models: every loss
        return True
    shift = TEXT_CONFIGS.index(config_name) + _SQUARE_SHIFT[family]
    return shift % len(LOSS_NAMES) == LOSS_NAMES.index(loss)


def _cases():
    cases = []
    for name in EXPERT_CONFIGS:  # (decoder-only: skipped, saying why)
        cases += [
            (name, f"loss={loss}", loss, family) for family in FULL_MODELS for loss in LOSS_NAMES
        ]
    for name in TEXT_CONFIGS:
        for family, preset in FULL_MODELS.items():
            cases += [
                (name, f"mode=full,loss={loss},model={preset}", loss, family) for loss in LOSS_NAMES
            ]
    return cases


def _case_id(case) -> str:
    name, arg, _, family = case
    return f"{name}:{arg}" + ("" if "model=" in arg else f"/{family}")


CASES = _cases()
CASE_IDS = [_case_id(case) for case in CASES]


# ----------------------------------------------------------------------------- stubs
# A mode=full run reads its tokenizer from the checkpoint in `config.init_from`, not available
# offline: `irl_lm.preflight` stands in for it (the public checkpoint's size and EOS / BOS
# ids), and its evaluators see two short prompts of the task's width instead of the split.

_PARAM_SHAPES: dict[str, tuple] = {}
_abstract_params = sharding.abstract_params


def _shared_abstract_params(model, mesh, example_batch=None):
    """`sharding.abstract_params` once per model config and mesh: parameter shapes do not
    depend on the batch (its docstring), and GAIL's learner asks twice."""
    key = json.dumps(
        [type(model).__name__, dataclasses.asdict(model.config), mesh.shape, mesh.device_ids],
        default=str,
    )
    if key not in _PARAM_SHAPES:
        _PARAM_SHAPES[key] = _abstract_params(model, mesh, example_batch)
    return _PARAM_SHAPES[key]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(sharding, "abstract_params", _shared_abstract_params)
    with preflight.stand_in_vocabularies(), preflight.placeholder_task_examples():
        yield


# ----------------------------------------------------------------------------- tracing


@dataclasses.dataclass
class Tally:
    built: int = 0  # cases built
    traced: int = 0  # cases traced
    traces: int = 0  # distinct traces run (the other cases shared one)
    shared: int = 0
    costs: list = dataclasses.field(default_factory=list)  # (seconds, what was traced)
    skipped: list = dataclasses.field(default_factory=list)  # (case, reason)


TALLY = Tally()
_TRACES: dict[str, tuple] = {}


def traced(label: str, key: dict, fn):
    """`fn()` (eval_shapes) once per `key`, everything the trace depends on: the cases that
    share it share its result, or its error."""
    text = json.dumps(key, sort_keys=True, default=str)
    if text in _TRACES:
        TALLY.shared += 1
    else:
        started = time.perf_counter()
        try:
            _TRACES[text] = (fn(), None)
        except Exception as e:  # re-raised in every case that shares the trace
            _TRACES[text] = (None, e)
        TALLY.traces += 1
        TALLY.costs.append((time.perf_counter() - started, label))
    result, error = _TRACES[text]
    if error is not None:
        raise error
    return result


@dataclasses.dataclass
class Run:
    """What `train.train_and_evaluate` has built when its loop starts (`preflight.Run`), and
    what the traces of this run depend on."""

    built: preflight.Run
    key: dict

    def __getattr__(self, name):
        return getattr(self.built, name)


def start(name: str, arg: str) -> Run:
    config = load(os.path.join(CONFIG_DIR, f"{name}.py")).get_config(arg)
    preset = dict(p.split("=") for p in arg.split(",")).get("model")
    if preset:  # mode=full fine-tunes a checkpoint, as the configs' commands run it
        config.init_from = f"hf:/ckpts/{preset}"
    # The checkpoint is not there: its tokenizer and embedding rows are stood in for.
    config, _ = preflight.offline_config(config)
    built = preflight.build_run(config)
    key = dict(
        model=built.model_config,
        lengths=built.lengths,
        task_lengths=dict(built.task.lengths),
        eos_id=built.task.eos_id,
        bos_id=pipeline.vocabulary_bos_id(built.task.vocabulary),
        mesh=dict(built.mesh.shape),
    )
    return Run(built, key)


def trace_train_step(run: Run) -> dict:
    """The learner's step (after its sampler, for online losses) on one abstract batch."""
    config = run.config
    key = run.key | {
        "what": "train_step",
        "config": {
            k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
            for k in (
                "loss",
                "optimizer",
                "schedule",
                "discriminator",
                "total_steps",
                "batch_size",
                "grad_accum_steps",
                "logits_chunk_size",
            )
        },
    }

    def trace():
        calls = {c.name: c for c in preflight.train_calls(run.built)}
        step = calls["train_step"]
        with sharding.use_mesh(run.mesh):
            new_state, metrics = jax.eval_shape(step.fn, *step.args)
        policy = step.args[3] if "sampler" in calls else None
        return dict(batch=step.args[1], policy=policy, state=new_state, metrics=metrics)

    label = f"train step {run.config.model.name} {config.loss.name} {dict(run.task.lengths)}"
    return traced(label, key, trace)


def trace_evaluators(run: Run) -> dict[str, dict]:
    """Each evaluator of `config.evals`, built as the trainer builds it, and each of its
    jitted functions traced on the shapes its `__call__` feeds them (`preflight.eval_calls`):
    evaluator name -> {call name: outputs}."""
    config = run.config
    shared = run.key | {
        "eval_batch_size": config.eval_batch_size,
        "logits_chunk_size": config.get("logits_chunk_size", 0),
    }
    out = {}
    for name, calls in preflight.eval_calls(run.built).items():
        fields = dict(config.evals[name])
        # The loss evaluator's trace depends on the loss; the others' do not (the reward's
        # gamma is a constant in its trace), so they are traced once per config and model.
        key = shared | {"what": name, "evaluator": fields}
        if fields["kind"] == "loss":
            key["loss"] = config.loss.to_dict()

        def trace(calls=calls):
            with sharding.use_mesh(run.mesh):
                return {c.name.split("/", 1)[1]: jax.eval_shape(c.fn, *c.args) for c in calls}

        label = f"evaluator {name} {config.model.name} {dict(run.task.lengths)}"
        out[name] = traced(label, key, trace)
    return out


# ----------------------------------------------------------------------------- the matrix

_RUNS: dict[str, Run] = {}


def built(name: str, arg: str) -> Run:
    if f"{name}:{arg}" not in _RUNS:
        _RUNS[f"{name}:{arg}"] = start(name, arg)
    return _RUNS[f"{name}:{arg}"]


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    """Says at the end what the matrix ran, traced, shared and skipped, and in how long."""
    started = time.perf_counter()
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    seconds = sum(cost for cost, _ in TALLY.costs)
    lines = [
        f"config matrix: {TALLY.built} cases built, {TALLY.traced} traced with "
        f"{TALLY.traces} distinct traces ({TALLY.shared} shared) in {seconds:.0f} s, "
        f"{time.perf_counter() - started:.0f} s in all; {len(TALLY.skipped)} skipped"
    ]
    reasons = collections.Counter(reason for _, reason in TALLY.skipped)
    lines += [f"  skipped {count}: {reason}" for reason, count in sorted(reasons.items())]
    slowest = sorted(TALLY.costs, reverse=True)[:3]
    lines += [f"  slowest trace: {cost:.1f} s {label}" for cost, label in slowest]
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n" + "\n".join(lines))


def _skip(case, reason: str):
    TALLY.skipped.append((_case_id(case), reason))
    pytest.skip(reason)


def _skip_unless_applicable(*case):
    name, _, _, family = case
    if name in EXPERT_CONFIGS and family != "t5":
        _skip(case, f"{name}.py trains a tiny model only (no presets)")


@pytest.mark.parametrize(("config_name", "arg", "loss", "family"), CASES, ids=CASE_IDS)
def test_config_builds_at_full_size(config_name, arg, loss, family, offline):
    """Validates, resolves and builds what the trainer builds before its loop: task, model
    at its full size, learner (abstract state, shardings, sampler) and evaluators."""
    _skip_unless_applicable(config_name, arg, loss, family)
    run = built(config_name, arg)
    TALLY.built += 1
    config, learner = run.config, run.learner
    assert config.loss.name == loss
    assert is_decoder_only(run.model) == (family == "decoder_only")
    preset = run.config.model.name
    if preset in PUBLIC_PARAM_COUNTS:  # the preset is the public checkpoint's shape
        shapes = jax.tree.leaves(run.state.params)
        assert sum(math.prod(x.shape) for x in shapes) == PUBLIC_PARAM_COUNTS[preset]
    if config_name in TEXT_CONFIGS:  # the task's lengths reach the batch
        inputs, targets = config.task.max_input_len, config.task.max_target_len
        assert dict(run.task.lengths) == {"inputs": inputs, "targets": targets}
        assert run.lengths["decoder_target_tokens"] == (
            inputs + targets if family == "decoder_only" else targets
        )
    # Online losses sample a fraction alpha of the batch rounded up to the 8 batch shards;
    # GAIL samples all of it.
    want_rows = {"iqlearn_online": 8, "gail": config.batch_size}.get(loss, 0)
    assert learner.sampled_rows == want_rows
    assert (learner.sampler is not None) == bool(want_rows)
    assert isinstance(learner.abstract_state, GAILState) == (loss == "gail")
    ctx = evaluators.EvalContext.from_config(
        config, run.task, run.model, run.mesh, loss_fn=make_loss(config.loss)
    )
    assert set(evaluators.make_evaluators(ctx, config.evals)) == set(config.evals)


@pytest.mark.slow
@pytest.mark.parametrize(("config_name", "arg", "loss", "family"), CASES, ids=CASE_IDS)
def test_steps_trace_at_full_size(config_name, arg, loss, family, offline):
    """The learner's step (with its sampler) and every evaluator's jitted functions trace
    on abstract parameters and batches of the config's shapes."""
    _skip_unless_applicable(config_name, arg, loss, family)
    if not (FULL_MATRIX or traced_by_default(config_name, loss, family)):
        _skip(
            (config_name, arg, loss, family),
            "traced with IRL_LM_CONFIG_MATRIX=full (by default, a Latin square)",
        )
    run = built(config_name, arg)
    config = run.config
    out = trace_train_step(run)
    TALLY.traced += 1

    # The step returns a state of the same shapes, dtypes and shardings (it is donated).
    want = jax.tree_util.tree_leaves_with_path(run.state)
    got = jax.tree_util.tree_leaves_with_path(out["state"])
    assert [p for p, _ in got] == [p for p, _ in want]
    for (path, a), (_, b) in zip(got, want, strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype), path
        assert a.sharding.is_equivalent_to(b.sharding, len(a.shape)), path
    metrics = out["metrics"]
    assert {"loss", "grad_norm", "num_tokens", *LOSS_TERMS[loss]} <= set(metrics)
    assert all(m.shape == () and m.dtype == jnp.float32 for m in metrics.values()), metrics
    inputs, targets = run.task.lengths["inputs"], run.task.lengths["targets"]
    if out["policy"] is not None:  # samples laid out as teacher-forced rows
        policy, rows = out["policy"], run.learner.sampled_rows
        assert set(policy) >= {*type(run.model).input_features, "decoder_loss_weights"}
        assert {x.shape[0] for x in policy.values()} == {rows}
        if family != "decoder_only":
            assert policy["decoder_target_tokens"].shape == (rows, targets)

    evals = trace_evaluators(run)
    assert set(evals) == set(config.evals)
    # A teacher-forced row of a prompt and a sample: an encoder-decoder's decoder reads the
    # sample, a decoder-only model BOS + input + sample, less the last token.
    scored = 1 + inputs + targets - 1 if family == "decoder_only" else targets
    for name, traces in evals.items():
        fields = dict(config.evals[name])
        if fields["kind"] == "loss":
            assert {"num_tokens", HELD_OUT_TERMS[loss]} <= set(traces["step"])
        if fields["kind"] == "decode":  # eval_batch_size rows on 8 shards, [B, N, T]
            n = fields.get("num_decodes", 1)
            if fields.get("calculator"):  # the prefill, then the step: tokens and cache
                prefill, (tokens, cache) = traces["prefill"], traces["step"]
                assert tokens.shape == (config.eval_batch_size,)
                assert jax.tree.map(jnp.shape, cache) == jax.tree.map(jnp.shape, prefill)
            else:
                want = (config.eval_batch_size, n, targets)
                assert traces["decode"]["tokens"].shape == want, name
        if fields["kind"] == "reward":  # num_samples samples of eval_batch_size / N inputs
            samples = fields["num_samples"]
            want = (config.eval_batch_size // samples, samples, targets)
            assert traces["decode"]["tokens"].shape == want
            assert traces["rewards"].shape == (config.eval_batch_size, scored)
        if fields["kind"] == "synthetic_expert":  # every input's samples, flattened
            rows = fields["num_examples"] * fields["num_samples"]
            assert traces["decode"]["tokens"].shape == (rows, targets)
            assert traces["expert_log_probs"].shape[0] == rows

"""Every config at its full size x every loss x both model families, checked abstractly.

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
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from test_configs import CONFIG_DIR, load

from irl_lm import checkpointing, decoding, evaluators, learners, sharding, train
from irl_lm.data import pipeline, tasks
from irl_lm.evaluators import common as eval_common
from irl_lm.evaluators import decode as decode_evaluator
from irl_lm.evaluators import reward as reward_evaluator
from irl_lm.learners.gail import GAILState
from irl_lm.losses import make_loss
from irl_lm.models import PUBLIC_PARAM_COUNTS, build_model, is_decoder_only

LOSS_NAMES = ("mle", "mle_entropy", "iqlearn", "iqlearn_online", "gail")
# A full-size model of each family: the paper-task configs' default and the decoder-only
# preset their docstrings run (sliding-window and global layers, 262k vocabulary).
FULL_MODELS = {"t5": "t5_base", "decoder_only": "gemma3_1b"}
TEXT_CONFIGS = ("gsm8k", "seqio_task", "tldr", "wmt22", "xsum")
# The demo and its study base have neither `mode` (their one size is the full one) nor
# `model` (they train a T5 only).
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
_SQUARE_SHIFT = {"t5": 0, "decoder_only": 2}


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


class CheckpointTokenizer(seqio.ByteVocabulary):
    """Stands in for a checkpoint's tokenizer, which `config.init_from=hf:DIR` gives a
    mode=full run (`train.resolve_config`) and which is not available offline: the real
    size, EOS and BOS ids (what shapes and decoding read), bytes for text."""

    def __init__(self, size: int, eos_id: int, bos_id: int | None):
        super().__init__()
        self._size, self._eos_id, self._bos_id = size, eos_id, bos_id

    @property
    def _base_vocab_size(self):
        return self._size

    @property
    def eos_id(self):
        return self._eos_id

    @property
    def bos_id(self):
        return self._bos_id


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What `config.init_from=hf:DIR` gives a mode=full run of a preset's public checkpoint
    (`train.resolve_config`, `resolve_model_config`) that this test does not read: its
    tokenizer (a stand-in with its size and EOS / BOS ids) and its config.json vocab_size."""

    tokenizer: CheckpointTokenizer
    vocab_size: int


CHECKPOINTS = {
    # google/t5-v1_1-base: T5's SentencePiece model (32000 pieces, 100 sentinels; also
    # `tasks.T5_VOCABULARY`), an embedding of 32128 rows.
    "t5_base": Checkpoint(CheckpointTokenizer(32_100, eos_id=1, bos_id=None), 32_128),
    # google/gemma-3-1b-pt: tokenizer.model (262144 pieces, BOS 2, EOS 1).
    "gemma3_1b": Checkpoint(CheckpointTokenizer(262_144, eos_id=1, bos_id=2), 262_144),
}


def _load_vocabulary(folder: str):
    """`vocabularies.load_vocabulary` for the folders `start` names `stub:<preset>`."""
    return CHECKPOINTS[folder.removeprefix("stub:")].tokenizer


def _task_examples(ctx, name, split, max_examples):
    """`evaluators.common.task_examples` without reading the split: two short prompts per
    (sub-)task, in the width `text_examples` gives them (what the traces' shapes read)."""
    del name, max_examples
    prefix = pipeline.prompt_prefix(is_decoder_only(ctx.model), ctx.task.vocabulary)
    parts = []
    for sub in ctx.task.subtasks:
        if split not in sub.splits:
            continue
        parts.append(
            eval_common.TextExamples(
                sub,
                ctx.task.vocabulary,
                inputs=["a", "b"],
                targets=["c", "d"],
                examples=[{}, {}],
                target_ids=[[7, 1], [8, 1]],
                prompts=[[*prefix, 5, 1], [*prefix, 6, 1]],
                width=len(prefix) + ctx.task.lengths["inputs"],
            )
        )
    assert parts, f"task {ctx.task.name} has no {split!r} split"
    return parts


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
    monkeypatch.setattr(tasks, "load_vocabulary", _load_vocabulary)
    monkeypatch.setattr(sharding, "abstract_params", _shared_abstract_params)
    monkeypatch.setattr(decode_evaluator, "task_examples", _task_examples)
    monkeypatch.setattr(reward_evaluator, "task_examples", _task_examples)


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


def abstract(shapes: dict, mesh, dtype=jnp.int32) -> dict:
    batch = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(tuple(v), dtype, sharding=batch) for k, v in shapes.items()}


def like(arrays: dict, mesh) -> dict:
    return abstract({k: np.shape(v) for k, v in arrays.items()}, mesh)


RNG = jax.ShapeDtypeStruct((2,), jnp.uint32)


@dataclasses.dataclass
class Run:
    """What `train.train_and_evaluate` has built when its loop starts."""

    config: object
    task: tasks.Task
    model_config: dict
    model: object
    mesh: object
    lengths: dict
    learner: learners.Learner
    state: object  # abstract, with shardings
    key: dict  # what the traces of this run depend on


def start(name: str, arg: str) -> Run:
    config = load(os.path.join(CONFIG_DIR, f"{name}.py")).get_config(arg)
    preset = dict(p.split("=") for p in arg.split(",")).get("model")
    if preset:  # mode=full fine-tunes a checkpoint, as the configs' commands run it
        config.init_from = f"hf:/ckpts/{preset}"
    train.validate_config(config)
    # The checkpoint is not read: its tokenizer is stood in for where `resolve_config` would
    # take it, and its architecture is the preset's (the public checkpoint's shapes).
    config.init_from = ""
    config, source = train.resolve_config(config)
    if preset:
        config.model.vocab_size = CHECKPOINTS[preset].vocab_size
        if tasks.takes_vocabulary(config.task) and not config.task.vocabulary:
            config.task.vocabulary = f"stub:{preset}"
    task = tasks.build(config.task)
    model_config = train.resolve_model_config(config, source, task)
    model = build_model(model_config)
    mesh = sharding.make_mesh(config.mesh)
    decoder_only = is_decoder_only(model)
    with sharding.use_mesh(mesh):
        lengths = pipeline.model_feature_lengths(task, decoder_only=decoder_only)
        learner = learners.make_learner(
            config,
            model,
            model_config,
            mesh,
            batch_lengths=lengths,
            lengths=task.lengths,
            eos_id=task.eos_id,
            rng=jax.random.PRNGKey(0),
        )
    state = checkpointing.abstract_like(learner.abstract_state, learner.shardings)
    key = dict(
        model=model_config,
        lengths=lengths,
        task_lengths=dict(task.lengths),
        eos_id=task.eos_id,
        bos_id=pipeline.vocabulary_bos_id(task.vocabulary),
        mesh=dict(mesh.shape),
    )
    return Run(config, task, model_config, model, mesh, lengths, learner, state, key)


def trace_train_step(run: Run) -> dict:
    """The learner's step (after its sampler, for online losses) on one abstract batch."""
    config, learner = run.config, run.learner
    batch = abstract({k: (config.batch_size, n) for k, n in run.lengths.items()}, run.mesh)
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
        with sharding.use_mesh(run.mesh):
            if learner.sampler is None:
                return None, jax.eval_shape(learner.step, run.state, batch, RNG)
            policy = jax.eval_shape(learner.sampler, run.state.params, batch, RNG)
            return policy, jax.eval_shape(learner.step, run.state, batch, RNG, policy)

    label = f"train step {run.config.model.name} {config.loss.name} {dict(run.task.lengths)}"
    policy, (new_state, metrics) = traced(label, key, trace)
    return dict(batch=batch, policy=policy, state=new_state, metrics=metrics)


def trace_evaluators(run: Run) -> dict[str, dict]:
    """Each evaluator of `config.evals`, built as the trainer builds it, and each of its
    jitted functions traced on the shapes its `__call__` feeds them: name -> outputs."""
    config, model, mesh = run.config, run.model, run.mesh
    ctx = evaluators.EvalContext.from_config(
        config, run.task, model, mesh, loss_fn=make_loss(config.loss)
    )
    built = evaluators.make_evaluators(ctx, config.evals)
    params = run.state.params
    shared = run.key | {
        "eval_batch_size": config.eval_batch_size,
        "logits_chunk_size": config.get("logits_chunk_size", 0),
    }
    out = {}
    for name, (_, evaluator) in built.items():
        fields = dict(config.evals[name])
        # The loss evaluator's trace depends on the loss; the others' do not (the reward's
        # gamma is a constant in its trace), so they are traced once per config and model.
        key = shared | {"what": name, "evaluator": fields}
        if fields["kind"] == "loss":
            key["loss"] = config.loss.to_dict()
        trace = functools.partial(_TRACERS[type(evaluator)], evaluator, fields, params, run)
        label = f"evaluator {name} {config.model.name} {dict(run.task.lengths)}"
        out[name] = traced(label, key, lambda trace=trace: _with_mesh(mesh, trace))
    return out


def _with_mesh(mesh, fn):
    with sharding.use_mesh(mesh):
        return fn()


def _trace_loss(evaluator, fields, params, run):
    rows = run.config.eval_batch_size  # `pipeline.eval_batches` rows (one host)
    batch = abstract({k: (rows, n) for k, n in run.lengths.items()}, run.mesh)
    return {"sums": jax.eval_shape(evaluator._step, params, batch)}


def _teacher_forced(run, *, prompt_width, target_width, rows):
    """The abstract batch `evaluators.common.teacher_forced_rows` makes of `rows` rows."""
    prefix = pipeline.prompt_prefix(is_decoder_only(run.model), run.task.vocabulary)
    batch, _ = eval_common.teacher_forced_rows(
        run.model,
        [[*prefix, 5, 1]],
        [[7, 1]],
        prompt_width=prompt_width,
        target_width=target_width,
        rows=rows,
    )
    return like(batch, run.mesh)


def _trace_decode(evaluator, fields, params, run):
    prompts = abstract({evaluator.prompt_feature: (evaluator.rows, evaluator.width)}, run.mesh)
    out = {}
    if fields.get("calculator"):
        # A host loop over jitted functions (it reads the text between steps): run it with
        # each jitted call traced instead, every row ending at the first step.
        host_loop = HostLoopTracer(run.task.eos_id)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(decoding, "jax", host_loop)
            evaluator._decode(params, prompts, RNG)
        out["calls"] = host_loop.calls
    else:
        out["decoded"] = jax.eval_shape(evaluator._decode, params, prompts, RNG)
    if evaluator._token_log_probs is not None:  # the task's score metrics
        batch = _teacher_forced(
            run,
            prompt_width=evaluator.width,
            target_width=evaluator.target_width,
            rows=evaluator.rows,
        )
        out["target_log_probs"] = jax.eval_shape(evaluator._token_log_probs, params, batch)
    return out


class HostLoopTracer:
    """`jax` for a module whose host loop is traced rather than run: each function it jits
    is traced (`eval_shape`) when called, and what it reads back (`device_get`) is EOS."""

    def __init__(self, eos_id: int):
        self.eos_id, self.calls = eos_id, []

    def __getattr__(self, name):
        return getattr(jax, name)

    def jit(self, fn, **kwargs):
        jitted = jax.jit(fn, **kwargs)

        def call(*args):
            out = jax.eval_shape(jitted, *args)
            self.calls.append(out)
            return out

        return call

    def device_get(self, tree):
        return jax.tree.map(lambda x: np.full(x.shape, self.eos_id, x.dtype), tree)


def _trace_reward(evaluator, fields, params, run):
    prompt_feature = type(run.model).input_features[0]
    prompts = abstract({prompt_feature: (evaluator.chunk, evaluator.width)}, run.mesh)
    decoded = jax.eval_shape(evaluator._decode, params, prompts, RNG)
    batch = _teacher_forced(
        run,
        prompt_width=evaluator.width,
        target_width=evaluator.max_len,
        rows=evaluator.chunk * evaluator.num_samples,
    )
    return {"decoded": decoded, "rewards": jax.eval_shape(evaluator._rewards, params, batch)}


def _trace_expert(evaluator, fields, params, run):
    batch, expert = evaluator._policy_batch, evaluator._expert_batch
    return {
        "decoded": jax.eval_shape(evaluator._decode, params, batch, evaluator._rng),
        "expert_log_probs": jax.eval_shape(evaluator._token_log_probs, params, expert),
    }


_TRACERS = {
    evaluators.LossEvaluator: _trace_loss,
    evaluators.DecodeEvaluator: _trace_decode,
    evaluators.RewardEvaluator: _trace_reward,
    evaluators.ExpertEvaluator: _trace_expert,
}


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
        _skip(case, f"{name}.py has no `model` key: it trains a T5 only")


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
        if family == "t5":
            assert policy["decoder_target_tokens"].shape == (rows, targets)

    evals = trace_evaluators(run)
    assert set(evals) == set(config.evals)
    # A teacher-forced row of a prompt and a sample: T5's decoder reads the sample, a
    # decoder-only model BOS + input + sample, less the last token.
    scored = targets if family == "t5" else 1 + inputs + targets - 1
    for name, traces in evals.items():
        fields = dict(config.evals[name])
        if fields["kind"] == "loss":
            assert {"num_tokens", HELD_OUT_TERMS[loss]} <= set(traces["sums"])
        if fields["kind"] == "decode":  # eval_batch_size rows on 8 shards, [B, N, T]
            n = fields.get("num_decodes", 1)
            if fields.get("calculator"):  # the prefill, then the step: tokens and cache
                prefill, (tokens, cache) = traces["calls"]
                assert tokens.shape == (config.eval_batch_size,)
                assert jax.tree.map(jnp.shape, cache) == jax.tree.map(jnp.shape, prefill)
            else:
                want = (config.eval_batch_size, n, targets)
                assert traces["decoded"]["tokens"].shape == want, name
        if fields["kind"] == "reward":  # num_samples samples of eval_batch_size / N inputs
            samples = fields["num_samples"]
            want = (config.eval_batch_size // samples, samples, targets)
            assert traces["decoded"]["tokens"].shape == want
            assert traces["rewards"].shape == (config.eval_batch_size, scored)
        if fields["kind"] == "synthetic_expert":  # every input's samples, flattened
            rows = fields["num_examples"] * fields["num_samples"]
            assert traces["decoded"]["tokens"].shape == (rows, targets)
            assert traces["expert_log_probs"].shape[0] == rows

"""Preflight: compile a run for a TPU slice or a GPU node on a CPU machine, before launching.

    python -m irl_lm.preflight --config=configs/xsum.py:mode=full --topology=v4-32 \\
        [--config.x=y ...] [--config.mesh=auto] [--json=PATH]

It builds what the trainer builds (`train.train_and_evaluate`: task, model at its real size,
learner with its sampler, evaluators) from abstract shapes, with no weights and no data, on
a mesh of the target's devices, and compiles every jitted function the run calls: the train
step, the policy sampler of the online losses, each evaluator's decoders and scorers. For
each it prints the bytes per device (the train state, the call's own inputs and
temporaries) against the chip's memory, the compiled FLOPs against `irl_lm.perf`'s model
FLOPs, and a roofline estimate of the step time (the larger of FLOPs / peak and bytes
accessed / memory bandwidth) with the MFU and tokens/s it implies. It exits 1 when a call
does not fit, naming the settings to change. With `--config.mesh=auto` it compiles the
layouts of `layouts()` in turn (FSDP over every device; then remat; then gradient
accumulation) and prints the first whose step fits, as the `--config` flags to launch with.

Targets: TPU slices by their Cloud names (`v4-32`, `v5e-16`, `v5p-8`, `v6e-16`, ...), compiled
by libtpu for a topology that is not there (`jax.experimental.topologies`); GPU nodes
(`h100x8`, `h200x8`, `a100x8`), compiled by XLA's GPU compiler for GPUs that are not there
(`irl_lm.gpu_compile`). `make install-preflight` installs both compilers (libtpu, jaxlib's
CUDA plugin and ptxas) into folders of `.venv` that only preflight puts on its path, so CPU
runs never load them; `pip install "jax[tpu]"` at the installed jax's version also serves
for TPUs.

When `config.task.vocabulary` is unset and `config.init_from` is not readable here, the
vocabulary is a stand-in with the size and EOS / BOS ids of the preset's public checkpoint
(`STAND_IN_TOKENIZERS`): shapes are all a compile reads. A config file that takes a `mode`
argument compiles `mode=full` unless the argument names one.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import seqio
from absl import logging

from irl_lm import (
    checkpointing,
    decoding,
    evaluators,
    files,
    gpu_compile,
    hlo_flops,
    learners,
    perf,
    sharding,
    train,
)
from irl_lm.config_utils import AUTO_MESH
from irl_lm.data import pipeline, tasks
from irl_lm.evaluators import common as eval_common
from irl_lm.losses import LOSSES, make_loss
from irl_lm.models import build_model, is_decoder_only, resolve_preset

GiB = 1024**3

# ----------------------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice or node: its chips, the compiler's topology, and each chip's memory (bytes),
    memory bandwidth (bytes/s) and device kind (`perf.peak_flops_per_device` reads it)."""

    name: str
    platform: str  # "tpu" or "gpu"
    chips: int
    device_kind: str
    memory: float
    bandwidth: float
    topology: str = ""  # TPU: "v4:2x2x4" as libtpu names it
    megacore: bool = False  # v4 / v5p: the chip's two TensorCores are one device

    @property
    def peak_flops(self) -> float:
        return perf.peak_flops_per_device(self.device_kind)


# Per chip (Cloud TPU and NVIDIA data sheets): HBM, HBM bandwidth.
_TPU_CHIPS = {
    "v4": ("TPU v4", 32 * GiB, 1.2e12, True),
    "v5e": ("TPU v5 lite", 16 * GiB, 8.19e11, False),
    "v5p": ("TPU v5", 95 * GiB, 2.765e12, True),
    "v6e": ("TPU v6 lite", 32 * GiB, 1.64e12, False),
}
# Chips -> physical topology: 3D tori (v4, v5p) and 2D ones (v5e, v6e).
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"}
_TORUS_2D = {
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}


def _tpu_targets() -> dict[str, Target]:
    targets = {}
    for generation, (kind, memory, bandwidth, megacore) in _TPU_CHIPS.items():
        shapes = _TORUS_3D if megacore else _TORUS_2D
        for chips, shape in shapes.items():
            # v4 and v5p slices are named by TensorCores (two per chip), v5e / v6e by chips.
            name = f"{generation}-{chips * 2 if megacore else chips}"
            targets[name] = Target(
                name, "tpu", chips, kind, memory, bandwidth, f"{generation}:{shape}", megacore
            )
    return targets


GPU_TARGETS = {
    "h100x8": Target("h100x8", "gpu", 8, "NVIDIA H100 80GB HBM3", 80e9, 3.35e12),
    "h200x8": Target("h200x8", "gpu", 8, "NVIDIA H200", 141e9, 4.8e12),
    "a100x8": Target("a100x8", "gpu", 8, "NVIDIA A100-SXM4-80GB", 80e9, 2.039e12),
}
TARGETS = {**_tpu_targets(), **GPU_TARGETS}
# A step fits when what it needs is at most this share of the chip's memory (the runtime,
# fragmentation and XLA's own buffers take the rest).
HEADROOM = 0.9
GPU_NOTE = (
    "GPU: compiled by XLA's GPU compiler for the node's GPUs (irl_lm.gpu_compile), with "
    "attention by einsum: a GPU run's attention_impl=auto may take cuDNN's fused attention, "
    "which needs less memory, so these bytes are an upper bound."
)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"--topology={name!r} is not known; known: {', '.join(TARGETS)}")
    return TARGETS[name]


def tpu_library() -> str:
    """The path of libtpu: jax's own (`jax[tpu]`), else the one `make install-preflight`
    installs into the environment's `libtpu` folder."""
    from jax._src import cloud_tpu_init

    path = cloud_tpu_init.get_tpu_library_path()
    if path:
        return path
    local = os.path.join(gpu_compile.PLUGIN_DIR, "libtpu", "libtpu.so")
    if os.path.isfile(local):
        return local
    raise RuntimeError(
        "preflight compiles with libtpu, which is not installed: run `make install-preflight` "
        f"(libtpu into {gpu_compile.PLUGIN_DIR}, apart from the runtime packages) or "
        f'`pip install "jax[tpu]=={jax.__version__}"`'
    )


def compile_devices(target: Target) -> list:
    """The devices of `target`'s topology, compile-only (the TPU compiler; see GPU_NOTE)."""
    from jax.experimental import topologies

    if target.platform == "gpu":
        return gpu_compile.devices(target.name.split("x")[0], target.chips)
    kwargs = {"chip_config_name": "megacore"} if target.megacore else {}
    # Set only while libtpu loads, so that processes started later (a sweep's points) never
    # see it. Compiling holds no chip: several preflights may load libtpu at once. Saved
    # before `tpu_library()`, whose import of the `libtpu` package sets TPU_LIBRARY_PATH.
    names = ("TPU_LIBRARY_PATH", "ALLOW_MULTIPLE_LIBTPU_LOAD")
    saved = {k: os.environ.get(k) for k in names}
    try:
        os.environ.update({"TPU_LIBRARY_PATH": tpu_library(), "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"})
        topology = topologies.get_topology_desc(
            topology_name=target.topology, platform="tpu", **kwargs
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return list(topology.devices)


# ----------------------------------------------------------------------------- the run


class StandInTokenizer(seqio.ByteVocabulary):
    """A checkpoint's tokenizer where only its size and EOS / BOS ids matter (shapes and
    decoding read them): bytes for text."""

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


# Preset family -> (tokenizer size, EOS, BOS, the checkpoint's embedding rows), from the
# public checkpoints' tokenizer and config.json files.
STAND_IN_TOKENIZERS = {
    "t5_": (32_100, 1, None, 32_128),  # google/t5-v1_1-*: 32000 pieces + 100 sentinels
    "gemma3_": (262_144, 1, 2, 262_144),  # google/gemma-3-*-pt
    "t5gemma2_": (262_144, 1, 2, 262_144),  # google/t5gemma-2-*: Gemma 3's tokenizer
    "t5gemma_": (256_000, 1, 2, 256_000),  # google/t5gemma-*: Gemma 2's
    "llama3_": (128_256, 128_001, 128_000, 128_256),  # meta-llama/Llama-3.2-1B
    "tinyllama_": (32_000, 2, 1, 32_000),
}
STAND_IN = "stand-in:"  # config.task.vocabulary of a stand-in: "stand-in:<preset>"


def stand_in(preset: str) -> tuple[StandInTokenizer, int] | None:
    for prefix, (size, eos, bos, rows) in STAND_IN_TOKENIZERS.items():
        if preset.startswith(prefix):
            return StandInTokenizer(size, eos, bos), rows
    return None


@contextlib.contextmanager
def stand_in_vocabularies() -> Iterator[None]:
    """`tasks` reads `stand-in:<preset>` vocabularies as `stand_in(preset)`'s tokenizer."""
    load = tasks.load_vocabulary

    def load_or_stand_in(folder: str):
        if folder.startswith(STAND_IN):
            return stand_in(folder.removeprefix(STAND_IN))[0]
        return load(folder)

    tasks.load_vocabulary = load_or_stand_in
    try:
        yield
    finally:
        tasks.load_vocabulary = load


def offline_config(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, str]:
    """`config` with a stand-in vocabulary where the run would read one from a checkpoint
    that is not here (`config.init_from` unset or not readable); and what was stood in."""
    config = ml_collections.ConfigDict(config.to_dict())
    init_from = config.get("init_from", "")
    readable = False
    if init_from:
        try:
            readable = checkpointing.parse_init_from(init_from) is not None
        except FileNotFoundError:  # not on this machine: the launch machine has it
            readable = False
    if readable or not tasks.takes_vocabulary(config.task) or config.task.get("vocabulary"):
        return config, ""
    preset = str(config.model.get("name", ""))
    found = stand_in(preset)
    if found is None and not init_from:  # not a preset: the task's own (e.g. the expert's)
        return config, ""
    if found is None:
        raise ValueError(
            f"config.task.vocabulary is unset and config.init_from={init_from!r} is not "
            f"readable here, and config.model.name={preset!r} has no known public tokenizer: "
            "set --config.task.vocabulary to a tokenizer folder (its size is what counts)"
        )
    tokenizer, rows = found
    config.init_from = ""
    config.task.vocabulary = STAND_IN + preset
    config.model.vocab_size = rows
    what = (
        f"vocabulary: a stand-in of {preset}'s public tokenizer ({tokenizer.vocab_size} tokens, "
        f"{rows} embedding rows; config.init_from={init_from or '(unset)'} not read)"
    )
    return config, what


@dataclasses.dataclass
class Run:
    """What `train.train_and_evaluate` has built when its loop starts, from shapes."""

    config: ml_collections.ConfigDict
    task: tasks.Task
    model_config: dict
    model: Any
    mesh: Any
    lengths: dict  # the model's batch features -> length
    learner: learners.Learner
    state: Any  # ShapeDtypeStructs with their shardings


def build_run(config: ml_collections.ConfigDict, devices=None) -> Run:
    """The trainer's task, model, learner and abstract state for `config` over `devices`
    (default: this machine's). Allocates nothing and reads no weights or data."""
    train.validate_config(config)
    config, source = train.resolve_config(config)
    task = tasks.build(config.task)
    model_config = train.resolve_model_config(config, source, task)
    model = build_model(model_config)
    mesh = sharding.make_mesh(config.mesh, devices)
    rng = jax.random.PRNGKey(config.seed)  # outside the mesh: compile-only devices hold nothing
    with sharding.use_mesh(mesh):
        lengths, learner = train.build_learner(config, task, model, model_config, mesh, rng)
    state = checkpointing.abstract_like(learner.abstract_state, learner.shardings)
    return Run(config, task, model_config, model, mesh, lengths, learner, state)


# ----------------------------------------------------------------------------- the calls


@dataclasses.dataclass
class Call:
    """One jitted function the run calls, with abstract arguments of its shapes. `resident`:
    which of the run's long-lived trees its first argument is ("state" or "params")."""

    name: str
    fn: Callable
    args: tuple
    resident: str


def abstract(shapes: dict, mesh, dtype=jnp.int32) -> dict:
    batch = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(tuple(v), dtype, sharding=batch) for k, v in shapes.items()}


def like(arrays: dict, mesh) -> dict:
    return abstract({k: np.shape(v) for k, v in arrays.items()}, mesh)


RNG = jax.ShapeDtypeStruct((2,), jnp.uint32)


def train_calls(run: Run) -> list[Call]:
    """The learner's step on a batch of the config's shapes, after its sampler if it has one."""
    config, learner = run.config, run.learner
    batch = abstract({k: (config.batch_size, n) for k, n in run.lengths.items()}, run.mesh)
    if learner.sampler is None:
        return [Call("train_step", learner.step, (run.state, batch, RNG), "state")]
    with sharding.use_mesh(run.mesh):
        policy = jax.eval_shape(learner.sampler, run.state.params, batch, RNG)
    return [
        Call("sampler", learner.sampler, (run.state.params, batch, RNG), "params"),
        Call("train_step", learner.step, (run.state, batch, RNG, policy), "state"),
    ]


def eval_calls(run: Run, examples: Callable | None = None) -> dict[str, list[Call]]:
    """Each evaluator of `config.evals`, built as the trainer builds it, and the jitted
    functions its `__call__` runs on the shapes it feeds them: name -> calls. `examples`
    stands in for `evaluators.common.task_examples` (default: `placeholder_examples`, two
    short prompts of the task's width, so no split is read)."""
    config, model, mesh = run.config, run.model, run.mesh
    with placeholder_task_examples(examples or placeholder_examples):
        ctx = evaluators.EvalContext.from_config(
            config, run.task, model, mesh, loss_fn=make_loss(config.loss)
        )
        built = evaluators.make_evaluators(ctx, config.evals)
    params = run.state.params
    out, seen = {}, set()
    for name, (_, evaluator) in built.items():
        # Evaluators that differ only in their split, schedule or number of examples run the
        # same calls on the same shapes (`placeholder_examples`): compiled once.
        fields = dict(config.evals[name])
        same = json.dumps({k: v for k, v in fields.items() if k not in _SAME_CALLS}, sort_keys=True)
        if same in seen:
            continue
        seen.add(same)
        calls = _EVALUATOR_CALLS[type(evaluator)](evaluator, fields, params, run)
        out[name] = [dataclasses.replace(c, name=f"{name}/{c.name}") for c in calls]
    return out


_SAME_CALLS = ("split", "every", "max_examples")  # evaluator fields the calls do not depend on


def placeholder_examples(ctx, name, split, max_examples):
    """`evaluators.common.task_examples` without reading the split: two short prompts per
    (sub-)task, in the width `text_examples` gives them (all the shapes read)."""
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
    if not parts:
        raise ValueError(f"task {ctx.task.name} has no {split!r} split")
    return parts


@contextlib.contextmanager
def placeholder_task_examples(fn=placeholder_examples):
    """The evaluators built inside take their held-out examples from `fn` (by default
    `placeholder_examples`: no split is read)."""
    from irl_lm.evaluators import decode, reward

    saved = decode.task_examples, reward.task_examples
    decode.task_examples = reward.task_examples = fn
    try:
        yield
    finally:
        decode.task_examples, reward.task_examples = saved


def _loss_calls(evaluator, fields, params, run):
    rows = run.config.eval_batch_size  # `pipeline.eval_batches` rows (one host)
    batch = abstract({k: (rows, n) for k, n in run.lengths.items()}, run.mesh)
    return [Call("step", evaluator._step, (params, batch), "params")]


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


def _decode_calls(evaluator, fields, params, run):
    prompts = abstract({evaluator.prompt_feature: (evaluator.rows, evaluator.width)}, run.mesh)
    if fields.get("calculator"):
        calls = host_loop_calls(evaluator._decode, (params, prompts, RNG), run.task.eos_id)
    else:
        calls = [Call("decode", evaluator._decode, (params, prompts, RNG), "params")]
    if evaluator._token_log_probs is not None:  # the task's score metrics
        batch = _teacher_forced(
            run,
            prompt_width=evaluator.width,
            target_width=evaluator.target_width,
            rows=evaluator.rows,
        )
        calls.append(
            Call("target_log_probs", evaluator._token_log_probs, (params, batch), "params")
        )
    return calls


class HostLoop:
    """`jax` for a module whose host loop (calculator decoding reads the text between
    steps) is traced rather than run: each function it jits is recorded with its abstract
    arguments and traced (`eval_shape`) when called, and what it reads back is EOS, so every
    row ends at the first step."""

    def __init__(self, eos_id: int):
        self.eos_id, self.calls = eos_id, []

    def __getattr__(self, name):
        return getattr(jax, name)

    def jit(self, fn, **kwargs):
        jitted = jax.jit(fn, **kwargs)

        def call(*args):
            out = jax.eval_shape(jitted, *args)
            self.calls.append((jitted, args, out))
            return out

        return call

    def device_get(self, tree):
        return jax.tree.map(lambda x: np.full(x.shape, self.eos_id, x.dtype), tree)


def host_loop_calls(fn, args, eos_id) -> list[Call]:
    loop = HostLoop(eos_id)
    saved, decoding.jax = decoding.jax, loop
    try:
        fn(*args)
    finally:
        decoding.jax = saved
    names = ("prefill", "step")
    return [
        Call(names[i] if i < 2 else f"call{i}", jitted, call_args, "params")
        for i, (jitted, call_args, _) in enumerate(loop.calls)
    ]


def _reward_calls(evaluator, fields, params, run):
    prompt_feature = type(run.model).input_features[0]
    prompts = abstract({prompt_feature: (evaluator.chunk, evaluator.width)}, run.mesh)
    batch = _teacher_forced(
        run,
        prompt_width=evaluator.width,
        target_width=evaluator.max_len,
        rows=evaluator.chunk * evaluator.num_samples,
    )
    return [
        Call("decode", evaluator._decode, (params, prompts, RNG), "params"),
        Call("rewards", evaluator._rewards, (params, batch), "params"),
    ]


def _expert_calls(evaluator, fields, params, run):
    policy, expert = (
        like(evaluator._policy_batch, run.mesh),
        like(evaluator._expert_batch, run.mesh),
    )
    return [
        Call("decode", evaluator._decode, (params, policy, RNG), "params"),
        Call("expert_log_probs", evaluator._token_log_probs, (params, expert), "params"),
    ]


_EVALUATOR_CALLS = {
    evaluators.LossEvaluator: _loss_calls,
    evaluators.DecodeEvaluator: _decode_calls,
    evaluators.RewardEvaluator: _reward_calls,
    evaluators.ExpertEvaluator: _expert_calls,
}


def shape_key(config: ml_collections.ConfigDict) -> str:
    """What a compile depends on: the config less its seed and the loss's coefficients (the
    fraction of sampled rows, alpha, stays: it sets the sampler's shape)."""
    fields = config.to_dict()
    fields.pop("seed", None)
    loss = fields.get("loss", {})
    fields["loss"] = {k: v for k, v in loss.items() if k in ("name", "alpha")}
    return json.dumps(fields, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- compile


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest
    shard: uneven splits are padded)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


@dataclasses.dataclass
class Compiled:
    """One call, compiled for the target: per-device bytes (XLA's memory analysis), FLOPs
    and bytes accessed (its cost analysis), and the compile's wall time."""

    name: str
    compile_s: float
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    other_inputs: int  # the arguments besides the first (the state or the parameters)
    flops: float  # matmul FLOPs per device, loops at their trip counts (`irl_lm.hlo_flops`)
    xla_flops: float  # XLA's cost analysis: every op, but each loop body once
    bytes_accessed: float  # XLA's cost analysis (loop bodies once too)
    unknown_loops: int = 0  # loops whose trip count could not be read: counted once
    refused: str = ""  # the compiler's message when it refused the program (out of memory)

    def needs(self, state_bytes: int) -> int:
        """Bytes per device while this call runs: the whole train state stays resident,
        plus the call's other inputs, its outputs not written in place and temporaries."""
        written = self.outputs - self.aliased
        return state_bytes + self.other_inputs + written + self.temporaries + self.code

    @property
    def resident(self) -> int:
        """The first argument's bytes as laid out on the device (XLA's count: TPU tiles
        pad dimensions that do not fill them, e.g. FSDP shards narrower than 128)."""
        return self.arguments - self.other_inputs

    def seconds(self, target: Target) -> float:
        """Roofline: the larger of compute at peak and memory traffic at full bandwidth."""
        return max(self.flops / target.peak_flops, self.bytes_accessed / target.bandwidth)


_OUT_OF_MEMORY = re.compile(r"memory required for HLO temporaries \(([\d.]+)([KMGT])\)")


def compile_call(call: Call, mesh) -> Compiled:
    started = time.perf_counter()
    fn = call.fn if hasattr(call.fn, "lower") else jax.jit(call.fn)
    with sharding.use_mesh(mesh):
        lowered = fn.lower(*call.args)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            del fn, lowered
            _release_executables()
            return _refused(call, str(e), time.perf_counter() - started)
    seconds = time.perf_counter() - started
    memory = compiled.memory_analysis()
    cost = gpu_compile.cost_analysis(compiled)
    counted = hlo_flops.analyze(compiled)
    del fn, lowered, compiled
    _release_executables()
    return Compiled(
        name=call.name,
        compile_s=seconds,
        arguments=int(memory.argument_size_in_bytes),
        outputs=int(memory.output_size_in_bytes),
        aliased=int(memory.alias_size_in_bytes),
        temporaries=int(memory.temp_size_in_bytes),
        code=int(memory.generated_code_size_in_bytes),
        other_inputs=shard_bytes(call.args[1:]),
        flops=counted.flops,
        xla_flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        unknown_loops=len(counted.unknown),
    )


def _release_executables() -> None:
    """Frees what a compile left behind. JAX's lowering and compilation caches keep every
    executable (with its HLO) alive after the call that compiled it returns: a full-size TPU
    train step holds several GiB of host memory that way, on top of the next call's compile
    (about 20 GiB of its own). Clearing them and handing the freed heap back to the system
    keeps a run's peak at its largest single compile."""
    gc.collect()
    jax.clear_caches()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _refused(call: Call, message: str, seconds: float) -> Compiled:
    """A call the TPU compiler refused for lack of memory: its temporaries as the message
    gives them (infinite where it gives none), on top of its inputs by shapes."""
    found = _OUT_OF_MEMORY.search(message)
    temporaries = math.inf
    if found:
        temporaries = float(found.group(1)) * 1024 ** "KMGT".index(found.group(2)) * 1024
    first = shard_bytes(call.args[0])
    return Compiled(
        name=call.name,
        compile_s=seconds,
        arguments=first + shard_bytes(call.args[1:]),
        outputs=0,
        aliased=0,
        temporaries=temporaries,
        code=0,
        other_inputs=shard_bytes(call.args[1:]),
        flops=math.nan,
        xla_flops=math.nan,
        bytes_accessed=math.nan,
        refused=message.strip().splitlines()[0][:300],
    )


# ----------------------------------------------------------------------------- the report


@dataclasses.dataclass
class Report:
    target: Target
    config: ml_collections.ConfigDict  # the run's, as compiled (mesh=auto's pick applied)
    config_label: str
    mesh: dict
    num_devices: int
    parameters: int
    model: str
    batch: str
    stood_in: str
    params_bytes: int  # by shapes
    state_bytes_by_shape: int
    calls: list[Compiled]
    update_flops: float
    sampling_flops: float
    tokens_per_step: int
    total_steps: int
    tried: list[tuple[Layout, int]] = dataclasses.field(default_factory=list)  # mesh=auto

    @property
    def layout(self) -> Layout | None:
        """mesh=auto's pick: the last layout tried (when the step fits)."""
        return self.tried[-1][0] if self.tried and not self.too_big() else None

    @property
    def state_bytes(self) -> int:
        """The train state per device as the step's program lays it out (XLA's bytes)."""
        return next(c for c in self.calls if c.name == "train_step").resident

    @property
    def capacity(self) -> float:
        return self.target.memory * HEADROOM

    def step_calls(self) -> list[Compiled]:
        return [c for c in self.calls if c.name in ("train_step", "sampler")]

    @property
    def step_seconds(self) -> float:
        return sum(c.seconds(self.target) for c in self.step_calls())

    @property
    def compute_seconds(self) -> float:
        """The step's matmul FLOPs at the chip's peak (the roofline's compute term)."""
        return sum(c.flops for c in self.step_calls()) / self.target.peak_flops

    @property
    def memory_seconds(self) -> float:
        """XLA's bytes accessed at the memory bandwidth (the roofline's memory term)."""
        return sum(c.bytes_accessed for c in self.step_calls()) / self.target.bandwidth

    @property
    def compiled_flops(self) -> float:
        """The step's compiled FLOPs over all devices (sampler + update)."""
        return self.num_devices * sum(c.flops for c in self.step_calls())

    @property
    def xla_flops(self) -> float:
        return self.num_devices * sum(c.xla_flops for c in self.step_calls())

    @property
    def model_flops(self) -> float:
        return self.update_flops + self.sampling_flops

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.num_devices * self.target.peak_flops * self.step_seconds)

    def too_big(self) -> list[Compiled]:
        return [c for c in self.calls if c.needs(self.state_bytes) > self.capacity]

    @property
    def chip_hours(self) -> float:
        """Of `total_steps` training steps at the roofline step time (evaluation excluded)."""
        return self.total_steps * self.step_seconds * self.target.chips / 3600

    def as_dict(self) -> dict:
        calls = []
        for c in self.calls:
            calls.append(
                dataclasses.asdict(c)
                | {"needs_bytes": c.needs(self.state_bytes), "roofline_s": c.seconds(self.target)}
            )
        return {
            "target": dataclasses.asdict(self.target) | {"peak_flops": self.target.peak_flops},
            "config": self.config_label,
            "mesh": self.mesh,
            "num_devices": self.num_devices,
            "parameters": self.parameters,
            "model": self.model,
            "batch": self.batch,
            "stood_in": self.stood_in,
            "params_bytes": self.params_bytes,
            "state_bytes": self.state_bytes,
            "state_bytes_by_shape": self.state_bytes_by_shape,
            "capacity_bytes": self.capacity,
            "fits": not self.too_big(),
            "too_big": [c.name for c in self.too_big()],
            "calls": calls,
            "update_flops": self.update_flops,
            "sampling_flops": self.sampling_flops,
            "compiled_flops": self.compiled_flops,
            "xla_flops": self.xla_flops,
            "compiled_over_model_flops": self.compiled_flops / self.model_flops,
            "step_seconds": self.step_seconds,
            "compute_seconds": self.compute_seconds,
            "memory_seconds": self.memory_seconds,
            "mfu": self.mfu,
            "tokens_per_s": self.tokens_per_step / self.step_seconds,
            "total_steps": self.total_steps,
            "chip_hours": self.chip_hours,
            "remat": self.config.model.get("remat", "none"),
            "grad_accum_steps": self.config.grad_accum_steps,
            "auto": {
                "tried": [
                    {"overrides": layout.overrides(), "needs_bytes": needs}
                    for layout, needs in self.tried
                ],
                "picked": self.layout.overrides() if self.layout else None,
            },
        }


def preflight(
    config: ml_collections.ConfigDict,
    target: Target,
    *,
    config_label: str = "",
    evals: bool = True,
    auto: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> Report:
    """Builds `config`'s run for `target` from shapes and compiles each of its calls. With
    `auto` (`--config.mesh=auto`), the layouts of `layouts()` are compiled in turn, fastest
    first, until the train step fits; the report is of the one picked (else the last)."""
    config, stood_in = offline_config(config)
    devices = compile_devices(target)
    with stand_in_vocabularies():
        if auto:
            run, compiled, tried = pick_layout(config, devices, target.memory * HEADROOM, log)
        else:
            (run, compiled), tried = compile_train(config, devices, log), []
        if evals:
            for calls in eval_calls(run).values():
                compiled += [_compile(call, run.mesh, log) for call in calls]
    config = run.config
    lengths = {k: run.lengths[k] for k in perf.COUNTED_FEATURES if k in run.lengths}
    params = run.state.params
    if hasattr(run.state, "policy"):  # GAIL: the policy's train state holds the parameters
        params = run.state.policy.params
    model_cfg = run.model.config
    return Report(
        target=target,
        config=config,
        config_label=config_label,
        mesh=dict(run.mesh.shape),
        num_devices=run.mesh.size,
        parameters=sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        model=(
            f"{config.model.name}: {type(run.model).__name__}, {model_cfg.param_dtype} "
            f"parameters, {model_cfg.dtype} compute, remat={model_cfg.remat}"
        ),
        batch=f"{config.batch_size} x {lengths}",
        stood_in=stood_in,
        params_bytes=shard_bytes(run.state.params),
        state_bytes_by_shape=shard_bytes(run.state),
        calls=compiled,
        update_flops=run.learner.update_flops,
        sampling_flops=run.learner.sampling_flops,
        tokens_per_step=sum(config.batch_size * n for n in lengths.values()),
        total_steps=int(config.total_steps),
        tried=tried,
    )


def compile_train(config, devices, log) -> tuple[Run, list[Compiled]]:
    """The run of `config` over `devices`, and its train step (after its sampler) compiled."""
    run = build_run(config, devices)
    return run, [_compile(call, run.mesh, log) for call in train_calls(run)]


def _compile(call: Call, mesh, log: Callable[[str], None]) -> Compiled:
    log(f"compiling {call.name} ...")
    compiled = compile_call(call, mesh)
    log(f"  {compiled.compile_s:.0f} s")
    return compiled


# ----------------------------------------------------------------------------- mesh=auto


@dataclasses.dataclass(frozen=True)
class Layout:
    """What `--config.mesh=auto` sets: parameters, optimizer state and batch over every
    device (FSDP; no data or tensor axis), a rematerialisation policy, and the gradient
    accumulation steps (each device then takes batch_size / steps / devices rows at once).
    The global batch, and with it the science of the run, stays as configured."""

    remat: str
    grad_accum_steps: int

    def overrides(self) -> dict[str, Any]:
        return {
            "mesh.data": 1,
            "mesh.fsdp": -1,
            "mesh.tensor": 1,
            "model.remat": self.remat,
            "grad_accum_steps": self.grad_accum_steps,
        }

    def flags(self) -> str:
        return " ".join(f"--config.{k}={v}" for k, v in self.overrides().items())

    def apply(self, config: ml_collections.ConfigDict) -> None:
        """Sets the overrides on `config` (an unlocked one: `offline_config`'s copy)."""
        config.mesh = {"data": 1, "fsdp": -1, "tensor": 1}
        config.model.remat = self.remat
        config.grad_accum_steps = self.grad_accum_steps


def layouts(config: ml_collections.ConfigDict, num_devices: int) -> list[Layout]:
    """The layouts `mesh=auto` tries, fastest first: no recomputation; then full
    rematerialisation (about a third more FLOPs); then 2, 4, ... accumulation steps while
    every device keeps at least one row (the online losses sample the whole batch at once
    and do not accumulate)."""
    if config.batch_size % num_devices:
        raise ValueError(
            f"--config.mesh=auto lays the batch over all {num_devices} devices, and "
            f"config.batch_size={config.batch_size} is not a multiple of {num_devices}: set "
            "the batch to a multiple, or the mesh by hand (config.mesh.tensor shards the model)"
        )
    ladder = [Layout("none", 1), Layout("full", 1)]
    if not LOSSES[config.loss.name].online:
        steps = 2
        while config.batch_size % (steps * num_devices) == 0:
            ladder.append(Layout("full", steps))
            steps *= 2
    return ladder


def pick_layout(
    config: ml_collections.ConfigDict, devices, capacity: float, log=lambda line: None
) -> tuple[Run, list[Compiled], list[tuple[Layout, int]]]:
    """Compiles `config`'s train step over `devices` in each of `layouts()` until one needs at
    most `capacity` bytes per device, or the state alone needs more (no layout helps then),
    setting each on `config` (unlocked) in turn: -> the last run, its compiled train calls,
    and (layout, bytes needed) for each tried."""
    tried = []
    for layout in layouts(config, len(devices)):
        layout.apply(config)
        log(f"mesh=auto: {layout.flags()}")
        run, compiled = compile_train(config, devices, log)
        state = next(c for c in compiled if c.name == "train_step").resident
        tried.append((layout, max(c.needs(state) for c in compiled)))
        if tried[-1][1] <= capacity or shard_bytes(run.state) > capacity:
            break
    return run, compiled, tried


def auto_config(config: ml_collections.ConfigDict, log=logging.info) -> ml_collections.ConfigDict:
    """`config` with `--config.mesh=auto` resolved on this machine's devices, as the trainer
    does at start-up: each layout's train step is compiled against the devices' memory
    limit (a minute or so each on the accelerator's host) until one fits. Without a known
    limit (CPU) the first layout is taken without compiling."""
    devices = jax.devices()
    config = ml_collections.ConfigDict(config.to_dict())
    stats = devices[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        first = layouts(config, len(devices))[0]
        first.apply(config)
        log(f"mesh=auto, the devices' memory not known: {first.flags()}")
        return config
    capacity = stats["bytes_limit"] * HEADROOM
    _, _, tried = pick_layout(config, devices, capacity, log)
    layout, needs = tried[-1]
    if needs > capacity:
        raise ValueError(
            f"--config.mesh=auto: no layout fits in {capacity / GiB:.1f} GiB per device "
            f"(the last, {layout.flags()}, needs {needs / GiB:.1f} GiB): run "
            "`python -m irl_lm.preflight` with this config for the changes to make"
        )
    log(f"mesh=auto picked {layout.flags()}: {needs / GiB:.2f} GiB per device")
    return config


def split_auto(argv: list[str]) -> tuple[list[str], bool]:
    """Takes `--config.mesh=auto` out of `argv` (the config file's mesh is a dict of axis
    sizes): -> (the other arguments, whether it was there)."""
    rest = [a for a in argv if a != AUTO_MESH]
    return rest, len(rest) < len(argv)


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def advice(report: Report) -> list[str]:
    """The settings that shrink what did not fit, most effective first."""
    config, changes = report.config, []
    if not report.tried and report.num_devices > 1:
        changes.append(
            f"{AUTO_MESH}: preflight tries FSDP over all devices, remat and gradient "
            "accumulation in turn and prints the first that fits"
        )
    model = resolve_preset(config.model)
    mesh = report.mesh
    state_share = report.state_bytes / report.capacity
    if mesh.get("fsdp", 1) < report.num_devices and report.num_devices > 1:
        changes.append(
            "--config.mesh.data=1 --config.mesh.fsdp=-1: shard parameters and optimizer "
            f"state over all {report.num_devices} devices (the state takes "
            f"{state_share:.0%} of the usable memory now)"
        )
    if model.get("remat", "none") == "none":
        changes.append("--config.model.remat=full: recompute activations in the backward pass")
    if model.get("dtype", "float32") == "float32":
        changes.append("--config.model.dtype=bfloat16: bfloat16 activations and matmuls")
    if not config.get("logits_chunk_size") and config.loss.name != "gail":
        changes.append(
            "--config.logits_chunk_size=64: the head and the losses 64 target positions at "
            "a time (the [B, T, vocab] float32 logits never exist whole)"
        )
    if config.grad_accum_steps == 1 and not LOSSES[config.loss.name].online:  # (GAIL too)
        changes.append(
            f"--config.grad_accum_steps=2: the batch of {config.batch_size} in two halves"
        )
    changes.append(
        f"--config.batch_size={config.batch_size // 2}: a smaller batch "
        f"(or a larger slice than {report.target.name})"
    )
    if any(not c.name.startswith(("train_step", "sampler")) for c in report.too_big()):
        changes.append(
            f"--config.eval_batch_size={max(config.eval_batch_size // 2, 1)}: the evaluators' batch"
        )
    return changes


def format_report(report: Report) -> str:
    t = report.target
    lines = [
        f"preflight: {report.config_label} on {t.name} ({report.num_devices} x {t.device_kind}, "
        f"{t.memory / GiB:.1f} GiB each; fits: at most {HEADROOM:.0%} of it, "
        f"{_gib(report.capacity)} GiB)",
        f"mesh: {report.mesh}",
        *(
            f"mesh=auto tried {layout.flags()}: needs {_gib(needs)} GiB per device"
            for layout, needs in report.tried
        ),
        f"model: {report.model}; {report.parameters / 1e6:.1f}M parameters",
        f"batch: {report.batch}",
    ]
    if report.stood_in:
        lines.append(report.stood_in)
    if t.platform == "gpu":
        lines.append(GPU_NOTE)
    lines += [
        "",
        f"per device (GiB): parameters {_gib(report.params_bytes)}, train state with "
        f"optimizer {_gib(report.state_bytes_by_shape)} by shapes, "
        f"{_gib(report.state_bytes)} as laid out on the device (stays resident)",
        "",
        f"{'call':28} {'compile s':>9} {'inputs':>8} {'temp':>8} {'needs':>8} {'fits':>5} "
        f"{'TFLOP/dev':>10} {'roofline ms':>12}",
    ]
    for c in report.calls:
        needs = c.needs(report.state_bytes)
        lines.append(
            f"{c.name:28} {c.compile_s:9.0f} {_gib(c.other_inputs):>8} {_gib(c.temporaries):>8} "
            f"{_gib(needs):>8} {'yes' if needs <= report.capacity else 'NO':>5} "
            f"{c.flops / 1e12:10.3f} {c.seconds(t) * 1e3:12.1f}"
        )
    lines += [
        "('inputs': the call's inputs besides the resident parameters / state; 'needs': "
        "resident state + inputs + outputs not written in place + temporaries + code)",
        "",
        f"step (sampler + update), over {report.num_devices} devices: compiled matmul FLOPs "
        f"{report.compiled_flops:.4g} (loops at their trip counts); irl_lm.perf's model FLOPs "
        f"{report.model_flops:.4g} (ratio {report.compiled_flops / report.model_flops:.3f}); "
        f"XLA's cost analysis {report.xla_flops:.4g} (every op, loop bodies once)",
        f"roofline step time {report.step_seconds * 1e3:.1f} ms (compute at peak "
        f"{report.compute_seconds * 1e3:.1f} ms, XLA's bytes accessed at full bandwidth "
        f"{report.memory_seconds * 1e3:.1f} ms) -> MFU at most {report.mfu:.1%}, "
        f"{report.tokens_per_step / report.step_seconds:,.0f} tokens/s",
        f"{report.total_steps} steps: at least {report.chip_hours:.1f} chip-hours "
        f"({report.chip_hours / t.chips:.2f} h on {t.chips} chips; evaluation not counted)",
    ]
    for c in report.calls:
        if c.unknown_loops:
            lines.append(
                f"{c.name}: {c.unknown_loops} loops of unknown trip count, counted once: "
                "its FLOPs and roofline are lower bounds"
            )
        if c.refused:
            lines.append(f"{c.name}: the compiler refused it: {c.refused}")
    too_big = report.too_big()
    if too_big:
        lines += [
            "",
            f"DOES NOT FIT: {', '.join(c.name for c in too_big)} need more than "
            f"{_gib(report.capacity)} GiB per device. Change one of:",
            *(f"  {change}" for change in advice(report)),
        ]
    else:
        lines += ["", f"fits: every call within {_gib(report.capacity)} GiB per device"]
    if report.layout:
        lines.append(f"mesh=auto picked (launch with these): {report.layout.flags()}")
    return "\n".join(lines)


def with_full_mode(argv: list[str]) -> list[str]:
    """`--config=FILE` of a config that takes `mode` (the paper tasks') -> `FILE:mode=full`:
    preflight checks the run that would be launched, not the CPU smoke run."""
    out = []
    for arg in argv:
        if arg.startswith("--config=") and "mode=" not in arg:
            path, _, config_arg = arg.removeprefix("--config=").partition(":")
            if _takes_mode(path):
                arg = f"--config={path}:{','.join(filter(None, [config_arg, 'mode=full']))}"
        out.append(arg)
    return out


def _takes_mode(path: str) -> bool:
    try:
        with open(path) as f:
            return "text_task_config" in f.read()
    except OSError:
        return False


def main(argv, auto: bool = False):
    del argv
    from absl import flags

    flags_ = flags.FLAGS
    target = get_target(flags_.topology)
    config = flags_.config
    label = flags_["config"].serialize().removeprefix("--config=")
    log = lambda line: print(line, file=sys.stderr, flush=True)
    report = preflight(config, target, config_label=label, evals=flags_.evals, auto=auto, log=log)
    print(format_report(report))
    if flags_.json:
        files.write_json(flags_.json, report.as_dict())
    return 1 if report.too_big() else 0


def compile_only_process() -> None:
    """Set-up of a process that compiles for targets it does not have: nothing runs here, and
    a persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`) is not used: a compile-only
    program cannot be loaded back from it, and would fill it with full-size programs. Call it
    before the process's first compile: JAX decides on the cache once, at that compile."""
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_enable_compilation_cache", False)


def cli() -> None:
    compile_only_process()
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file[:arg].", lock_config=True)
    flags.DEFINE_string("topology", None, f"Target: one of {', '.join(TARGETS)}.")
    flags.DEFINE_string("json", None, "Also write the figures here (JSON).")
    flags.DEFINE_bool("evals", True, "Also compile the evaluators' calls.")
    flags.mark_flags_as_required(["config", "topology"])
    argv, auto = split_auto(with_full_mode(sys.argv))
    app.run(lambda argv: sys.exit(main(argv, auto)), argv=argv)


if __name__ == "__main__":
    cli()

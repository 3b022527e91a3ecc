"""Test set-up: 8 fake CPU devices (before jax is imported) and tiny shared fixtures."""

import atexit
import contextlib
import itertools
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the session, shared with the processes the tests start
# (they inherit the variables): the tiny models' programs, compiled anew by every
# train_and_evaluate call and every `irl_lm.main` process, compile once. Removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="irl_lm_tests_jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

# The demo config shrunk to run a few steps in seconds: d_model 32, one layer a side, batches
# of 8, inputs of 4-5 symbols. `tiny_config` builds it here; the tests that run `irl_lm.main`
# or `irl_lm.sweep` in a subprocess write it as a config file (`write_tiny_config_file`).
TINY = {
    "total_steps": 4,
    "batch_size": 8,
    "eval_batch_size": 8,
    "log_every": 1,
    "schedule.warmup_steps": 1,
    "checkpoint.every": 2,
    "task.num_train_examples": 64,
    "task.num_eval_examples": 16,
    "task.expert.max_input_len": 5,
    "model.d_model": 32,
    "model.d_kv": 8,
    "model.d_ff": 64,
    "model.num_heads": 4,
    "model.num_layers": 1,
    "model.num_decoder_layers": 1,
    "evals": dict(
        validation=dict(kind="loss", every=2, max_examples=16),
        expert=dict(kind="synthetic_expert", every=4, num_examples=4, num_samples=2),
    ),
}


def tiny_config(loss: str = "iqlearn", **overrides):
    """TINY, then `overrides` (dotted keys: `**{"loss.gamma": 0.9}`), on the demo config."""
    from configs import demo

    config = demo.get_config(f"loss={loss}")
    config.update_from_flattened_dict(TINY | overrides)
    return config


_TINY_CONFIG_FILE = """
import sys

sys.path.insert(0, {root!r})  # configs/ of this checkout, from any working directory

from configs import demo

OVERRIDES = {overrides!r}


def get_config(arg=None):
    config = demo.get_config(arg)
    config.update_from_flattened_dict(OVERRIDES)
    return config
"""


def write_tiny_config_file(folder, name: str, more_source: str = "", **overrides) -> str:
    """`folder/<name>.py`: a config file whose get_config(arg) is the demo's with TINY and
    `overrides`, followed by `more_source` (a sweep function, say); its path."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = _TINY_CONFIG_FILE.format(root=root, overrides=TINY | overrides) + more_source
    path = os.path.join(str(folder), f"{name}.py")
    with open(path, "w") as f:
        f.write(source)
    return path


@pytest.fixture
def make_config():
    return tiny_config


# `config.model` of a decoder-only tiny_config run (its vocabulary is the task's).
TINY_DECODER_ONLY = dict(
    name="decoder_only",
    vocab_size=0,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
)


# `config.model` of a T5Gemma 2-shaped tiny_config run: merged attention, q/k norms, a
# sliding layer (window 3) in each stack, grouped-query.
_TINY_T5GEMMA2_STACK = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    sliding_window=3,
    layer_types=("sliding_attention",),
)
TINY_T5GEMMA2 = dict(
    name="t5gemma",
    model_type="t5gemma2",
    vocab_size=0,
    eoi_token_index=None,
    encoder=dict(_TINY_T5GEMMA2_STACK),
    decoder=dict(_TINY_T5GEMMA2_STACK),
)


# A 2 λ × 2 seed sweep of 6 steps a point (tests/test_sweep.py, tests/test_report.py).
_TINY_SWEEP = """

from irl_lm.config_utils import grid


def sweep(arg=None):
    if arg == "broken":  # the second point's optimizer does not exist: it fails at start
        return [{"seed": 0}, {"optimizer.name": "sgd"}]
    return grid("loss=iqlearn", **{"loss.lam": (0.0, 0.3), "seed": (0, 1)})
"""


def write_tiny_sweep_config(folder) -> str:
    evals = dict(
        validation=dict(kind="loss", every=3, max_examples=16),
        expert=dict(kind="synthetic_expert", every=3, num_examples=8, num_samples=2),
    )
    overrides = {"log_every": 2, "checkpoint.every": 3}
    return write_tiny_config_file(
        folder, "tiny_sweep", _TINY_SWEEP, total_steps=6, evals=evals, **overrides
    )


# Every process the tests start, and every process those start, carries this variable in its
# environment (value: this pytest process's id, then `:<n>` for a `processes` fixture's): a
# sweep starts its points in their own sessions, so no process group holds them all, and an
# orphan leaves the process tree, but /proc/<pid>/environ still names them.
PROCESS_TAG = "IRL_LM_TEST_PROCESS"
os.environ[PROCESS_TAG] = str(os.getpid())

# Run before the command, in the child: a shell that starts `pytest &` (no job control) makes
# it ignore SIGINT, an ignored signal stays ignored across fork and exec, and Python then
# raises no KeyboardInterrupt. (Not Popen's preexec_fn: unsafe in a process with threads.)
_DEFAULT_SIGNALS = (
    "import os, signal, sys\n"
    "for signum in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(signum, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def _tagged_processes(tag: str) -> list[int]:
    """Processes (not this one) whose environment has PROCESS_TAG=tag or PROCESS_TAG=tag:…"""
    exact, prefix = f"{PROCESS_TAG}={tag}".encode(), f"{PROCESS_TAG}={tag}:".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        if any(entry == exact or entry.startswith(prefix) for entry in environ):
            found.append(int(name))
    return found


def kill_tagged_processes(tag: str) -> list[int]:
    """SIGKILLs the processes `_tagged_processes(tag)` finds until none is left (a dead one
    reads as an empty environment); their ids."""
    import signal
    import time

    killed = []
    for _ in range(100):
        pids = _tagged_processes(tag)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += pids
        time.sleep(0.05)
    return killed


class Processes:
    """Starts a test's processes like subprocess.Popen / subprocess.run, each in its own
    session with SIGINT and SIGTERM at their defaults; `kill()` (at the test's teardown)
    SIGKILLs them and everything they started."""

    def __init__(self, tag: str):
        self.tag, self.started = tag, []

    def start(self, command, *, env=None, **kwargs):
        import subprocess
        import sys

        env = dict(os.environ if env is None else env) | {PROCESS_TAG: self.tag}
        launcher = [sys.executable, "-c", _DEFAULT_SIGNALS]
        proc = subprocess.Popen([*launcher, *command], env=env, start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def run(self, command, *, timeout: float, **kwargs):
        """subprocess.run(command, capture_output=True, text=True); past `timeout` it kills
        all the test's processes and fails with the end of their output."""
        import subprocess

        proc = self.start(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = proc.communicate()
            pytest.fail(f"ran past {timeout} s: {command}\n{out[-2000:]}\n{err[-3000:]}")
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def kill(self) -> list[int]:
        import signal

        killed = kill_tagged_processes(self.tag)
        for proc in self.started:
            if proc.returncode is None:  # not reaped: its id is still its group's
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return killed


_fixture_numbers = itertools.count()


@pytest.fixture
def processes():
    """A Processes for this test, killed at its teardown."""
    started = Processes(f"{os.getpid()}:{next(_fixture_numbers)}")
    yield started
    started.kill()


@pytest.fixture(scope="session", autouse=True)
def _kill_left_processes():
    """At the end of the session: any process the tests left (a point of an in-process
    sweep included)."""
    yield
    left = kill_tagged_processes(str(os.getpid()))
    if left:
        print(f"\nconftest: killed {len(left)} processes the tests left: {left}")


# Subprocesses that only train a point run on one CPU device: 8 fake devices cost each one
# about 5 s more start-up (sharding itself is tested in-process).
SINGLE_DEVICE_ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


@contextlib.contextmanager
def single_device_children():
    """The sweep runner's children (which inherit os.environ) on one CPU device."""
    import jax

    jax.devices()  # this process keeps its 8 devices
    saved = os.environ["XLA_FLAGS"]
    os.environ["XLA_FLAGS"] = ""
    try:
        yield
    finally:
        os.environ["XLA_FLAGS"] = saved


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory):
    """(config file, sweep dir, exit code, seconds) of the tiny sweep run with --parallel=2."""
    import time

    from irl_lm import sweep

    folder = tmp_path_factory.mktemp("sweep")
    config = write_tiny_sweep_config(folder)
    started = time.perf_counter()
    with single_device_children():
        code = sweep.run_sweep(config, str(folder / "lam"), parallel=2)
    return config, str(folder / "lam"), code, time.perf_counter() - started


def tiny_model(family: str, **fields):
    """A tiny T5 (1 + 2 layers), T5Gemma 2 (`TINY_T5GEMMA2`) or decoder-only model (2 layers,
    grouped-query heads), vocab 97."""
    from irl_lm.models import build_model

    if family == "t5gemma2":
        base = TINY_T5GEMMA2
    elif family == "t5":
        base = dict(
            name="t5", d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1, num_decoder_layers=2
        )
    else:
        base = dict(
            name="decoder_only",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
        )
    return build_model(base | {"vocab_size": 97} | fields)


def tiny_batch(family: str, seed: int = 0) -> dict:
    """8 rows of 10 target positions: EOS, then two of padding (encoder-decoder: 6 input
    tokens)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    targets = rng.integers(2, 97, (8, 10)).astype(np.int32)
    targets[:, -3], targets[:, -2:] = 1, 0
    batch = {
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }
    if family != "decoder_only":
        batch["encoder_input_tokens"] = rng.integers(2, 97, (8, 6)).astype(np.int32)
    return batch


def train_tiny(model, batch, *, steps: int = 1, logits_chunk_size: int = 0):
    """(state, losses, learner) after `steps` IQLearn updates (λ 0.5, γ 0.9, AdamW 1e-2) on
    `batch`, from the same initial parameters, on all devices."""
    import jax

    from irl_lm import sharding
    from irl_lm.config_utils import trainer_defaults
    from irl_lm.learners import common, policy
    from irl_lm.losses import loss_fields, make_loss

    config = trainer_defaults()
    config.total_steps, config.schedule.warmup_steps = 10, 0
    config.optimizer.learning_rate = 1e-2
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    mesh = sharding.make_mesh({"data": -1})
    loss_fn = make_loss(loss_fields("iqlearn", lam=0.5, gamma=0.9))
    with sharding.use_mesh(mesh):
        example = {k: v[:1] for k, v in batch.items()}
        learner = policy.policy_learner(
            model,
            loss_fn,
            tx,
            example,
            mesh,
            jax.random.PRNGKey(0),
            sampler=None,
            grad_accum_steps=1,
            eos_id=1,
            logits_chunk_size=logits_chunk_size,
        )
        state, losses = learner.init(), []
        for _ in range(steps):
            placed = sharding.shard_global_batch(batch, mesh)
            state, metrics = learner.step(state, placed, jax.random.PRNGKey(1))
            losses.append(jax.device_get(metrics))
    return jax.device_get(state), losses, learner


def restore_target(config, mesh):
    """The abstract train state of `config` on `mesh`: what a checkpoint restores into."""
    from irl_lm import checkpointing, train
    from irl_lm.learners import common
    from irl_lm.models import build_model

    model = build_model(train.resolve_model_config(config))
    tx = common.make_optimizer(config.optimizer, config.schedule, config.total_steps)
    abstract, shardings = common.state_shardings(
        model, tx, train.dummy_batch(config, model, 1), mesh
    )
    return checkpointing.abstract_like(abstract, shardings)


def restore_final(workdir, config, mesh=None, step=None):
    """(state on the host, metadata, the next training batch) of the checkpoint at `step`
    (default: the latest) of a policy-learner run of `config`."""
    import jax

    from irl_lm import checkpointing, sharding, train
    from irl_lm.data import pipeline
    from irl_lm.models import build_model, is_decoder_only

    mesh = mesh or sharding.make_mesh(config.mesh)
    with sharding.use_mesh(mesh):
        ckpt = checkpointing.Checkpointer(workdir, keep=5)
        step = ckpt.latest_step() if step is None else step
        state, metadata = ckpt.restore(step, restore_target(config, mesh))
        saved_data = ckpt.data_dir(step)
        ckpt.close()
    decoder_only = is_decoder_only(build_model(train.resolve_model_config(config)))
    iterator = pipeline.TrainIterator(
        pipeline.train_data(config, decoder_only=decoder_only),
        metadata["data_position"],
        saved=saved_data,
    )
    return jax.device_get(state), metadata, next(iterator)


def teacher_forced_logits(model, params, prompt, y):
    """One unpadded (prompt, y) pair's logits at y's positions (T5: the prompt is the
    encoder's; decoder-only: prompt + y in one row)."""
    import numpy as np

    if "encoder_input_tokens" in type(model).input_features:
        batch = {
            "encoder_input_tokens": np.array([prompt], np.int32),
            "decoder_input_tokens": np.array([[0, *y[:-1]]], np.int32),
        }
        return np.asarray(model.apply({"params": params}, batch))[0]
    sequence = np.array([[*prompt, *y[:-1]]], np.int32)
    logits = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": sequence}))
    return logits[0, len(prompt) - 1 :]


def batch_sequences(batch) -> list[tuple[list[int], list[int]]]:
    """The (prompt, y) pairs of a training batch, packed or not: T5's encoder segment and its
    targets; a decoder-only row's tokens before the loss weights (BOS, x, EOS) and y."""
    import numpy as np

    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    segments = batch.get("decoder_segment_ids", (targets > 0).astype(np.int32))
    t5 = "encoder_input_tokens" in batch
    if t5:
        encoder = batch["encoder_input_tokens"]
        encoder_segments = batch.get("encoder_segment_ids", (encoder > 0).astype(np.int32))
    pairs = []
    for row in range(len(targets)):
        for segment in sorted(set(segments[row][segments[row] > 0].tolist())):
            here = np.flatnonzero(segments[row] == segment)
            scored = here[weights[row, here] > 0]
            y = targets[row, scored].tolist()
            if t5:
                prompt = encoder[row, encoder_segments[row] == segment].tolist()
            else:
                prompt = batch["decoder_input_tokens"][row, here[0] : scored[0] + 1].tolist()
            pairs.append((prompt, y))
    return pairs


def numpy_iqlearn(model, params, sequences, *, lam, gamma, eos_id=1) -> dict[str, float]:
    """Offline IQLearn on `sequences` [(prompt, y)], one unpadded forward pass each, in
    float64: `nll` (mean V_t − Q_t), `td2` (Σ δ_t² over the positions with a known V_{t+1},
    over all tokens), `loss` = nll + λ td2, and `value_diff` (mean V_t − γ V_{t+1} there)."""
    import numpy as np

    nll = td2 = value_diff = 0.0
    tokens = known_tokens = 0
    for prompt, y in sequences:
        logits = teacher_forced_logits(model, params, prompt, y)[: len(y)].astype(np.float64)
        top = logits.max(-1)
        v = np.log(np.exp(logits - top[:, None]).sum(-1)) + top
        q = logits[np.arange(len(y)), y]
        terminal = np.asarray(y) == eos_id
        next_v = np.where(terminal, 0.0, np.append(v[1:], 0.0))
        known = terminal | (np.arange(len(y)) < len(y) - 1)  # a cut-off last token: unknown
        nll += (v - q).sum()
        td2 += ((q - gamma * next_v)[known] ** 2).sum()
        value_diff += (v - gamma * next_v)[known].sum()
        tokens, known_tokens = tokens + len(y), known_tokens + known.sum()
    nll, td2 = nll / tokens, td2 / tokens
    return {
        "nll": nll,
        "td2": td2,
        "loss": nll + lam * td2,
        "value_diff": value_diff / known_tokens,
    }

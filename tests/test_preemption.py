"""Preemption-proof training with real processes: SIGKILL at random moments (inside steps,
evaluations and asynchronous saves) resumes bit-identically; damaged checkpoints fall back
to the step before; a finished run does no work again."""

import glob
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from conftest import restore_final, restore_target, tiny_config, write_tiny_config_file

from irl_lm import checkpointing, sharding, train
from irl_lm.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny demo config: 40 steps of ~5 ms, a save every 4 steps (~0.1 s), evaluations every
# 8 and 20. One file, read by the CLI runs and by the test's own restores.
RUN = {
    "total_steps": 40,
    "checkpoint.every": 4,
    "checkpoint.keep": 3,
    "evals": dict(
        validation=dict(kind="loss", every=8, max_examples=16),
        expert=dict(kind="synthetic_expert", every=20, num_examples=4, num_samples=2),
    ),
}


def write_config(folder) -> str:
    return write_tiny_config_file(folder, "preemption_config", **RUN)


def load_config(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("preemption_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


class Run:
    """`python -m irl_lm.main` in a subprocess, its log read line by line as it comes."""

    STEP = re.compile(r"\] step (\d+)/")

    def __init__(self, processes, *args, devices=1, env=None):
        env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        self.proc = processes.start(
            [sys.executable, "-m", "irl_lm.main", *args],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines, self.steps = [], []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            match = self.STEP.search(line)
            if match:
                self.steps.append(int(match.group(1)))

    def wait_for(self, condition, timeout=240.0, poll=0.001):
        """Polls `condition()` until true; fails if the process ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"the run ended before the kill point:\n{self.log()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"timed out waiting for the kill point:\n{self.log()}")
            time.sleep(poll)

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)

    def finish(self, timeout=300) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def log(self) -> str:
        return "".join(self.lines[-60:])


def saved_steps(workdir) -> list[int]:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


def tmp_dirs(workdir) -> list[str]:
    return glob.glob(os.path.join(workdir, "checkpoints", "*orbax-checkpoint-tmp*"))


def assert_trees_equal(a, b):
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path, processes):
    """SIGKILL in a step, SIGKILL in an asynchronous save, SIGTERM, SIGKILL after an
    evaluation boundary, each followed by the same command: the end is bit-identical."""
    seed = int(os.environ.get("IRL_LM_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    config_file = write_config(tmp_path)
    args = [f"--config={config_file}"]
    straight_dir, killed_dir = str(tmp_path / "straight"), str(tmp_path / "killed")
    straight = Run(processes, *args, f"--workdir={straight_dir}")  # runs beside the killed ones
    killed_dir_args = [*args, f"--workdir={killed_dir}"]
    notes = []

    # 1. Inside a step, at a random step and delay.
    run = Run(processes, *killed_dir_args)
    target = rng.randint(5, 11)
    run.wait_for(lambda: target in run.steps)
    time.sleep(rng.uniform(0, 0.02))
    run.kill()
    run.finish()
    notes.append(f"kill 1 after step {target} (saved: {saved_steps(killed_dir)})")

    # 2. Inside an asynchronous save: as soon as a new step's temporary folder appears.
    resumed_at = max(saved_steps(killed_dir), default=0)
    run = Run(processes, *killed_dir_args)
    run.wait_for(lambda: any(run.steps) and max(run.steps) > resumed_at and tmp_dirs(killed_dir))
    run.kill()
    run.finish()
    left_behind = tmp_dirs(killed_dir)
    notes.append(f"kill 2 in a save, left {[os.path.basename(p) for p in left_behind]}")
    assert left_behind, "the kill landed outside the save: " + "; ".join(notes)

    # 3. A preemption notice (SIGTERM): saves the step it reached and exits 0.
    resumed_at = max(saved_steps(killed_dir), default=0)
    run = Run(processes, *killed_dir_args)
    run.wait_for(lambda: any(s > resumed_at + 1 for s in run.steps))
    run.kill(signal.SIGTERM)
    assert run.finish() == 0, run.log()
    preempted = re.findall(r"Preempted: saved step (\d+)", "".join(run.lines))
    assert len(preempted) == 1 and int(preempted[0]) in saved_steps(killed_dir), run.log()
    notes.append(f"SIGTERM saved step {preempted[0]}")

    # 4. Just after an evaluation boundary (steps 24 or 32): inside the save or evaluators.
    resumed_at = max(saved_steps(killed_dir), default=0)
    run = Run(processes, *killed_dir_args)
    target = rng.choice([s for s in (24, 32) if s > resumed_at + 4])
    run.wait_for(lambda: target in run.steps)
    time.sleep(rng.uniform(0, 0.3))
    run.kill()
    run.finish()
    notes.append(f"kill 4 after step {target} (saved: {saved_steps(killed_dir)})")

    final = Run(processes, *killed_dir_args)
    assert final.finish() == 0, final.log()
    assert straight.finish() == 0, straight.log()
    context = f"seed {seed}: " + "; ".join(notes)
    assert "Resumed from step" in "".join(final.lines), context
    assert "skipping" not in "".join(final.lines), "the data state was not restored: " + context
    assert not tmp_dirs(killed_dir), "interrupted saves' folders were not cleaned up"

    config = load_config(config_file)
    state_a, meta_a, next_a = restore_final(straight_dir, config)
    state_b, meta_b, next_b = restore_final(killed_dir, config)
    assert meta_a["data_position"] == meta_b["data_position"] == 40, context
    assert_trees_equal(state_a, state_b)  # params, optimizer state and step: bit for bit
    assert_trees_equal(next_a, next_b)  # the data stream continues at the same batch


# ----------------------------------------------------------------------------- damage


def _data_files(step_dir) -> list[str]:
    """The OCDBT data files of a step's state (the merged database's and each process's)."""
    return glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _truncate_data_files(step_dir):
    for path in _data_files(step_dir):
        _truncate(path)


def _zero_64_bytes(step_dir, state, config):
    """Zeroes 64 bytes inside a stored (compressed) chunk: at the first of a series of places
    where Orbax then restores other values without raising (only a digest sees it), else
    (Orbax stored every chunk inline in its CRC-checked b-tree nodes) in the first data
    file. Returns what the warning must say."""
    import shutil

    import orbax.checkpoint as ocp

    def zero(folder, path, percent):
        with open(os.path.join(folder, os.path.relpath(path, step_dir)), "r+b") as f:
            f.seek(os.path.getsize(path) * percent // 100)
            f.write(bytes(64))

    mesh = sharding.make_mesh(config.mesh)
    files = sorted(_data_files(step_dir), key=lambda p: ("ocdbt.process_" not in p, p))
    for tried, (path, percent) in enumerate((p, q) for p in files for q in range(1, 100, 4)):
        scratch = f"{step_dir}-scratch{tried}"  # a fresh folder: nothing read can be cached
        shutil.copytree(step_dir, scratch)
        zero(scratch, path, percent)
        with sharding.use_mesh(mesh):
            target = ocp.args.Composite(
                state=ocp.args.StandardRestore(restore_target(config, mesh))
            )
            try:  # Orbax alone, without our digests
                restored = ocp.CheckpointManager(os.path.dirname(step_dir)).restore(
                    os.path.basename(scratch), args=target
                )
                leaves = jax.tree.leaves(jax.device_get(restored.state))
            except Exception:
                leaves = None
        shutil.rmtree(scratch)
        if leaves is not None and not all(
            np.array_equal(a, b) for a, b in zip(leaves, jax.tree.leaves(state), strict=True)
        ):
            zero(step_dir, path, percent)
            return "fail their digest"
        if tried == 50:
            break
    merged = [p for p in files if "ocdbt.process_" not in p]
    zero(step_dir, merged[0], 1)  # inside its first b-tree node
    return "does not restore"


def _arrays_of_another_step(step_dir, *_):
    """Step 2's arrays under step 4's metadata: a consistent Orbax checkpoint of other
    values (what bit rot that keeps every format check happy looks like)."""
    import shutil

    shutil.rmtree(os.path.join(step_dir, "state"))
    steps = os.path.dirname(step_dir)
    shutil.copytree(os.path.join(steps, "2", "state"), os.path.join(step_dir, "state"))


def _empty(step_dir):
    import shutil

    shutil.rmtree(step_dir)
    os.mkdir(step_dir)


DAMAGE = {  # kind -> (damage(step_dir, state, config), what the warning says)
    "truncated data files": (lambda d, *_: _truncate_data_files(d), "does not restore"),
    "deleted manifest": (lambda d, *_: os.remove(os.path.join(d, "state", "manifest.ocdbt")), ""),
    "zeroed bytes in a chunk": (_zero_64_bytes, None),  # it says what to expect
    "another step's arrays": (_arrays_of_another_step, "fail their digest"),
    "empty step directory": (lambda d, *_: _empty(d), ""),
    "damaged metadata JSON": (lambda d, *_: _truncate(os.path.join(d, "metadata", "metadata")), ""),
}


@pytest.fixture(scope="module")
def four_and_six_steps(tmp_path_factory):
    """(config, a workdir trained 4 steps with checkpoints 2 and 4, its state at step 4,
    the final state of a straight 6-step run), trained in this process (8 devices)."""
    folder = tmp_path_factory.mktemp("damage")
    config = tiny_config("mle", evals={}, total_steps=6)
    train.train_and_evaluate(config, str(folder / "six"))
    config.total_steps = 4
    train.train_and_evaluate(config, str(folder / "four"))
    four_steps = restore_final(str(folder / "four"), config)[0]
    config.total_steps = 6
    return config, str(folder / "four"), four_steps, restore_final(str(folder / "six"), config)


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_step_before(
    kind, four_and_six_steps, tmp_path, caplog
):
    import shutil

    config, trained, four_steps, (straight_state, _, straight_next) = four_and_six_steps
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    damage, says = DAMAGE[kind]
    says = damage(os.path.join(workdir, "checkpoints", "4"), four_steps, config) or says
    caplog.set_level("INFO")

    results = train.train_and_evaluate(config, workdir)  # 4 is damaged: resumes from 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    moved = [w for w in warnings if "Checkpoint step 4" in w and "corrupt-4" in w]
    assert moved and says in moved[0], warnings
    assert "Resumed from step 2" in caplog.text
    assert results["step"] == 6
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "corrupt-4"))  # kept, aside
    assert saved_steps(workdir) == [2, 4, 6]  # step 4 saved again, normally
    state, metadata, next_batch = restore_final(workdir, config)
    assert metadata["data_position"] == 6
    assert_trees_equal(state, straight_state)
    assert_trees_equal(next_batch, straight_next)


def test_no_restorable_checkpoint_fails_rather_than_start_again(four_and_six_steps, tmp_path):
    import shutil

    config, trained, _, _ = four_and_six_steps
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    for step in (2, 4):
        _empty(os.path.join(workdir, "checkpoints", str(step)))
    for _ in range(2):  # and again, once both are aside
        with pytest.raises(checkpointing.CheckpointError, match=r"corrupt-2, corrupt-4 were moved"):
            train.train_and_evaluate(config, workdir)
    assert saved_steps(workdir) == []


def test_changed_config_is_named_not_taken_for_damage(four_and_six_steps, tmp_path):
    import shutil

    config, trained, _, _ = four_and_six_steps
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    config = config.copy_and_resolve_references()
    config.model.d_ff = 48
    with pytest.raises(
        checkpointing.CheckpointError, match=r"other shapes than this config.*d_ff|mlp"
    ):
        train.train_and_evaluate(config, workdir)
    assert saved_steps(workdir) == [2, 4]  # nothing moved aside


def test_full_disk_during_save_names_the_folder_and_keeps_the_last_checkpoint(
    make_config, tmp_path, monkeypatch
):
    import errno

    workdir = str(tmp_path)
    config = make_config("mle", total_steps=6, evals={})
    original = pipeline.TrainIterator.save

    def disk_full_at_4(iterator, folder):
        if iterator.position == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        original(iterator, folder)

    monkeypatch.setattr(pipeline.TrainIterator, "save", disk_full_at_4)
    full = r"checkpoints failed .*No space left.*last complete checkpoint is step 2\. Free space"
    with pytest.raises(OSError, match=full):
        train.train_and_evaluate(config, workdir)
    assert saved_steps(workdir) == [2]
    monkeypatch.setattr(pipeline.TrainIterator, "save", original)
    assert train.train_and_evaluate(config, workdir)["step"] == 6  # resumes from step 2
    assert saved_steps(workdir) == [2, 4, 6] and not tmp_dirs(workdir)


# ----------------------------------------------------------------------------- two processes


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_pair(processes, *args) -> list[Run]:
    """Two processes of one run, 4 CPU devices each, through `--jax_distributed`."""
    port = free_port()
    cluster = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    return [
        Run(processes, *args, "--jax_distributed", *cluster, f"--process_id={i}", devices=4)
        for i in range(2)
    ]


def finish_pair(pair) -> None:
    for i, run in enumerate(pair):
        assert run.finish() == 0, f"process {i}:\n{run.log()}"


def test_two_processes_train_resume_and_obey_a_preemption_notice(tmp_path, processes):
    from test_trainer import read_events

    config_file = write_config(tmp_path)
    config = load_config(config_file)
    args = [f"--config={config_file}"]
    straight_dir, preempted_dir = str(tmp_path / "straight"), str(tmp_path / "preempted")
    straight = launch_pair(processes, *args, f"--workdir={straight_dir}")
    one_process = train.train_and_evaluate(config, str(tmp_path / "one"))  # 8 devices here
    finish_pair(straight)

    # The same losses as one process with 8 devices; process 0 alone writes workdir files.
    losses = dict(read_events(str(tmp_path / "one"))["train/loss"])
    two = dict(read_events(straight_dir)["train/loss"])
    assert sorted(two) == list(range(1, 41))
    steps = sorted(two)
    np.testing.assert_allclose([two[s] for s in steps], [losses[s] for s in steps], atol=1e-5)
    assert len(glob.glob(os.path.join(straight_dir, "events.out.tfevents*"))) == 1
    assert "explicit: process 1 of 2" in "".join(straight[1].lines)
    last = os.path.join(straight_dir, "checkpoints", "40")
    for i in range(2):  # each process wrote its arrays and its data iterator's state
        assert os.path.isdir(os.path.join(last, "state", f"ocdbt.process_{i}"))
        assert os.path.exists(os.path.join(last, "data", f"process_{i}-of-2.json"))
    assert one_process["eval"]["expert"] == pytest.approx(
        json_load(os.path.join(straight_dir, "results.json"))["eval"]["expert"],
        abs=1e-5,
        nan_ok=True,
    )

    # A preemption notice (SIGTERM) to process 1 only: both save the same step and exit 0.
    # (SIGKILL and resume: test_sigkill_at_random_moments_resumes_bit_identically.)
    pair = launch_pair(processes, *args, f"--workdir={preempted_dir}")
    pair[0].wait_for(lambda: any(s > 16 for s in pair[0].steps))
    pair[1].kill(signal.SIGTERM)
    finish_pair(pair)
    saved = [re.findall(r"Preempted: saved step (\d+)", "".join(run.lines)) for run in pair]
    assert saved[0] == saved[1] and len(saved[0]) == 1, saved
    step = int(saved[0][0])
    assert step < 40 and step in saved_steps(preempted_dir)
    assert not os.path.exists(os.path.join(preempted_dir, "results.json"))
    pair = launch_pair(processes, *args, f"--workdir={preempted_dir}")
    finish_pair(pair)
    assert f"Resumed from step {step}" in "".join(pair[1].lines)

    state_a, meta_a, next_a = restore_final(straight_dir, config)
    state_b, meta_b, next_b = restore_final(preempted_dir, config)
    assert meta_a["data_position"] == meta_b["data_position"] == 40
    assert_trees_equal(state_a, state_b)
    assert_trees_equal(next_a, next_b)
    # The two processes' checkpoint, restored in one process onto 4 devices.
    state_4, _, _ = restore_final(
        straight_dir, config, sharding.make_mesh(config.mesh, jax.devices()[:4])
    )
    assert_trees_equal(state_a, state_4)


def json_load(path):
    import json

    with open(path) as f:
        return json.load(f)


def test_jax_distributed_takes_an_explicit_cluster_from_flags_or_environment():
    from irl_lm import distributed

    skypilot = {
        "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.9",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": "1",
    }
    explicit = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
    }
    env = skypilot | explicit
    args, found = distributed.distributed_init_args(env, tpu_vm=True)
    assert args == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert found == "explicit: process 3 of 4, coordinator 10.0.0.1:1234"
    flags = dict(coordinator_address="127.0.0.1:99", num_processes=2, process_id=0)
    assert distributed.distributed_init_args(env, tpu_vm=False, **flags)[0] == flags
    partial = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}
    with pytest.raises(ValueError, match=r"not --num_processes \(or JAX_NUM_PROCESSES\), "):
        distributed.distributed_init_args(partial, tpu_vm=False)
    # Without explicit settings: SkyPilot's variables, else JAX's own detection.
    assert distributed.distributed_init_args(skypilot, tpu_vm=False)[0]["process_id"] == 1
    assert distributed.distributed_init_args({}, tpu_vm=False)[0] == {}

"""The SkyPilot task files of scripts/launch/: SkyPilot's own parser reads them, and their
`setup` and `run` scripts run here in a shell, with what only a cloud host has stubbed
(`uv`'s download of a Python, the accelerator wheels) and the rest real."""

import os
import stat
import subprocess
import sys

import pytest
from conftest import SINGLE_DEVICE_ENV, write_tiny_config_file, write_tiny_sweep_config
from test_preemption import free_port

from irl_lm import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "scripts", "launch")
LAUNCH_FILES = {  # file -> (accelerators, nodes, the setup's accelerator)
    "tpu_pod.yaml": ({"tpu-v4-32": 1}, 1, "tpu"),
    "gpu_cluster.yaml": ({"H100": 8}, 2, "cuda12"),
    "gpu_node.yaml": ({"H100": 8}, 1, "cuda12"),
}


@pytest.fixture(scope="module")
def tasks():
    sky = pytest.importorskip("sky", reason="skypilot is a test requirement (make test)")
    return {name: sky.Task.from_yaml(os.path.join(FOLDER, name)) for name in LAUNCH_FILES}


def test_launch_files_parse_with_skypilot(tasks):
    assert sorted(n for n in os.listdir(FOLDER) if n.endswith(".yaml")) == sorted(LAUNCH_FILES)
    for name, (accelerators, nodes, accelerator) in LAUNCH_FILES.items():
        task = tasks[name]
        (resources,) = task.resources
        assert (resources.accelerators, task.num_nodes) == (accelerators, nodes), name
        assert "IRL_LM_ARGS" in task.envs, name
        assert task.setup.strip() == f"bash scripts/launch/setup.sh {accelerator}", name
        assert task.run.strip() == "bash scripts/launch/run.sh", name
    assert {"IRL_LM_SWEEP_ARGS", "IRL_LM_PARALLEL"} <= set(tasks["gpu_node.yaml"].envs)


# `uv`, as the setup script calls it: each call is logged; `uv venv` makes a folder whose
# python runs this one (which has the requirements), `uv pip` installs nothing.
UV_STUB = """#!/usr/bin/env bash
echo "uv $*" >> "$UV_CALLS"
if [ "$1" = venv ]; then
  for last; do :; done
  mkdir -p "$last/bin" && printf '#!/bin/sh\nexec {python} "$@"\n' > "$last/bin/python"
  chmod +x "$last/bin/python"
fi
"""


@pytest.mark.parametrize("name", sorted(LAUNCH_FILES))
def test_setup_installs_a_python_of_ours_and_the_pinned_jax(tasks, name, tmp_path):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "uv").write_text(UV_STUB.format(python=sys.executable))
    (stubs / "uv").chmod(stat.S_IRWXU)
    venv, calls = tmp_path / "venv", tmp_path / "uv_calls"
    env = dict(
        SINGLE_DEVICE_ENV,
        PATH=f"{stubs}:{os.environ['PATH']}",
        HOME=str(tmp_path),
        IRL_LM_VENV=str(venv),
        UV_CALLS=str(calls),
        **{k: str(v) for k, v in tasks[name].envs.items()},
    )
    done = subprocess.run(
        ["bash", "-c", tasks[name].setup], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    jax_pin = next(
        line.strip()
        for line in open(os.path.join(ROOT, "constraints.txt"))
        if line.startswith("jax==")
    )
    accelerator = LAUNCH_FILES[name][2]
    python = f"{venv}/bin/python"
    assert calls.read_text().splitlines() == [
        f"uv venv --allow-existing --python 3.11 {venv}",
        f"uv pip install --python {python} -c constraints.txt -r requirements.txt "
        + jax_pin.replace("jax==", f"jax[{accelerator}]=="),
        f"uv pip install --python {python} --no-deps -e .",
    ]
    assert "irl-lm setup: Python 3.1" in done.stdout, done.stdout


def run_script(task, tmp_path, **env):
    """The task's `run` in bash, in the synced tree (this checkout) with its Python
    (IRL_LM_VENV), as a single-node SkyPilot job on one CPU device."""
    skypilot = dict(SKYPILOT_NODE_IPS="127.0.0.1", SKYPILOT_NODE_RANK="0", SKYPILOT_NUM_NODES="1")
    env = {
        **SINGLE_DEVICE_ENV,
        **skypilot,
        **{k: str(v) for k, v in task.envs.items()},
        "IRL_LM_COORDINATOR_PORT": str(free_port()),
        "IRL_LM_VENV": sys.prefix,
        "HOME": str(tmp_path),
        **env,
    }
    return subprocess.run(
        ["bash", "-c", task.run], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_run_trains_the_point_and_leaves_its_log_in_the_workdir(tasks, tmp_path):
    config = write_tiny_config_file(tmp_path, "launch_point", total_steps=2, evals={})
    workdir = tmp_path / "point"
    args = f"--config={config} --workdir={workdir}"
    done = run_script(tasks["gpu_cluster.yaml"], tmp_path, IRL_LM_ARGS=args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "results.json").exists()
    log = (workdir / "log.txt").read_text()
    assert f"irl_lm.main --jax_distributed --log_to_workdir {args}" in log, log
    assert "step 2/2" in log, log

    # No arguments: refused, naming the variable.
    done = run_script(tasks["tpu_pod.yaml"], tmp_path, IRL_LM_ARGS="")
    assert done.returncode == 2 and "IRL_LM_ARGS" in done.stderr
    # A sweep on the node: the variables reach irl_lm.sweep (here a dry run).
    sweep_config = write_tiny_sweep_config(tmp_path)
    sweep_args = f"--config={sweep_config} --workdir={tmp_path / 'sweep'} --dry_run"
    done = run_script(
        tasks["gpu_node.yaml"], tmp_path, IRL_LM_SWEEP_ARGS=sweep_args, IRL_LM_PARALLEL="2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len([line for line in done.stdout.splitlines() if "\trun\t" in line]) == 4


def test_parallel_points_get_their_own_gpus(tmp_path, monkeypatch):
    gpus = [str(i) for i in range(8)]
    assert sweep.gpu_slots(gpus, 2) == [gpus[:4], gpus[4:]]
    assert sweep.gpu_slots(gpus, 1) == [] and sweep.gpu_slots([], 4) == []
    assert sweep.gpu_slots(gpus, 3) == []  # no equal shares: the points share the GPUs

    # Four points, two at a time, on a node that shows 8 GPUs: each running point has half.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(gpus))
    shows = "import os, time; print('GPUS', os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(1)"
    monkeypatch.setattr(sweep.Point, "command", property(lambda p: [sys.executable, "-c", shows]))
    config = write_tiny_sweep_config(tmp_path)
    assert sweep.run_sweep(config, str(tmp_path / "sweep"), parallel=2) == 1  # no results.json
    seen = []
    for name in sorted(os.listdir(tmp_path / "sweep")):
        if os.path.isdir(tmp_path / "sweep" / name):
            log = (tmp_path / "sweep" / name / "log.txt").read_text()
            seen.append(next(line for line in log.splitlines() if line.startswith("GPUS")))
    assert sorted(seen) == ["GPUS 0,1,2,3"] * 2 + ["GPUS 4,5,6,7"] * 2, seen

"""`python -m irl_lm.sweep`: points from a config's sweep(), run once each, resumed, checked
before anything runs; `--jax_distributed` on SkyPilot; the SkyPilot task files."""

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import SINGLE_DEVICE_ENV, single_device_children, write_tiny_sweep_config

from irl_lm import sweep

ROOT = os.path.join(os.path.dirname(__file__), "..")
POINTS = ["lam=0,seed=0", "lam=0,seed=1", "lam=0.3,seed=0", "lam=0.3,seed=1"]


def mtimes(folder):
    return {
        path: os.stat(path).st_mtime_ns
        for path in glob.glob(os.path.join(folder, "**"), recursive=True)
    }


def test_sweep_runs_each_point_once_and_reruns_only_an_unfinished_one(
    finished_sweep, tmp_path, capsys
):
    config, finished, code, _ = finished_sweep
    workdir = str(tmp_path / "lam")  # a copy to rerun in: test_report reads the session's
    shutil.copytree(finished, workdir)
    assert code == 0
    assert sorted(os.listdir(workdir)) == sorted([*POINTS, "sweep.json"])
    for name in POINTS:
        results = json.load(open(os.path.join(workdir, name, "results.json")))
        assert results["step"] == 6 and "expert" in results["eval"]
        saved = json.load(open(os.path.join(workdir, name, "config.json")))
        lam, seed = name.replace("lam=", "").replace("seed=", "").split(",")
        assert (saved["loss"]["lam"], saved["seed"]) == (float(lam), int(seed))
    record = json.load(open(os.path.join(workdir, "sweep.json")))
    assert [p["name"] for p in record["points"]] == POINTS
    assert record["commit"] and record["commit"] != "unknown"
    for point in record["points"]:
        assert point["status"] == "done" and point["returncode"] == 0
        assert point["duration_s"] > 0 and os.path.exists(point["log"])
        assert point["command"][1:3] == ["-m", "irl_lm.main"]
        assert f"--config.loss.lam={point['overrides']['loss.lam']:g}" in point["command"]

    # A second invocation runs nothing and touches no point's workdir.
    before = {name: mtimes(os.path.join(workdir, name)) for name in POINTS}
    assert sweep.run_sweep(config, workdir, parallel=2) == 0
    assert "4 points (4 already finished)" in capsys.readouterr().out
    assert {name: mtimes(os.path.join(workdir, name)) for name in POINTS} == before

    # A point without results.json runs again, alone, and resumes from its checkpoint.
    rerun = "lam=0.3,seed=1"
    os.remove(os.path.join(workdir, rerun, "results.json"))
    with single_device_children():
        assert sweep.run_sweep(config, workdir, parallel=2) == 0
    for name in POINTS:
        if name != rerun:
            assert mtimes(os.path.join(workdir, name)) == before[name]
    log = open(os.path.join(workdir, rerun, "log.txt")).read()
    assert log.count("# sweep ") == 2  # one header a run, appended
    assert "Resumed from step 6" in log.split("# sweep ")[-1]
    results = json.load(open(os.path.join(workdir, rerun, "results.json")))
    assert results["step"] == 6 and "expert" in results["eval"]
    record = json.load(open(os.path.join(workdir, "sweep.json")))
    assert [p["skipped"] for p in record["points"]] == [True, True, True, False]


def test_main_on_a_finished_workdir_exits_at_once(finished_sweep, processes):
    config, workdir, _, _ = finished_sweep
    point = os.path.join(workdir, "lam=0,seed=0")
    before = mtimes(point)
    proc = processes.run(
        [
            sys.executable,
            "-m",
            "irl_lm.main",
            f"--config={config}:loss=iqlearn",
            f"--workdir={point}",
            "--config.loss.lam=0",
            "--config.seed=0",
        ],
        cwd=ROOT,
        env=SINGLE_DEVICE_ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already finished (results.json says step 6 of 6): nothing to do" in proc.stderr
    assert "steps/s" not in proc.stderr and "eval/" not in proc.stderr
    assert mtimes(point) == before


def test_a_failing_point_does_not_stop_the_others(tmp_path, processes):
    config = write_tiny_sweep_config(tmp_path)
    workdir = str(tmp_path / "broken")
    proc = processes.run(
        [
            sys.executable,
            "-m",
            "irl_lm.sweep",
            f"--config={config}",
            "--sweep_arg=broken",
            f"--workdir={workdir}",
            "--parallel=2",
        ],
        cwd=ROOT,
        env=SINGLE_DEVICE_ENV,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert os.path.exists(os.path.join(workdir, "seed=0", "results.json"))
    log = os.path.join(workdir, "name=sgd", "log.txt")
    assert f"failed: name=sgd  exit code 1  log: {log}" in proc.stdout
    assert "config.optimizer.name='sgd' is not allowed" in proc.stdout  # the log's last line
    assert "1/2 points finished" in proc.stdout
    record = json.load(open(os.path.join(workdir, "sweep.json")))
    assert [(p["status"], p["returncode"]) for p in record["points"]] == [
        ("done", 0),
        ("failed", 1),
    ]


def _config_file(tmp_path, points: str) -> str:
    path = tmp_path / "bad_sweep.py"
    path.write_text(
        f"import sys\nsys.path.insert(0, {os.path.abspath(ROOT)!r})\n"
        "from configs.demo import get_config  # noqa: F401\n\n\n"
        f"def sweep(arg=None):\n    return {points}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    "points, message",
    [
        (
            '[{"loss.lam": 0.1}, {"loss.lamda": 0.3}]',
            "sweep point 'lamda=0.3': config field 'loss.lamda' does not exist (loss has",
        ),
        ('[{"seed": 0}, {"seed": 0}]', "several points named ['seed=0']"),
        ('[{"seed": "one"}]', "sweep point 'seed=one'"),
        ('[{"task.expert.nope": 1}]', "config field 'task.expert.nope' does not exist"),
    ],
)
def test_bad_points_are_refused_before_anything_runs(tmp_path, points, message):
    config = _config_file(tmp_path, points)
    with pytest.raises(ValueError) as error:
        sweep.run_sweep(config, str(tmp_path / "out"))
    assert message in str(error.value)
    assert not os.path.exists(tmp_path / "out")


def test_common_overrides_are_checked_and_may_not_clash(tmp_path):
    config = _config_file(tmp_path, '[{"seed": 0}, {"seed": 1}]')
    with pytest.raises(ValueError, match="config field 'total_stps' does not exist"):
        sweep.build_points(config, str(tmp_path), overrides=["--config.total_stps=3"])
    with pytest.raises(ValueError, match=r"sets \['seed'\], which the command line sets"):
        sweep.build_points(config, str(tmp_path), overrides=["--config.seed=3"])


def test_point_names():
    names = sweep.point_names(
        [
            {"optimizer.learning_rate": 1e-3, "discriminator.learning_rate": 3e-4, "seed": 0},
            {"config_arg": "loss=gail", "init_from": "/ckpt dir/mle", "loss.lam": 1.0},
            {"config_arg": "loss=mle", "loss.beta": 0.1, "name": "beta 0.1"},
        ]
    )
    assert names == [
        "optimizer.learning_rate=0.001,discriminator.learning_rate=0.0003,seed=0",
        "loss=gail,init_from=_ckpt_dir_mle,lam=1",
        "beta_0.1",
    ]
    assert sweep.format_value(1 / 3) == repr(1 / 3)  # not rounded into another point's name
    assert sweep.format_value(True) == "true"


def test_print_commands_lists_the_unfinished_points_for_a_launcher(finished_sweep, capsys):
    config, workdir, _, _ = finished_sweep
    assert sweep.run_sweep(config, workdir, print_commands=True) == 0
    assert capsys.readouterr().out == ""  # every point finished
    fresh = os.path.join(os.path.dirname(workdir), "fresh")
    overrides = ["--config.total_steps=3"]
    assert (
        sweep.run_sweep(config, fresh, print_commands=True, overrides=overrides, only=r"seed=1$")
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [shlex.split(line) for line in lines] == [
        [
            f"--config={config}:loss=iqlearn",
            f"--workdir={fresh}/lam=0,seed=1",
            "--config.total_steps=3",
            "--config.loss.lam=0",
            "--config.seed=1",
        ],
        [
            f"--config={config}:loss=iqlearn",
            f"--workdir={fresh}/lam=0.3,seed=1",
            "--config.total_steps=3",
            "--config.loss.lam=0.3",
            "--config.seed=1",
        ],
    ]
    assert os.listdir(fresh) == ["sweep.json"]  # for the report; no point has run
    record = json.load(open(os.path.join(fresh, "sweep.json")))
    assert [p["status"] for p in record["points"]] == ["pending"] * 4  # all, not only seed=1


@pytest.mark.parametrize(
    "config, arg, count",
    [
        ("configs/demo.py", None, 18),
        ("configs/demo.py", "entropy", 15),
        ("configs/demo.py", "data", 18),
        ("configs/xsum.py", None, 18),
        ("configs/gsm8k.py", "tiny", 18),
        ("configs/tldr.py", None, 18),
        ("configs/wmt22.py", None, 18),
    ],
)
def test_every_config_sweep_builds(tmp_path, config, arg, count):
    points = sweep.build_points(os.path.join(ROOT, config), str(tmp_path), arg)
    assert len(points) == count == len({p.name for p in points})
    lams = sorted({p.overrides.get("loss.lam") for p in points} - {None})
    if arg in (None, "tiny"):
        assert lams == [0.0, 0.01, 0.03, 0.1, 0.3, 1.0]
        assert {p.overrides["seed"] for p in points} == {0, 1, 2}


# ----------------------------------------------------------------------------- clusters


def test_jax_distributed_reads_skypilot_gpu_nodes(monkeypatch):
    import jax

    from irl_lm import distributed as main

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(main, "on_tpu_vm", lambda: False)
    env = {
        "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.9\n",
        "SKYPILOT_NODE_RANK": "1",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NUM_GPUS_PER_NODE": "8",
    }
    main.initialize(env)
    assert calls == [dict(coordinator_address="10.0.0.7:8476", num_processes=2, process_id=1)]
    main.initialize(env | {"IRL_LM_COORDINATOR_PORT": "1234"})
    assert calls[-1]["coordinator_address"] == "10.0.0.7:1234"
    # One SkyPilot node: nothing to initialise. No SkyPilot, or a TPU VM: JAX detects the
    # cluster itself.
    main.initialize(env | {"SKYPILOT_NUM_NODES": "1", "SKYPILOT_NODE_IPS": "10.0.0.7"})
    assert len(calls) == 2
    main.initialize({})
    monkeypatch.setattr(main, "on_tpu_vm", lambda: True)
    main.initialize(env)
    assert calls[2:] == [{}, {}]
    with pytest.raises(RuntimeError, match="SKYPILOT_NODE_IPS lists 2 nodes"):
        main.distributed_init_args(env | {"SKYPILOT_NUM_NODES": "3"}, tpu_vm=False)


def test_config_file_arg_merges_with_the_points_config_arg(tmp_path):
    xsum = os.path.join(ROOT, "configs/xsum.py")
    points = sweep.build_points(f"{xsum}:model=t5_large", str(tmp_path))
    assert points[0].config_arg == "model=t5_large,mode=full,loss=iqlearn"
    assert points[0].args[0] == f"--config={xsum}:model=t5_large,mode=full,loss=iqlearn"
    with pytest.raises(ValueError, match="config_arg mode=full, but --config gives mode=tiny"):
        sweep.build_points(f"{xsum}:mode=tiny", str(tmp_path))


def test_ctrl_c_stops_the_running_points_with_a_checkpoint(tmp_path, processes):
    """SIGINT to the sweep (a Ctrl-C): the points, in their own session, get SIGTERM from
    the runner, save a checkpoint and are marked interrupted; the sweep exits 1."""
    import signal
    import time

    config = write_tiny_sweep_config(tmp_path)
    workdir = tmp_path / "stopped"
    log = workdir / "lam=0,seed=0" / "log.txt"
    flags = [f"--config={config}", f"--workdir={workdir}", "--only=^lam=0,seed=0$"]
    overrides = ["--config.total_steps=100000", "--config.log_every=20"]
    command = [sys.executable, "-m", "irl_lm.sweep", *flags, *overrides]
    proc = processes.start(
        command,
        cwd=ROOT,
        env=SINGLE_DEVICE_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while not (log.exists() and "step 40/100000" in log.read_text()):
        assert time.time() < deadline and proc.poll() is None, "the point never trained"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, out[-2000:]
    assert "interrupted: lam=0,seed=0  exit code 0" in out
    from irl_lm import checkpointing

    saved = checkpointing.Checkpointer(str(workdir / "lam=0,seed=0"), keep=3).latest_step()
    assert saved is not None and saved >= 40
    assert not (workdir / "lam=0,seed=0" / "results.json").exists()
    record = json.load(open(workdir / "sweep.json"))
    assert [p["status"] for p in record["points"]] == ["interrupted", *["pending"] * 3]

"""`python -m irl_lm.main` as a user runs it: config file, arg and --config overrides."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = [
    "--config.total_steps=2",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.task.num_train_examples=32",
    "--config.task.num_eval_examples=8",
    "--config.model.num_layers=1",
    "--config.model.num_decoder_layers=1",
    "--config.evals.expert.num_examples=4",
]


def run_main(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "irl_lm.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_main_trains_with_overrides(tmp_path):
    """With `--config.mesh=auto` too: on a CPU (its memory is not known) the first layout,
    FSDP over every device, is taken."""
    workdir = str(tmp_path / "run")
    proc = run_main(
        "--config=configs/demo.py:loss=iqlearn,lam=0.3",
        f"--workdir={workdir}",
        "--config.loss.gamma=0.9",
        "--config.mesh=auto",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert config["loss"] == {"name": "iqlearn", "lam": 0.3, "gamma": 0.9}
    assert config["mesh"] == {"data": 1, "fsdp": -1, "tensor": 1}  # the demo's: data=-1
    assert "mesh=auto, the devices' memory not known" in proc.stderr
    assert config["total_steps"] == 2
    assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 2
    assert "step 2/2" in proc.stderr


def test_main_rejects_bad_gamma_naming_the_field(tmp_path):
    proc = run_main(
        "--config=configs/demo.py:loss=iqlearn",
        f"--workdir={tmp_path}",
        "--config.loss.gamma=1.5",
        *TINY,
    )
    assert proc.returncode != 0
    assert "config.loss.gamma=1.5 is invalid; allowed: a number in (0, 1]" in proc.stderr

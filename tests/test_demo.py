"""`make demo`'s program, shortened: the table and every run's workdir contents."""

import csv
import glob
import json
import os
import subprocess
import sys

from test_trainer import read_events

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_demo_prints_table_and_fills_workdirs(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "irl_lm.demo",
            f"--workdir={tmp_path}",
            "--total_steps=6",
            "--run=loss=mle",
            "--run=loss=iqlearn,lam=0.1",
            "--run=loss=iqlearn_online,lam=0.1,alpha=0.1",
            "--run=loss=gail",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    header = lines.index(next(line for line in lines if line.strip().startswith("method")))
    assert lines[header].split() == [
        "method",
        "setting",
        "validity",
        "forward_kl",
        "reverse_kl",
        "self_bleu",
        "entropy",
        "steps/s",
    ]
    table = lines[header + 1 : lines.index("", header)]  # the report's path follows
    methods = [line.split()[0] for line in table]
    assert methods == ["mle", "iqlearn", "iqlearn_online", "gail", "expert"]
    assert lines[header + 3].split()[1:3] == ["λ=0.1", "α=0.1"]
    assert lines[header + 4].split()[1] == "KL=0.05"
    expert_row = lines[header + 5].split()
    assert expert_row[2:5] == ["1.000", "0.000", "0.000"]

    for run in ("mle", "iqlearn_lam0.1"):
        workdir = os.path.join(tmp_path, run)
        assert json.load(open(os.path.join(workdir, "config.json")))["total_steps"] == 6
        assert "total parameters" in open(os.path.join(workdir, "model-info.txt")).read()
        assert glob.glob(os.path.join(workdir, "checkpoints", "6", "*"))
        results = json.load(open(os.path.join(workdir, "results.json")))
        events = read_events(workdir)
        assert [s for s, _ in events["train/loss"]][-1] == 6
        validity = dict(events["eval/expert/validity"])[6]
        assert validity == results["eval"]["expert"]["validity"]
        assert 6 in dict(
            events["eval/validation/mle/nll" if run == "mle" else "eval/validation/iqlearn/nll"]
        )
    # The runs read back as a report, with the expert's row in the performance-vs-diversity plot.
    assert f"Report (tables, pareto.png, curves.png): {tmp_path}/report/" in proc.stdout
    with open(os.path.join(tmp_path, "report", "groups.csv")) as f:
        groups = [row["config_arg"] for row in csv.DictReader(f)]
    runs = ["loss=mle", "loss=iqlearn,lam=0.1", "loss=iqlearn_online,lam=0.1,alpha=0.1"]
    assert groups == [*runs, "loss=gail"]
    assert os.path.getsize(os.path.join(tmp_path, "report", "pareto.png")) > 10_000
    # GAIL fine-tunes the MLE run, as in the paper.
    gail_config = json.load(open(os.path.join(tmp_path, "gail", "config.json")))
    assert gail_config["init_from"] == os.path.join(str(tmp_path), "mle")

"""Buckets for real: a local GCS server (tests/gcs_server.py) holds the weights, the data, the
workdirs and the sweep; the clients are the production ones (TensorFlow's GCS filesystem for
files and TensorBoard events, TensorStore for Orbax's arrays)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import restore_final, teacher_forced_logits, write_tiny_config_file
from gcs_server import LocalGCS
from test_configs import CONFIG_DIR, load
from test_fetch import shared  # noqa: F401 - the fixture
from test_init_from import hf_folder  # noqa: F401 - the fixture
from test_preemption import assert_trees_equal, load_config

from irl_lm import checkpointing, files, report, sharding, sweep, train
from irl_lm.convert import convert
from irl_lm.data import fetch, tasks, text_tasks
from irl_lm.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gcs():
    with LocalGCS("bkt") as server:
        yield server


def upload(folder, uri) -> None:
    for name in sorted(os.listdir(folder)):
        if os.path.isfile(os.path.join(folder, name)):
            files.copy(os.path.join(folder, name), f"{uri}/{name}")


def logits_of(init_from: str) -> np.ndarray:
    source = checkpointing.parse_init_from(init_from)
    model = build_model(source.model_config())
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with sharding.use_mesh(mesh):
        abstract, shardings = sharding.abstract_params(model, mesh)
        params = source.load_params(model, abstract, shardings)
    return teacher_forced_logits(model, params, [5, 17, 42, 9, 1], [33, 8, 101, 1])


def test_weights_on_a_bucket_give_the_logits_of_disk(gcs, hf_folder, tmp_path):  # noqa: F811
    upload(hf_folder, "gs://bkt/weights/hf")
    convert("hf:gs://bkt/weights/hf", "gs://bkt/weights/orbax")  # converted once, onto the bucket
    convert(f"hf:{hf_folder}", str(tmp_path / "orbax"))
    reference = logits_of(f"hf:{hf_folder}")
    np.testing.assert_array_equal(logits_of("hf:gs://bkt/weights/hf"), reference)
    np.testing.assert_array_equal(logits_of("gs://bkt/weights/orbax"), reference)
    np.testing.assert_array_equal(logits_of(str(tmp_path / "orbax")), reference)
    assert files.path("gs://bkt/weights/orbax/spiece.model").exists()  # the tokenizer went too

    # A folder that is not there: the message of a local one, naming the bucket path.
    for missing in ("hf:gs://bkt/weights/nothing", "gs://bkt/weights/nothing"):
        local = missing.replace("gs://bkt", str(tmp_path))
        messages = []
        for value in (missing, local):
            with pytest.raises((ValueError, FileNotFoundError)) as error:
                checkpointing.parse_init_from(value)
            messages.append(str(error.value))
        assert messages[0] == messages[1].replace(str(tmp_path), "gs://bkt"), messages


def test_jsonl_data_on_a_bucket_is_read_and_checked_for_overlap(gcs, shared, tmp_path):  # noqa: F811
    gsm8k = os.path.join(shared, "gsm8k", "test.jsonl")
    lines = open(gsm8k).read().splitlines(keepends=True)
    files.write_text("gs://bkt/data/train.jsonl", "".join(lines[:40]))
    files.write_text("gs://bkt/data/validation.jsonl", "".join(lines[40:50]))
    task_config = dict(
        name="jsonl",
        files=dict(train="gs://bkt/data/train.jsonl", validation="gs://bkt/data/validation.jsonl"),
        inputs="question",
        targets="answer",
        vocabulary="byte",
        metrics="",
        max_input_len=1024,
        max_target_len=1024,
    )
    tasks.check_disjoint(task_config)
    task = tasks.get_task(task_config)
    read = text_tasks.read(task.get_dataset(None, split="validation", shuffle=False))
    assert [r["targets_pretokenized"].decode() for r in read] == [
        json.loads(line)["answer"] for line in lines[40:50]
    ]
    files.write_text("gs://bkt/data/overlap.jsonl", lines[25] + lines[60])
    task_config["files"]["validation"] = "gs://bkt/data/overlap.jsonl"
    with pytest.raises(ValueError, match="share 1 examples") as refused:
        tasks.check_disjoint(task_config)
    assert "gs://bkt/data/train.jsonl:26 is gs://bkt/data/overlap.jsonl:1" in str(refused.value)

    # A file that is not there: the message of a local one, naming the bucket path.
    messages = []
    for folder in ("gs://bkt/data", str(tmp_path)):
        task_config["files"] = dict(train=f"{folder}/none.jsonl", validation=f"{folder}/v.jsonl")
        with pytest.raises((ValueError, FileNotFoundError)) as missing:
            tasks.check_disjoint(task_config)
        messages.append(str(missing.value))
    assert messages[0] == messages[1].replace(str(tmp_path), "gs://bkt/data"), messages


RUN = {
    "total_steps": 40,
    "checkpoint.every": 10,
    "evals": dict(
        validation=dict(kind="loss", every=20, max_examples=16),
        expert=dict(kind="synthetic_expert", every=40, num_examples=4, num_samples=2),
    ),
}
ONE_POINT = "\n\ndef sweep(arg=None):\n    return [{'seed': 0}]\n"


def test_a_sweep_on_a_bucket_is_killed_resumes_bit_identically_and_reports(
    gcs,
    hf_folder,  # noqa: F811
    processes,
    tmp_path,
):
    upload(hf_folder, "gs://bkt/weights/hf2")
    config_file = write_tiny_config_file(
        tmp_path, "bucket_run", ONE_POINT, init_from="hf:gs://bkt/weights/hf2", **RUN
    )
    sweep_dir, workdir = "gs://bkt/sweep", "gs://bkt/sweep/seed=0"
    command = [sys.executable, "-m", "irl_lm.sweep", f"--config={config_file}"]
    command.append(f"--workdir={sweep_dir}")

    # The sweep's point, started by hand and killed (SIGKILL) once its first checkpoint is on
    # the bucket (committed: Orbax's marker file, as on GCS it cannot rename a folder).
    point = [f"--config={config_file}", f"--workdir={workdir}", "--config.seed=0"]
    first = processes.start(
        [sys.executable, "-m", "irl_lm.main", *point],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not files.path(workdir, "checkpoints", "10", "commit_success.txt").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()
        time.sleep(0.2)
    first.kill()
    first.communicate(timeout=60)
    assert files.finished_results(workdir, 40) is None, "the run ended before the kill"

    # The sweep: its point resumes from the bucket and finishes.
    second = processes.start(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = second.communicate(timeout=600)[0].decode()
    assert second.returncode == 0 and "done seed=0" in output, output
    log = files.path(workdir, "log.txt").read_text()
    assert "Resumed from step 10" in log or "Resumed from step 20" in log, log

    # The same run on local disk, never stopped: the same state, bit for bit.
    config = load_config(config_file)
    config.seed = 0
    config.init_from = f"hf:{hf_folder}"
    local = str(tmp_path / "local")
    train.train_and_evaluate(config, local)
    state_a, meta_a, _ = restore_final(local, config)
    state_b, meta_b, _ = restore_final(workdir, config)
    assert meta_a["data_position"] == meta_b["data_position"]
    assert_trees_equal(state_a, state_b)

    # The report, from the bucket: its tables, plots and the TensorBoard curves.
    written = report.write_report(sweep_dir, curves=["train/loss"])
    events = report.read_scalar_events(workdir)
    local_events = report.read_scalar_events(local)
    assert dict(events["train/loss"])[40] == dict(local_events["train/loss"])[40]
    table = files.path(sweep_dir, report.REPORT_DIR, "results.md").read_text()
    results = files.read_json(files.path(workdir, "results.json"))
    nll = results["eval"]["validation"]["iqlearn/nll"]
    assert report._num(nll) in table, (nll, table)
    for plot in ("pareto.png", "curves.png"):
        assert files.path(sweep_dir, report.REPORT_DIR, plot).exists(), written


def test_the_guides_bucket_steps_fetch_and_print_commands(gcs, shared, capsys):  # noqa: F811
    """docs/real_runs.md up to the cloud: the paper's splits fetched onto a bucket (from the
    shared GSM8k files, standing in for the download), the full config reading them there,
    and the launch loop's `--print_commands` with its sweep file on the bucket."""
    train_rows = [json.loads(line) for line in open(os.path.join(shared, "gsm8k", "test.jsonl"))]
    release = fetch.Release(
        {
            "train": fetch.Source("train rows", lambda: iter(train_rows[:60])),
            "test": fetch.Source("test rows", lambda: iter(train_rows[60:80])),
        },
        hold_out=10,
    )
    fetch.RELEASES["gsm8k"], saved = release, fetch.RELEASES["gsm8k"]
    try:
        manifest = fetch.fetch("gsm8k", "gs://bkt/data")
    finally:
        fetch.RELEASES["gsm8k"] = saved
    assert manifest["examples"] == {"train": 50, "validation": 10, "test": 20}
    assert files.read_json("gs://bkt/data/gsm8k/manifest.json") == manifest
    config = load(os.path.join(CONFIG_DIR, "gsm8k.py")).get_config("mode=full,data=gs://bkt/data")
    assert config.task.files.train == "gs://bkt/data/gsm8k/train.jsonl"
    tasks.check_disjoint(config.task)

    config_arg = f"{CONFIG_DIR}/gsm8k.py:model=gemma3_1b,data=gs://bkt/data"
    init_from = ["--config.init_from=gs://bkt/weights/gemma-3-1b-pt"]
    code = sweep.run_sweep(
        config_arg, "gs://bkt/gsm8k_gemma", overrides=init_from, print_commands=True
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 18 and all("--workdir=gs://bkt/gsm8k_gemma/" in line for line in lines)
    info, points = report.load_points("gs://bkt/gsm8k_gemma")
    assert len(points) == 18 and {p.status for p in points} == {"unfinished"}

"""Workdir files (`irl_lm.files`): atomic writes, clear errors, finished-run detection."""

import json
import os

import pytest

from irl_lm import files


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    target = tmp_path / "a" / "b" / "results.json"
    files.write_json(target, {"step": 3, "loss": float("nan")})
    files.write_json(target, {"step": 4})  # replaces
    assert json.load(open(target)) == {"step": 4}
    files.copy(target, tmp_path / "copy" / "results.json")
    assert files.read_json(tmp_path / "copy" / "results.json") == {"step": 4}
    assert sorted(os.listdir(target.parent)) == ["results.json"]
    assert files.path("gs://bucket/run") == files.Path("gs://bucket/run")  # not made local
    assert str(files.path("rel")) == os.path.abspath("rel")


def test_finished_results_and_a_damaged_file(tmp_path):
    assert files.finished_results(tmp_path, 10) is None
    files.write_json(tmp_path / "results.json", {"step": 10})
    assert files.finished_results(tmp_path, 10) == {"step": 10}
    assert files.finished_results(tmp_path, 20) is None  # asked now to train for longer
    (tmp_path / "results.json").write_text('{"step": 1')
    with pytest.raises(ValueError, match=r"results.json: not valid JSON"):
        files.finished_results(tmp_path, 10)

"""The paper's splits: `irl_lm.data.fetch` writes disjoint train / validation / test files
(with the public releases stood in for by the shared data), `mode=full` reads them, and a
run whose training data holds evaluation examples is refused."""

import hashlib
import json
import os

import pytest
from test_configs import CONFIG_DIR, load

from irl_lm import train
from irl_lm.data import fetch, tasks, text_tasks

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def shared():
    if not os.path.isdir(DATA):
        pytest.skip(f"shared data not found at {DATA} (see shared/data/README.md)")
    return DATA


def keys(task, path):
    return [text_tasks.example_key(task, r) for r in rows(path)]


def test_gsm8k_holds_out_validation_and_drops_what_evaluation_holds(shared, tmp_path):
    train_rows = rows(os.path.join(shared, "gsm8k", "train_first4000.jsonl"))
    test_rows = rows(os.path.join(shared, "gsm8k", "test.jsonl"))
    # The release as fetched: the train split, plus one test problem and one empty answer.
    given = [*train_rows, test_rows[7], {"question": "What is 1 + 1?", "answer": " "}]
    release = fetch.Release(
        {
            "train": fetch.Source("train rows", lambda: iter(given)),
            "test": fetch.Source("test rows", lambda: iter(test_rows)),
        },
        hold_out=500,
    )
    fetch.RELEASES["gsm8k"], saved = release, fetch.RELEASES["gsm8k"]
    try:
        manifest = fetch.fetch("gsm8k", str(tmp_path))
    finally:
        fetch.RELEASES["gsm8k"] = saved
    folder = tmp_path / "gsm8k"
    task = text_tasks.TEXT_TASKS["gsm8k"]
    split_keys = {s: keys(task, folder / f"{s}.jsonl") for s in text_tasks.SPLITS}
    assert manifest["examples"] == {"train": 3500, "validation": 500, "test": 1319}
    assert manifest["left_out"] == {
        "train": {"missing or empty field": 1, "inputs also in validation or test": 1}
    }
    # validation: the 500 lowest digests of the train problems, none of them in train
    assert (
        sorted(split_keys["validation"])
        == sorted(text_tasks.example_key(task, r) for r in train_rows)[:500]
    )
    assert not set(split_keys["train"]) & set(split_keys["validation"] + split_keys["test"])
    assert split_keys["test"] == [text_tasks.example_key(task, r) for r in test_rows]
    for split in text_tasks.SPLITS:  # the manifest's digests are the files' bytes
        digest = hashlib.sha256((folder / f"{split}.jsonl").read_bytes()).hexdigest()
        assert manifest["sha256"][split] == digest
    assert "held out of train" in manifest["sources"]["validation"]
    # fetched already: nothing is read again
    stamp = os.stat(folder / "train.jsonl").st_mtime_ns
    assert fetch.fetch("gsm8k", str(tmp_path)) == manifest
    assert os.stat(folder / "train.jsonl").st_mtime_ns == stamp

    # mode=full reads exactly these files, and the trainer's check passes on them
    config = load(os.path.join(CONFIG_DIR, "gsm8k.py")).get_config(f"mode=full,data={tmp_path}")
    assert dict(config.task.files) == {s: f"{tmp_path}/gsm8k/{s}.jsonl" for s in split_keys}
    assert not config.task.allow_overlap
    assert config.evals.test.split == "test" and config.evals.test.max_examples == 0
    tasks.check_disjoint(config.task)


def test_wmt_pairs_are_sampled_by_stride(shared, tmp_path, monkeypatch):
    pairs = rows(os.path.join(shared, "wmt22", "en-de.jsonl"))

    def hf_rows(name, split, config=None):
        assert (name, split, config) == ("wmt/wmt19", "train", "de-en")
        return iter([{"translation": {"de": r["de"], "en": r["en"]}} for r in pairs])

    monkeypatch.setattr(text_tasks, "hf_rows", hf_rows)
    evaluation = [{"en": "An evaluation sentence.", "de": "Ein Satz."}, pairs[40]]
    release = fetch.Release(
        {
            "train": fetch.wmt19_pairs("en", "de"),
            "validation": fetch.Source("validation", lambda: iter(evaluation[:1])),
            "test": fetch.Source("test", lambda: iter(evaluation[1:])),
        },
        stride=20,
    )
    monkeypatch.setitem(fetch.RELEASES, "wmt22_en_de", release)
    manifest = fetch.fetch("wmt22_en_de", str(tmp_path))
    got = rows(tmp_path / "wmt22_en_de" / "train.jsonl")
    # every 20th pair, less pair 40 (the test set's)
    expected = [{"en": r["en"], "de": r["de"]} for r in pairs[::20] if r is not pairs[40]]
    assert got == expected
    assert manifest["examples"]["train"] == len(expected) == len(pairs[::20]) - 1
    assert manifest["sources"]["train"].endswith("every 20th row")


def test_training_on_evaluation_data_is_refused(shared, tmp_path):
    xsum = os.path.join(shared, "xsum", "test_first1000.jsonl")
    lines = open(xsum).read().splitlines(keepends=True)
    validation = tmp_path / "validation.jsonl"
    validation.write_text(lines[600] + lines[3] + lines[999])
    config = load(os.path.join(CONFIG_DIR, "xsum.py")).get_config(f"mode=tiny,data={DATA}")
    config.task.allow_overlap = False
    config.task.num_train_examples = 0
    config.task.files = {"train": xsum, "validation": str(validation)}
    with pytest.raises(ValueError) as refused:
        tasks.check_disjoint(config.task)
    message = str(refused.value)
    assert "config.task.files.train and config.task.files.validation share 3 examples" in message
    assert f"{xsum}:4 is {validation}:2" in message and "allow_overlap=True" in message
    config.task.num_train_examples = 500  # the first 500 lines hold one of the three
    with pytest.raises(ValueError, match="share 1 examples"):
        tasks.check_disjoint(config.task)
    config.task.num_train_examples = 0
    config.task.files.validation = xsum  # the same file: refused before reading it
    with pytest.raises(ValueError, match=f"both name {os.path.abspath(xsum)}"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()
    config.task.allow_overlap = True  # asked for: allowed (as mode=tiny does)
    tasks.check_disjoint(config.task)

"""Tasks the seqio way: a user's task from their own module (the README's, verbatim), the
config-only jsonl task, a mixture's rates, TFDS and streaming sources, and bad names."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import seqio

from configs import seqio_task
from irl_lm import train
from irl_lm.data import pipeline, tasks, text_tasks
from irl_lm.metrics import text as text_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
WORDS = "red green blue cat dog fish one two three up down left right sun moon star".split()


def readme_module() -> str:
    """The "Adding a task" module of docs/tasks.md, exactly as a user copies it."""
    with open(os.path.join(ROOT, "docs", "tasks.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    (module,) = [b for b in blocks if b.startswith("# my_tasks.py")]
    return module


def reverse_lines(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=rng.integers(2, 5)))
        lines.append(" ".join(words) + "\t" + " ".join(reversed(words)) + "\n")
    return "".join(lines)


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("readme_my_tasks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_task_in_own_module_trains_and_decode_evaluates(tmp_path):
    """Way (a): the README's module in a folder outside irl_lm/, found through PYTHONPATH,
    named by the CLI's config; a tiny T5 trains 4 steps and decode-evaluates with the
    module's own metric functions."""
    modules, data = tmp_path / "modules", tmp_path / "data"
    modules.mkdir(), data.mkdir()
    (modules / "my_tasks.py").write_text(readme_module())
    (data / "train.tsv").write_text(reverse_lines(64, seed=0))
    (data / "validation.tsv").write_text(reverse_lines(8, seed=1))
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(modules), MY_TASK_DATA=str(data))
    command = [
        sys.executable,
        "-m",
        "irl_lm.main",
        f"--workdir={workdir}",
        "--config=configs/seqio_task.py:task=my_reverse,modules=my_tasks,inputs=32,targets=32",
        "--config.total_steps=4",
        "--config.checkpoint.every=4",
        "--config.log_every=2",
    ]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # A quiet start on CPU: TensorFlow's CUDA lines are held back.
    for noise in ("failed call to cuInit", "Could not find cuda drivers"):
        assert noise not in run.stderr

    results = json.loads((workdir / "results.json").read_text())
    decode = results["eval"]["decode"]
    records = [json.loads(line) for line in open(workdir / "predictions" / "decode" / "4.jsonl")]
    assert len(records) == 8
    # The metric in the evaluator's output is the module's function on the predictions
    # file, through the module's postprocess_fn, as seqio does it.
    user = load_module(str(modules / "my_tasks.py"))
    targets = [user.lowercase(r["target"], is_target=True) for r in records]
    predictions = [user.lowercase(r["predictions"][0]) for r in records]
    assert decode["length_ratio"] == pytest.approx(
        user.length_ratio(targets, predictions)["length_ratio"], rel=1e-9
    )
    # The score metric gets each target's log-likelihood: negative, and per token it is
    # the held-out loss's (the same 8 examples: the validation split has 8 lines).
    num_tokens = sum(len(t.encode()) + 1 for t in (r["target"] for r in records))  # + EOS
    assert decode["mean_log_likelihood"] < 0
    nll = results["eval"]["validation"]["mle/nll"]
    assert -decode["mean_log_likelihood"] * 8 / num_tokens == pytest.approx(nll, rel=1e-4)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_config_only_jsonl_task_trains_and_scores_with_our_metrics(tmp_path):
    """Way (b): name="jsonl", files, a format template for inputs, a field for targets."""
    rows = [
        {"question": f"{a} plus {b}", "context": "sums", "answer": f"#### {a + b}"}
        for a in range(8)
        for b in range(4)
    ]
    config = seqio_task.get_config("task=jsonl,inputs=48,targets=16")
    config.task.files.train = write_jsonl(tmp_path / "train.jsonl", rows[8:])
    config.task.files.validation = write_jsonl(tmp_path / "dev.jsonl", rows[:8])
    config.task.inputs = "question: {question} context: {context}"
    config.task.targets = "answer"
    config.task.metrics = "gsm8k_accuracy,rouge"
    config.total_steps, config.checkpoint.every = 4, 4
    task = tasks.get_task(config.task)
    assert task.name.startswith("jsonl#")
    first = next(text_tasks.read(task.get_dataset(None, split="validation", shuffle=False)))
    assert first["inputs_pretokenized"].decode() == "question: 0 plus 0 context: sums"
    assert first["targets_pretokenized"].decode() == "#### 0"

    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    records = [json.loads(line) for line in open(tmp_path / "run/predictions/decode/4.jsonl")]
    targets = [r["target"].strip() for r in records]
    predictions = [r["predictions"][0].strip() for r in records]
    expected = text_metrics.gsm8k_accuracy(targets, predictions)
    expected |= text_metrics.rouge(targets, predictions)
    decode = results["eval"]["decode"]
    assert {k: decode[k] for k in expected} == pytest.approx(expected)

    # A line without a field the templates read fails naming the file, line and field.
    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:2] + [{"question": "q", "answer": "a"}])
    config.task.files.validation = bad
    with pytest.raises(ValueError, match=r"bad.jsonl:3: field 'context' is missing"):
        list(text_tasks.read(tasks.get_task(config.task).get_dataset(None, split="validation")))
    config.task.metrics = "rouge,blue"
    with pytest.raises(ValueError, match=r"config.task.metrics: \['blue'\] are not metrics"):
        tasks.get_task(config.task)


MIXTURE_MODULE = """
import seqio
import tensorflow as tf

def task(name, pattern):
    def parse(ds):
        return ds.map(lambda line: {"inputs": line, "targets": line})
    seqio.TaskRegistry.add(
        name,
        source=seqio.TextLineDataSource({"train": pattern, "validation": pattern}),
        preprocessors=[parse, seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={k: seqio.Feature(seqio.ByteVocabulary()) for k in ("inputs", "targets")},
        metric_fns=[lambda targets, predictions: {"n": float(len(predictions))}],
    )

task("mix_a", PATTERN_A)
task("mix_b", PATTERN_B)
seqio.MixtureRegistry.add("mix_ab", [("mix_a", 3.0), ("mix_b", 1.0)])
"""


def test_mixture_trains_with_its_rates_and_evaluates_per_subtask(tmp_path, make_config):
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name}{i}\n" for i in range(50)))
    module = MIXTURE_MODULE.replace("PATTERN_A", repr(str(tmp_path / "a.txt")))
    (tmp_path / "mix_tasks.py").write_text(
        module.replace("PATTERN_B", repr(str(tmp_path / "b.txt")))
    )
    sys.path.insert(0, str(tmp_path))
    try:
        config = seqio_task.get_config("task=mix_ab,modules=mix_tasks,inputs=8,targets=8")
        config.batch_size = 16
        iterator = pipeline.TrainIterator(pipeline.train_data(config))
        vocab = seqio.ByteVocabulary()
        rows = [
            vocab.decode(row.tolist())
            for _ in range(40)
            for row in next(iterator)["encoder_input_tokens"]
        ]
        # Rates 3:1, so each row is task a's with p = 0.75: the count within 3 sigma.
        n, p = len(rows), 0.75
        count = sum(row.startswith("a") for row in rows)
        assert set(r[0] for r in rows) == {"a", "b"}
        assert abs(count - n * p) < 3 * np.sqrt(n * p * (1 - p)), (count, n)

        config.total_steps, config.checkpoint.every = 2, 2
        config.evals.decode.max_examples = 4
        results = train.train_and_evaluate(config, str(tmp_path / "run"))
        decode = results["eval"]["decode"]
        assert decode["mix_a/n"] == decode["mix_b/n"] == 4.0  # each sub-task on its own
        records = [json.loads(line) for line in open(tmp_path / "run/predictions/decode/2.jsonl")]
        assert [r["task"] for r in records] == ["mix_a"] * 4 + ["mix_b"] * 4
        assert all(r["input"].startswith(r["task"][-1]) for r in records)
    finally:
        sys.path.remove(str(tmp_path))


def test_tfds_source_streams_and_shards_by_file(tmp_path):
    """A local TFDS dataset (two files per split) read through seqio.TfdsDataSource: the
    rows are the JSONL rows, and two hosts' shards split the training files between them."""
    import tensorflow_datasets as tfds

    path = os.path.join(DATA, "gsm8k", "test.jsonl")
    if not os.path.exists(path):
        pytest.skip(f"shared data not found at {path} (see shared/data/README.md)")
    with open(path) as f:
        rows = [json.loads(line) for _, line in zip(range(40), f, strict=False)]
    features = tfds.features.FeaturesDict(
        {"question": tfds.features.Text(), "answer": tfds.features.Text()}
    )
    split = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    tfds.dataset_builders.store_as_tfds_dataset(
        name="irl_test_gsm8k",
        version="1.0.0",
        features=features,
        data_dir=str(tmp_path),
        split_datasets={"train": list(enumerate(split)), "validation": list(enumerate(split[:8]))},
        disable_shuffling=True,
        download_config=tfds.download.DownloadConfig(num_shards=2),
    )
    config = {
        "name": "irl_lm.gsm8k",
        "source": "tfds",
        "tfds_name": "irl_test_gsm8k:1.0.0",
        "data_dir": str(tmp_path),
        "vocabulary": "byte",
    }
    task = tasks.get_task(config)
    got = [
        ex["targets_pretokenized"].decode()
        for ex in text_tasks.read(task.get_dataset(None, split="validation", shuffle=False))
    ]
    assert got == [r["answer"] for r in rows[:8]]
    assert len(task.source.list_shards("train")) == 2
    # Sharded by file: two hosts' shards partition the split.
    halves = [
        [
            ex["inputs_pretokenized"].decode()
            for ex in text_tasks.read(
                task.get_dataset(
                    None, split="train", shuffle=False, shard_info=seqio.ShardInfo(i, 2)
                )
            )
        ]
        for i in range(2)
    ]
    assert sorted(halves[0] + halves[1]) == sorted(r["question"] for r in rows)
    assert halves[0] and halves[1] and not set(halves[0]) & set(halves[1])


def test_jsonl_source_streams_with_a_limit_and_saved_state(tmp_path, make_config):
    """The training stream of a JSONL task restores from its saved iterator state (the
    line-reading source is checkpointable) and num_train_examples takes the first n."""
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(30)]
    config = seqio_task.get_config("task=irl_lm.gsm8k,inputs=16,targets=16")
    config.task = dict(
        name="irl_lm.gsm8k",
        source="jsonl",
        vocabulary="byte",
        files={"train": write_jsonl(tmp_path / "t.jsonl", rows)},
        num_train_examples=10,
        max_input_len=16,
        max_target_len=16,
    )
    config.batch_size = 4
    first = pipeline.TrainIterator(pipeline.train_data(config))
    seen = [next(first) for _ in range(5)]  # 20 rows: two epochs of the first 10
    vocab = seqio.ByteVocabulary()
    texts = {vocab.decode(r.tolist()) for b in seen for r in b["encoder_input_tokens"]}
    assert texts == {f"q{i}" for i in range(10)}
    first.save(tmp_path / "state")
    resumed = pipeline.TrainIterator(pipeline.train_data(config), 5, saved=tmp_path / "state")
    np.testing.assert_array_equal(
        next(resumed)["decoder_target_tokens"], next(first)["decoder_target_tokens"]
    )


def test_registered_names_and_bad_names():
    names = set(seqio.TaskRegistry.names())
    assert {
        "irl_lm.xsum",
        "irl_lm.gsm8k",
        "irl_lm.tldr",
        "irl_lm.wmt22_en_de",
        "irl_lm.synthetic_expert",
    } <= names
    xsum = seqio.TaskRegistry.get("irl_lm.xsum")
    assert xsum.predict_metric_fns == [text_metrics.rouge]
    assert xsum.postprocess_fn("  a summary \n") == "a summary"
    with pytest.raises(ValueError, match=r"close matches: \['irl_lm.wmt22_en_de'"):
        tasks.get_task({"name": "wmt22_en_dee"})
    if "test_user_task" not in names:
        vocab = seqio.ByteVocabulary()
        seqio.TaskRegistry.add(
            "test_user_task",
            source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["train"]),
            output_features={k: seqio.Feature(vocab) for k in ("inputs", "targets")},
        )
    with pytest.raises(ValueError, match=r"config.task.max_input_len must be set \(> 0\)"):
        tasks.feature_lengths({"name": "test_user_task"})
    with pytest.raises(ValueError, match=r"\['files'\] are not fields of 'test_user_task'"):
        tasks.get_task({"name": "test_user_task", "files": {"train": "a.jsonl"}})


def test_data_code_does_not_import_model_code():
    """Vocabularies are data: irl_lm/data/ reads tokenizers itself, never irl_lm/models/."""
    folder = os.path.join(ROOT, "irl_lm", "data")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                source = f.read()
            assert not re.search(r"^\s*(from|import) irl_lm\.models", source, re.M), name


def test_hf_source_is_streamed_once_into_a_jsonl_file(tmp_path, monkeypatch):
    """The `hf` source's conversion, with a stand-in for the `datasets` package (no network
    here): the split is written once under data_dir, then read as JSON Lines. A dataset
    still defined by a loading script is read from the Hub's Parquet conversion."""
    rows = [{"prompt": f"POST: p{i}\nTL;DR:", "label": f"s{i}", "id": i} for i in range(5)]
    calls = []

    def load_dataset(name, config=None, *, split, streaming, revision=None):
        calls.append((name, split, streaming, revision))
        if revision is None:  # as `datasets` 4 and newer answer for a script dataset
            raise RuntimeError("Dataset scripts are no longer supported, but found tldr.py")
        return iter(rows)

    monkeypatch.setitem(sys.modules, "datasets", type(sys)("datasets"))
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", load_dataset, raising=False)
    config = {
        "name": "irl_lm.tldr",
        "source": "hf",
        "data_dir": str(tmp_path),
        "vocabulary": "byte",
    }
    task = tasks.get_task(config)
    for _ in range(2):
        ds = task.get_dataset(None, split="validation", shuffle=False)
        got = [ex["targets_pretokenized"].decode() for ex in text_tasks.read(ds)]
        assert got == [r["label"] for r in rows]
    name = "CarperAI/openai_summarize_tldr"
    assert calls == [(name, "valid", True, None), (name, "valid", True, text_tasks.HF_PARQUET)]
    (converted,) = (tmp_path / "hf").glob("*/validation.jsonl")
    assert [json.loads(line) for line in open(converted)] == rows


def test_shard_by_host_splits_the_files_between_hosts(tmp_path, monkeypatch):
    """config.data.shard_by_host with two hosts (process index and count stood in for):
    each host reads two of the four training files and yields half of each batch, so the
    hosts see disjoint halves of the data that together make all of it."""
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(32)]
    paths = [write_jsonl(tmp_path / f"train-{k}.jsonl", rows[k::4]) for k in range(4)]
    config = seqio_task.get_config("task=irl_lm.gsm8k")
    config.task = dict(
        name="irl_lm.gsm8k",
        source="jsonl",
        vocabulary="byte",
        files={"train": paths},
        max_input_len=8,
        max_target_len=8,
    )
    config.batch_size, config.data.shard_by_host = 8, True
    vocab = seqio.ByteVocabulary()
    seen = []
    monkeypatch.setattr("jax.process_count", lambda: 2)
    for host in range(2):
        monkeypatch.setattr("jax.process_index", lambda host=host: host)
        iterator = pipeline.TrainIterator(pipeline.train_data(config))
        assert iterator.per_host
        # seqio shuffles after repeating, so epochs mix: 240 rows show each host's 16.
        batches = [next(iterator)["encoder_input_tokens"] for _ in range(60)]
        assert all(len(b) == 4 for b in batches)
        seen.append({vocab.decode(r.tolist()) for b in batches for r in b})
    assert len(seen[0]) == len(seen[1]) == 16 and not seen[0] & seen[1]
    assert seen[0] | seen[1] == {r["question"] for r in rows}
    # num_train_examples: the first n rows of the files in order, split between the hosts.
    config.task.num_train_examples = 8
    limited = []
    for host in range(2):
        monkeypatch.setattr("jax.process_index", lambda host=host: host)
        iterator = pipeline.TrainIterator(pipeline.train_data(config))
        limited.append(
            {
                vocab.decode(r.tolist())
                for _ in range(10)
                for r in next(iterator)["encoder_input_tokens"]
            }
        )
    assert not limited[0] & limited[1]
    assert limited[0] | limited[1] == {r["question"] for r in rows[0::4]}  # train-0.jsonl

"""The text tasks stream the shared files completely and batch through the feature converter."""

import json
import os

import numpy as np
import pytest
import seqio

from irl_lm.data import tasks, text_tasks

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
FILES = {
    "xsum": "xsum/test_first1000.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
    "tldr": "tldr/test_500.jsonl",
    **{f"wmt22_{s}_{t}": f"wmt22/{s}-{t}.jsonl" for s, t in text_tasks.WMT22_PAIRS},
}


def task_config(name, files, **overrides):
    return {
        "name": name,
        "source": "jsonl",
        "files": files,
        "vocabulary": "byte",
        "max_input_len": 0,
        "max_target_len": 0,
        **overrides,
    }


@pytest.mark.parametrize("name", sorted(FILES))
def test_jsonl_source_reads_the_whole_shared_file_and_batches(name):
    path = os.path.join(DATA, FILES[name])
    if not os.path.exists(path):
        pytest.skip(f"shared data not found at {path} (see shared/data/README.md)")
    config = task_config(name, {"validation": path})
    task = tasks.get_task(config)
    lengths = tasks.feature_lengths(config)
    dataset = task.get_dataset(lengths, split="validation", shuffle=False, use_cached=False)
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    assert sum(1 for _ in text_tasks.read(dataset)) == len(lines)

    batch = next(
        seqio.get_dataset(
            task.name,
            task_feature_lengths=lengths,
            dataset_split="validation",
            shuffle=False,
            use_cached=False,
            feature_converter=seqio.EncDecFeatureConverter(pack=False),
        )
        .batch(4)
        .as_numpy_iterator()
    )
    assert batch["encoder_input_tokens"].shape == (4, lengths["inputs"])
    assert batch["decoder_target_tokens"].shape == (4, lengths["targets"])
    # The first example's target, decoded back, is the start of the preprocessed text.
    inputs, target = text_tasks.TEXT_TASKS[name].format(lines[0])
    vocab = seqio.ByteVocabulary()
    decoded = vocab.decode([t for t in batch["decoder_target_tokens"][0] if t > 1])
    assert target.startswith(decoded) and len(decoded) > 0
    np.testing.assert_array_equal(
        batch["decoder_input_tokens"][0, 1:], batch["decoder_target_tokens"][0, :-1]
    )


def test_num_train_examples_takes_the_first_n(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(10))
    )
    config = task_config("gsm8k", {"train": str(path)}, num_train_examples=3)
    dataset = tasks.get_task(config).get_dataset(
        tasks.feature_lengths(config), split="train", shuffle=False, use_cached=False
    )
    vocab = seqio.ByteVocabulary()
    got = [vocab.decode(ex["targets"][:-1]) for ex in text_tasks.read(dataset)]
    assert got == ["#### 0", "#### 1", "#### 2"]


def test_bad_files_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    cases = {
        '{"question": "q", "answer": "a"}\n{"question": "q"}\n': r"bad.jsonl:2: field 'answer'",
        '{"question": "q", "answer": "a"}\n{not json\n': r"bad.jsonl:2: not a JSON object",
    }
    for content, message in cases.items():
        path.write_text(content)
        config = task_config("gsm8k", {"validation": str(path)})  # streamed: read afresh
        task = tasks.get_task(config)
        with pytest.raises(ValueError, match=message):
            ds = task.get_dataset(
                tasks.feature_lengths(config), split="validation", use_cached=False
            )
            list(text_tasks.read(ds))
    with pytest.raises(ValueError, match=r"source='web'; allowed: \['hf', 'jsonl'"):
        tasks.get_task(task_config("xsum", {"test": str(path)}, source="web"))


@pytest.mark.parametrize(
    "name,source",
    [("wmt22_en_de", "sacrebleu"), ("tldr", "hf")],
)
def test_unreachable_remote_sources_say_so_and_name_the_jsonl_option(name, source):
    """No network and no `datasets` package here: reading a split fails clearly (TFDS is
    left out: its download retries take minutes before failing)."""
    config = task_config(name, {}, source=source)
    task = tasks.get_task(config)  # registering reaches nothing
    with pytest.raises(RuntimeError, match=rf"source='{source}': could not read.*source='jsonl'"):
        task.get_dataset(tasks.feature_lengths(config), split="test", use_cached=False)

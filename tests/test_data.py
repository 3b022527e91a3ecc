"""The synthetic expert as a seqio task, and the training stream's position."""

import numpy as np
import seqio

from irl_lm.data import pipeline, tasks
from irl_lm.data.synthetic import EOS_ID


def test_task_serves_the_expert_examples_with_eos(make_config):
    config = make_config()
    task = tasks.get_task(config.task)
    expert = tasks.expert_from_config(config.task)
    lengths = tasks.feature_lengths(config.task)
    ds = task.get_dataset(lengths, split="validation", shuffle=False, use_cached=False)
    served = list(ds.as_numpy_iterator())
    assert len(served) == config.task.num_eval_examples
    for index, example in enumerate(served):
        want = expert.example("validation", index)
        np.testing.assert_array_equal(example["inputs"], np.append(want["inputs"], EOS_ID))
        np.testing.assert_array_equal(example["targets"], want["targets"])
        assert expert.log_prob(want["inputs"], example["targets"]) > -np.inf


def test_num_train_examples_sets_the_epoch_size(make_config):
    config = make_config(**{"task.num_train_examples": 10})
    task = tasks.get_task(config.task)
    ds = task.get_dataset(tasks.feature_lengths(config.task), split="train", shuffle=False)
    assert sum(1 for _ in ds) == 10


def test_train_iterator_resumes_at_its_position(make_config):
    config = make_config()
    straight = pipeline.TrainIterator(pipeline.train_data(config))
    batches = [next(straight) for _ in range(5)]
    resumed = pipeline.TrainIterator(pipeline.train_data(config), position=3)
    assert resumed.position == 3
    for want in batches[3:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.position == 5


def assert_same_batch(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_iterator_state_restores_the_stream_or_says_why_it_cannot(make_config, tmp_path, caplog):
    import os
    import shutil

    config = make_config()
    straight = pipeline.TrainIterator(pipeline.train_data(config))
    want = [next(straight) for _ in range(6)]
    skipped = pipeline.TrainIterator(
        pipeline.train_data(config), position=2
    )  # no state: skips 2 batches
    assert_same_batch(next(skipped), want[2])
    skipped.save(tmp_path / "at3")  # a state saved after a skip restores like any other

    caplog.set_level("INFO")
    restored = pipeline.TrainIterator(
        pipeline.train_data(config), position=3, saved=tmp_path / "at3"
    )
    assert "cannot be used" not in caplog.text and "skipping" not in caplog.text
    for batch in want[3:]:
        assert_same_batch(next(restored), batch)

    # Another host count's state serves (the stream is the same on every host).
    os.mkdir(tmp_path / "two")
    for name in os.listdir(tmp_path / "at3"):
        shutil.copy(tmp_path / "at3" / name, tmp_path / "two" / name.replace("-of-1", "-of-2"))
    restored = pipeline.TrainIterator(
        pipeline.train_data(config), position=3, saved=tmp_path / "two"
    )
    assert "cannot be used" not in caplog.text
    assert_same_batch(next(restored), want[3])

    # Unusable states are named, and the stream is rebuilt by skipping.
    cases = {
        "is at batch 3, the checkpoint at 4": (config, 4, want[4]),
        "other data settings": (make_config(seed=1), 3, None),
    }
    for why, (other, position, expected) in cases.items():
        caplog.clear()
        resumed = pipeline.TrainIterator(
            pipeline.train_data(other), position=position, saved=tmp_path / "at3"
        )
        assert why in caplog.text and "skipping" in caplog.text
        batch = next(resumed)
        if expected is not None:
            assert_same_batch(batch, expected)


def test_packed_batches_keep_every_target_token(make_config):
    config = make_config(**{"data.pack": True, "task.max_target_len": 24, "task.max_input_len": 24})
    batch = next(pipeline.TrainIterator(pipeline.train_data(config)))
    targets, segments = batch["decoder_target_tokens"], batch["decoder_segment_ids"]
    assert targets.shape[0] == config.batch_size
    assert segments.max() >= 2, "several examples share a row"
    np.testing.assert_array_equal(batch["decoder_loss_weights"] > 0, targets > 0)
    # Every packed segment ends with EOS: the expert's sequences are never truncated here.
    for row, seg in zip(targets, segments, strict=True):
        for s in set(seg[seg > 0].tolist()):
            assert row[seg == s][-1] == EOS_ID


def test_task_vocabulary_matches_the_expert(make_config):
    config = make_config()
    vocab = tasks.get_task(config.task).output_features["targets"].vocabulary
    assert isinstance(vocab, seqio.PassThroughVocabulary)
    assert vocab.vocab_size == tasks.expert_from_config(config.task).spec.vocab_size
    assert vocab.eos_id == EOS_ID

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
    straight = pipeline.TrainIterator(config)
    batches = [next(straight) for _ in range(5)]
    resumed = pipeline.TrainIterator(config, position=3)
    assert resumed.position == 3
    for want in batches[3:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.position == 5


def test_packed_batches_keep_every_target_token(make_config):
    config = make_config(**{"data.pack": True, "task.max_target_len": 24, "task.max_input_len": 24})
    batch = next(pipeline.TrainIterator(config))
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

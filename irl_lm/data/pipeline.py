"""Batches from seqio for the trainer and evaluators.

The training stream is a pure function of (task, seed, position), the same on every host
and for any host count: each host reads the global batches and keeps the rows its devices
hold (`sharding.shard_global_batch`). With `config.data.shard_by_host`, each host reads only
its shard of the source instead (files split across hosts, as seqio shards) and yields its
rows of each batch (`per_host`, for `sharding.shard_host_batch`): less reading per host at
pre-training scale, and a stream that depends on the host count. A resumed run restores
the iterator's state saved with its checkpoint (`TrainIterator.save`), so restarting costs
the same at any position; when that state cannot be used it rebuilds the stream and skips
the batches consumed.
Either way no example is replayed or lost. Evaluation batches are split across hosts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from irl_lm.data import tasks, text_tasks


def vocabulary_bos_id(vocabulary: seqio.Vocabulary) -> int | None:
    """The vocabulary's own BOS id (Gemma: 2), or None (T5 and byte vocabularies have none)."""
    try:
        bos = vocabulary.bos_id  # SentencePiece: -1 when it has none
    except NotImplementedError:  # seqio's base class (PassThroughVocabulary)
        return None
    return bos if bos is not None and bos > 0 else None


def bos_id(vocabulary: seqio.Vocabulary) -> int:
    """The first input token of a decoder-only sequence: the vocabulary's BOS, else its EOS
    (0 is padding, so it cannot start a prompt)."""
    bos = vocabulary_bos_id(vocabulary)
    return vocabulary.eos_id if bos is None else bos


def prompt_prefix(decoder_only: bool, vocabulary: seqio.Vocabulary) -> list[int]:
    """What training puts before an example's input tokens: nothing for an encoder (T5),
    `bos_id` for a decoder-only model's prefix-LM rows. Decoding prompts start the same."""
    return [bos_id(vocabulary)] if decoder_only else []


def feature_converter(
    vocabulary: seqio.Vocabulary, *, decoder_only: bool, pack: bool
) -> seqio.FeatureConverter:
    """Encoder-decoder batches (T5), or prefix-LM batches for a decoder-only model: inputs and
    targets concatenated, loss weights on the targets only, BOS (`bos_id`) first. The
    `decoder_causal_attention` feature it adds is unused: our decoder-only models are causal
    over the prompt too (as Llama, Gemma and PaLM are)."""
    if not decoder_only:
        return seqio.EncDecFeatureConverter(pack=pack)
    return seqio.DecoderFeatureConverter(
        loss_on_targets_only=True, pack=pack, bos_id=bos_id(vocabulary)
    )


def model_feature_lengths(task: tasks.Task, *, decoder_only: bool) -> dict[str, int]:
    """Lengths of the model's batch features (a decoder-only row holds inputs + targets)."""
    converter = feature_converter(task.vocabulary, decoder_only=decoder_only, pack=False)
    return dict(converter.get_model_feature_lengths(task.lengths))


def _dataset(
    task: tasks.Task,
    name: str,
    split,
    *,
    shuffle,
    num_epochs,
    pack,
    decoder_only,
    shard_info,
    seed=None,
):
    """seqio's batches of the task or sub-task `name` (the feature converter's features)."""
    converter = feature_converter(task.vocabulary, decoder_only=decoder_only, pack=pack)
    return seqio.get_dataset(
        name,
        task_feature_lengths=dict(task.lengths),
        feature_converter=converter,
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_info=shard_info,
        seed=seed,
        use_cached=False,
        verbose=False,
    )


@dataclasses.dataclass(frozen=True)
class TrainData:
    """What the training stream is a function of: the task, `config.batch_size`,
    `config.seed`, `config.data` (`pack`, `shard_by_host`) and the model family."""

    task: tasks.Task
    batch_size: int
    seed: int
    pack: bool = False
    shard_by_host: bool = False
    decoder_only: bool = False


def train_data(config, task: tasks.Task | None = None, *, decoder_only=False) -> TrainData:
    """`TrainData` from a config (its task built from `config.task` unless given)."""
    return TrainData(
        task=task or tasks.build(config.task),
        batch_size=config.batch_size,
        seed=config.seed,
        pack=bool(config.data.pack),
        shard_by_host=bool(config.data.get("shard_by_host")),
        decoder_only=decoder_only,
    )


class TrainIterator(Iterator):
    """Endless global training batches; `position` counts the batches handed out.

    `saved`: a folder written by `save` at `position` (a checkpoint's `data/`). Its state is
    restored when it matches (same position, same data settings), else the stream is
    rebuilt and `position` batches are skipped, saying why.
    """

    def __init__(self, data: TrainData, position: int = 0, *, saved=None):
        self.per_host = data.shard_by_host
        if self.per_host and data.batch_size % jax.process_count():
            raise ValueError(
                f"config.data.shard_by_host: config.batch_size={data.batch_size} must be "
                f"divisible by the {jax.process_count()} hosts"
            )
        self.fingerprint = data_fingerprint(data)
        self.position = position
        started = time.perf_counter()
        # A fresh dataset each time: a second iterator over one dataset reshuffles.
        restored = False
        if position and saved is not None:
            self._iterator = self._stream(data)
            restored = self._restore(epath.Path(saved))
        if not restored:
            if position:
                logging.info("Data: skipping %d batches to reach the saved position", position)
            self._iterator = self._stream(data, skip=position)
        if position:
            seconds = time.perf_counter() - started
            logging.info("Data resumed at batch %d in %.2f s", position, seconds)

    @staticmethod
    def _stream(data: TrainData, skip: int = 0, shuffle: bool = True):
        hosts = jax.process_count() if data.shard_by_host else 1
        index = jax.process_index() if data.shard_by_host else 0
        ds = _dataset(
            data.task,
            data.task.seqio_task.name,
            "train",
            shuffle=shuffle,
            num_epochs=None,
            pack=data.pack,
            decoder_only=data.decoder_only,
            shard_info=seqio.ShardInfo(index, hosts),  # hosts=1: every host reads it all
            seed=data.seed,
        )
        ds = ds.batch(data.batch_size // hosts, drop_remainder=True).skip(skip).prefetch(2)
        # One structure whatever `skip` is (tf.data would drop a skip(0)), so a state saved
        # after skipping restores into the stream of a later start.
        options = tf.data.Options()
        options.experimental_optimization.noop_elimination = False
        # A JSON Lines task parses in a py_function, which tf.data takes for external state
        # and would refuse to save: it is a pure function of its line, so it has none.
        policy = tf.data.experimental.ExternalStatePolicy.IGNORE
        options.experimental_external_state_policy = policy
        return ds.with_options(options).as_numpy_iterator()

    def __next__(self) -> dict[str, np.ndarray]:
        with text_tasks.data_errors():
            batch = next(self._iterator)
        self.position += 1
        return batch

    def save(self, folder) -> None:
        """Writes this host's iterator state (`process_<i>-of-<n>`: TF's iterator checkpoint,
        shuffle buffer and prefetched batches included) and its position, into `folder`."""
        folder = epath.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"process_{jax.process_index()}-of-{jax.process_count()}"
        tf.train.Checkpoint(iterator=self._iterator).write(str(folder / name))
        info = {"position": self.position, "fingerprint": self.fingerprint}
        (folder / f"{name}.json").write_text(json.dumps(info))

    def _restore(self, folder: epath.Path) -> bool:
        """Restores the state in `folder`; False (with a warning naming why) when unusable."""
        own = folder / f"process_{jax.process_index()}-of-{jax.process_count()}"
        # The stream is the same on every host, so another host count's state serves too;
        # not when each host reads its own shard.
        candidates = [own]
        if not self.per_host:
            candidates += sorted(p.with_suffix("") for p in folder.glob("process_0-of-*.json"))
        found = next((p for p in candidates if p.with_suffix(".json").exists()), None)
        if found is None:
            why = f"{folder} holds no iterator state"
        else:
            info = json.loads(found.with_suffix(".json").read_text())
            if info["position"] != self.position:
                why = f"{found} is at batch {info['position']}, the checkpoint at {self.position}"
            elif info["fingerprint"] != self.fingerprint:
                why = f"{found} was saved with other data settings (task, data, seed or batch)"
            else:
                try:
                    tf.train.Checkpoint(iterator=self._iterator).read(str(found)).assert_consumed()
                    return True
                except (tf.errors.OpError, ValueError, AssertionError) as e:
                    why = f"{found} does not restore ({type(e).__name__}: {e})"
        logging.warning("Data: the saved iterator state cannot be used: %s", why)
        return False


def data_fingerprint(data: TrainData) -> str:
    """A digest of the settings that define the training stream."""
    settings = {
        # The task by what it means (old workdirs name ours without "irl_lm.").
        "task": dict(data.task.settings) | {"name": data.task.name},
        "data": {"pack": data.pack},
        "seed": data.seed,
        "batch_size": data.batch_size,
        "decoder_only": data.decoder_only,
    }
    if data.shard_by_host:  # then each host's stream depends on the host count
        settings["hosts"] = jax.process_count()
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def eval_batches(
    task: tasks.Task,
    split: str,
    batch_size: int,
    max_examples: int | None = None,
    *,
    decoder_only=False,
    seed: int | None = None,
):
    """Host-local eval batches padded to `batch_size` rows (padding has weight 0):
    this host's share of the split's first `max_examples` examples (0: all), every example
    of each sub-task of a mixture. Every host yields as many batches (hosts with fewer
    examples, as sharding by file can leave them, add empty ones), so a collective per
    batch never waits for a host that has stopped.

    Yields (batch, number of real rows).
    """
    hosts = jax.process_count()
    per_host = batch_size // hosts
    shard = seqio.ShardInfo(index=jax.process_index(), num_shards=hosts)
    datasets = [
        _dataset(
            task,
            sub.name,
            split,
            shuffle=False,
            num_epochs=1,
            pack=False,
            decoder_only=decoder_only,
            shard_info=shard,
            seed=seed,
        )
        for sub in task.subtasks
        if split in sub.splits
    ]
    if not datasets:
        raise ValueError(f"task {task.name!r} has no {split!r} split")
    ds = functools.reduce(lambda a, b: a.concatenate(b), datasets)
    if max_examples:
        ds = ds.take(-(-max_examples // hosts))
    ds = ds.batch(per_host)
    batches = list(text_tasks.read(ds))
    count = len(batches)
    if hosts > 1:
        count = int(np.max(multihost_utils.process_allgather(np.int32(count))))
    empty = {
        k: np.zeros((0, *v.shape[1:]), v.dtype.as_numpy_dtype) for k, v in ds.element_spec.items()
    }
    for batch in batches + [empty] * (count - len(batches)):
        real = len(batch["decoder_target_tokens"])
        yield pad_rows(batch, per_host), real


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pads every array to `rows` rows with zeros (zero tokens, zero loss weight)."""
    return {k: np.pad(v, [(0, rows - len(v))] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


__all__ = [
    "TrainData",
    "TrainIterator",
    "bos_id",
    "vocabulary_bos_id",
    "eval_batches",
    "feature_converter",
    "model_feature_lengths",
    "pad_rows",
    "prompt_prefix",
    "train_data",
]

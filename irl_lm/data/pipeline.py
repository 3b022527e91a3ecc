"""Batches from seqio for the trainer and evaluators, sharded per host.

The training stream is a pure function of (task, seed, position): a resumed run rebuilds
it and skips the batches it already consumed, so no example is replayed or lost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from irl_lm.data.tasks import feature_lengths, get_task
from irl_lm.models import is_decoder_only

# seqio and TF must not grab accelerator memory that JAX owns.
tf.config.set_visible_devices([], "GPU")


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


def prompt_prefix(model, vocabulary: seqio.Vocabulary) -> list[int]:
    """What training puts before an example's input tokens: nothing for an encoder (T5),
    `bos_id` for a decoder-only model's prefix-LM rows. Decoding prompts start the same."""
    return [bos_id(vocabulary)] if is_decoder_only(model) else []


def feature_converter(config, *, decoder_only: bool, pack: bool) -> seqio.FeatureConverter:
    """Encoder-decoder batches (T5), or prefix-LM batches for a decoder-only model: inputs and
    targets concatenated, loss weights on the targets only, BOS (`bos_id`) first. The
    `decoder_causal_attention` feature it adds is unused: our decoder-only models are causal
    over the prompt too (as Llama, Gemma and PaLM are)."""
    if not decoder_only:
        return seqio.EncDecFeatureConverter(pack=pack)
    vocabulary = get_task(config.task).output_features["targets"].vocabulary
    return seqio.DecoderFeatureConverter(
        loss_on_targets_only=True, pack=pack, bos_id=bos_id(vocabulary)
    )


def model_feature_lengths(config, *, decoder_only: bool) -> dict[str, int]:
    """Lengths of the model's batch features (a decoder-only row holds inputs + targets)."""
    converter = feature_converter(config, decoder_only=decoder_only, pack=False)
    return dict(converter.get_model_feature_lengths(feature_lengths(config.task)))


def _dataset(config, split: str, *, shuffle, num_epochs, pack: bool, decoder_only: bool):
    task = get_task(config.task)
    return seqio.get_dataset(
        task.name,
        task_feature_lengths=feature_lengths(config.task),
        feature_converter=feature_converter(config, decoder_only=decoder_only, pack=pack),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count()),
        seed=config.seed,
        use_cached=False,
        verbose=False,
    )


class TrainIterator(Iterator):
    """Endless host-local training batches; `position` counts the batches handed out."""

    def __init__(self, config, position: int = 0, *, decoder_only: bool = False):
        per_host = config.batch_size // jax.process_count()
        ds = _dataset(config, "train", shuffle=True, num_epochs=None, pack=config.data.pack,
                      decoder_only=decoder_only)  # fmt: skip
        ds = ds.batch(per_host, drop_remainder=True).skip(position)
        self._iterator = ds.prefetch(2).as_numpy_iterator()
        self.position = position

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.position += 1
        return batch


def eval_batches(config, split: str, max_examples: int | None = None, *, decoder_only=False):
    """Host-local eval batches padded to `config.eval_batch_size` rows (padding has weight 0).

    Yields (batch, number of real rows).
    """
    per_host = config.eval_batch_size // jax.process_count()
    ds = _dataset(config, split, shuffle=False, num_epochs=1, pack=False,
                  decoder_only=decoder_only)  # fmt: skip
    if max_examples:
        ds = ds.take(max_examples)
    for batch in ds.batch(per_host).as_numpy_iterator():
        real = len(batch["decoder_target_tokens"])
        yield pad_rows(batch, per_host), real


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pads every array to `rows` rows with zeros (zero tokens, zero loss weight)."""
    return {k: np.pad(v, [(0, rows - len(v))] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


__all__ = [
    "TrainIterator",
    "bos_id",
    "vocabulary_bos_id",
    "eval_batches",
    "feature_converter",
    "model_feature_lengths",
    "pad_rows",
    "prompt_prefix",
]

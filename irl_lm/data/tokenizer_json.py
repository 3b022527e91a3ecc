"""A seqio vocabulary over a Hugging Face `tokenizer.json` file.

Many decoder-only checkpoints (Llama 3 and most recent models) ship their tokenizer only as a
`tokenizer.json` for the Rust `tokenizers` library: there is no `spiece.model`, so seqio's
`SentencePieceVocabulary` cannot read them. `TokenizerJsonVocabulary` wraps
`tokenizers.Tokenizer.from_file` in the `seqio.Vocabulary` interface, in Python (`encode`,
`decode`) and inside tf.data (`encode_tf`, `decode_tf`, through `tf.numpy_function`).

Behaviour:

* Encoding adds no special tokens (`add_special_tokens=False`): no BOS, no EOS. seqio appends
  EOS itself (`Feature(add_eos=True)`); a model that wants BOS must get it from the task.
  Special-token strings that appear literally in the text (e.g. `<|eot_id|>`) are still read
  as those tokens, as `tokenizers` and `transformers` do by default.
* The EOS id is the `eos_id` argument, else `eos_token_id` from the folder's
  `generation_config.json` or `config.json` (the first one if it is a list), else the id of
  `tokenizer_config.json`'s `eos_token`.
* seqio takes id 0 as padding everywhere (feature converters, packing, trimming, loss masks).
  Many `tokenizer.json` vocabularies give id 0 to an ordinary token (Llama 3, Qwen2: `!`).
  Such a token trades ids with an id `r` that ordinary text never encodes to
  (`irl_lm.data.vocabularies.zero_token_swap`: a padded row of the model past the tokenizer's
  size, else an unused special token such as `<|reserved_special_token_250|>`): `encode`
  maps 0 -> r and r -> 0, `decode` maps r back to the token. The model import
  (`irl_lm.models.hf`) moves the checkpoint's rows to match, so ids and rows agree. The one
  cost: the literal text of token r (e.g. "<|reserved_special_token_250|>") encodes to id 0,
  padding. `zero_token_swap` gives r (None when id 0 is already padding or special).
* `decode` keeps the ids before the first EOS, drops the padding id 0 and ids outside the
  vocabulary, and decodes the rest with `skip_special_tokens=False`. For ordinary text,
  `decode(encode(text)) == text` whenever the tokenizer itself round-trips (byte-level BPE
  does).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from absl import logging

from irl_lm import files
from irl_lm.data import vocabularies

TOKENIZER_FILE = vocabularies.TOKENIZER_JSON

_logged_swaps: set[tuple[str, int]] = set()  # (file, r) already logged by this process


class TokenizerJsonVocabulary(seqio.Vocabulary):
    """seqio vocabulary backed by a Hugging Face `tokenizer.json`.

    Ids are the model's: the tokenizer's, except that an ordinary token at id 0 trades places
    with `zero_token_swap` (see the module docstring). `eos_id`, `bos_id` and `unk_id` are
    given in those ids; `vocab_size` counts the padded row when that is where token 0 went.

    Args:
      path: the `tokenizer.json` file, or a folder that contains one. The folder's
        `generation_config.json`, `config.json` and `tokenizer_config.json` are read for the
        EOS (and BOS) id, and `config.json` (else `model.json`) for the model's size.
      eos_id: the EOS id (the tokenizer's); overrides the folder's configuration files.
      pad_id: must be 0, the id seqio pads with (it is an argument only to state that).
    """

    def __init__(self, path: str, eos_id: int | None = None, pad_id: int = 0):
        file = files.path(path)
        if file.is_dir():
            file = file / TOKENIZER_FILE
        self._path = str(file)
        self._folder = str(file.parent)
        content = file.read_bytes()
        self._sha256 = hashlib.sha256(content).hexdigest()
        self._tokenizer = tokenizers.Tokenizer.from_str(content.decode("utf-8"))
        self._size = self._tokenizer.get_vocab_size(with_added_tokens=True)

        if pad_id != seqio.vocabularies.PAD_ID:
            raise ValueError(
                f"pad_id={pad_id}: seqio's feature converters always pad with "
                f"{seqio.vocabularies.PAD_ID}, so no other padding id can work"
            )
        self._pad_id = pad_id
        self._swap = vocabularies.zero_token_swap(self._path, self._tokenizer)

        if eos_id is None:
            eos_id = self._special_id_from_folder("eos")
        if eos_id is None:
            raise ValueError(
                f"{self._folder}: no EOS id found (no eos_token_id in generation_config.json or "
                "config.json, no known eos_token in tokenizer_config.json); pass eos_id="
            )
        eos_id = int(eos_id)
        if not 0 <= eos_id < self._size or eos_id in (pad_id, self._swap):
            holder = f" and {self._swap} (which holds token 0)" if self._swap is not None else ""
            raise ValueError(
                f"{self._folder}: eos_id={eos_id} must be a token id other than the padding "
                f"id {pad_id}{holder} (vocabulary size {self._size})"
            )
        self._eos_id = eos_id
        self._bos_id = self._special_id_from_folder("bos")
        self._unk_id = self._model_unk_id(json.loads(content))
        if self._swap is not None and (self._path, self._swap) not in _logged_swaps:
            _logged_swaps.add((self._path, self._swap))
            logging.info(
                "%s: id 0 is the ordinary token %r, which seqio reads as padding; it trades "
                "ids with %d (%s), whose own text now encodes to padding",
                self._path,
                self._tokenizer.id_to_token(0),
                self._swap,
                repr(self._tokenizer.id_to_token(self._swap))
                if self._swap < self._size
                else "a padded row of the model",
            )
        super().__init__(extra_ids=0)

    # ------------------------------------------------------------------ construction helpers

    def _special_id_from_folder(self, kind: str) -> int | None:
        """`{kind}_token_id` of generation_config.json / config.json (first of a list), else
        the id of tokenizer_config.json's `{kind}_token`; None if none is found."""
        ids = vocabularies.special_token_ids(self._folder, self._tokenizer, kind)
        return ids[0] if ids else None

    def _model_unk_id(self, spec: dict) -> int | None:
        model = spec.get("model") or {}
        if model.get("unk_token") is not None:  # BPE, WordPiece, WordLevel
            return self._tokenizer.token_to_id(model["unk_token"])
        if model.get("unk_id") is not None:  # Unigram
            return int(model["unk_id"])
        return None

    def _ours(self, i: int | None) -> int | None:
        """The tokenizer's id `i` as our id (the swap is its own inverse)."""
        if self._swap is None or i is None:
            return i
        return self._swap if i == 0 else 0 if i == self._swap else i

    def _ours_np(self, ids: np.ndarray) -> np.ndarray:
        if self._swap is None:
            return ids
        return np.where(ids == 0, self._swap, np.where(ids == self._swap, 0, ids)).astype(ids.dtype)

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> str:
        return self._path

    @property
    def tokenizer(self) -> tokenizers.Tokenizer:
        return self._tokenizer

    @property
    def zero_token_swap(self) -> int | None:
        """The id that holds the tokenizer's ordinary token 0 (which trades places with it),
        or None when id 0 is padding or special and no ids are moved."""
        return self._swap

    @property
    def eos_id(self) -> int:
        return self._ours(self._eos_id)

    @property
    def bos_id(self) -> int | None:
        return self._ours(self._bos_id)

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def unk_id(self) -> int | None:
        return self._ours(self._unk_id)

    @property
    def _base_vocab_size(self) -> int:
        return max(self._size, (self._swap or 0) + 1)  # + the padded row that holds token 0

    # ------------------------------------------------------------------ python

    def _encode(self, s: str) -> Sequence[int]:
        ids = self._tokenizer.encode(s, add_special_tokens=False).ids
        return [self._ours(i) for i in ids] if self._swap is not None else ids

    def _decode(self, ids: Iterable[int]) -> str:
        """Ids before the first EOS, without padding and ids outside the vocabulary, as the
        tokenizer's ids, decoded with special tokens kept.

        `seqio.Vocabulary.decode` already cuts after the first EOS but keeps the EOS;
        `decode_tf` replaces what follows it with padding. Cutting here covers both.
        """
        kept = []
        eos_id = self.eos_id
        for i in ids:
            i = int(i)
            if i == eos_id:
                break
            if i == self._pad_id or not 0 <= i < self._base_vocab_size:
                continue
            kept.append(self._ours(i))
        return self._tokenizer.decode(kept, skip_special_tokens=False)

    # ------------------------------------------------------------------ tensorflow

    def _encode_np(self, s) -> np.ndarray:
        return np.asarray(self._encode(_to_str(s)), dtype=np.int32)

    def _encode_batch_np(self, strings) -> tuple[np.ndarray, np.ndarray]:
        texts = [_to_str(s) for s in strings.reshape(-1)]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        flat = self._ours_np(np.fromiter((i for row in ids for i in row), dtype=np.int32))
        return flat, np.asarray([len(row) for row in ids], dtype=np.int64)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """A scalar string gives int32 ids of shape [None]; a 1-D batch of strings gives an
        int32 RaggedTensor of shape [batch, None] (as seqio's SentencePiece vocabulary)."""
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
            ids.set_shape([None])
            return ids
        if s.shape.rank == 1:
            flat, lengths = tf.numpy_function(
                self._encode_batch_np, [s], [tf.int32, tf.int64], stateful=False
            )
            flat.set_shape([None])
            lengths.set_shape(s.shape)
            return tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)
        raise ValueError(f"encode_tf takes a scalar or 1-D string tensor, got shape {s.shape}")

    def _decode_rows_np(self, rows: np.ndarray) -> np.ndarray:
        texts = [self._decode(row.tolist()).encode("utf-8") for row in rows]
        return np.asarray(texts, dtype=object).reshape(len(texts))

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Ids of shape [..., length] give strings of shape [...] (1-D ids: a scalar)."""
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank is None or ids.shape.rank == 0:
            raise ValueError(f"decode_tf takes ids of rank >= 1, got shape {ids.shape}")
        shape = tf.shape(ids, out_type=tf.int64)
        rows = tf.reshape(ids, tf.stack([tf.reduce_prod(shape[:-1]), shape[-1]]))
        texts = tf.numpy_function(self._decode_rows_np, [rows], tf.string, stateful=False)
        texts = tf.reshape(texts, shape[:-1])
        texts.set_shape(ids.shape[:-1])
        return texts

    # ------------------------------------------------------------------ identity

    def _identity(self) -> tuple:
        return (self._sha256, self._eos_id, self._swap)

    def __eq__(self, other) -> bool:
        if not isinstance(other, TokenizerJsonVocabulary):
            return False
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __str__(self) -> str:
        swap = f", zero_token_swap={self._swap}" if self._swap is not None else ""
        return (
            f"TokenizerJsonVocabulary(file={self._path}, eos_id={self.eos_id}{swap}, "
            f"sha256={self._sha256[:12]})"
        )

    __repr__ = __str__


def _to_str(s) -> str:
    if isinstance(s, np.ndarray):  # eager tf.numpy_function gives a 0-d object array
        s = s.item()
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)

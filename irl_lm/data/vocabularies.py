"""Vocabularies are data: a checkpoint folder's tokenizer as a seqio vocabulary.

Data code (tasks) and model import code (`irl_lm.models.hf`) both read tokenizers through
here, so `irl_lm/data/` never imports from `irl_lm/models/`. seqio (and with it TensorFlow) is
imported only when a vocabulary is built.
"""

from __future__ import annotations

import re

from irl_lm import files

SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model")


def has_vocabulary(folder: str) -> bool:
    names = (*SENTENCEPIECE_FILES, "tokenizer.json")
    return any(files.path(folder, f).exists() for f in names) or _is_byt5(folder)


def load_vocabulary(folder: str):
    """The folder's tokenizer as a seqio vocabulary, the first of:

    - `spiece.model` (T5) or `tokenizer.model` (Gemma, Llama 2): `SentencePieceVocabulary`.
      T5 tokenizers add `extra_ids` sentinel tokens after the pieces; their number comes from
      `tokenizer_config.json` (`extra_ids`, or the `<extra_id_N>` tokens it lists), else
      transformers' default (100 for `spiece.model`, 0 for `tokenizer.model`). Sentinels count
      down from the top id, as in seqio and the original T5.
    - ByT5 (`tokenizer_class` ByT5Tokenizer): `ByteVocabulary` (default 125 extra ids).
    - `tokenizer.json` alone: `TokenizerJsonVocabulary` (the `tokenizers` library).
    """
    import seqio  # imported here: seqio brings TensorFlow, which model code does not need

    for filename, default_extra_ids in zip(SENTENCEPIECE_FILES, (100, 0), strict=True):
        path = files.path(folder, filename)
        if path.exists():
            extra_ids = _extra_ids(folder, default=default_extra_ids)
            return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)
    if _is_byt5(folder):
        return seqio.ByteVocabulary(extra_ids=_extra_ids(folder, default=125))
    if files.path(folder, "tokenizer.json").exists():
        from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary

        return TokenizerJsonVocabulary(folder)
    raise FileNotFoundError(
        f"{folder}: no tokenizer found; expected one of {[*SENTENCEPIECE_FILES, 'tokenizer.json']}"
        " (or a ByT5 tokenizer_config.json)"
    )


def _tokenizer_config(folder: str) -> dict:
    path = files.path(folder, "tokenizer_config.json")
    return files.read_json(path) if path.exists() else {}


def _is_byt5(folder: str) -> bool:
    return _tokenizer_config(folder).get("tokenizer_class") == "ByT5Tokenizer"


def _extra_ids(folder: str, *, default: int) -> int:
    tokenizer_config = _tokenizer_config(folder)
    if "extra_ids" in tokenizer_config:
        return int(tokenizer_config["extra_ids"])
    sentinel = re.compile(r"<extra_id_\d+>")
    listed = set(tokenizer_config.get("additional_special_tokens") or [])
    listed |= set(tokenizer_config.get("extra_special_tokens") or [])  # transformers 5
    listed |= {
        v.get("content") if isinstance(v, dict) else v
        for v in (tokenizer_config.get("added_tokens_decoder") or {}).values()
    }
    count = sum(1 for token in listed if isinstance(token, str) and sentinel.fullmatch(token))
    return count or default

"""Vocabularies are data: a checkpoint folder's tokenizer as a seqio vocabulary.

Data code (tasks) and model import code (`irl_lm.models.hf`) both read tokenizers through
here, so `irl_lm/data/` never imports from `irl_lm/models/`. seqio (and with it TensorFlow) is
imported only when a vocabulary is built; `zero_token_swap` and `token_zero_row` (which id
of a `tokenizer.json` trades places with id 0) need neither.
"""

from __future__ import annotations

import re

from irl_lm import files

SENTENCEPIECE_FILES = ("spiece.model", "tokenizer.model")
TOKENIZER_JSON = "tokenizer.json"
# Where the size of the model beside a tokenizer is read: Hugging Face's config.json, else
# the model.json our checkpoints carry (irl_lm.checkpointing.MODEL_FILE).
MODEL_CONFIG_FILES = ("config.json", "model.json")
FREE_TOKEN_WORDS = ("reserved", "unused")  # Llama 3: <|reserved_special_token_k|>; Gemma: <unusedN>


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
    if _reads_tokenizer_json(folder):
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


def _reads_tokenizer_json(folder: str) -> bool:
    """Whether `load_vocabulary(folder)` reads the folder's tokenizer.json."""
    if any(files.path(folder, f).exists() for f in SENTENCEPIECE_FILES) or _is_byt5(folder):
        return False
    return files.path(folder, TOKENIZER_JSON).exists()


# ----------------------------------------------------------------------------- token 0


def _folder_json(folder, name: str) -> dict:
    path = files.path(folder, name)
    return files.read_json(path) if path.exists() else {}


def special_token_ids(folder, tokenizer, kind: str) -> list[int]:
    """Ids of the folder's `kind` token ("eos", "bos", "pad", "unk"), most authoritative
    first: `{kind}_token_id` of generation_config.json, then of config.json (every entry of a
    list), then the id of tokenizer_config.json's `{kind}_token` in `tokenizer` (a
    `tokenizers.Tokenizer`)."""
    ids = []
    for name in ("generation_config.json", "config.json"):
        value = _folder_json(folder, name).get(f"{kind}_token_id")
        ids += [int(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
    token = _folder_json(folder, "tokenizer_config.json").get(f"{kind}_token")
    if isinstance(token, dict):  # older files store an AddedToken: {"content": ...}
        token = token.get("content")
    if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
        ids.append(tokenizer.token_to_id(token))
    return ids


def _zero_is_ordinary(folder, tokenizer) -> bool:
    """Whether id 0 is a token of the tokenizer that is neither special nor its padding."""
    if tokenizer.id_to_token(0) is None:
        return False
    added = tokenizer.get_added_tokens_decoder().get(0)
    if added is not None and added.special:
        return False
    padding = tokenizer.padding
    if padding is not None and padding.get("pad_id") == 0:
        return False
    pad_token = _folder_json(folder, "tokenizer_config.json").get("pad_token")
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content")
    return not (isinstance(pad_token, str) and tokenizer.token_to_id(pad_token) == 0)


def _model_vocab_size(folder) -> int | None:
    for name in MODEL_CONFIG_FILES:
        size = _folder_json(folder, name).get("vocab_size")
        if size:
            return int(size)
    return None


def zero_token_swap(path, tokenizer=None) -> int | None:
    """The id that trades places with id 0 of a `tokenizer.json`, or None when id 0 is
    padding or a special token already.

    seqio reads id 0 as padding everywhere (loss masks, packing, trimming, decoding), and
    many tokenizer.json vocabularies give it an ordinary token (Llama 3, Qwen2: `!`). That
    token then trades ids with an id `r` that ordinary text never encodes to, the first of:

    1. the tokenizer's size (with added tokens), when the model beside the tokenizer has more
       rows than that: `vocab_size` of the folder's config.json, else of our model.json;
    2. the highest-id special added token whose text holds "reserved" or "unused" (Llama 3's
       `<|reserved_special_token_k|>`, Gemma's `<unusedN>`), else the highest-id special
       added token that is not the folder's BOS, EOS, PAD or UNK.

    Without either it raises a ValueError that says how to make room. `TokenizerJsonVocabulary`
    (ids) and the model import (`irl_lm.models.hf`, rows) both ask this function, so they
    cannot disagree.

    Args:
      path: a tokenizer.json file, or a folder holding one (and the configuration files).
      tokenizer: that file already read as a `tokenizers.Tokenizer` (spares a second read).
    """
    file = files.path(path)
    if file.is_dir():
        file = file / TOKENIZER_JSON
    folder = file.parent
    if tokenizer is None:
        import tokenizers  # imported here: only tokenizer.json folders need it

        tokenizer = tokenizers.Tokenizer.from_str(file.read_text())
    if not _zero_is_ordinary(folder, tokenizer):
        return None
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    model_size = _model_vocab_size(folder)
    if model_size is not None and model_size > size:
        return size
    kept = {tokenizer.padding.get("pad_id")} if tokenizer.padding else set()
    for kind in ("bos", "eos", "pad", "unk"):
        kept |= set(special_token_ids(folder, tokenizer, kind))
    model_unk = getattr(tokenizer.model, "unk_token", None)
    if model_unk is not None:
        kept.add(tokenizer.token_to_id(model_unk))
    specials = {
        i: token.content
        for i, token in tokenizer.get_added_tokens_decoder().items()
        if token.special and i != 0 and i not in kept
    }
    free = [i for i, text in specials.items() if any(w in text.lower() for w in FREE_TOKEN_WORDS)]
    if free or specials:
        return max(free or specials)
    raise ValueError(
        f"{file}: id 0 is the ordinary token {tokenizer.id_to_token(0)!r}, but seqio reads id 0 "
        "as padding, and no id is free to trade places with it: there is no special added "
        f"token besides BOS/EOS/PAD/UNK, and no config.json vocab_size above the tokenizer's "
        f"{size} tokens. Add an unused special token to the tokenizer (e.g. "
        "tokenizer.add_special_tokens(['<|reserved_special_token_0|>']), then save it), or "
        f"give the model more rows than tokens (config.json vocab_size > {size})"
    )


def token_zero_row(folder: str) -> int:
    """The row of a checkpoint's token table that holds its tokenizer's token 0 under our
    ids: the id token 0 trades places with (`zero_token_swap`) when the folder's vocabulary
    (`load_vocabulary`) is its tokenizer.json, else 0 (not moved)."""
    if not _reads_tokenizer_json(folder):
        return 0
    return zero_token_swap(folder) or 0

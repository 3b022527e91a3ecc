"""`TokenizerJsonVocabulary` against the raw `tokenizers` object, in Python and in tf.data.

The tokenizer is a small byte-level BPE trained here on real XSum text (pad=0, eos=1, unk=2).
"""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xsum" / "test_first1000.jsonl"
SPECIALS = ["<pad>", "<eos>", "<unk>"]  # ids 0, 1, 2


def _read_xsum():
    if not DATA.exists():
        pytest.skip(f"XSum data not found at {DATA} (shared data folder absent)")
    documents, summaries = [], []
    with open(DATA) as f:
        for line in f:
            example = json.loads(line)
            documents.append(example["document"])
            summaries.append(example["summary"])
    return documents, summaries


@pytest.fixture(scope="module")
def xsum():
    return _read_xsum()


@pytest.fixture(scope="module")
def bpe_folder(tmp_path_factory, xsum):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    documents, _ = xsum
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents[100:600], trainer=trainer)
    # Like Llama 3's BOS template: encoding with special tokens would add one (here EOS).
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <eos>", special_tokens=[("<eos>", 1)]
    )
    folder = tmp_path_factory.mktemp("bpe")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def texts(xsum):
    documents, summaries = xsum
    # Held-out texts (the tokenizer was trained on documents 100..599): 15 one-sentence
    # summaries and 5 multi-line documents.
    return summaries[:15] + documents[:5]


@pytest.fixture(scope="module")
def vocab(bpe_folder):
    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary

    return TokenizerJsonVocabulary(bpe_folder / "tokenizer.json", eos_id=1)


@pytest.fixture(scope="module")
def raw(bpe_folder):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(bpe_folder / "tokenizer.json"))


def _reference_ids(raw, text):
    return raw.encode(text, add_special_tokens=False).ids


def test_encode_matches_tokenizers_and_round_trips(vocab, raw, texts):
    assert [raw.token_to_id(t) for t in SPECIALS] == [0, 1, 2]
    assert raw.encode("a b").ids[-1] == 1  # the template adds EOS unless told not to
    assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.vocab_size == raw.get_vocab_size() == 2000
    assert vocab.zero_token_swap is None  # id 0 is the special <pad>
    for text in texts:
        ids = list(vocab.encode(text))
        assert ids == _reference_ids(raw, text)
        assert len(ids) > 5 and all(3 <= i < 2000 for i in ids)  # no special tokens added
        assert vocab.decode(ids) == text
        # Model output: EOS then padding, or padding alone; neither reaches the text.
        assert vocab.decode(ids + [1, 0, 0]) == text
        assert vocab.decode(ids + [1] + ids) == text
        assert vocab.decode(ids + [0, 0]) == text
        assert vocab.decode(np.asarray(ids + [1], np.int32)) == text
    # Ids past the vocabulary decode as UNK (seqio maps them), kept as text.
    assert vocab.decode([5000]) == "<unk>"


def test_seqio_tokenize_in_tf_data(vocab, raw, texts):
    import seqio
    import tensorflow as tf

    features = {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}
    dataset = tf.data.Dataset.from_tensor_slices({"inputs": texts, "targets": texts[::-1]})
    tokenized = seqio.preprocessors.tokenize(dataset, features)
    assert tokenized.element_spec["inputs"] == tf.TensorSpec([None], tf.int32)
    examples = list(tokenized.as_numpy_iterator())
    assert len(examples) == len(texts)
    for example, text, reversed_text in zip(examples, texts, texts[::-1], strict=True):
        assert example["inputs"].tolist() == _reference_ids(raw, text)
        assert example["targets"].tolist() == _reference_ids(raw, reversed_text)
        assert example["inputs_pretokenized"].decode() == text

    with_eos = seqio.preprocessors.tokenize_and_append_eos(dataset, features)
    for example, text in zip(with_eos.as_numpy_iterator(), texts, strict=True):
        assert example["inputs"].tolist() == _reference_ids(raw, text) + [1]

    # A 1-D batch of strings gives a RaggedTensor with one row per string.
    ragged = vocab.encode_tf(tf.constant(texts[:4]))
    assert isinstance(ragged, tf.RaggedTensor)
    assert ragged.to_list() == [_reference_ids(raw, t) for t in texts[:4]]


def test_decode_tf_equals_decode(vocab, texts):
    import tensorflow as tf

    rows = [list(vocab.encode(t)) + [1] for t in texts]
    length = max(len(r) for r in rows) + 3
    padded = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
        padded[i, len(row)] = 7  # garbage after EOS
    expected = [vocab.decode(row) for row in padded.tolist()]
    assert expected == texts
    for row, text in zip(padded, expected, strict=True):
        assert vocab.decode_tf(tf.constant(row)).numpy().decode() == text
    batch = vocab.decode_tf(tf.constant(padded))
    assert batch.shape == (len(texts),)
    assert [t.decode() for t in batch.numpy()] == expected
    # Inside a traced graph (tf.data map) as well.
    dataset = tf.data.Dataset.from_tensor_slices(padded).map(vocab.decode_tf)
    assert [t.decode() for t in dataset.as_numpy_iterator()] == expected


def _copy_tokenizer(bpe_folder, folder, **json_files):
    folder.mkdir()
    shutil.copy(bpe_folder / "tokenizer.json", folder / "tokenizer.json")
    for name, content in json_files.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return folder


def test_eos_resolution(bpe_folder, tmp_path):
    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary

    generation = _copy_tokenizer(
        bpe_folder,
        tmp_path / "generation",
        generation_config={"eos_token_id": [7, 1]},
        config={"eos_token_id": 9},
        tokenizer_config={"eos_token": "<eos>"},
    )
    assert TokenizerJsonVocabulary(str(generation)).eos_id == 7
    assert TokenizerJsonVocabulary(str(generation), eos_id=11).eos_id == 11

    config = _copy_tokenizer(
        bpe_folder, tmp_path / "config", config={"eos_token_id": 9, "bos_token_id": 8}
    )
    assert TokenizerJsonVocabulary(str(config)).eos_id == 9
    assert TokenizerJsonVocabulary(str(config)).bos_id == 8

    tokenizer_config = _copy_tokenizer(
        bpe_folder,
        tmp_path / "tokenizer_config",
        config={"eos_token_id": None},
        tokenizer_config={"eos_token": {"content": "<eos>"}, "bos_token": None},
    )
    vocab = TokenizerJsonVocabulary(str(tokenizer_config / "tokenizer.json"))
    assert vocab.eos_id == 1
    assert vocab.bos_id is None

    missing = _copy_tokenizer(bpe_folder, tmp_path / "missing", config={"vocab_size": 2000})
    with pytest.raises(ValueError, match=f"{missing}.*pass eos_id"):
        TokenizerJsonVocabulary(str(missing))


def test_equality(bpe_folder, tmp_path):
    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary

    copy = _copy_tokenizer(bpe_folder, tmp_path / "copy")
    a = TokenizerJsonVocabulary(str(bpe_folder), eos_id=1)
    assert a == TokenizerJsonVocabulary(str(copy), eos_id=1)
    assert hash(a) == hash(TokenizerJsonVocabulary(str(copy), eos_id=1))
    assert a != TokenizerJsonVocabulary(str(copy), eos_id=3)
    spec = json.loads((copy / "tokenizer.json").read_text())
    spec["decoder"] = None
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    assert a != TokenizerJsonVocabulary(str(copy), eos_id=1)


def test_zero_is_ordinary_token_trades_ids(tmp_path, vocab, caplog):
    """Id 0 is an ordinary token: it trades ids with the unused special token (the
    decision itself, with its padded-row and error cases, is tests/test_token_zero.py's)."""
    import tensorflow as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary

    # As in Llama 3: id 0 is "!", the special tokens come last.
    words = {"!": 0, "hello": 1, "world": 2, "<unk>": 3}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|end_of_text|>", "<|reserved_special_token_0|>"])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|end_of_text|>"}))

    with caplog.at_level(logging.INFO):
        ordinary = TokenizerJsonVocabulary(str(tmp_path))
    assert ordinary.zero_token_swap == 5
    assert "id 0 is the ordinary token '!'" in caplog.text
    assert (ordinary.eos_id, ordinary.unk_id, ordinary.vocab_size) == (4, 3, 6)
    assert list(ordinary.encode("hello world!")) == [1, 2, 5]
    assert ordinary.decode([1, 2, 5, 0, 4, 1]) == "hello world !"  # 0: padding, dropped
    # decode_tf writes padding after EOS: the text must still stop at EOS.
    decoded = ordinary.decode_tf(tf.constant([1, 2, 5, 4, 1, 2], tf.int32))
    assert decoded.numpy().decode() == "hello world !"
    # With a special <pad> at id 0, 0 is padding and decodes to nothing.
    assert vocab.zero_token_swap is None
    assert vocab.decode([0]) == ""

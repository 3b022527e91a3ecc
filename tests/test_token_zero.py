"""A tokenizer.json whose id 0 is an ordinary token (Llama 3, Qwen2: `!`) against seqio's
padding id 0: the token trades ids with a free one, r, in the vocabulary (seqio batches keep
every `!` in the loss) and in the imported model's rows (logits equal transformers' with
columns 0 and r swapped; export gives transformers its own logits back).

The tokenizer is a byte-level BPE trained here on a few sentences: as in Llama 3, its
alphabet starts with `!` (id 0) and the special tokens come last.
"""

import json

import numpy as np
import pytest

TEXTS = [
    "Hello world! The cat sat on the mat!",
    "Wow!! What a day, said the cat.",
    "No way! Yes way! Hello!",
    "The mat was red.",
]
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|eot_id|>",  # higher, but not a reserved token: r is reserved_special_token_1
]
PADDED_VOCAB = 320  # a model with more rows than tokens: r is the first padded row


def _tokenizer(specials=SPECIALS):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(TEXTS * 3, trainer)
    tokenizer.add_special_tokens(specials)
    return tokenizer


def _write_tokenizer(folder, specials=SPECIALS, **json_files):
    """`folder` with tokenizer.json, tokenizer_config.json (BOS, EOS) and `json_files`."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(specials)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {"bos_token": specials[0], "eos_token": specials[1]}
    for name, content in {"tokenizer_config": tokenizer_config, **json_files}.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    return tokenizer


def _expected_swap(tokenizer, model_vocab_size=None):
    """r, computed from the rule's text: the padded row, else the highest reserved token."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if model_vocab_size and model_vocab_size > size:
        return size
    return tokenizer.token_to_id("<|reserved_special_token_1|>")


def _ours(ids, r):
    """Tokenizer ids as ours: 0 and r trade places."""
    return [r if i == 0 else 0 if i == r else i for i in ids]


@pytest.fixture(scope="module")
def vocab_and_raw(tmp_path_factory):
    pytest.importorskip("seqio")
    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary

    folder = tmp_path_factory.mktemp("bang")
    raw = _write_tokenizer(folder)
    return TokenizerJsonVocabulary(str(folder)), raw


def test_vocabulary_trades_id_zero_with_a_reserved_token(vocab_and_raw, caplog):
    import logging

    import tensorflow as tf

    from irl_lm.data import tokenizer_json

    vocab, raw = vocab_and_raw
    assert raw.id_to_token(0) == "!"
    r = _expected_swap(raw)
    size = raw.get_vocab_size(with_added_tokens=True)
    assert r == size - 2 and vocab.zero_token_swap == r
    bos, eos = raw.token_to_id(SPECIALS[0]), raw.token_to_id(SPECIALS[1])
    assert (vocab.vocab_size, vocab.eos_id, vocab.bos_id) == (size, eos, bos)
    for text in TEXTS:
        ids = raw.encode(text, add_special_tokens=False).ids
        assert list(vocab.encode(text)) == _ours(ids, r)
        assert vocab.decode(_ours(ids, r) + [eos, 0, 5]) == text  # EOS, then padding
        assert vocab.decode(_ours(ids, r) + [0, 0]) == text
    assert 0 in raw.encode("Hello!", add_special_tokens=False).ids
    assert 0 not in vocab.encode("Hello!")
    # tf.data: a scalar, a batch (RaggedTensor), and decode_tf with padding after EOS.
    assert vocab.encode_tf(tf.constant("No way!")).numpy().tolist() == vocab.encode("No way!")
    ragged = vocab.encode_tf(tf.constant(TEXTS))
    assert ragged.to_list() == [vocab.encode(t) for t in TEXTS]
    row = vocab.encode(TEXTS[0]) + [eos, 0, 0]
    assert vocab.decode_tf(tf.constant(row, tf.int32)).numpy().decode() == TEXTS[0]
    # The price: the literal text of token r is now padding.
    assert vocab.encode("<|reserved_special_token_1|>") == [0]

    # Logged once per tokenizer file and process, naming both tokens.
    tokenizer_json._logged_swaps.clear()
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            tokenizer_json.TokenizerJsonVocabulary(vocab.path)
    lines = [rec for rec in caplog.records if f"trades ids with {r}" in rec.getMessage()]
    assert len(lines) == 1
    assert "'!'" in lines[0].getMessage()
    assert "reserved_special_token_1" in lines[0].getMessage()


@pytest.mark.parametrize("pack", [False, True])
def test_seqio_task_keeps_every_bang_in_the_loss(vocab_and_raw, pack):
    """A seqio Task with this vocabulary, through the trainer's prefix-LM feature converter:
    each target's `!` tokens keep loss weight 1, and the scored ids decode to the text."""
    import seqio
    import tensorflow as tf

    from irl_lm.data import pipeline

    vocab, raw = vocab_and_raw
    r = vocab.zero_token_swap
    examples = [(TEXTS[i], TEXTS[(i + 1) % len(TEXTS)]) for i in range(len(TEXTS))]

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        inputs, targets = zip(*examples, strict=True)
        return tf.data.Dataset.from_tensor_slices(
            {"inputs": list(inputs), "targets": list(targets)}
        )

    name = f"token_zero_swap_{pack}"
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            "inputs": seqio.Feature(vocab, add_eos=False),
            "targets": seqio.Feature(vocab, add_eos=True),
        },
    )
    converter = pipeline.feature_converter(vocab, decoder_only=True, pack=pack)
    dataset = seqio.get_dataset(
        name,
        task_feature_lengths={"inputs": 16, "targets": 16},
        feature_converter=converter,
        dataset_split="train",
        shuffle=False,
        use_cached=False,
    )
    rows = list(dataset.as_numpy_iterator())
    seqio.TaskRegistry.remove(name)
    scored = []  # (target ids, prompt ids) per segment, read off the loss weights
    for row in rows:
        segments = row.get("decoder_segment_ids", (row["decoder_target_tokens"] > 0) * 1)
        for segment in sorted(set(segments[segments > 0].tolist())):
            here = segments == segment
            weights = row["decoder_loss_weights"][here]
            targets = row["decoder_target_tokens"][here]
            inputs = row["decoder_input_tokens"][here]
            scored.append((targets[weights > 0].tolist(), inputs[: np.argmax(weights > 0) + 1]))
    assert len(scored) == len(examples)
    if pack:
        assert len(rows) < len(examples)
    bangs = 0
    for (x, y), (target_ids, prompt_ids) in zip(examples, scored, strict=True):
        raw_y = raw.encode(y, add_special_tokens=False).ids
        assert target_ids == _ours(raw_y, r) + [vocab.eos_id]
        assert target_ids.count(r) == raw_y.count(0)
        bangs += raw_y.count(0)
        assert vocab.decode(target_ids) == y
        raw_x = raw.encode(x, add_special_tokens=False).ids
        assert prompt_ids.tolist() == [vocab.bos_id, *_ours(raw_x, r)]
    assert bangs >= 4


def test_padded_model_rows_come_first_and_travel_with_model_json(tmp_path):
    pytest.importorskip("seqio")
    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary
    from irl_lm.data.vocabularies import zero_token_swap

    raw = _write_tokenizer(tmp_path / "hf", config={"vocab_size": PADDED_VOCAB})
    r = _expected_swap(raw, PADDED_VOCAB)
    assert r == raw.get_vocab_size(with_added_tokens=True) < PADDED_VOCAB
    padded = TokenizerJsonVocabulary(str(tmp_path / "hf"))
    assert padded.zero_token_swap == zero_token_swap(str(tmp_path / "hf")) == r
    assert padded.vocab_size == r + 1  # the row that now holds "!"
    ids = raw.encode("Hello!", add_special_tokens=False).ids
    assert padded.encode("Hello!") == _ours(ids, r)
    assert padded.decode(_ours(ids, r)) == "Hello!"
    # A workdir carries the tokenizer and model.json (not config.json): the same swap.
    _write_tokenizer(tmp_path / "workdir", model={"vocab_size": PADDED_VOCAB})
    assert TokenizerJsonVocabulary(str(tmp_path / "workdir")) == padded
    # Without a larger model the reserved token is taken: another vocabulary.
    _write_tokenizer(tmp_path / "plain", config={"vocab_size": r})
    plain = TokenizerJsonVocabulary(str(tmp_path / "plain"))
    assert plain.zero_token_swap == _expected_swap(raw) == r - 2 and plain != padded


def test_no_free_id_fails_naming_the_file_the_token_and_the_fix(tmp_path):
    from irl_lm.data.vocabularies import zero_token_swap

    raw = _write_tokenizer(tmp_path, SPECIALS[:2])
    size = raw.get_vocab_size(with_added_tokens=True)
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": size}))
    match = rf"tokenizer\.json: id 0 is the ordinary token '!'.*add_special_tokens.*> {size}\)"
    with pytest.raises(ValueError, match=match):
        zero_token_swap(str(tmp_path))
    pytest.importorskip("seqio")
    from irl_lm.data.tokenizer_json import TokenizerJsonVocabulary

    with pytest.raises(ValueError, match=match):
        TokenizerJsonVocabulary(str(tmp_path))


# ----------------------------------------------------------------------------- the model


def _save_llama(folder, tokenizer, vocab_size, *, tied, seed=0):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    hf_config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.token_to_id(SPECIALS[0]),
        eos_token_id=tokenizer.token_to_id(SPECIALS[1]),
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # weights large enough that every logit column differs
        for name, p in model.named_parameters():
            p.copy_(p + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def _logits(model, tokens):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("variant", ["reserved_untied", "padded_tied"])
def test_import_swaps_rows_and_export_swaps_them_back(variant, tmp_path):
    transformers = pytest.importorskip("transformers")
    from irl_lm import sharding
    from irl_lm.models.hf import export_hf, hf_model_config, load_hf

    raw = _write_tokenizer(tmp_path / "in")
    size = raw.get_vocab_size(with_added_tokens=True)
    vocab_size = PADDED_VOCAB if variant == "padded_tied" else size
    reference = _save_llama(tmp_path / "in", raw, vocab_size, tied=variant == "padded_tied")
    r = _expected_swap(raw, vocab_size)

    # vocab sharded over `tensor`: rows 0 and r lie in different shards
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model, params = load_hf(str(tmp_path / "in"), mesh)
    assert model.config.token_zero_row == r
    order = np.arange(vocab_size)
    order[[0, r]] = r, 0
    tokens = np.random.default_rng(0).integers(0, size, (3, 12))
    tokens[:, 3], tokens[:, 7] = 0, r  # theirs: "!" and token r, as inputs too
    theirs = _logits(reference, tokens)
    ours = np.asarray(model.apply({"params": params}, {"decoder_input_tokens": order[tokens]}))
    print(f"\n{variant}: r={r}, max |logit diff| {np.abs(ours - theirs[..., order]).max():.1e}")
    np.testing.assert_allclose(ours[..., r], theirs[..., 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours, theirs[..., order], atol=1e-5, rtol=0)
    assert np.abs(theirs[..., 0] - theirs[..., r]).min() > 1e-3  # the swap is visible

    export_hf(model, params, str(tmp_path / "out"), tokenizer_from=str(tmp_path / "in"))
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "token_zero_row" not in exported and exported["vocab_size"] == vocab_size
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    np.testing.assert_allclose(_logits(reloaded, tokens), theirs, atol=1e-5, rtol=0)
    # The exported folder imports with the same rows moved.
    assert hf_model_config(str(tmp_path / "out"))["token_zero_row"] == r


def test_import_without_a_free_id_fails(tmp_path):
    from irl_lm.models.hf import load_hf

    raw = _write_tokenizer(tmp_path, SPECIALS[:2])
    _save_llama(tmp_path, raw, raw.get_vocab_size(with_added_tokens=True), tied=False)
    with pytest.raises(ValueError, match=r"id 0 is the ordinary token '!'.*add_special_tokens"):
        load_hf(str(tmp_path))


def test_checkpoint_folders_and_task_vocabularies_agree_on_r(tmp_path):
    """The ids of a task's vocabulary and the rows of the model it trains agree: for the
    Hugging Face folder, for a run's workdir (tokenizer files + model.json), and a
    tokenizer that would swap otherwise is rejected against the checkpoint."""
    pytest.importorskip("seqio")
    from irl_lm import checkpointing
    from irl_lm.data import tasks
    from irl_lm.data.vocabularies import load_vocabulary
    from irl_lm.models.hf import save_vocabulary_files

    raw = _write_tokenizer(tmp_path / "hf", config={"vocab_size": PADDED_VOCAB})
    _save_llama(tmp_path / "hf", raw, PADDED_VOCAB, tied=True)
    r = _expected_swap(raw, PADDED_VOCAB)
    source = checkpointing.parse_init_from(f"hf:{tmp_path / 'hf'}")
    model_config = source.model_config()
    assert model_config["token_zero_row"] == r
    assert load_vocabulary(source.vocabulary_folder()).zero_token_swap == r

    # What the trainer writes in its workdir; sampling and init_from=WORKDIR read it back.
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    save_vocabulary_files(str(tmp_path / "hf"), str(workdir))
    checkpointing.write_model_config(str(workdir), model_config)
    assert load_vocabulary(str(workdir)).zero_token_swap == r

    task = dict(name="irl_lm.gsm8k", source="jsonl", files={"validation": "unused.jsonl"})
    where = f"config.init_from='hf:{tmp_path / 'hf'}'"
    tasks.check_vocabulary_matches(task | {"vocabulary": str(workdir)}, source.folder, where)
    tokenizer_only = tmp_path / "tokenizer_only"  # no model beside it: the reserved token
    _write_tokenizer(tokenizer_only)
    assert load_vocabulary(str(tokenizer_only)).zero_token_swap == _expected_swap(raw) != r
    with pytest.raises(ValueError, match="is not the tokenizer of config.init_from"):
        tasks.check_vocabulary_matches(
            task | {"vocabulary": str(tokenizer_only)}, source.folder, where
        )

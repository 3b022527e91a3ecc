"""T5Gemma and T5Gemma 2 import / export and decoding against transformers (the reference)."""

import json
import os

import jax
import numpy as np
import pytest
from hf_fixtures import torch, transformers

from irl_lm import decoding
from irl_lm.models import build_model
from irl_lm.models.hf import export_hf, load_hf
from irl_lm.models.safetensors_io import read_folder

ATOL = 1e-4  # float32
VOCAB = 300
EOI = 256  # T5Gemma 2's end-of-image token, inside the tiny vocabulary so the tests reach it
_STACK = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query
    head_dim=8,
    query_pre_attn_scalar=12,  # != head_dim
    sliding_window=3,  # shorter than the 9 input and 6 target tokens
    rms_norm_eps=1e-6,
)
# variant -> (transformers class, config); `_STACK` varied per variant
VARIANTS = {
    # Gemma 2 based: attention and logit soft-capping, alternating sliding layers, a decoder
    # narrower than the encoder (its cross-attention reads 32-wide states into 24).
    "t5gemma": (
        "T5GemmaForConditionalGeneration",
        lambda: transformers.T5GemmaConfig(
            encoder=dict(_STACK, attn_logit_softcapping=5.0),
            decoder=dict(
                _STACK,
                hidden_size=24,
                num_hidden_layers=2,
                num_key_value_heads=1,
                attn_logit_softcapping=5.0,
                final_logit_softcapping=6.0,
            ),
            vocab_size=VOCAB,
        ),
    ),
    # Gemma 3 based: merged attention, q/k norms, sliding and global layers with their own
    # rope bases, a deeper encoder than decoder, the end-of-image embedding, a vision tower.
    "t5gemma2": (
        "T5Gemma2ForConditionalGeneration",
        lambda: transformers.T5Gemma2Config(
            encoder=dict(
                text_config=dict(_STACK, sliding_window=4, sliding_window_pattern=2),
                vision_config=dict(
                    model_type="siglip_vision_model",
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=28,
                    patch_size=14,
                ),
                mm_tokens_per_image=4,
                boi_token_index=EOI - 1,
                eoi_token_index=EOI,
                image_token_index=EOI + 1,
            ),
            decoder=dict(
                _STACK,
                num_hidden_layers=2,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"],
                rope_parameters={
                    "full_attention": dict(rope_type="default", rope_theta=1e4),
                    "sliding_attention": dict(rope_type="default", rope_theta=50.0),
                },
            ),
            image_token_index=EOI + 1,
        ),
    ),
}
ENCODER_TOKENS = np.array(
    [[5, 8, EOI, 9, 12, 33, 7, 40, 1], [4, 6, 9, 1, 0, 0, 0, 0, 0], [7, 2, 3, 11, 19, 1, 0, 0, 0]]
)
# seqio's decoder inputs: 0 first (the model reads it as BOS), then the shifted targets
DECODER_TOKENS = np.array([[0, 11, 13, EOI, 18, 1], [0, 15, 17, 1, 0, 0], [0, 21, 1, 0, 0, 0]])


def save_hf_t5gemma(folder, variant, seed=0):
    class_name, make_config = VARIANTS[variant]
    config = make_config()
    config._attn_implementation = "eager"  # soft-capping needs it
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config).eval()
    with torch.no_grad():  # weights large enough that the logits discriminate
        for name, p in model.named_parameters():
            p.copy_(p + 0.2 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def reload(folder, variant):
    cls = getattr(transformers, VARIANTS[variant][0])
    return cls.from_pretrained(str(folder), attn_implementation="eager").eval()


def hf_logits(model, encoder_tokens, decoder_tokens):
    decoder_inputs = decoder_tokens.copy()
    decoder_inputs[:, 0] = model.config.decoder.bos_token_id
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(encoder_tokens),
            attention_mask=torch.tensor(encoder_tokens > 0),
            decoder_input_ids=torch.tensor(decoder_inputs),
        ).logits.numpy()


def our_logits(model, params, encoder_tokens, decoder_tokens):
    batch = {"encoder_input_tokens": encoder_tokens, "decoder_input_tokens": decoder_tokens}
    return np.asarray(model.apply({"params": params}, batch))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_import_and_export_match_transformers(variant, tmp_path, caplog):
    reference = save_hf_t5gemma(tmp_path / "in", variant)
    with caplog.at_level("INFO"):
        model, params = load_hf(str(tmp_path / "in"))
    vision = [n for n in read_folder(str(tmp_path / "in")) if ".vision_tower." in n]
    if variant == "t5gemma2":  # the vision tower is read past, and the log counts it
        assert len(vision) > 10
        assert any(f"{len(vision) + 2} tensors" in r.getMessage() for r in caplog.records)
        assert model.config.eoi_token_index == EOI and "eoi_embedding" in params
    else:
        assert not vision and model.config.encoder.hidden_size != model.config.decoder.hidden_size
    ours = our_logits(model, params, ENCODER_TOKENS, DECODER_TOKENS)
    theirs = hf_logits(reference, ENCODER_TOKENS, DECODER_TOKENS)
    print(f"\nparity {variant}: max |logit diff| {np.abs(ours - theirs).max():.2e}")
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)

    params = jax.tree.map(lambda x: x * 0.9, params)
    export_hf(model, params, str(tmp_path / "out"), carry_from=str(tmp_path / "in"))
    reloaded = reload(tmp_path / "out", variant)
    ours = our_logits(model, params, ENCODER_TOKENS, DECODER_TOKENS)
    np.testing.assert_allclose(
        ours, hf_logits(reloaded, ENCODER_TOKENS, DECODER_TOKENS), atol=ATOL, rtol=0
    )
    exported = read_folder(str(tmp_path / "out"))
    source = read_folder(str(tmp_path / "in"))
    for name in vision:  # carried over unchanged
        np.testing.assert_array_equal(exported[name], source[name])
    if variant == "t5gemma2":
        config = json.load(open(tmp_path / "out" / "config.json"))
        assert config["encoder"]["vision_config"]["hidden_size"] == 16
    _, again = load_hf(str(tmp_path / "out"))  # our export reads back exactly
    jax.tree.map(np.testing.assert_array_equal, again, params)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_greedy_decoding_equals_transformers_generate(variant, tmp_path):
    """Our KV-cache decoder (self-attention cache, the encoder's keys/values once) picks
    transformers' tokens, one input at a time and as a padded batch."""
    reference = save_hf_t5gemma(tmp_path, variant, seed=2)
    model, params = load_hf(str(tmp_path))
    batch = {"encoder_input_tokens": ENCODER_TOKENS}
    out = jax.device_get(decoding.greedy(model, params, batch, max_len=10, eos_id=-1))
    for row, tokens in enumerate(ENCODER_TOKENS):
        n = int((tokens > 0).sum())
        with torch.no_grad():
            expected = reference.generate(
                input_ids=torch.tensor(tokens[None, :n]),
                do_sample=False,
                max_new_tokens=10,
                min_new_tokens=10,
                eos_token_id=None,
            )[0, 1:].numpy()  # without the start token
        np.testing.assert_array_equal(out["tokens"][row, 0], expected)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sampled_and_beam_rows_score_as_teacher_forcing(variant, tmp_path):
    """Rows decoded N per input (the encoder's keys/values shared by the N rows) carry the
    per-token log-probabilities the teacher-forced pass gives them: samples and beams."""
    save_hf_t5gemma(tmp_path, variant, seed=3)
    model, params = load_hf(str(tmp_path))
    batch = {"encoder_input_tokens": ENCODER_TOKENS}
    drawn = decoding.sample(
        model, params, batch, jax.random.PRNGKey(0), max_len=6, num_decodes=2, eos_id=1
    )
    beams = decoding.beam_search(model, params, batch, max_len=6, num_beams=3, eos_id=1)
    for out in (drawn, beams):
        tokens = np.asarray(out["tokens"])  # [B, N, T]
        n = tokens.shape[1]
        targets = tokens.reshape(-1, tokens.shape[2])
        inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
        logits = our_logits(model, params, np.repeat(ENCODER_TOKENS, n, axis=0), inputs)
        log_p = np.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
        real = np.arange(targets.shape[1])[None] < np.asarray(out["lengths"]).reshape(-1, 1)
        recorded = np.asarray(out["log_probs"]).reshape(targets.shape)
        np.testing.assert_allclose(log_p[real], recorded[real], atol=1e-4)
    assert (np.diff(np.asarray(beams["scores"]), axis=1) <= 0).all()  # best first


def test_bad_t5gemma_configs_fail_naming_the_field():
    stack = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match=r"encoder.hidden_size 32 must equal decoder.hidden_size"):
        build_model(
            dict(name="t5gemma", encoder=stack, decoder=dict(stack, hidden_size=16), vocab_size=9)
        )
    with pytest.raises(ValueError, match=r"T5GemmaConfig.decoder: unknown fields \['d_model'\]"):
        build_model(dict(name="t5gemma", encoder=stack, decoder=dict(stack, d_model=8)))


def test_vocabulary_and_sizes_come_from_the_folder(tmp_path):
    save_hf_t5gemma(tmp_path, "t5gemma2")
    model, _ = load_hf(str(tmp_path))
    assert model.config.vocab_size == VOCAB and model.config.decoder_start_token_id == 2
    assert model.config.encoder.num_hidden_layers == 3
    assert model.config.decoder.layer_types == ("sliding_attention", "full_attention")
    assert model.config.decoder.rope_local_base_freq == 50.0
    assert os.path.exists(tmp_path / "config.json")


def gemma_like_tokenizer(folder, texts, vocab_size=250):
    """A BPE `tokenizer.json` with Gemma's special ids (pad 0, eos 1, bos 2, unk 3) and
    fewer tokens than the tiny model's rows."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>"}
    json.dump(special, open(folder / "tokenizer_config.json", "w"))


def test_t5gemma2_checkpoint_fine_tunes_through_the_trainer_and_exports_unchanged(tmp_path):
    """init_from=hf:<T5Gemma 2 folder> on the XSUM tiny config: the task tokenizes with the
    folder's tokenizer.json, the architecture comes from config.json, and with learning rate
    0 the exported folder (vision tower carried over) is the original in transformers."""
    from test_configs import CONFIG_DIR, load

    from irl_lm import train
    from irl_lm.convert import convert

    data = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    if not os.path.isdir(os.path.join(data, "xsum")):
        pytest.skip(f"shared data not found at {data} (see shared/data/README.md)")
    reference = save_hf_t5gemma(tmp_path / "g2", "t5gemma2")
    texts = [
        json.loads(line)["document"]
        for line in open(os.path.join(data, "xsum", "test_first1000.jsonl"))
    ]
    gemma_like_tokenizer(tmp_path / "g2", texts[:200])
    config = load(os.path.join(CONFIG_DIR, "xsum.py")).get_config(f"loss=mle,data={data}")
    config.init_from = f"hf:{tmp_path / 'g2'}"
    config.task.vocabulary = ""  # the checkpoint's
    config.total_steps, config.optimizer.learning_rate = 2, 0.0
    config.evals = {"validation": config.evals.validation}
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(results["eval"]["validation"]["mle/nll"])
    assert os.path.exists(tmp_path / "run" / "tokenizer.json")
    model_json = json.load(open(tmp_path / "run" / "model.json"))
    assert model_json["model_type"] == "t5gemma2" and model_json["vocab_size"] == VOCAB
    convert(str(tmp_path / "run"), f"hf:{tmp_path / 'out'}")  # carries from init_from
    exported = reload(tmp_path / "out", "t5gemma2")
    np.testing.assert_allclose(
        hf_logits(exported, ENCODER_TOKENS, DECODER_TOKENS),
        hf_logits(reference, ENCODER_TOKENS, DECODER_TOKENS),
        atol=1e-5,
        rtol=0,
    )
    source, out = read_folder(str(tmp_path / "g2")), read_folder(str(tmp_path / "out"))
    vision = [n for n in source if ".vision_tower." in n]
    assert vision and all(np.array_equal(source[n], out[n]) for n in vision)
    assert os.path.exists(tmp_path / "out" / "tokenizer.json")


def test_a_stack_field_set_on_the_wrong_level_is_refused():
    stack = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(
        ValueError, match=r"\['dtype'\] are set for both stacks.*config.model.encoder"
    ):
        build_model(dict(name="t5gemma", encoder=dict(stack, dtype="bfloat16"), decoder=stack))


def test_a_model_trained_from_scratch_exports_a_folder_transformers_loads(tmp_path):
    """No source folder to carry a vision tower from (the tiny model has no end-of-image
    token either): transformers builds its own tower and gives our text model's logits."""
    from irl_lm import sharding
    from irl_lm.config_utils import TINY_MODELS

    model = build_model(dict(TINY_MODELS["t5gemma2"], vocab_size=VOCAB))
    example = {"encoder_input_tokens": ENCODER_TOKENS, "decoder_input_tokens": DECODER_TOKENS}
    params = sharding.unbox(model.init(jax.random.PRNGKey(0), example)["params"])
    export_hf(model, params, str(tmp_path))
    reloaded = reload(tmp_path, "t5gemma2")
    np.testing.assert_allclose(
        hf_logits(reloaded, ENCODER_TOKENS, DECODER_TOKENS),
        our_logits(model, params, ENCODER_TOKENS, DECODER_TOKENS),
        atol=ATOL,
        rtol=0,
    )
    again, again_params = load_hf(str(tmp_path))  # and reads back: eoi_token_index None
    assert again.config.eoi_token_index is None
    np.testing.assert_array_equal(
        our_logits(again, again_params, ENCODER_TOKENS, DECODER_TOKENS),
        our_logits(model, params, ENCODER_TOKENS, DECODER_TOKENS),
    )


def test_each_stack_of_a_spelled_out_config_is_overridden_on_its_own():
    from configs import demo

    config = demo.get_config("model=t5gemma2")
    config.model.decoder.num_hidden_layers = 3
    config.model.decoder.layer_types = ("sliding_attention",) * 2 + ("full_attention",)
    model = build_model(dict(config.model, vocab_size=VOCAB))
    assert (model.config.encoder.num_hidden_layers, model.config.decoder.num_hidden_layers) == (
        2,
        3,
    )
    assert model.config.decoder.hidden_act == "gelu_pytorch_tanh"  # Gemma's GeGLU by default


def test_cudnn_is_refused_a_window_that_looks_ahead():
    from irl_lm.models.layers import AttentionMask, resolve_attention_impl

    mask = AttentionMask(np.ones((1, 4, 4), bool), window=(1, 1))
    shapes = dict(q_shape=(1, 4, 2, 8), k_len=4, dtype="bfloat16", mask=mask)
    with pytest.raises(ValueError, match=r"cudnn.*does not take a window that looks ahead"):
        resolve_attention_impl("cudnn", **shapes, dropout=False, softcap=None)
    assert resolve_attention_impl("auto", **shapes, dropout=False, softcap=None) == "einsum"


def test_convert_follows_init_from_back_to_the_hugging_face_folder(tmp_path):
    """A GAIL run fine-tunes an MLE workdir that started from hf:<folder>: the export carries
    that folder's vision tower."""
    from irl_lm import checkpointing
    from irl_lm.convert import hf_origin

    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    for run, init_from in (("mle", f"hf:{tmp_path / 'hf'}"), ("gail", "")):
        (tmp_path / run / "checkpoints" / "5").mkdir(parents=True)
        (tmp_path / run / "model.json").write_text("{}")
        (tmp_path / run / "config.json").write_text(json.dumps({"init_from": init_from}))
    gail_config = {"init_from": str(tmp_path / "mle" / "checkpoints" / "5")}
    (tmp_path / "gail" / "config.json").write_text(json.dumps(gail_config))
    gail = checkpointing.InitSource("workdir", str(tmp_path / "gail"), 5)
    assert hf_origin(gail) == str(tmp_path / "hf")
    assert hf_origin(checkpointing.InitSource("workdir", str(tmp_path / "mle"), 5)) == str(
        tmp_path / "hf"
    )

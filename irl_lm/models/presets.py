"""The shapes of public checkpoints, by `config.model.name`: T5 v1.1 / FLAN-T5 sizes, Gemma 3,
Llama 3.2, TinyLlama, T5Gemma and T5Gemma 2. Fields given next to a preset's name override the
preset's."""

from __future__ import annotations

from irl_lm.models.decoder_only import FULL, SLIDING

# v1.1 shapes (also FLAN-T5's); parameter counts equal the public google/t5-v1_1-* checkpoints.
T5_PRESETS = {
    "t5_small": dict(d_model=512, d_kv=64, d_ff=1024, num_heads=6, num_layers=8),
    "t5_base": dict(d_model=768, d_kv=64, d_ff=2048, num_heads=12, num_layers=12),
    "t5_large": dict(d_model=1024, d_kv=64, d_ff=2816, num_heads=16, num_layers=24),
    "t5_xl": dict(d_model=2048, d_kv=64, d_ff=5120, num_heads=32, num_layers=24),
    "t5_xxl": dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24),
}
# Parameters of the public google/t5-v1_1-{small,...,xxl} checkpoints (shared embedding, untied
# head, both stacks), as published with KerasHub's T5 1.1 presets and the HF model pages.
T5_PUBLIC_PARAM_COUNTS = {
    "t5_small": 76_961_152,
    "t5_base": 247_577_856,
    "t5_large": 783_150_080,
    "t5_xl": 2_849_757_184,
    "t5_xxl": 11_135_332_352,
}


def _gemma3_layer_types(num_layers: int) -> tuple[str, ...]:
    """Gemma 3: five sliding-window layers, then one global, repeated."""
    return tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(num_layers))


_GEMMA3 = dict(
    model_type="gemma3_text",
    vocab_size=262_144,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    query_pre_attn_scalar=256,
    rms_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
    tie_word_embeddings=True,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    sliding_window=512,
    max_position_embeddings=32_768,
    norm_plus_one=True,
    scale_embeddings=True,
    post_norms=True,
    qk_norm=True,
)
# The shapes of public checkpoints (their config.json); `config.model.name` picks one.
DECODER_ONLY_PRESETS = {
    "gemma3_270m": dict(
        _GEMMA3,
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        layer_types=_gemma3_layer_types(18),
    ),
    "gemma3_1b": dict(
        _GEMMA3,
        hidden_size=1152,
        intermediate_size=6912,
        num_hidden_layers=26,
        layer_types=_gemma3_layer_types(26),
    ),
    "llama3_2_1b": dict(
        vocab_size=128_256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
        rope_theta=500_000.0,
        rope_type="llama3",
        rope_factor=32.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_position_embeddings=8192,
        max_position_embeddings=131_072,
    ),
    "tinyllama_1_1b": dict(
        vocab_size=32_000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    ),
}
# Parameters of google/gemma-3-{270m,1b}-pt, meta-llama/Llama-3.2-1B and
# TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T (their safetensors totals; tied heads
# counted once).
DECODER_ONLY_PUBLIC_PARAM_COUNTS = {
    "gemma3_270m": 268_098_176,
    "gemma3_1b": 999_885_952,
    "llama3_2_1b": 1_235_814_400,
    "tinyllama_1_1b": 1_100_048_384,
}


def _t5gemma_stack(hidden, ffn, layers, heads, kv_heads, head_dim) -> dict:
    """A T5Gemma (Gemma 2 based) stack: sliding and global layers alternate, window 4096."""
    return dict(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        rms_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        sliding_window=4096,
        layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers)),
        rope_theta=10_000.0,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=8192,
    )


def _t5gemma2_stack(hidden, ffn, layers, heads, kv_heads, window, max_positions) -> dict:
    """A T5Gemma 2 (Gemma 3 based) stack: five sliding layers then a global one, global
    rope linearly scaled x8."""
    return dict(
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=256,
        query_pre_attn_scalar=256,
        rms_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        sliding_window=window,
        layer_types=_gemma3_layer_types(layers),
        rope_theta=1_000_000.0,
        rope_type="linear",
        rope_factor=8.0,
        rope_local_base_freq=10_000.0,
        max_position_embeddings=max_positions,
    )


def _balanced(model_type: str, stack: dict, **fields) -> dict:
    return dict(model_type=model_type, encoder=stack, decoder=stack, **fields)


_T5GEMMA = dict(vocab_size=256_000)
_T5GEMMA2 = dict(vocab_size=262_144, eoi_token_index=256_000)
# google/t5gemma-{size}-{ul2,prefixlm} and google/t5gemma-2-{size}: the encoder and decoder
# shapes of their config.json (S/B/L/XL: T5 v1.1's widths on Gemma 2 layers).
T5GEMMA_PRESETS = {
    "t5gemma_s_s": _balanced("t5gemma", _t5gemma_stack(512, 1024, 8, 8, 8, 64), **_T5GEMMA),
    "t5gemma_b_b": _balanced("t5gemma", _t5gemma_stack(768, 2048, 12, 12, 12, 64), **_T5GEMMA),
    "t5gemma_l_l": _balanced("t5gemma", _t5gemma_stack(1024, 2816, 24, 16, 16, 64), **_T5GEMMA),
    "t5gemma_ml_ml": _balanced("t5gemma", _t5gemma_stack(1152, 6912, 26, 4, 4, 256), **_T5GEMMA),
    "t5gemma_xl_xl": _balanced("t5gemma", _t5gemma_stack(2048, 5120, 24, 32, 32, 64), **_T5GEMMA),
    "t5gemma_2b_2b": _balanced("t5gemma", _t5gemma_stack(2304, 9216, 26, 8, 4, 256), **_T5GEMMA),
    "t5gemma_9b_2b": dict(
        model_type="t5gemma",
        encoder=_t5gemma_stack(3584, 14336, 42, 16, 8, 256),
        decoder=_t5gemma_stack(2304, 9216, 26, 8, 4, 256),
        **_T5GEMMA,
    ),
    "t5gemma_9b_9b": _balanced("t5gemma", _t5gemma_stack(3584, 14336, 42, 16, 8, 256), **_T5GEMMA),
    "t5gemma2_270m_270m": _balanced(
        "t5gemma2", _t5gemma2_stack(640, 2048, 18, 4, 1, 512, 32_768), **_T5GEMMA2
    ),
    "t5gemma2_1b_1b": _balanced(
        "t5gemma2", _t5gemma2_stack(1152, 6912, 26, 4, 1, 512, 32_768), **_T5GEMMA2
    ),
    "t5gemma2_4b_4b": _balanced(
        "t5gemma2", _t5gemma2_stack(2560, 10240, 34, 8, 4, 1024, 131_072), **_T5GEMMA2
    ),
}
# T5Gemma: the checkpoints' safetensors totals (encoder and decoder embeddings both counted,
# the tied head not), as published with KerasHub's presets and the Hugging Face pages.
# T5Gemma 2: the text model only (one embedding, the end-of-image vector, both stacks):
# Google gives ~370M, ~1.7B and ~7B "excluding the vision encoder"; the exact figures are
# transformers' model at the published shapes less its vision tower and projector.
T5GEMMA_PUBLIC_PARAM_COUNTS = {
    "t5gemma_s_s": 312_517_632,
    "t5gemma_b_b": 591_490_560,
    "t5gemma_l_l": 1_241_761_792,
    "t5gemma_ml_ml": 2_200_345_344,
    "t5gemma_xl_xl": 3_766_980_608,
    "t5gemma_2b_2b": 5_596_853_760,
    "t5gemma_9b_2b": 12_292_375_296,
    "t5gemma_9b_9b": 20_333_401_088,
    "t5gemma2_270m_270m": 368_424_832,
    "t5gemma2_1b_1b": 1_697_783_168,
    "t5gemma2_4b_4b": 7_089_112_576,
}


# preset name -> (family, fields)
PRESETS = {
    **{name: ("t5", fields) for name, fields in T5_PRESETS.items()},
    **{name: ("decoder_only", fields) for name, fields in DECODER_ONLY_PRESETS.items()},
    **{name: ("t5gemma", fields) for name, fields in T5GEMMA_PRESETS.items()},
}
# preset name -> parameter count of the public checkpoint it mirrors
PUBLIC_PARAM_COUNTS = {
    **T5_PUBLIC_PARAM_COUNTS,
    **DECODER_ONLY_PUBLIC_PARAM_COUNTS,
    **T5GEMMA_PUBLIC_PARAM_COUNTS,
}

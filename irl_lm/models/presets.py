"""The shapes of public checkpoints, by `config.model.name`: T5 v1.1 / FLAN-T5 sizes, Gemma 3,
Llama 3.2 and TinyLlama. Fields given next to a preset's name override the preset's."""

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


# preset name -> (family, fields)
PRESETS = {
    **{name: ("t5", fields) for name, fields in T5_PRESETS.items()},
    **{name: ("decoder_only", fields) for name, fields in DECODER_ONLY_PRESETS.items()},
}
# preset name -> parameter count of the public checkpoint it mirrors
PUBLIC_PARAM_COUNTS = {**T5_PUBLIC_PARAM_COUNTS, **DECODER_ONLY_PUBLIC_PARAM_COUNTS}

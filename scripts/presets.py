"""Prints every model preset with our parameter count next to the public checkpoint's count.

    python scripts/presets.py

Our count comes from the module's shapes (nothing is allocated); the reference is the
published count of the checkpoint the preset mirrors (`irl_lm.models.PUBLIC_PARAM_COUNTS`:
google/t5-v1_1-*, google/gemma-3-*, Llama 3.2 1B, TinyLlama 1.1B, google/t5gemma-*,
google/t5gemma-2-*: the text model). With transformers
installed, a third column counts transformers' own model at the same shape (meta device).
"""

from __future__ import annotations

from irl_lm.models import (
    PRESETS,
    PUBLIC_PARAM_COUNTS,
    build_model,
    decoder_only,
    num_params,
    t5gemma,
)


def transformers_count(family: str, fields: dict) -> int | None:
    try:
        import torch
        import transformers
    except ImportError:
        return None
    if family == "t5":
        config = transformers.T5Config(
            vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False, **fields
        )
        model_cls = transformers.T5ForConditionalGeneration
    elif family == "t5gemma":
        model_config = build_model({"name": "t5gemma", **fields}).config
        config = transformers.AutoConfig.for_model(**t5gemma.to_hf_config(model_config))
        model_cls = transformers.AutoModelForSeq2SeqLM.from_config
    else:
        hf = decoder_only.to_hf_config(decoder_only.DecoderOnlyConfig(**fields))
        config = transformers.AutoConfig.for_model(**hf)
        model_cls = transformers.AutoModelForCausalLM.from_config
    with torch.device("meta"):
        model = model_cls(config)
    # Count each stored tensor once (tied ones are not stored), the text model only.
    aliases = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}  # T5's repeats
    if getattr(config, "tie_word_embeddings", False) and family != "t5":
        aliases |= {"lm_head.weight", "lm_head.out_proj.weight"}
    if family == "t5gemma" and model_config.shared_embedding:
        aliases |= {"model.decoder.embed_tokens.weight", "model.decoder.embed_tokens.eoi_embedding"}
    vision = (".vision_tower.", ".multi_modal_projector.")
    return sum(
        v.numel()
        for k, v in model.state_dict().items()
        if k not in aliases and not any(part in k for part in vision)
    )


def rows() -> list[tuple[str, int, int, int | None]]:
    """(preset, our count, public count, transformers' count or None)."""
    return [
        (
            name,
            num_params(build_model({"name": name})),
            PUBLIC_PARAM_COUNTS[name],
            transformers_count(family, fields),
        )
        for name, (family, fields) in PRESETS.items()
    ]


def main() -> bool:
    print(f"{'preset':20s} {'ours':>16s} {'public':>16s} {'transformers':>16s}  match")
    all_match = True
    for name, ours, public, theirs in rows():
        match = ours == public and theirs in (None, ours)
        all_match &= match
        shown = "-" if theirs is None else f"{theirs:,}"
        print(f"{name:20s} {ours:>16,} {public:>16,} {shown:>16s}  {'yes' if match else 'NO'}")
    return all_match


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)

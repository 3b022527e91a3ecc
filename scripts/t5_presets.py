"""Prints the T5 presets with our parameter count next to the public checkpoints' count.

    python scripts/t5_presets.py

Our count comes from the module's shapes (nothing is allocated); the reference is the
published count of google/t5-v1_1-{small,base,large,xl,xxl}. With transformers installed, a
third column counts transformers' own T5 at the same shape (on the meta device).
"""

from __future__ import annotations

from irl_lm.models import PRESETS, build_model, num_params
from irl_lm.models.t5 import T5_PUBLIC_PARAM_COUNTS


def transformers_count(fields: dict) -> int | None:
    try:
        import torch
        import transformers
    except ImportError:
        return None
    config = transformers.T5Config(
        vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False, **fields
    )
    with torch.device("meta"):
        model = transformers.T5ForConditionalGeneration(config)
    aliases = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    # transformers 5 ties the head in memory; the checkpoint stores it: count state_dict.
    return sum(v.numel() for k, v in model.state_dict().items() if k not in aliases)


def rows() -> list[tuple[str, int, int, int | None]]:
    """(preset, our count, public count, transformers' count or None)."""
    return [
        (name, num_params(build_model({"name": name})), T5_PUBLIC_PARAM_COUNTS[name],
         transformers_count(fields))
        for name, (_, fields) in PRESETS.items()
    ]  # fmt: skip


def main() -> bool:
    print(f"{'preset':10s} {'ours':>16s} {'public':>16s} {'transformers':>16s}  match")
    all_match = True
    for name, ours, public, theirs in rows():
        match = ours == public and theirs in (None, ours)
        all_match &= match
        shown = "-" if theirs is None else f"{theirs:,}"
        print(f"{name:10s} {ours:>16,} {public:>16,} {shown:>16s}  {'yes' if match else 'NO'}")
    return all_match


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)

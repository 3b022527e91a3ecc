"""Converts checkpoints between Hugging Face folders and our Orbax checkpoints.

    # Hugging Face -> a parameters-only Orbax checkpoint (usable as config.init_from=OUT)
    python -m irl_lm.convert --src=hf:/ckpts/flan-t5-base --dst=/ckpts/flan-t5-base-orbax
    # a training workdir (latest step, or WORKDIR/checkpoints/<step>) -> Hugging Face
    python -m irl_lm.convert --src=/runs/xsum_iqlearn --dst=hf:/export/xsum_iqlearn

`--src` takes everything `config.init_from` does; a `--dst` starting with `hf:` is written as
a Hugging Face folder (config.json + safetensors + the tokenizer files), any other as Orbax.
Parameters are sharded over all local devices (fsdp) while converting, so models larger
than one device load.

A T5Gemma 2 checkpoint also holds a vision tower, which irl-lm does not train: an export
copies it unchanged from `--carry_from` (default: the `hf:` source itself, or the `hf:`
folder a training workdir started from, read from its config.json).
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from irl_lm import checkpointing, files, sharding
from irl_lm.models import build_model
from irl_lm.models.hf import copy_tokenizer, export_hf

_SRC = flags.DEFINE_string("src", None, "hf:DIR, a training workdir, or a converted folder.")
_DST = flags.DEFINE_string("dst", None, "hf:DIR for a Hugging Face folder, else an Orbax one.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Hugging Face dtype.")
_SHARD_GB = flags.DEFINE_float("max_shard_gb", 2.0, "Largest safetensors file when exporting.")
_CARRY_FROM = flags.DEFINE_string(
    "carry_from",
    None,
    "hf:DIR whose tensors that are not the model's (T5Gemma 2's vision tower) an export "
    "copies; default: the source's own Hugging Face folder.",
)


def hf_origin(source: checkpointing.InitSource) -> str | None:
    """The Hugging Face folder a source came from: itself, or the one found by following the
    `init_from` of training workdirs (their config.json) back to an `hf:` folder."""
    seen = set()
    while source.kind == "workdir" and source.folder not in seen:
        seen.add(source.folder)
        config_path = files.path(source.folder, "config.json")
        init_from = files.read_json(config_path).get("init_from") if config_path.exists() else ""
        try:
            source = checkpointing.parse_init_from(init_from or "")
        except FileNotFoundError as e:
            logging.warning("the checkpoint a run started from is gone: %s", e)
            return None
        if source is None:
            return None
    return source.folder if source.kind == "hf" else None


def convert(
    src: str,
    dst: str,
    *,
    dtype: str = "float32",
    max_shard_gb: float = 2.0,
    carry_from: str | None = None,
) -> None:
    source = checkpointing.parse_init_from(src)
    if source is None:
        raise ValueError("--src is empty")
    model_config = source.model_config()
    model = build_model(model_config)
    mesh = sharding.make_mesh({"fsdp": -1})
    with sharding.use_mesh(mesh):
        abstract, shardings = sharding.abstract_params(model, mesh)
    params = source.load_params(model, abstract, shardings)
    if dst.startswith("hf:"):
        export_hf(
            model,
            params,
            dst[3:],
            dtype=dtype,
            max_shard_bytes=int(max_shard_gb * 2**30),
            tokenizer_from=source.vocabulary_folder(),
            carry_from=carry_from.removeprefix("hf:") if carry_from else hf_origin(source),
        )
    else:
        checkpointing.save_params(dst, params, model_config)
        copy_tokenizer(source.folder, dst)
    print(f"{source.describe()} -> {files.path(os.path.expanduser(dst.removeprefix('hf:')))}")


def main(argv):
    del argv
    convert(
        _SRC.value,
        _DST.value,
        dtype=_DTYPE.value,
        max_shard_gb=_SHARD_GB.value,
        carry_from=_CARRY_FROM.value,
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["src", "dst"])
    app.run(main)

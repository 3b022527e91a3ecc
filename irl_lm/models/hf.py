"""Hugging Face checkpoints in and out: `load_hf`, `export_hf`.

A Hugging Face folder is `config.json` + `model.safetensors` (or shards and
`model.safetensors.index.json`) + the tokenizer (`spiece.model`). Import maps every tensor
onto one of our parameters through the model family's name table (`hf_tensor_names` in the
family's module), and fails on a tensor it cannot place, a parameter nothing fills, or a
shape that disagrees. Each parameter is created straight on its mesh sharding from a memory
map, so every device reads only its own slice and no host holds the whole model.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np

from irl_lm import files, sharding
from irl_lm.models import MODELS, build_model, decoder_only, t5
from irl_lm.models.safetensors_io import read_folder, write_folder


@dataclasses.dataclass(frozen=True)
class HFLayout:
    """How one model family maps onto Hugging Face's files."""

    name: str  # our config.model.name
    model_types: tuple[str, ...]  # config.json "model_type" values it reads
    from_hf_config: Callable[[dict, Mapping[str, np.ndarray]], dict]
    to_hf_config: Callable[[object], dict]
    tensor_names: Callable[[object], dict[tuple[str, ...], tuple[str, int | None]]]
    aliases: Callable[[object], dict[str, str]]
    config_hint: str  # the config.json fields that decide which tensors exist


LAYOUTS = (
    HFLayout(
        "t5",
        t5.HF_MODEL_TYPES,
        t5.from_hf_config,
        t5.to_hf_config,
        t5.hf_tensor_names,
        t5.hf_aliases,
        "num_layers / num_decoder_layers / feed_forward_proj",
    ),
    HFLayout(
        "decoder_only",
        decoder_only.HF_MODEL_TYPES,
        decoder_only.from_hf_config,
        decoder_only.to_hf_config,
        decoder_only.hf_tensor_names,
        decoder_only.hf_aliases,
        "model_type / num_hidden_layers / tie_word_embeddings",
    ),
)

# Fields a user may change on an imported model: how it runs, not what it is.
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention_impl", "remat", "dropout_rate")
TOKENIZER_FILES = (
    "spiece.model",  # T5 (SentencePiece)
    "tokenizer.model",  # Gemma, Llama 2 (SentencePiece)
    "tokenizer.json",  # the `tokenizers` library's file (all a Llama 3 folder has)
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",  # EOS id of decoder-only checkpoints
)


def _layout_for(model) -> HFLayout:
    """The layout of the family `model` belongs to."""

    names = [name for name, (_, module_cls) in MODELS.items() if isinstance(model, module_cls)]
    for layout in LAYOUTS:
        if layout.name in names:
            return layout
    raise ValueError(
        f"{type(model).__name__} has no Hugging Face layout; known: {[x.name for x in LAYOUTS]}"
    )


def read_config(folder: str) -> tuple[HFLayout, dict]:
    path = files.path(folder, "config.json")
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no config.json; is this a Hugging Face model folder?")
    hf_config = files.read_json(path)
    model_type = hf_config.get("model_type")
    for layout in LAYOUTS:
        if model_type in layout.model_types:
            return layout, hf_config
    known = [t for layout in LAYOUTS for t in layout.model_types]
    raise ValueError(f"{path}: model_type {model_type!r} is not supported; supported: {known}")


def hf_model_config(folder: str, tensors: Mapping[str, np.ndarray] | None = None) -> dict:
    """Our `config.model` (with `name`) for the model in a Hugging Face folder."""
    layout, hf_config = read_config(folder)
    tensors = read_folder(folder) if tensors is None else tensors
    return {"name": layout.name, **layout.from_hf_config(hf_config, tensors)}


def load_hf(folder: str, mesh=None, **overrides):
    """Returns (model, params) for a Hugging Face folder, params placed on `mesh`.

    `overrides` may set the runtime fields (`RUNTIME_FIELDS`: dtypes, attention, remat,
    dropout); the architecture comes from the folder. Without a mesh, parameters are
    replicated over all devices.
    """

    bad = sorted(set(overrides) - set(RUNTIME_FIELDS))
    if bad:
        raise ValueError(f"load_hf: {bad} cannot be overridden; allowed: {list(RUNTIME_FIELDS)}")
    read_config(folder)  # a folder that is not a Hugging Face model fails here, by name
    tensors = read_folder(folder)
    model_config = hf_model_config(folder, tensors) | overrides
    model = build_model(model_config)
    mesh = mesh if mesh is not None else sharding.make_mesh({"data": -1})
    return model, place_tensors(model, tensors, mesh, source=folder)


def place_tensors(model, tensors: Mapping[str, np.ndarray], mesh, *, source: str):
    """Our parameter tree from Hugging Face tensors, each created on its mesh sharding."""
    layout = _layout_for(model)
    names = layout.tensor_names(model.config)
    aliases = layout.aliases(model.config)
    used = {hf_name for hf_name, _ in names.values()}
    unknown = sorted(set(tensors) - used - set(aliases))
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} tensors have no place in the model its config.json "
            f"describes, e.g. {unknown[:5]}; check {layout.config_hint} in config.json"
        )
    for alias, target in aliases.items():
        if alias in tensors and tensors[alias].shape != tensors[target].shape:
            raise ValueError(
                f"{source}: tensor {alias!r} has shape {tensors[alias].shape}, but it repeats "
                f"{target!r} of shape {tensors[target].shape}"
            )
    with sharding.use_mesh(mesh):
        abstract, shardings = sharding.abstract_params(model, mesh)

    def place(path, leaf, leaf_sharding):
        key = tuple(k.key for k in path)
        hf_name, split = names[key]
        if hf_name not in tensors:
            raise ValueError(
                f"{source}: tensor {hf_name!r} is missing (for parameter {'/'.join(key)}); "
                f"check {layout.config_hint} in config.json, or save the checkpoint again "
                "(its safetensors files lack the tensor)"
            )
        view = _to_ours(tensors[hf_name], leaf.shape, split)
        if view is None:
            raise ValueError(
                f"{source}: tensor {hf_name!r} has shape {tuple(tensors[hf_name].shape)}, "
                f"expected {_hf_shape(leaf.shape, split)} from config.json "
                f"(our parameter {'/'.join(key)} is {tuple(leaf.shape)}); config.json's "
                "sizes and the tensors disagree: fix config.json or save the checkpoint again"
            )
        return jax.make_array_from_callback(
            leaf.shape, leaf_sharding, lambda index: np.asarray(view[index], dtype=leaf.dtype)
        )

    return jax.tree_util.tree_map_with_path(place, abstract, shardings)


def _hf_shape(shape: tuple[int, ...], split: int | None) -> tuple[int, ...]:
    if split is None:
        return tuple(shape)
    return (math.prod(shape[split:]), math.prod(shape[:split]))


def _to_ours(array: np.ndarray, shape: tuple[int, ...], split: int | None):
    """A view (no copy, so memory maps stay lazy) of `array` in our layout, or None."""
    if tuple(array.shape) != _hf_shape(shape, split):
        return None
    return array if split is None else array.T.reshape(shape)


def _to_hf(array: np.ndarray, split: int | None) -> np.ndarray:
    if split is None:
        return array
    return np.ascontiguousarray(
        array.reshape(math.prod(array.shape[:split]), math.prod(array.shape[split:])).T
    )


# ----------------------------------------------------------------------------- export


def export_hf(
    model,
    params,
    folder: str,
    *,
    dtype: str = "float32",
    max_shard_bytes: int = 2 * 2**30,
    tokenizer_from: str | None = None,
) -> None:
    """Writes `params` as a Hugging Face folder that transformers loads (`from_pretrained`).

    Parameters are fetched one at a time (gathered across hosts); process 0 writes.
    `tokenizer_from` copies the tokenizer files of another folder alongside.
    """
    layout = _layout_for(model)
    names = layout.tensor_names(model.config)
    flat = {
        tuple(k.key for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    if set(flat) != set(names):
        raise ValueError(
            f"params do not match model {layout.name!r}: missing "
            f"{sorted(set(names) - set(flat))[:5]}, unexpected {sorted(set(flat) - set(names))[:5]}"
        )
    target = np.dtype(jax.numpy.dtype(dtype))

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for key in sorted(names, key=lambda k: names[k][0]):
            hf_name, split = names[key]
            yield hf_name, _to_hf(_fetch(flat[key]).astype(target), split)

    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)
        write_folder(folder, tensors(), max_shard_bytes=max_shard_bytes)
        hf_config = layout.to_hf_config(model.config) | {"dtype": str(target)}
        files.write_json(files.path(folder, "config.json"), hf_config)
        if tokenizer_from:
            copy_tokenizer(tokenizer_from, folder)
    else:
        for _ in tensors():  # every process takes part in each gather
            pass


def _fetch(array) -> np.ndarray:
    if getattr(array, "is_fully_addressable", True):
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def copy_tokenizer(source: str, folder: str) -> list[str]:
    """Copies the tokenizer files `source` has into `folder`; returns their names."""
    copied = []
    if files.path(source) == files.path(folder):
        return copied
    for filename in TOKENIZER_FILES:
        path = files.path(source, filename)
        if path.exists():
            files.copy(path, files.path(folder, filename))
            copied.append(filename)
    return copied


def save_vocabulary_files(vocabulary: str, folder: str) -> list[str]:
    """Makes `folder` carry the tokenizer of `config.task.vocabulary` (a folder, or "byte":
    a ByT5 `tokenizer_config.json` with seqio's default of no extra ids)."""
    if vocabulary != "byte":
        return copy_tokenizer(vocabulary, folder)
    byte_config = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": 0}
    files.write_json(files.path(folder, "tokenizer_config.json"), byte_config)
    return ["tokenizer_config.json"]

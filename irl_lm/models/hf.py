"""Hugging Face checkpoints in and out: `load_hf`, `export_hf`.

A Hugging Face folder is `config.json` + `model.safetensors` (or shards and
`model.safetensors.index.json`) + the tokenizer (`spiece.model`). Import maps every tensor
onto one of our parameters through the model family's name table (`hf_tensor_names` in the
family's module), and fails on a tensor it cannot place, a parameter nothing fills, or a
shape that disagrees. Each parameter is created straight on its mesh sharding from a memory
map, so every device reads only its own slice and no host holds the whole model.

seqio reads token 0 as padding. When the folder's tokenizer.json gives id 0 to an ordinary
token (Llama 3, Qwen2: `!`), the vocabulary trades that id with a free one, r
(`irl_lm.data.vocabularies.zero_token_swap`); import swaps rows 0 and r of the token
embedding and of an untied head to match and records r as the config's `token_zero_row`,
and export swaps them back, so the exported folder gives transformers its own logits.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping

import jax
import numpy as np
from absl import logging

from irl_lm import files, sharding
from irl_lm.data import vocabularies
from irl_lm.models import MODELS, build_model, decoder_only, t5, t5gemma
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
    # Name prefixes of a model's checkpoint tensors that are not the model's (T5Gemma 2's
    # vision tower): skipped on import, counted in the log; copied from the source on export.
    carried_prefixes: Callable[[object], tuple[str, ...]] = lambda config: ()


def _carried(prefixes: tuple[str, ...], names) -> list[str]:
    return [n for n in names if n.startswith(prefixes)] if prefixes else []


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
    HFLayout(
        "t5gemma",
        tuple(t5gemma.HF_MODEL_TYPES),
        t5gemma.from_hf_config,
        t5gemma.to_hf_config,
        t5gemma.hf_tensor_names,
        t5gemma.hf_aliases,
        "model_type / encoder / decoder num_hidden_layers / tie_word_embeddings",
        t5gemma.carried_prefixes,
    ),
)

# Fields a user may change on an imported model: how it runs, not what it is.
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention_impl", "remat", "dropout_rate")
# Parameters with one row per token (every family): the embeddings, and an untied head.
TOKEN_ROW_PARAMS = (
    ("token_embedder", "embedding"),
    ("encoder_token_embedder", "embedding"),
    ("lm_head", "kernel"),
)
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
    """Our `config.model` (with `name`) for the model in a Hugging Face folder, with
    `token_zero_row` when the folder's tokenizer moves token 0 (see the module docstring)."""
    layout, hf_config = read_config(folder)
    tensors = read_folder(folder) if tensors is None else tensors
    fields = {"name": layout.name, **layout.from_hf_config(hf_config, tensors)}
    row = vocabularies.token_zero_row(folder)
    if row:
        if row >= fields["vocab_size"]:
            raise ValueError(
                f"{folder}: the tokenizer puts its token 0 at id {row}, past the model's "
                f"vocab_size {fields['vocab_size']} in config.json"
            )
        fields["token_zero_row"] = row
    return fields


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
    prefixes = layout.carried_prefixes(model.config)
    carried = _carried(prefixes, tensors)
    if carried:
        logging.info(
            "%s: %d tensors (%s) are not part of the text model; skipped (export carries "
            "them over from this folder)",
            source,
            len(carried),
            ", ".join(f"{p}*" for p in prefixes),
        )
    unknown = sorted(set(tensors) - used - set(aliases) - set(carried))
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
    row = model.config.token_zero_row

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
        if row and key in TOKEN_ROW_PARAMS:
            view = _RowsSwapped(view, _token_axis(len(leaf.shape), split), row)
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


def _token_axis(ndim: int, split: int | None) -> int:
    """The token axis of our layout of a Hugging Face `[vocab, d]` tensor."""
    return 0 if split is None else ndim - 1


def _swap_order(size: int, row: int) -> np.ndarray:
    """0, 1, ..., size - 1 with 0 and `row` trading places (its own inverse)."""
    order = np.arange(size)
    order[[0, row]] = row, 0
    return order


class _RowsSwapped:
    """`array` with entries 0 and `row` of `axis` swapped, read a slice at a time (only the
    slice is copied, so memory maps stay lazy)."""

    def __init__(self, array, axis: int, row: int):
        self.array, self.axis = array, axis
        self.order = _swap_order(array.shape[axis], row)

    def __getitem__(self, index):
        index = list(index) + [slice(None)] * (self.array.ndim - len(index))
        index[self.axis] = self.order[index[self.axis]]
        return self.array[tuple(index)]


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
    carry_from: str | None = None,
) -> None:
    """Writes `params` as a Hugging Face folder that transformers loads (`from_pretrained`).

    Parameters are fetched one at a time (gathered across hosts); process 0 writes.
    `tokenizer_from` copies the tokenizer files of another folder alongside. Rows moved at
    import (`token_zero_row`) go back to the checkpoint's order. `carry_from`: the Hugging
    Face folder the model came from, whose tensors that are not the model's (T5Gemma 2's
    vision tower) are copied unchanged, with their config.json settings.
    """
    layout = _layout_for(model)
    prefixes = layout.carried_prefixes(model.config)
    carried, carried_config = {}, None
    if prefixes and carry_from:
        source_tensors = read_folder(carry_from)
        carried = {name: source_tensors[name] for name in _carried(prefixes, source_tensors)}
        carried_config = files.read_json(files.path(carry_from, "config.json"))
        _check_carried(model, carried, carry_from)
    elif prefixes:
        logging.warning(
            "export to %s: no source folder to carry %s from; transformers will initialise "
            "those tensors at random (the text model is unaffected; irl_lm.convert takes "
            "--carry_from=hf:DIR)",
            folder,
            ", ".join(f"{p}*" for p in prefixes),
        )
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
    row = model.config.token_zero_row

    def tensors() -> Iterator[tuple[str, np.ndarray]]:
        for key in sorted(names, key=lambda k: names[k][0]):
            hf_name, split = names[key]
            array = _fetch(flat[key]).astype(target)
            if row and key in TOKEN_ROW_PARAMS:
                axis = _token_axis(array.ndim, split)
                array = np.take(array, _swap_order(array.shape[axis], row), axis=axis)
            yield hf_name, _to_hf(array, split)
        if jax.process_index() == 0:
            yield from ((name, np.asarray(carried[name])) for name in sorted(carried))

    if jax.process_index() == 0:
        os.makedirs(folder, exist_ok=True)
        write_folder(folder, tensors(), max_shard_bytes=max_shard_bytes)
        if prefixes:
            hf_config = layout.to_hf_config(model.config, carried_config)
        else:
            hf_config = layout.to_hf_config(model.config)
        hf_config |= {"dtype": str(target)}
        files.write_json(files.path(folder, "config.json"), hf_config)
        if tokenizer_from:
            copy_tokenizer(tokenizer_from, folder)
    else:
        for _ in tensors():  # every process takes part in each gather
            pass


def _check_carried(model, carried: Mapping[str, np.ndarray], source: str) -> None:
    """The carried vision projector must map into this model's width."""
    projection = carried.get(t5gemma.PROJECTION)
    width = model.config.encoder.hidden_size
    if projection is not None and projection.shape[-1] != width:
        raise ValueError(
            f"carry_from={source}: its vision projector {t5gemma.PROJECTION} maps to width "
            f"{projection.shape[-1]}, but this model's encoder is {width} wide; carry from "
            "the folder of the checkpoint this model was fine-tuned from"
        )


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

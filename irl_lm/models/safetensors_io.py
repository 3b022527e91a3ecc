"""Reads and writes safetensors files, single or sharded, without loading whole files.

The format is an 8-byte little-endian header size, a JSON header (name -> dtype, shape,
data_offsets relative to the data block, plus an optional `__metadata__` map) and the raw
little-endian C-order data. Reading memory-maps each tensor, so a caller that slices a
tensor (one device's shard) reads only those bytes. Sharded checkpoints add
`model.safetensors.index.json` with a `weight_map` of tensor name -> file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Iterator

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    return header, 8 + size


def read_file(path: str) -> dict[str, np.ndarray]:
    """Tensor name -> read-only memory-mapped array (nothing is read until it is used)."""
    header, data_start = _read_header(path)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(
                f"{path}: tensor {name!r} has dtype {info['dtype']}, which is not supported; "
                f"supported: {sorted(_DTYPES)}"
            )
        dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        if end - begin != dtype.itemsize * int(np.prod(shape)):
            raise ValueError(f"{path}: tensor {name!r}: data_offsets do not match shape {shape}")
        if not shape or end == begin:  # memmap cannot map zero bytes
            with open(path, "rb") as f:
                f.seek(data_start + begin)
                tensors[name] = np.frombuffer(f.read(end - begin), dtype).reshape(shape)
        else:
            tensors[name] = np.memmap(
                path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape
            )
    return tensors


def read_folder(folder: str) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face folder: `model.safetensors` or the sharded index."""
    index_path = os.path.join(folder, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for filename in sorted(set(weight_map.values())):
            for name, array in read_file(os.path.join(folder, filename)).items():
                if weight_map.get(name) != filename:
                    raise ValueError(
                        f"{os.path.join(folder, filename)}: tensor {name!r} is not listed for "
                        f"this file in {index_path}"
                    )
                tensors[name] = array
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{index_path} lists tensors no shard holds: {missing[:5]}")
        return tensors
    single = os.path.join(folder, SINGLE_FILE)
    if os.path.exists(single):
        return read_file(single)
    raise FileNotFoundError(
        f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}; export the checkpoint with "
        "save_pretrained(..., safe_serialization=True) (PyTorch .bin files are not read)"
    )


def write_file(path: str, tensors: Iterable[tuple[str, np.ndarray]], metadata=None) -> None:
    """Writes (name, array) pairs, in order, to one safetensors file."""
    tensors = [(name, np.ascontiguousarray(array)) for name, array in tensors]
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, array in tensors:
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} cannot be written")
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data block starts 8-byte aligned
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, array in tensors:  # little-endian hosts only (x86, ARM): bytes as they are
            f.write(array.reshape(-1).view(np.uint8).data)
    os.replace(path + ".tmp", path)


def write_folder(
    folder: str, tensors: Iterator[tuple[str, np.ndarray]], *, max_shard_bytes: int
) -> list[str]:
    """Streams (name, array) pairs into `model.safetensors`, or into numbered shards plus
    the index when they exceed `max_shard_bytes`; at most one shard is held in memory."""
    os.makedirs(folder, exist_ok=True)
    shards, current, size, total = [], [], 0, 0
    for name, array in tensors:
        if current and size + array.nbytes > max_shard_bytes:
            shards.append(_spill(folder, len(shards), current))
            current, size = [], 0
        current.append((name, array))
        size += array.nbytes
        total += array.nbytes
    metadata = {"format": "pt"}  # what transformers expects of a PyTorch-layout file
    if not shards:
        write_file(os.path.join(folder, SINGLE_FILE), current, metadata)
        return [SINGLE_FILE]
    shards.append(_spill(folder, len(shards), current))
    # Temporary names until the shard count is known; then the usual -0000i-of-0000n names.
    weight_map, names = {}, []
    for i, (tmp_path, shard_names) in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(tmp_path, os.path.join(folder, filename))
        weight_map |= {name: filename for name in shard_names}
        names.append(filename)
    with open(os.path.join(folder, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


def _spill(folder: str, index: int, tensors) -> tuple[str, list[str]]:
    path = os.path.join(folder, f".shard-{index}.safetensors")
    write_file(path, tensors, {"format": "pt"})
    return path, [name for name, _ in tensors]

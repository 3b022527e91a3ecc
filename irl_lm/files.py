"""Workdir files through one path library: `etils.epath`, which Orbax uses too.

A workdir may be a local folder or a bucket (`gs://bucket/sweeps/lam`, through
`tf.io.gfile`): every read and write of workdir files (config, model, results, tokenizer
copy, predictions, sweep files) goes through here, never `open()` or `os.path`. Text and
JSON are written atomically (a temporary name in the same folder, then a rename), so a
reader never sees half a file; callers write from process 0 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

from etils import epath

Path = epath.Path


def path(*parts: str | os.PathLike) -> epath.Path:
    """`parts` joined: a local path (made absolute) or a URI such as `gs://bucket/dir`."""
    joined = epath.Path(*parts)
    return joined if is_remote(joined) else epath.Path(os.path.abspath(joined))


def is_remote(p: str | os.PathLike) -> bool:
    return "://" in os.fspath(p)


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `p` atomically, creating its folder."""
    p = path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    tmp.replace(p)


def write_text(p: str | os.PathLike, text: str) -> None:
    write_bytes(p, text.encode())


def write_json(p: str | os.PathLike, value: Any) -> None:
    write_text(p, json.dumps(value, indent=2, default=float) + "\n")


def read_json(p: str | os.PathLike) -> Any:
    """The JSON in `p`; a file that does not parse fails naming it."""
    p = path(p)
    text = p.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies the file `src` to `dst` (overwriting), through a temporary name."""
    dst = path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    path(src).copy(tmp, overwrite=True)
    tmp.replace(dst)


def append(local_file: str, p: str | os.PathLike) -> None:
    """Appends the local file's bytes to `p` (a bucket object cannot grow: it is rewritten)."""
    p = path(p)
    before = p.read_bytes() if p.exists() else b""
    with open(local_file, "rb") as f:
        write_bytes(p, before + f.read())


RESULTS_FILE = "results.json"  # written by the trainer when a run reaches config.total_steps


def finished_results(workdir: str | os.PathLike, total_steps: int) -> dict | None:
    """The workdir's `results.json` when it records a run of at least `total_steps` steps,
    else None (no run, an unfinished one, or one asked now to train for longer)."""
    p = path(workdir, RESULTS_FILE)
    if not p.exists():
        return None
    results = read_json(p)
    return results if int(results.get("step", -1)) >= int(total_steps) else None


def read_jsonl_records(file: str | os.PathLike):
    """Yields (`FILE:LINE`, record) for each line of a JSON Lines file (UTF-8); a line that
    is empty, not UTF-8 or not a JSON object fails naming its file and line and the fix.
    A missing file fails too (a bucket's would otherwise read as empty)."""
    if not path(file).exists():
        raise FileNotFoundError(f"{file}: no such file")
    with path(file).open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"{file}:{line_no}"
            yield where, parse_jsonl_line(where, raw, cut=lambda raw=raw: not raw.endswith(b"\n"))


def parse_jsonl_line(where: str, raw: bytes, cut=lambda: False) -> dict:
    """The JSON object on one line (`where` is its `FILE:LINE`); fails naming it and the fix.
    `cut()` says whether it is a last line without its newline, as a file cut at a byte
    offset ends (asked only when the line is bad)."""

    def fix() -> str:
        if cut():
            return (
                "; it is the last line and has no newline: the file looks truncated"
                " (copy it again), or fix the line"
            )
        return "; fix or remove the line (each line must be one JSON object)"

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text ({e}){fix()}") from None
    if not line.strip():
        raise ValueError(f"{where}: empty line; remove it (each line must be one JSON object)")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not a JSON object ({e}){fix()}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object (a {type(record).__name__}){fix()}")
    return record


def last_line_is_cut(file: str | os.PathLike, line_no: int) -> bool:
    """Whether line `line_no` is the last of `file` and the file does not end in a newline."""
    with path(file).open("rb") as f:
        lines, last = 0, b""
        for line in f:
            lines, last = lines + 1, line
    return lines == line_no and not last.endswith(b"\n")


def write_lines(p: str | os.PathLike, lines) -> None:
    """Writes the text `lines` (an iterable, each ending in a newline) to `p` atomically,
    one at a time (nothing is held in memory)."""
    p = path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tmp.open("w") as f:
            for line in lines:
                f.write(line)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(p)


CACHE = os.path.join("~", ".cache", "irl_lm")  # local copies of remote folders


def local_copy(folder: str | os.PathLike, skip=lambda name: False) -> str:
    """`folder` itself when local; a remote folder's files (not its subfolders, nor those
    `skip(name)` names), copied once into `~/.cache/irl_lm/remote/<digest of the URI>/`, for
    readers that need a local file (memory-mapped weights, tokenizer libraries). A file is
    copied again when its size differs from the copy's."""
    source = path(folder)
    if not is_remote(source):
        return os.fspath(source)
    digest = hashlib.sha1(os.fspath(source).encode()).hexdigest()[:16]
    local = path(os.path.expanduser(CACHE), "remote", digest)
    local.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir() or skip(item.name):
            continue
        copy_to = local / item.name
        if not copy_to.exists() or copy_to.stat().length != item.stat().length:
            copy(item, copy_to)
    write_text(local / ".source", os.fspath(source) + "\n")
    return os.fspath(local)

"""Orbax checkpoints of the train state, the data iterator's state and a small JSON of
metadata (data position, a digest of every array, their shapes).

Resume precedence: the latest checkpoint in the workdir that restores and matches its
digests, else `config.init_from` (parameters only: a Hugging Face folder or one of our
checkpoints), else a fresh state. Restores go through an abstract target (shapes +
shardings), so a checkpoint restores onto any mesh.

A killed save leaves only a `<step>.orbax-checkpoint-tmp*` folder, never a listed step;
the next start removes it. A listed step that does not restore, or restores other values
than it saved, is moved aside to `checkpoints/corrupt-<step>/` (never deleted) and the step
before it is tried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from irl_lm import files
from irl_lm.data.vocabularies import has_vocabulary
from irl_lm.models import hf
from irl_lm.models.safetensors_io import read_folder

DATA_ITEM = "data"  # the data iterator's state, one file per host


class _DataIteratorHandler(ocp.CheckpointHandler):
    """Writes the data iterator's state into the step's `data/` (every host its own file),
    inside the step's temporary folder, so it commits with the train state."""

    def save(self, directory, args: DataIteratorSave):
        args.iterator.save(directory)

    def restore(self, directory, args=None):
        return directory  # the iterator reads its own files (`pipeline.TrainIterator`)

    def metadata(self, directory):
        return None


@ocp.args.register_with_handler(_DataIteratorHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
    iterator: Any = None  # has .save(folder)


class CheckpointError(RuntimeError):
    """A workdir's checkpoints cannot be resumed; the message says why and what to do."""


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, asynchronous: bool = True):
        self.directory = files.path(workdir, "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=asynchronous,
                create=True,
                cleanup_tmp_directories=True,  # what killed saves left behind
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int):
        return self.directory / str(step)

    def data_dir(self, step: int):
        """Where `step` keeps the data iterator's state (`pipeline.TrainIterator.save`)."""
        return self.step_dir(step) / DATA_ITEM

    def save(self, step: int, state, metadata: dict, data_iterator=None) -> None:
        """Starts an (asynchronous) save of `state`, `metadata` (plus each array's shape and
        digest) and the data iterator's state at `step`."""
        metadata = metadata | {"arrays": describe_arrays(state)}
        items = dict(state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata))
        if data_iterator is not None:
            items[DATA_ITEM] = DataIteratorSave(data_iterator)
        with self._save_errors():
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    @contextlib.contextmanager
    def _save_errors(self):
        """A failed write (a full disk, lost permissions) names the folder, the last complete
        step and the fix; an asynchronous save's failure surfaces at the next save or wait."""
        try:
            yield
        except OSError as e:
            complete = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
            last = f"step {complete[-1]}" if complete else "none"
            raise OSError(
                e.errno,
                f"Saving a checkpoint in {self.directory} failed ({e}). Nothing saved before "
                f"is lost: the last complete checkpoint is {last}. Free space (or fix the "
                "folder's permissions), then rerun the same command to resume from it.",
            ) from e

    def restore(self, step: int, abstract_state):
        """Returns (state, metadata) of `step`, checked against the digests saved with it;
        `abstract_state` holds ShapeDtypeStructs with shardings. A state of other shapes
        than `abstract_state` (the config changed) fails with `CheckpointError`."""
        metadata = dict(
            self.manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        )["metadata"]
        saved = metadata.get("arrays")
        if saved is not None:
            _check_same_arrays(saved, describe_arrays(abstract_state, digests=False), step)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        state = restored.state
        if saved is not None:
            _check_digests(saved, describe_arrays(state), self.step_dir(step))
        return state, dict(metadata)

    def restore_latest(self, abstract_state):
        """(step, state, metadata) of the latest step that restores and matches its digests,
        or None when there are no checkpoints. Each step that fails is logged (step, file,
        error), moved aside to `corrupt-<step>/`, and the step before it is tried; when no
        step restores this fails rather than start again over them."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            try:
                state, metadata = self.restore(step, abstract_state)
            except CheckpointError:
                raise
            except Exception as e:  # Orbax raises Exception, ValueError, KeyError, OSError...
                logging.warning(
                    "Checkpoint step %d (%s) does not restore: %s: %s. Moving it to %s and "
                    "trying the step before.",
                    step,
                    self.step_dir(step),
                    type(e).__name__,
                    e,
                    self.directory / f"corrupt-{step}",
                )
                self._move_aside(step)
                continue
            return step, state, metadata
        aside = sorted(p.name for p in self.directory.glob("corrupt-*"))
        if aside:
            raise CheckpointError(
                f"No checkpoint in {self.directory} restores: {', '.join(aside)} were moved "
                "aside as damaged (see the warnings above). Repair one and rename it back to "
                "its step number, or remove them (or use a new workdir) to start from scratch."
            )
        return None

    def _move_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            target = self.directory / f"corrupt-{step}"
            n = 1
            while target.exists():
                target, n = self.directory / f"corrupt-{step}-{n}", n + 1
            self.step_dir(step).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"irl_lm: moved aside step {step}")
        self.manager.reload()

    def wait(self) -> None:
        with self._save_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._save_errors():
            self.manager.wait_until_finished()
        self.manager.close()


# ----------------------------------------------------------------------------- digests


def _key_name(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)


@jax.jit
def _digests(leaves):
    """Two 32-bit sums per array over its bits (as uint32 words, weighted by position):
    any change of one word changes the first (its weight is odd, so invertible mod 2^32).
    Integer sums are exact in any order, so the digest does not depend on the sharding."""

    def digest(x):
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        words = jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)
        index = jnp.arange(words.size, dtype=jnp.uint32)
        mixed = (words ^ (index * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B)
        first = jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)
        return jnp.stack([first, jnp.sum(mixed, dtype=jnp.uint32)])

    return [digest(x) for x in leaves]


def describe_arrays(tree, *, digests: bool = True) -> dict[str, str]:
    """{leaf path: "float32[32,64] <digest>"}: what `restore` checks a checkpoint against."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    shapes = [f"{np.dtype(x.dtype).name}{list(x.shape)}".replace(" ", "") for _, x in flat]
    if digests:
        values = np.asarray(jax.device_get(_digests([x for _, x in flat])))
        shapes = [f"{s} {int(a):08x}{int(b):08x}" for s, (a, b) in zip(shapes, values, strict=True)]
    return {_key_name(keys): s for (keys, _), s in zip(flat, shapes, strict=True)}


def _check_same_arrays(saved: dict, target: dict, step: int) -> None:
    saved_shapes = {k: v.split()[0] for k, v in saved.items()}
    if saved_shapes == target:
        return
    differ = [
        f"{k}: saved {saved_shapes.get(k, 'nothing')}, this config {target.get(k, 'nothing')}"
        for k in sorted(set(saved_shapes) | set(target))
        if saved_shapes.get(k) != target.get(k)
    ]
    raise CheckpointError(
        f"Checkpoint step {step} holds a train state of other shapes than this config builds "
        f"({len(differ)} arrays differ; {'; '.join(differ[:3])}). The config's model, "
        "optimizer or loss changed since the run started: resume with the config the run "
        "started with, or use a new workdir."
    )


def _check_digests(saved: dict, restored: dict, step_dir) -> None:
    wrong = [k for k, v in restored.items() if saved.get(k) != v]
    if wrong:
        raise ValueError(
            f"{step_dir}/state restored other values than were saved ({len(wrong)} arrays "
            f"fail their digest, e.g. {wrong[0]}): its files are damaged"
        )


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with the given shardings: the restore target for a state tree."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


# ----------------------------------------------------------------------------- init_from
# Resume precedence: the latest checkpoint in the workdir, else `config.init_from` (parameters
# only, fresh optimizer), else a fresh initialisation.

MODEL_FILE = "model.json"  # the resolved config.model, next to every checkpoint we write


@dataclasses.dataclass(frozen=True)
class InitSource:
    """Where `config.init_from` points: a Hugging Face folder, or one of our Orbax checkpoints
    (a training workdir, one step of it, or a converted parameters folder)."""

    kind: str  # "hf" | "workdir" | "params"
    folder: str  # the folder holding config.json / model.json and the tokenizer files
    step: int | None = None  # workdir: the step to read (None: latest)

    def model_config(self) -> dict:
        if self.kind == "hf":
            return hf.hf_model_config(self.folder)
        return files.read_json(files.path(self.folder, MODEL_FILE))

    def vocabulary_folder(self) -> str | None:
        """The folder whose tokenizer the run should use, if the source has one."""
        return self.folder if has_vocabulary(self.folder) else None

    def load_params(self, model, abstract_params, param_shardings):
        """The source's parameters, placed on `param_shardings`."""
        if self.kind == "hf":
            mesh = jax.tree.leaves(param_shardings)[0].mesh
            return hf.place_tensors(model, read_folder(self.folder), mesh, source=self.folder)
        target = abstract_like(abstract_params, param_shardings)
        if self.kind == "params":
            with ocp.StandardCheckpointer() as checkpointer:
                return checkpointer.restore(files.path(self.folder, "params"), target)
        step_dir = files.path(self.folder, "checkpoints", str(self.step))
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                step_dir / "state",
                args=ocp.args.PyTreeRestore(
                    item={"params": target},
                    restore_args={"params": ocp.checkpoint_utils.construct_restore_args(target)},
                    partial_restore=True,
                ),
            )
        return restored["params"]

    def describe(self) -> str:
        return f"{self.kind} {self.folder}" + (f" step {self.step}" if self.step else "")


def _other_weight_formats(name: str) -> bool:
    """Files of a Hugging Face folder that are not read (weights as PyTorch, TF, Flax...)."""
    return name.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf", ".ckpt"))


def parse_init_from(value: str) -> InitSource | None:
    """`config.init_from`: "" (none), "hf:DIR", or a path to one of our checkpoints."""
    if not value:
        return None
    if value.startswith("hf:"):
        folder = str(files.path(os.path.expanduser(value[3:])))
        if not files.path(folder, "config.json").exists():
            raise FileNotFoundError(
                f"config.init_from={value!r}: {folder} has no config.json; "
                "expected a Hugging Face model folder"
            )
        if files.is_remote(folder):  # weights are memory-mapped, tokenizers read locally
            local = files.local_copy(folder, skip=_other_weight_formats)
            logging.info("config.init_from=%s: read from its copy in %s", value, local)
            folder = local
        return InitSource("hf", folder)
    path = files.path(os.path.expanduser(value))
    if (path / "params").is_dir() and (path / MODEL_FILE).exists():
        return InitSource("params", str(path))
    if path.parent.name == "checkpoints" and path.name.isdigit():  # WORKDIR/checkpoints/N
        workdir = path.parent.parent
        if (workdir / MODEL_FILE).exists() and path.is_dir():
            return InitSource("workdir", str(workdir), int(path.name))
    if (path / "checkpoints").is_dir() and (path / MODEL_FILE).exists():
        latest = ocp.CheckpointManager(path / "checkpoints").latest_step()
        if latest is not None:
            return InitSource("workdir", str(path), latest)
    raise FileNotFoundError(
        f"config.init_from={value!r} is neither 'hf:<Hugging Face folder>' nor one of our "
        f"checkpoints: a training workdir (with {MODEL_FILE} and checkpoints/), "
        "WORKDIR/checkpoints/<step>, or a folder written by `python -m irl_lm.convert`"
    )


def save_params(folder: str, params, model_config: dict) -> None:
    """A parameters-only checkpoint (what `irl_lm.convert` writes): `params/` + model.json."""
    files.path(folder).mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(files.path(folder, "params"), params, force=True)
    if jax.process_index() == 0:
        write_model_config(folder, model_config)


def write_model_config(folder: str, model_config: dict) -> None:
    files.write_json(files.path(folder, MODEL_FILE), model_config)

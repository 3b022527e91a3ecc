"""Orbax checkpoints of the train state plus a small JSON of metadata (data position, ...).

Resume precedence: the latest checkpoint in the workdir, else `config.init_from`
(parameters only: a Hugging Face folder or one of our checkpoints), else a fresh state.
Restores go through an abstract target (shapes + shardings), so a checkpoint restores onto
any mesh.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import orbax.checkpoint as ocp

from irl_lm import files
from irl_lm.models import hf
from irl_lm.models.safetensors_io import read_folder


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, asynchronous: bool = True):
        self.directory = files.path(workdir, "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, metadata: dict) -> None:
        """Starts an (asynchronous) save of `state` and `metadata` at `step`."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state):
        """Returns (state, metadata); `abstract_state` holds ShapeDtypeStructs with shardings."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), metadata=ocp.args.JsonRestore()
            ),
        )
        return restored.state, dict(restored.metadata)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
        return self.folder if hf.has_vocabulary(self.folder) else None

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

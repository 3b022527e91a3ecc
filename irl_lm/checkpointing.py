"""Orbax checkpoints of the train state plus a small JSON of metadata (data position, ...).

Resume precedence: the latest checkpoint in the workdir, else `config.init_from`
(parameters only: a Hugging Face folder or one of our checkpoints), else a fresh state.
Restores go through an abstract target (shapes + shardings), so a checkpoint restores onto
any mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

from irl_lm.models import hf
from irl_lm.models.safetensors_io import read_folder


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, asynchronous: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
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
        with open(os.path.join(self.folder, MODEL_FILE)) as f:
            return json.load(f)

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
                return checkpointer.restore(os.path.join(self.folder, "params"), target)
        step_dir = os.path.join(self.folder, "checkpoints", str(self.step))
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                os.path.join(step_dir, "state"),
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
        folder = os.path.abspath(os.path.expanduser(value[3:]))
        if not os.path.exists(os.path.join(folder, "config.json")):
            raise FileNotFoundError(
                f"config.init_from={value!r}: {folder} has no config.json; "
                "expected a Hugging Face model folder"
            )
        return InitSource("hf", folder)
    path = os.path.abspath(os.path.expanduser(value))
    if os.path.isdir(os.path.join(path, "params")) and os.path.exists(
        os.path.join(path, MODEL_FILE)
    ):
        return InitSource("params", path)
    parent, step = os.path.split(path.rstrip("/"))
    if os.path.basename(parent) == "checkpoints" and step.isdigit():  # WORKDIR/checkpoints/N
        workdir = os.path.dirname(parent)
        if os.path.exists(os.path.join(workdir, MODEL_FILE)) and os.path.isdir(path):
            return InitSource("workdir", workdir, int(step))
    if os.path.isdir(os.path.join(path, "checkpoints")) and os.path.exists(
        os.path.join(path, MODEL_FILE)
    ):
        latest = ocp.CheckpointManager(os.path.join(path, "checkpoints")).latest_step()
        if latest is not None:
            return InitSource("workdir", path, latest)
    raise FileNotFoundError(
        f"config.init_from={value!r} is neither 'hf:<Hugging Face folder>' nor one of our "
        f"checkpoints: a training workdir (with {MODEL_FILE} and checkpoints/), "
        "WORKDIR/checkpoints/<step>, or a folder written by `python -m irl_lm.convert`"
    )


def save_params(folder: str, params, model_config: dict) -> None:
    """A parameters-only checkpoint (what `irl_lm.convert` writes): `params/` + model.json."""
    os.makedirs(folder, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(os.path.abspath(folder), "params"), params, force=True)
    if jax.process_index() == 0:
        write_model_config(folder, model_config)


def write_model_config(folder: str, model_config: dict) -> None:
    with open(os.path.join(folder, MODEL_FILE), "w") as f:
        json.dump(model_config, f, indent=2)

"""Orbax checkpoints of the train state plus a small JSON of metadata (data position, ...).

Resume precedence: the latest checkpoint in the workdir, else a fresh state.
Restores go through an abstract target (shapes + shardings), so a checkpoint restores onto
any mesh.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


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

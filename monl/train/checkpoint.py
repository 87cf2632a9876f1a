"""Orbax checkpoints of the train state together with the Grain data-iterator state.

Saves are asynchronous (the step loop continues while arrays are written) and atomic: Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save resumes from the
previous complete checkpoint. Restore errors are raised, never swallowed: a run never silently
restarts from scratch.
"""
from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


class Checkpointer:
  """Keeps the last `keep` checkpoints of (state, data iterator) under `directory`."""

  def __init__(self, directory: str | epath.Path, *, keep: int = 3, async_save: bool = True):
    directory = str(directory)
    # Orbax needs absolute paths; a relative workdir would make every async save fail in the background.
    self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    """Starts saving `state` (and the iterator position) as checkpoint `step`."""
    # A failed background save must stop the run here, not be discovered at the next restore.
    self.manager.check_for_errors()
    # Without this, save() would block on the pending computation that produces `state`.
    jax.block_until_ready(state)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores into `abstract_state` (ShapeDtypeStructs carrying the *current* shardings).

    The data iterator, if given, is moved in place to where it was at the checkpoint.
    """
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # re-raised with the path: the caller must not start from scratch
      raise RuntimeError(f"restoring checkpoint {step} from {self.directory} failed: {e}") from e
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

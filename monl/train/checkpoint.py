"""Orbax checkpoints of the train state together with the Grain data-iterator state.

Saves are asynchronous (the step loop continues while arrays are written) and atomic: Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save resumes from the
previous complete checkpoint. Restore errors are raised, never swallowed: a run never silently
restarts from scratch.

Each checkpoint also holds a monl record (`<step>/record/metadata`, JSON, written atomically with the
arrays): the layout it was trained with (modality names and order, shapes, patches, segments), the
whole config, and every array's shape, dtype and content checksum (`monl.train.checksum`). Restore
refuses a checkpoint whose layout or array shapes differ from the current config, naming the config
field and both values, and verifies every checksum, naming the array and checkpoint that are bad; when
the checkpoint is damaged it also says which earlier checkpoint is intact (resume from it with
`train --resume_from_step N`).
"""
from __future__ import annotations

import json
import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from monl import layout as layout_lib
from monl.train import checksum as checksum_lib
from monl.train import config_history

RECORD_ITEM = "record"  # Orbax item holding the monl record; its file is <step>/record/metadata
RECORD_FORMAT = 1


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored as asked; the message names the checkpoint and what is wrong."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint is intact but was trained with another layout or model shape than the config."""


class CheckpointCorruptError(CheckpointError):
  """A file of checkpoint `step` is missing or damaged, or an array's checksum does not match."""

  def __init__(self, message: str, step: int, path: str):
    super().__init__(message)
    self.step, self.path = step, path


def layout_record(lay: layout_lib.Layout) -> dict:
  """{'modalities': [names in order], name: {'shape', 'patch', 'segments'}} (patch 0 resolved)."""
  out = {"modalities": list(lay.names)}
  for m in lay.modalities:
    out[m.name] = {"shape": list(m.shape), "patch": list(m.patch), "segments": list(m.segments)}
  return out


def layout_changes(saved: dict, now: dict) -> list[tuple[str, object, object]]:
  """[(config field, checkpoint value, current value)] where two layout records differ."""
  if saved["modalities"] != now["modalities"]:
    return [("layout.modalities", saved["modalities"], now["modalities"])]
  out = []
  for name in now["modalities"]:
    for key in ("shape", "patch", "segments"):
      if saved[name][key] != now[name][key]:
        out.append((f"layout.{name}.{key}", saved[name][key], now[name][key]))
  return out


def _arrays_record(state) -> dict[str, dict]:
  sums = checksum_lib.tree_checksums(state)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {checksum_lib.path_name(p): {"shape": list(np.shape(x)), "dtype": str(x.dtype),
                                      "checksum": sums[checksum_lib.path_name(p)]} for p, x in flat}


class Checkpointer:
  """Keeps the last `keep` checkpoints of (state, data iterator, monl record) under `directory`.

  `config` (the run's config) is recorded with every save and compared with every restore; without it
  (tools that only read checkpoints) shapes and checksums are still verified, the layout is not.
  """

  def __init__(self, directory: str | epath.Path, *, keep: int = 3, async_save: bool = True, config=None):
    directory = str(directory)
    # Orbax needs absolute paths; a relative workdir would make every async save fail in the background.
    self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                             create=True))
    self._config = None if config is None else config_history.to_plain(config)
    # configs without a layout (the autoencoder's) are recorded and shape-checked, not layout-checked
    has_layout = config is not None and "layout" in config
    self._layout = layout_record(layout_lib.Layout.from_config(config.layout)) if has_layout else None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def record_path(self, step: int) -> epath.Path:
    return self.step_dir(step) / RECORD_ITEM / "metadata"

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    """Starts saving `state` (and the iterator position, and the monl record) as checkpoint `step`."""
    # A failed background save must stop the run here, not be discovered at the next restore.
    self.manager.check_for_errors()
    # Without this, save() would block on the pending computation that produces `state`.
    jax.block_until_ready(state)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    # The checksums are of the values being saved, computed before the (async) write starts.
    items[RECORD_ITEM] = ocp.args.JsonSave({
        "format": RECORD_FORMAT, "step": int(step), "layout": self._layout, "config": self._config,
        "checksum_algorithm": checksum_lib.ALGORITHM, "arrays": _arrays_record(state)})
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores checkpoint `step` into `abstract_state` (ShapeDtypeStructs carrying the *current* shardings).

    The data iterator, if given, is moved in place to where it was at the checkpoint. Raises
    CheckpointMismatchError (another layout or shape; names the config fields) or
    CheckpointCorruptError (a bad file or checksum; names it and the latest intact earlier checkpoint).
    """
    try:
      return self._restore_verified(step, abstract_state, data_iterator, quiet=False)
    except CheckpointCorruptError as e:
      raise CheckpointCorruptError(f"{e}\n{self._intact_note(step, abstract_state)}", e.step, e.path) from e

  def verify(self, step: int, abstract_state) -> None:
    """Checks checkpoint `step` as a restore would (files, data position, layout, shapes, every
    checksum) without keeping it. Raises CheckpointError (or a subclass) naming what is wrong."""
    self._check_files(step, with_data=True)
    self._restore_verified(step, abstract_state, None, quiet=True)

  def set_aside(self, steps, destination: epath.Path) -> list[epath.Path]:
    """Moves checkpoints `steps` into `destination` (not deleted: a resume from an earlier step would
    otherwise collide with them, and Orbax would prune the earlier one as the oldest)."""
    self.manager.wait_until_finished()
    moved = []
    for s in sorted(steps):
      target = destination / str(s)
      k = 0
      while target.exists():
        k += 1
        target = destination / f"{s}.{k}"
      moved.append(target)
      if jax.process_index() == 0:
        destination.mkdir(parents=True, exist_ok=True)
        shutil.move(os.fspath(self.step_dir(s)), os.fspath(target))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("monl: checkpoints set aside")
    self.manager.reload()
    return moved

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:  # closed on an error too: an open manager's threads outlive it
    self.close()

  # -- verification ---------------------------------------------------------------------------------

  def _restore_verified(self, step: int, abstract_state, data_iterator, *, quiet: bool):
    where = self.step_dir(step)
    if step not in self.all_steps():
      raise CheckpointError(f"no checkpoint {step} under {self.directory}; complete checkpoints there: "
                            f"{self.all_steps()}")
    record = self._check_files(step, with_data=data_iterator is not None)
    if record is None:
      if not quiet:
        print(f"WARNING: checkpoint {step} ({where}) has no monl record ({RECORD_ITEM}/metadata: written "
              "before monl recorded layouts and checksums); its layout and contents are NOT verified",
              flush=True)
    else:
      self._check_fits(step, record, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    position = None  # the data position saved by another number of processes
    if data_iterator is not None:
      position = self._position_from_other_process_count(step)
      if position is None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # re-raised naming the checkpoint: the caller must not start from scratch
      if record is None:
        raise CheckpointError(f"restoring checkpoint {step} from {where} failed: {e}") from e
      # the record says the shapes fit, so a failing read is a damaged file (TensorStore names it; its
      # spec dump after the message is pages of JSON that say nothing more)
      reason = str(e).split(" [tensorstore_spec")[0]
      raise CheckpointCorruptError(f"checkpoint {step} ({where}) is damaged: reading it failed: {reason}",
                                   step, str(where)) from e
    state = restored["state"]
    if record is not None:
      self._verify_checksums(step, record, state)
    if position is not None:
      data_iterator.set_state(position)
      data_iterator.start_prefetch()  # as Grain's own restore does
    return state

  def _position_from_other_process_count(self, step: int) -> dict | None:
    """The data-iterator state of checkpoint `step` when it was saved by another number of processes
    (None when this process's own file is there). Every process of the pipeline is at the same batch
    position and the global batch order does not depend on the process count (monl.data.pipeline),
    so that one position continues the same data sequence on any count."""
    d = self.step_dir(step) / "data"
    index, count = jax.process_index(), jax.process_count()
    if (d / f"process_{index}-of-{count}.json").exists():
      return None
    files = sorted(d.glob("process_*-of-*.json"))
    if not files:
      raise CheckpointCorruptError(f"checkpoint {step} is damaged: {d} holds no data-iterator position "
                                   f"(process_*-of-*.json)", step, str(d))
    states = {f.name: json.loads(f.read_text()) for f in files}
    distinct = {json.dumps(v, sort_keys=True) for v in states.values()}
    if len(distinct) != 1 or set(next(iter(states.values()))) != {"next_index"}:
      raise CheckpointError(
          f"checkpoint {step} was saved by another number of processes ({', '.join(states)} in {d}), "
          f"with data positions {list(states.values())}: only one plain batch position shared by every "
          f"process (config.data.worker_count = 0) carries over to {count} process(es); resume on the "
          f"same number of processes")
    if index == 0:
      print(f"checkpoint {step}: data position {states[files[0].name]} saved by "
            f"{files[0].name.split('-of-')[1].split('.')[0]} process(es), continued on {count}", flush=True)
    return json.loads(distinct.pop())

  def _check_files(self, step: int, *, with_data: bool) -> dict | None:
    """Checks the files Orbax and Grain read first; returns the monl record (None: none written)."""
    d = self.step_dir(step)

    def damaged(path: epath.Path, why: str) -> CheckpointCorruptError:
      return CheckpointCorruptError(f"checkpoint {step} is damaged: {path} {why}", step, str(path))

    def read_json(path: epath.Path):
      if not path.exists():
        raise damaged(path, "is missing")
      try:
        return json.loads(path.read_text())
      except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise damaged(path, f"is not valid JSON (truncated or overwritten?): {e}") from e

    read_json(d / "_CHECKPOINT_METADATA")
    read_json(d / "state" / "_METADATA")
    manifests = [d / "state" / "manifest.ocdbt"] + [p / "manifest.ocdbt" for p in (d / "state").glob("ocdbt.process_*")]
    for m in manifests:
      if not m.exists():
        raise damaged(m, "is missing")
      if m.stat().length == 0:
        raise damaged(m, "is empty")
    if with_data:
      if not (d / "data").exists():
        raise damaged(d / "data", "(the data-iterator position) is missing")
      for f in (d / "data").glob("*.json"):
        read_json(f)
    if not (d / RECORD_ITEM).exists():
      return None
    path = self.record_path(step)
    record = read_json(path)
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT or not isinstance(record.get("arrays"), dict):
      raise damaged(path, f"is not a monl record of format {RECORD_FORMAT}")
    return record

  def _check_fits(self, step: int, record: dict, abstract_state) -> None:
    """Refuses a checkpoint of another layout or other array shapes, naming the config fields."""
    where, path = self.step_dir(step), self.record_path(step)
    saved_layout = record.get("layout")
    if self._layout is not None and saved_layout is not None:
      changes = layout_changes(saved_layout, self._layout)
      if changes:
        raise CheckpointMismatchError(
            f"checkpoint {step} ({where}) was trained with another layout than the config's:\n"
            f"{config_history.format_diff(changes)}\n"
            "Restoring it would misplace modalities or segments silently. Use the layout it was trained "
            f"with (recorded in {path}), or train in a new --workdir.")
    saved = record["arrays"]
    now = {checksum_lib.path_name(p): {"shape": list(x.shape), "dtype": str(np.dtype(x.dtype))}
           for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    order = lambda keys: sorted(keys, key=lambda k: (not k.startswith("params/"), k))  # params first
    lines = [f"    {k}: only in the checkpoint" for k in order(set(saved) - set(now))]
    lines += [f"    {k}: not in the checkpoint" for k in order(set(now) - set(saved))]
    for k in order(set(saved) & set(now)):
      a, b = saved[k], now[k]
      if (a["shape"], a["dtype"]) != (b["shape"], b["dtype"]):
        lines.append(f"    {k}: checkpoint {a['dtype']}{a['shape']}, now {b['dtype']}{b['shape']}")
    if not lines:
      return
    fields = []
    if self._config is not None and record.get("config"):
      fields = config_history.diff(record["config"], self._config, groups=("model", "layout"))
    cause = (":\n" + config_history.format_diff(fields)) if fields else (
        " (no config.model or config.layout field differs from the config it recorded: the model code's "
        "parameters changed)")
    shown = "\n".join(lines[:6]) + (f"\n    ... and {len(lines) - 6} more" if len(lines) > 6 else "")
    raise CheckpointMismatchError(
        f"checkpoint {step} ({where}) does not fit the current config{cause}\n"
        f"  {len(lines)} array(s) differ:\n{shown}\n"
        f"Use the config it was trained with (recorded in {path}), or train in a new --workdir.")

  def _verify_checksums(self, step: int, record: dict, state) -> None:
    where = self.step_dir(step)
    got = checksum_lib.tree_checksums(state)
    bad = [(k, v, record["arrays"][k]["checksum"]) for k, v in got.items() if record["arrays"][k]["checksum"] != v]
    if bad:
      shown = "\n".join(f"  {k}: checksum {v}, recorded at save {want}" for k, v, want in bad[:10])
      more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
      raise CheckpointCorruptError(
          f"checkpoint {step} ({where}) is corrupt: {len(bad)} array(s) restored with other contents than "
          f"were saved (files under {where / 'state'} changed after the save):\n{shown}{more}",
          step, str(where / "state"))

  def _intact_note(self, step: int, abstract_state) -> str:
    """Which earlier checkpoint restores and verifies (tried newest first), as a sentence."""
    damaged = []
    for s in reversed([s for s in self.all_steps() if s < step]):
      try:
        self._restore_verified(s, abstract_state, None, quiet=True)
      except CheckpointError as e:
        damaged.append(f"{s} ({str(e).splitlines()[0]})")
        continue
      unverified = "" if (self.step_dir(s) / RECORD_ITEM).exists() else " (it has no checksums to verify)"
      return (f"Checkpoint {s} ({self.step_dir(s)}) is intact{unverified}"
              + (f"; also unusable: {'; '.join(damaged)}" if damaged else "")
              + f". Resume from it explicitly with `python -m monl.main train ... --resume_from_step {s}` "
              f"(the checkpoints after it are then moved to WORKDIR/discarded_checkpoints/, not deleted). "
              f"Nothing was restored from checkpoint {step}.")
    earlier = f" (tried: {'; '.join(damaged)})" if damaged else " (there is none)"
    return (f"No earlier checkpoint is intact{earlier}. Nothing was restored, and a run never restarts "
            "from scratch by itself: start one explicitly in a new --workdir.")

"""A run directory describes itself: its config (WORKDIR/config.json) is the base of every later command.

`train` writes WORKDIR/config.json with the layout completed from the data, so `sample`, `evaluate`
and a resumed `train` rebuild the same model from the run alone:

    python -m monl.main sample --workdir RUN [--config.sample.steps=25]   # RUN/config.json + flags

As a config file (what `monl.main` uses when `--config` is omitted): `--config monl/run_config.py:RUN`.

A checkpoint depends on the layout, the model's shape and parameterisation and the noise schedule
(`CHECKPOINT_GROUPS`, less the runtime-only `RUNTIME_FIELDS`); `check_compatible` refuses a config
that changes any of them for a run that has checkpoints, naming each field with both values. Any
other field (sampling, evaluation, data, optimiser, mesh) may change.
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections
from etils import epath

RUN_CONFIG = "config.json"
CHECKPOINT_GROUPS = ("layout", "model", "schedule")
# Inside CHECKPOINT_GROUPS, but only how the same parameters are computed or trained, not what they are.
RUNTIME_FIELDS = frozenset({"model.attention", "model.remat_policy", "model.dtype", "model.x0_loss_cap",
                            "layout.tokens_per_cell"})


class RunConfigError(ValueError):
  """WORKDIR/config.json is unreadable, or a config would change what the run's checkpoints depend on."""


def path(workdir: str | epath.Path) -> epath.Path:
  return epath.Path(workdir) / RUN_CONFIG


def _as_config_value(value: Any) -> Any:
  return tuple(_as_config_value(v) for v in value) if isinstance(value, list) else value


def _overlay(dst: ml_collections.ConfigDict, src: dict[str, Any], where: str, prefix: str = "") -> None:
  for key, value in src.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      if key not in dst or not isinstance(dst[key], ml_collections.ConfigDict):
        dst[key] = ml_collections.ConfigDict()  # e.g. layout.<modality> of a modality not named in base
      _overlay(dst[key], value, where, name + ".")
      continue
    try:
      dst[key] = _as_config_value(value)
    except TypeError as e:
      raise RunConfigError(f"{where}: field {name} = {value!r} does not fit this version's config "
                           f"({e})") from None


def load(workdir: str | epath.Path, base: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """WORKDIR/config.json over `base` (default `configs.common.base_config()`; fields added since the run
  keep their defaults; JSON lists become tuples). Raises RunConfigError if the file is missing or not a
  config."""
  from configs import common
  p = path(workdir)
  if not p.exists():
    raise RunConfigError(f"{p} does not exist: {workdir} is not a monl run (train writes it); pass --config")
  try:
    saved = json.loads(p.read_text())
  except json.JSONDecodeError as e:
    raise RunConfigError(f"{p} is not valid JSON ({e})") from None
  if not isinstance(saved, dict):
    raise RunConfigError(f"{p} holds a {type(saved).__name__}, expected a config object")
  config = common.base_config() if base is None else base
  _overlay(config, saved, str(p))
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Config-file entry point: `--config monl/run_config.py:WORKDIR`."""
  if not arg:
    raise RunConfigError("monl/run_config.py needs the run directory after a colon: "
                         "--config monl/run_config.py:WORKDIR")
  return load(arg)


def has_checkpoints(workdir: str | epath.Path) -> bool:
  """Whether WORKDIR/checkpoints holds a step directory (finished or not: both were trained with it)."""
  d = epath.Path(workdir) / "checkpoints"
  return d.exists() and any(p.name.isdigit() for p in d.iterdir())


def checkpoint_changes(run: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """[(field, run's value, new value)] of the checkpoint-defining fields that differ (plain dicts)."""
  from monl.train import config_history
  return [(k, a, b) for k, a, b in config_history.diff(run, now, groups=CHECKPOINT_GROUPS)
          if k not in RUNTIME_FIELDS and not (a is None and b is None)]  # unset == absent


def check_compatible(config: ml_collections.ConfigDict, workdir: str | epath.Path, command: str) -> None:
  """Raises RunConfigError when `config` (layout completed) changes a field the run's checkpoints
  depend on. Nothing to check without WORKDIR/config.json or, for `train`, without a checkpoint."""
  from monl.train import config_history
  if not path(workdir).exists() or (command == "train" and not has_checkpoints(workdir)):
    return
  run = config_history.to_plain(load(workdir))
  changes = checkpoint_changes(run, config_history.to_plain(config))
  if changes:
    raise RunConfigError(
        f"{command}: the config would change {len(changes)} field(s) that the checkpoints in {workdir} "
        f"depend on ({path(workdir)}):\n" + config_history.format_diff(changes, before="run", now="now")
        + f"\nKeep them as the run has them: omit --config (the run's own config is then the base) or "
          f"drop the flags above.")

"""What each stretch of a run was trained with: config diffs and one saved config per (re)start.

WORKDIR/config.json is the config of the latest (re)start; WORKDIR/configs/config_step<N>.json is the
config a (re)start at step N trained with (one file per start, never overwritten with other contents),
so the record of what earlier checkpoints saw survives a resume with another dataset or optimiser.
"""
from __future__ import annotations

import json
from typing import Any

from etils import epath

# Groups whose change on resume alters what the next steps learn from (reported first, by name).
TRAINING_GROUPS = {"data": "data", "mixture": "mixture", "train": "optimiser/schedule", "schedule": "noise schedule"}


def to_plain(config) -> dict[str, Any]:
  """A ConfigDict (or an already-plain dict) as JSON-compatible nested dicts (tuples become lists)."""
  if isinstance(config, dict):
    return json.loads(json.dumps(config))
  return json.loads(config.to_json_best_effort())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'model.width': 128, ...} from nested dicts."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def fmt(value: Any) -> str:
  """A config value as the user would write it: tuples for lists, repr for strings."""
  if isinstance(value, list):
    return "(" + ", ".join(fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value)


def diff(before: dict[str, Any], now: dict[str, Any], groups: tuple[str, ...] | None = None
         ) -> list[tuple[str, Any, Any]]:
  """[(field, value before, value now)] of every leaf that differs (missing = None), sorted by field.

  `groups` limits the comparison to those top-level groups (e.g. ('model', 'layout')).
  """
  a, b = flatten(before), flatten(now)
  missing = object()
  out = []
  for key in sorted(set(a) | set(b)):
    if groups is not None and key.split(".")[0] not in groups:
      continue
    va, vb = a.get(key, missing), b.get(key, missing)
    if va != vb:
      out.append((key, None if va is missing else va, None if vb is missing else vb))
  return out


def format_diff(changes: list[tuple[str, Any, Any]], before: str = "checkpoint", now: str = "now") -> str:
  """'  config.model.width: checkpoint 192, now 384' lines."""
  return "\n".join(f"  config.{k}: {before} {fmt(a)}, {now} {fmt(b)}" for k, a, b in changes)


def resume_notice(changes: list[tuple[str, Any, Any]], step: int, source: str) -> str:
  """The notice printed when a run resumes with a config other than the one its checkpoint saw."""
  touched = sorted({TRAINING_GROUPS[k.split(".")[0]] for k, _, _ in changes if k.split(".")[0] in TRAINING_GROUPS})
  head = (f"NOTICE: resuming from step {step} with a config that differs from the one checkpoint {step} "
          f"was trained with ({source}) in {len(changes)} field(s)")
  if touched:
    head += f"; the {', '.join(touched)} settings change from step {step} on"
  return (head + ":\n" + format_diff(changes) + "\nThe earlier configs stay in WORKDIR/configs/ "
          "(config_step<N>.json per (re)start).")


def write(workdir: epath.Path, config, start_step: int) -> epath.Path:
  """Writes WORKDIR/config.json (latest) and WORKDIR/configs/config_step<start>.json; returns the latter.

  A second start at the same step with a different config gets config_step<start>.<k>.json, so no
  recorded config is ever replaced by another.
  """
  text = config.to_json_best_effort(indent=2)
  (workdir / "config.json").write_text(text)
  history = workdir / "configs"
  history.mkdir(parents=True, exist_ok=True)
  path, k = history / f"config_step{start_step}.json", 0
  while path.exists() and path.read_text() != text:
    k += 1
    path = history / f"config_step{start_step}.{k}.json"
  path.write_text(text)
  return path

"""Tasks as conditioning masks over cells: `given[m, n]` is True where cell (m, n) is conditioned on.

Named tasks (segments are 1-based in names and the mask syntax, N segments, k = continuation length):
  joint                  nothing given
  a2v / v2a              all audio / all video cells given
  continue               segments 1..k of every modality given (paper: k = 2 of N = 5)
  continue_2s            segment 1 of every modality given
  inpaint                first and last segments of every modality given
  continue_<m>           segments 1..k of modality m given; the other modalities generated
  continue_<m>_with_<o>  segments 1..k of m plus all of modality o given
User masks: `video:1-2,audio:all` — comma-separated `MODALITY:RANGES`, RANGES = `all`, `none`, or
`+`-joined segments `3` / ranges `1-2` (e.g. `video:1-2+5`). Unlisted modalities are generated.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class MaskError(ValueError):
  """A task name or mask specification is invalid."""


def _base(names: Sequence[str], num_segments: int) -> np.ndarray:
  return np.zeros((len(names), num_segments), bool)


def task_names(names: Sequence[str]) -> list[str]:
  """All named tasks for these modalities (a2v/v2a only when both video and audio exist)."""
  out = ["joint", "continue", "continue_2s", "inpaint"]
  if "video" in names and "audio" in names:
    out[1:1] = ["a2v", "v2a"]
  for m in names:
    out.append(f"continue_{m}")
    out += [f"continue_{m}_with_{o}" for o in names if o != m]
  return out


def task_mask(task: str, names: Sequence[str], num_segments: int, k: int = 2) -> np.ndarray:
  """[M, N] bool mask of given cells for a named task or a user mask string."""
  names = list(names)
  given = _base(names, num_segments)
  if not 0 < k < num_segments and task.startswith("continue") and task != "continue_2s":
    raise MaskError(f"task {task!r}: continuation length k={k} must be in 1..{num_segments - 1}")
  if task == "joint":
    return given
  if task in ("a2v", "v2a"):
    if "video" not in names or "audio" not in names:
      raise MaskError(f"task {task!r} needs modalities 'video' and 'audio', the layout has {names}")
    given[names.index("audio" if task == "a2v" else "video")] = True
    return given
  if task == "continue":
    given[:, :k] = True
    return given
  if task == "continue_2s":
    given[:, :1] = True
    return given
  if task == "inpaint":
    if num_segments < 3:
      raise MaskError(f"task 'inpaint' needs at least 3 segments, the layout has {num_segments}")
    given[:, [0, -1]] = True
    return given
  if task.startswith("continue_"):
    rest = task[len("continue_"):]
    mod, _, other = rest.partition("_with_")
    if mod not in names or (other and other not in names) or other == mod:
      raise MaskError(f"task {task!r}: unknown modality in it; modalities are {names}")
    given[names.index(mod), :k] = True
    if other:
      given[names.index(other)] = True
    return given
  if ":" in task:
    return parse_mask(task, names, num_segments)
  raise MaskError(f"unknown task {task!r}: named tasks are {task_names(names)}, or give a mask like "
                  f"'{names[0]}:1-2,{names[-1]}:all'")


def parse_mask(spec: str, names: Sequence[str], num_segments: int) -> np.ndarray:
  """Parses `video:1-2+5,audio:all` into an [M, N] bool mask of given cells."""
  names = list(names)
  given = _base(names, num_segments)
  seen = set()
  for part in spec.split(","):
    mod, sep, ranges = part.strip().partition(":")
    if not sep or not ranges:
      raise MaskError(f"mask {spec!r}: part {part!r} is not MODALITY:RANGES")
    if mod not in names:
      raise MaskError(f"mask {spec!r}: part {part!r} names modality {mod!r}; modalities are {names}")
    if mod in seen:
      raise MaskError(f"mask {spec!r}: modality {mod!r} appears twice")
    seen.add(mod)
    row = names.index(mod)
    if ranges == "all":
      given[row] = True
      continue
    if ranges == "none":
      continue
    for r in ranges.split("+"):
      lo, dash, hi = r.partition("-")
      try:
        a, b = int(lo), int(hi) if dash else int(lo)
      except ValueError:
        raise MaskError(f"mask {spec!r}: {r!r} in part {part!r} is not a segment or range like 1-2") from None
      if not 1 <= a <= b <= num_segments:
        raise MaskError(f"mask {spec!r}: range {r!r} in part {part!r} is outside segments 1..{num_segments}")
      given[row, a - 1:b] = True
  return given


def format_mask(given: np.ndarray, names: Sequence[str]) -> str:
  """Inverse of `parse_mask` (canonical form), for manifests and file names."""
  parts = []
  for row, name in zip(np.asarray(given), names):
    idx = np.flatnonzero(row) + 1
    if len(idx) == len(row):
      parts.append(f"{name}:all")
    elif len(idx) == 0:
      parts.append(f"{name}:none")
    else:
      runs, start = [], idx[0]
      for a, b in zip(idx, list(idx[1:]) + [None]):
        if b != a + 1:
          runs.append(f"{start}" if start == a else f"{start}-{a}")
          start = b
      parts.append(f"{name}:{'+'.join(runs)}")
  return ",".join(parts)

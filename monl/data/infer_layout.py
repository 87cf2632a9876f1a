"""`config.layout` completed from the data: what the data fixes comes from its `dataset.json`.

Modality names and order, per-example shapes and time segments are properties of the data; only the
patch sizes are a model choice. A config may leave any of them unset (`layout.modalities = ()`, a
modality's `shape` / `segments` / `patch` None): they are taken from the dataset, and an unset patch
from the default rule (`default_patch`). What a config does set must agree with the data; a
disagreement is an error naming the config field and both values (nothing is silently replaced).

`complete(config, data_modalities(spec), where)` returns a copy with every field set, which is what a run records in
WORKDIR/config.json, so sampling and evaluation need neither the data nor the rule to rebuild the model.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import ml_collections

from monl import layout as layout_lib
from monl.data import format as fmt

RULE = ("the smallest patch (the most tokens) with at most layout.tokens_per_cell tokens in every "
        "(modality, segment) cell; a temporal patch divides every segment; ties: the shorter temporal "
        "patch, then the squarer spatial one")


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def _unset(value) -> bool:
  return value is None or tuple(value) in ((), (None,))


def default_patch(shape: Sequence[int], segments: Sequence[int], tokens_per_cell: int) -> tuple[int, ...]:
  """The default rule (`RULE`) for a modality of `shape` (time first, channels last) cut into `segments`.

  E.g. video [16, 16, 16, 3] in segments (4, 4, 4, 4) with 4 tokens per cell -> (1, 16, 16): one token
  per whole frame; audio [64, 16] in (16,) * 4 -> (4,). Raises LayoutError if even one token per
  segment-length time patch exceeds the bound.
  """
  shape, segments = tuple(int(s) for s in shape), tuple(int(s) for s in segments)
  if tokens_per_cell < 1:
    raise layout_lib.LayoutError(f"config.layout.tokens_per_cell is {tokens_per_cell}, expected >= 1")
  spatial = shape[1:-1]
  best, best_key = None, None
  for pt in _divisors(math.gcd(*segments)):
    for ps in itertools.product(*(_divisors(s) for s in spatial)):
      per_cell = max(segments) // pt * math.prod(s // p for s, p in zip(spatial, ps))
      if per_cell > tokens_per_cell:
        continue
      key = (pt * math.prod(ps), pt, max(ps, default=0), ps)
      if best_key is None or key < best_key:
        best, best_key = (pt, *ps), key
  if best is None:
    fewest = max(segments) // math.gcd(*segments)
    raise layout_lib.LayoutError(
        f"shape {list(shape)} in segments {list(segments)}: no patch gives at most "
        f"config.layout.tokens_per_cell={tokens_per_cell} tokens per cell (the fewest possible is {fewest}: "
        f"a temporal patch cannot straddle segments); raise it or set the modality's patch")
  return best


def is_complete(layout_config) -> bool:
  """True when modalities and every modality's shape, segments and patch are set."""
  names = tuple(layout_config.get("modalities", ()) or ())
  if not names:
    return False
  for name in names:
    group = layout_config.get(name)
    if group is None or any(_unset(group.get(k)) for k in ("shape", "segments", "patch")):
      return False
  return True


def data_modalities(spec: fmt.DatasetSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """{name: (shape, segments)} of a dataset, in its order."""
  return {m.name: (tuple(m.shape), tuple(m.segments)) for m in spec.modalities}


def complete(config: ml_collections.ConfigDict, data: Mapping[str, tuple[Sequence[int], Sequence[int]]],
             where: str) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(a copy of `config` whose layout is fully set from the data and the rule, notes on what was inferred).

  `data`: {name: (shape, segments)} in the data's order (`data_modalities`); `where` names the dataset
  (e.g. its dataset.json) in errors and notes. Raises LayoutError when a set field contradicts the data.
  """
  c = config.copy_and_resolve_references()
  lay = c.layout
  data_names = tuple(data)
  names = tuple(lay.get("modalities", ()) or ())
  notes = []
  if names and set(names) != set(data_names):
    raise layout_lib.LayoutError(f"config.layout.modalities is {list(names)}, but {where} has modalities "
                                 f"{list(data_names)}")
  if not names:
    names = data_names
    notes.append(f"layout.modalities = {list(names)} (from {where})")
  tokens_per_cell = int(lay.get("tokens_per_cell", 4))
  with c.unlocked():
    lay.modalities = names
    for name in names:
      shape, segments = data[name]
      if name not in lay:
        lay[name] = ml_collections.ConfigDict()
      group = lay[name]
      for key, value in (("shape", tuple(shape)), ("segments", tuple(segments))):
        mine = group.get(key)
        if _unset(mine):
          group[key] = value
        elif tuple(mine) != value:
          raise layout_lib.LayoutError(f"config.layout.{name}.{key} is {list(mine)}, but modality {name!r} "
                                       f"of {where} has {key} {list(value)}")
      if _unset(group.get("patch")):
        group.patch = default_patch(group.shape, group.segments, tokens_per_cell)
        notes.append(f"layout.{name}.patch = {tuple(group.patch)} (default rule, tokens_per_cell="
                     f"{tokens_per_cell})")
      else:
        group.patch = tuple(group.patch)
      try:
        layout_lib.ModalityLayout(name, tuple(group.shape), tuple(group.patch), tuple(group.segments))
      except layout_lib.LayoutError as e:
        raise layout_lib.LayoutError(f"config.layout.{name}.patch {tuple(group.patch)} does not fit the "
                                     f"data of {where}: {e}") from None
    for key in list(lay.keys()):
      if isinstance(lay[key], ml_collections.ConfigDict) and key not in names:
        set_fields = {k: v for k, v in lay[key].items() if not _unset(v)}
        if set_fields:
          notes.append(f"layout.{key} ({set_fields}) is not used: {where} has no modality {key!r}")
        del lay[key]
  return c, notes


def describe(lay: layout_lib.Layout) -> str:
  """One line per modality: shape, segments, patch, tokens and values per token; then the totals."""
  lines = []
  for m in lay.modalities:
    per_cell = max(m.segments) // m.patch[0] * m.tokens_per_frame_patch
    lines.append(f"  {m.name}: shape {list(m.shape)}, segments {list(m.segments)}, patch {m.patch} -> "
                 f"{m.num_tokens} tokens of {m.patch_dim} values (at most {per_cell} per cell)")
  lines.append(f"  {lay.num_tokens} tokens, {lay.num_cells} cells ({lay.num_modalities} modalities x "
               f"{lay.num_segments} segments)")
  return "\n".join(lines)

"""The monl latent dataset format: one directory of `dataset.json` plus ArrayRecord shards per split.

Layout (local or `gs://`, always handled through `etils.epath.Path`):

    DIR/dataset.json
    DIR/{split}-{i:05d}-of-{n:05d}.array_record      i = 0..n-1, one set per split

`dataset.json` (written last by `monl.data.prepare`, so its presence marks a complete dataset):

    {
      "format_version": 1,
      "modalities": [                          # ordered: this order is the modality index m of a cell
        {"name": "video", "shape": [16, 16, 16, 3], "dtype": "float32",
         "segments": [4, 4, 4, 4],             # latent frames per time segment, sum == shape[0]
         "seconds_per_segment": [0.5, 0.5, 0.5, 0.5]},   # optional
        {"name": "audio", "shape": [64, 16], "dtype": "float32", "segments": [16, 16, 16, 16]}
      ],
      "normalization": {                       # per modality, per channel (the LAST axis of shape)
        "video": {"mean": [...3 floats], "std": [...3 floats]},
        "audio": {"mean": [...16 floats], "std": [...16 floats]}
      },
      "splits": {"train": {"num_examples": 2048, "num_shards": 4}, "test": {...}},
      "produced_by": {...}                     # free dict: command, source dir, time, stats subset, ...
    }

Every modality has its time axis first and channels last (rank >= 2); all modalities have the same
number N of segments (segment lengths may differ, e.g. video [1,1,1,1,1] and audio [6,25,25,25,25]).
The name "source_id" is reserved (it is a key of decoded examples and batches).

One record = one clip, a msgpack map with raw (un-normalised) values:

    {"source_id": str,                          # e.g. the npz file name relative to its split dir
     "arrays": {name: {"dtype": str, "shape": [..], "data": bytes}}}   # C-order, little-endian

Normalisation is `(x - mean) / std` per channel, applied when reading (`normalize`), undone by
`denormalize` before anything is decoded or scored. Records stay raw so statistics can be recomputed.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
from etils import epath

FORMAT_VERSION = 1
SPEC_FILE = "dataset.json"
RESERVED_NAMES = ("source_id",)

PathLike = epath.PathLike  # str, os.PathLike or epath.Path; local or gs://


class DatasetError(ValueError):
  """A dataset directory, record or input file is missing, malformed, or disagrees with its spec."""


@dataclasses.dataclass(frozen=True)
class ModalitySpec:
  """One modality: per-example `shape` (time first, channels last), storage `dtype`, `segments`
  (latent frames per time segment), optional `seconds_per_segment`, per-channel `mean`/`std`."""
  name: str
  shape: tuple[int, ...]
  dtype: str
  segments: tuple[int, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  seconds_per_segment: tuple[float, ...] | None = None

  @property
  def channels(self) -> int:
    return self.shape[-1]


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  num_examples: int
  num_shards: int


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Everything `dataset.json` says. `modalities` is ordered; `splits` maps split name → SplitInfo."""
  modalities: tuple[ModalitySpec, ...]
  splits: Mapping[str, SplitInfo]
  produced_by: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  format_version: int = FORMAT_VERSION

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(m.name for m in self.modalities)

  @property
  def num_segments(self) -> int:
    """N, the number of time segments (the same for every modality; checked by `validate_spec`)."""
    return len(self.modalities[0].segments)

  def modality(self, name: str) -> ModalitySpec:
    for m in self.modalities:
      if m.name == name:
        return m
    raise DatasetError(f"modality {name!r}: not in the dataset (it has {list(self.names)})")

  def split(self, name: str) -> SplitInfo:
    if name not in self.splits:
      raise DatasetError(f"split {name!r}: not in the dataset (it has {sorted(self.splits)})")
    return self.splits[name]


# ----------------------------------------------------------------------------------------------------
# dataset.json


def validate_spec(spec: DatasetSpec, where: str = "dataset spec") -> DatasetSpec:
  """Checks internal consistency; raises DatasetError naming `where`, the field and both values."""
  if spec.format_version != FORMAT_VERSION:
    raise DatasetError(f"{where}: format_version is {spec.format_version}, expected {FORMAT_VERSION}")
  if not spec.modalities:
    raise DatasetError(f"{where}: modalities is empty, expected at least one")
  names = [m.name for m in spec.modalities]
  if len(set(names)) != len(names):
    raise DatasetError(f"{where}: modality names {names} are not unique")
  n_seg = len(spec.modalities[0].segments)
  for m in spec.modalities:
    w = f"{where}: modality {m.name!r}"
    if not m.name or m.name in RESERVED_NAMES:
      raise DatasetError(f"{w}: name is empty or reserved (reserved: {list(RESERVED_NAMES)})")
    if len(m.shape) < 2 or any(int(s) <= 0 for s in m.shape):
      raise DatasetError(f"{w}: shape {list(m.shape)} needs a time axis and a channel axis, all > 0")
    try:
      dt = np.dtype(m.dtype)
    except TypeError as e:
      raise DatasetError(f"{w}: dtype {m.dtype!r} is not a numpy dtype ({e})") from e
    if dt.kind != "f":
      raise DatasetError(f"{w}: dtype {m.dtype!r} has kind {dt.kind!r}, expected a float dtype")
    if not m.segments or any(s <= 0 for s in m.segments) or sum(m.segments) != m.shape[0]:
      raise DatasetError(f"{w}: segments {list(m.segments)} (sum {sum(m.segments)}) must be positive "
                         f"and sum to the time length shape[0] = {m.shape[0]}")
    if len(m.segments) != n_seg:
      raise DatasetError(f"{w}: has {len(m.segments)} segments, expected {n_seg} like modality "
                         f"{spec.modalities[0].name!r}")
    if m.seconds_per_segment is not None and len(m.seconds_per_segment) != n_seg:
      raise DatasetError(f"{w}: seconds_per_segment has {len(m.seconds_per_segment)} entries, "
                         f"expected {n_seg} (one per segment)")
    for key, vals in (("mean", m.mean), ("std", m.std)):
      if len(vals) != m.channels:
        raise DatasetError(f"{where}: normalization[{m.name!r}].{key} has {len(vals)} entries, expected "
                           f"{m.channels} (the last axis of shape {list(m.shape)})")
      if not all(math.isfinite(v) for v in vals):
        raise DatasetError(f"{where}: normalization[{m.name!r}].{key} has non-finite values {list(vals)}")
    if any(s <= 0 for s in m.std):
      raise DatasetError(f"{where}: normalization[{m.name!r}].std {list(m.std)} must be > 0")
  for name, info in spec.splits.items():
    if info.num_examples < 0 or info.num_shards < 1:
      raise DatasetError(f"{where}: splits[{name!r}] has num_examples={info.num_examples}, "
                         f"num_shards={info.num_shards}; expected >= 0 and >= 1")
  return spec


def spec_to_json(spec: DatasetSpec) -> dict[str, Any]:
  """The `dataset.json` dict of `spec` (see the module docstring)."""
  mods = []
  for m in spec.modalities:
    d: dict[str, Any] = {"name": m.name, "shape": list(m.shape), "dtype": m.dtype,
                         "segments": list(m.segments)}
    if m.seconds_per_segment is not None:
      d["seconds_per_segment"] = list(m.seconds_per_segment)
    mods.append(d)
  return {
      "format_version": spec.format_version,
      "modalities": mods,
      "normalization": {m.name: {"mean": list(m.mean), "std": list(m.std)} for m in spec.modalities},
      "splits": {k: {"num_examples": v.num_examples, "num_shards": v.num_shards}
                 for k, v in spec.splits.items()},
      "produced_by": dict(spec.produced_by),
  }


def _field(d: Mapping[str, Any], key: str, where: str) -> Any:
  if not isinstance(d, Mapping):
    raise DatasetError(f"{where}: expected a JSON object, got {type(d).__name__}")
  if key not in d:
    raise DatasetError(f"{where}: missing key {key!r} (has {sorted(d)})")
  return d[key]


def spec_from_json(d: Mapping[str, Any], where: str = "dataset.json") -> DatasetSpec:
  """Parses and validates a `dataset.json` dict; errors name `where` and the key."""
  version = _field(d, "format_version", where)
  if version != FORMAT_VERSION:
    raise DatasetError(f"{where}: format_version is {version!r}, expected {FORMAT_VERSION}")
  norm = _field(d, "normalization", where)
  mods = []
  for i, md in enumerate(_field(d, "modalities", where)):
    w = f"{where}: modalities[{i}]"
    name = _field(md, "name", w)
    nd = _field(norm, name, f"{where}: normalization")
    sps = md.get("seconds_per_segment")
    try:
      mods.append(ModalitySpec(
          name=str(name), shape=tuple(int(s) for s in _field(md, "shape", w)),
          dtype=str(_field(md, "dtype", w)),
          segments=tuple(int(s) for s in _field(md, "segments", w)),
          mean=tuple(float(v) for v in _field(nd, "mean", f"{where}: normalization[{name!r}]")),
          std=tuple(float(v) for v in _field(nd, "std", f"{where}: normalization[{name!r}]")),
          seconds_per_segment=None if sps is None else tuple(float(s) for s in sps)))
    except (TypeError, ValueError) as e:
      if isinstance(e, DatasetError):
        raise
      raise DatasetError(f"{w} ({name!r}): a field has the wrong type ({e})") from e
  splits = {}
  for k, v in _field(d, "splits", where).items():
    splits[str(k)] = SplitInfo(num_examples=int(_field(v, "num_examples", f"{where}: splits[{k!r}]")),
                               num_shards=int(_field(v, "num_shards", f"{where}: splits[{k!r}]")))
  spec = DatasetSpec(modalities=tuple(mods), splits=splits, produced_by=dict(d.get("produced_by", {})),
                     format_version=int(version))
  return validate_spec(spec, where)


def load_spec(data_dir: PathLike) -> DatasetSpec:
  """Reads and validates `data_dir/dataset.json`. Raises DatasetError if it is missing or malformed."""
  path = epath.Path(data_dir) / SPEC_FILE
  if not path.exists():
    hint = ""
    if epath.Path(data_dir).exists():
      hint = " (the directory exists: an unfinished prepare, or not a monl dataset?)"
    raise DatasetError(f"{path}: missing; expected a monl dataset directory{hint}")
  try:
    d = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON ({e})") from e
  return spec_from_json(d, where=str(path))


def save_spec(data_dir: PathLike, spec: DatasetSpec) -> epath.Path:
  """Validates `spec` and writes `data_dir/dataset.json`; returns its path."""
  validate_spec(spec, where=str(epath.Path(data_dir) / SPEC_FILE))
  path = epath.Path(data_dir) / SPEC_FILE
  path.write_text(json.dumps(spec_to_json(spec), indent=2) + "\n")
  return path


# ----------------------------------------------------------------------------------------------------
# shards


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def shard_paths(data_dir: PathLike, split: str, spec: DatasetSpec | None = None, *,
                check_exists: bool = True) -> list[epath.Path]:
  """The shard paths of `split`, in order. Checks each exists: ArrayRecord readers don't raise on a
  missing file. `check_exists=False` builds paths only (no I/O beyond reading the spec)."""
  data_dir = epath.Path(data_dir)
  spec = spec if spec is not None else load_spec(data_dir)
  info = spec.split(split)
  paths = [data_dir / shard_name(split, i, info.num_shards) for i in range(info.num_shards)]
  if check_exists:
    missing = [p.name for p in paths if not p.exists()]
    if missing:
      raise DatasetError(f"{data_dir}: split {split!r} lists {info.num_shards} shards in {SPEC_FILE}, "
                         f"but {len(missing)} are missing: {missing}")
  return paths


# ----------------------------------------------------------------------------------------------------
# records


def encode_record(source_id: str, arrays: Mapping[str, np.ndarray]) -> bytes:
  """One clip → msgpack bytes. `arrays[name]` keeps its dtype; stored C-order little-endian."""
  out = {}
  for name, x in arrays.items():
    x = np.asarray(x)
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    out[name] = {"dtype": x.dtype.name, "shape": list(x.shape), "data": x.tobytes()}
  return msgpack.packb({"source_id": str(source_id), "arrays": out}, use_bin_type=True)


def decode_record(raw: bytes, spec: DatasetSpec, where: str = "record") -> dict[str, Any]:
  """msgpack bytes → `{"source_id": str, name: np.ndarray (spec dtype, spec shape)}`.

  The arrays are read-only views of `raw` (no copy); copy them before writing in place.

  Validates that the record has exactly the spec's modalities with the spec's dtype and shape;
  raises DatasetError naming `where`, the source id, the modality and both values."""
  try:
    rec = msgpack.unpackb(raw, raw=False)
  except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as e:
    raise DatasetError(f"{where}: not a valid msgpack record ({type(e).__name__}: {e})") from e
  if not isinstance(rec, dict) or "arrays" not in rec or "source_id" not in rec:
    got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
    raise DatasetError(f"{where}: expected a map with keys ['arrays', 'source_id'], got {got}")
  sid = rec["source_id"]
  arrays = rec["arrays"]
  w = f"{where} (source_id {sid!r})"
  if not isinstance(arrays, dict) or set(arrays) != set(spec.names):
    got = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
    raise DatasetError(f"{w}: modalities {got}, expected {sorted(spec.names)}")
  out: dict[str, Any] = {"source_id": sid}
  for m in spec.modalities:
    a = arrays[m.name]
    if not isinstance(a, dict) or not {"dtype", "shape", "data"} <= set(a):
      got = sorted(a) if isinstance(a, dict) else type(a).__name__
      raise DatasetError(f"{w}: modality {m.name!r} entry has {got}, expected keys ['data', 'dtype', 'shape']")
    dtype, shape = a["dtype"], tuple(a["shape"])
    if dtype != m.dtype:
      raise DatasetError(f"{w}: modality {m.name!r} has dtype {dtype}, expected {m.dtype} (dataset.json)")
    if shape != m.shape:
      raise DatasetError(f"{w}: modality {m.name!r} has shape {list(shape)}, expected {list(m.shape)} "
                         f"(dataset.json)")
    dt = np.dtype(m.dtype).newbyteorder("<")
    data = a["data"]
    if len(data) != dt.itemsize * math.prod(shape):
      raise DatasetError(f"{w}: modality {m.name!r} has {len(data)} bytes, expected "
                         f"{dt.itemsize * math.prod(shape)} for {m.dtype} {list(shape)}")
    out[m.name] = np.frombuffer(data, dtype=dt).reshape(shape).astype(m.dtype, copy=False)
  return out


# ----------------------------------------------------------------------------------------------------
# input clips (.npz)


def not_npz_reason(head: bytes) -> str | None:
  """Why a file whose first bytes are `head` is not an .npz archive (a zip of .npy arrays), or None.

  np.load would read anything else as a pickle and fail with a misleading 'pickled data' message."""
  if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
    return None
  if not head:
    return "is empty, not an .npz archive"
  if head.startswith(b"\x93NUMPY"):
    return "is a single .npy array, not an .npz archive of named arrays (write it with np.savez)"
  return f"is not an .npz archive (a zip of .npy arrays): it starts with {head[:16]!r}"


class NpzError(DatasetError):
  """An .npz clip that is not an npz archive or lacks a key; `reason` is the message less the path."""

  def __init__(self, path: PathLike, reason: str):
    super().__init__(f"{path}: {reason}")
    self.reason = reason


def _check_npz(f, path) -> None:
  """Raises NpzError unless the open binary file `f` starts like an .npz archive; rewinds it."""
  why = not_npz_reason(f.read(16))
  f.seek(0)
  if why:
    raise NpzError(path, why)


def npz_keys(f) -> list[str]:
  """The array names of the open binary .npz file `f`; raises NpzError for any other kind of file."""
  _check_npz(f, getattr(f, "name", "file"))
  with np.load(f, allow_pickle=False) as z:
    return list(z.files)


def load_npz(path: PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
  """The arrays `names` of the .npz clip at `path`. Raises NpzError naming the file for a file that
  is not an npz archive or lacks a key; a damaged archive raises numpy's / zipfile's own error."""
  path = epath.Path(path)
  with path.open("rb") as f:
    _check_npz(f, path)
    with np.load(f, allow_pickle=False) as z:
      missing = [m for m in names if m not in z.files]
      if missing:
        raise NpzError(path, f"missing key(s) {missing} (has {sorted(z.files)})")
      return {m: np.asarray(z[m]) for m in names}


# ----------------------------------------------------------------------------------------------------
# normalisation


def _stats(spec: DatasetSpec, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  m = spec.modality(name)
  if x.shape[-1] != m.channels:
    raise DatasetError(f"modality {name!r}: array has {x.shape[-1]} channels (shape {list(x.shape)}), "
                       f"expected {m.channels} (last axis of {list(m.shape)})")
  return np.asarray(m.mean, np.float64), np.asarray(m.std, np.float64)


def normalize(spec: DatasetSpec, name: str, x: np.ndarray) -> np.ndarray:
  """Raw → normalised float32, `(x - mean) / std` per channel (last axis); any leading shape."""
  x = np.asarray(x)
  mean, std = _stats(spec, name, x)
  # float32 arithmetic: this runs per example in the input pipeline (2x faster than float64), and
  # denormalize(normalize(x)) still matches x to a few float32 ulps.
  return (x.astype(np.float32, copy=False) - mean.astype(np.float32)) / std.astype(np.float32)


def denormalize(spec: DatasetSpec, name: str, x: np.ndarray) -> np.ndarray:
  """Normalised → raw scale float32, `x * std + mean` per channel; works on numpy or jax arrays."""
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  mean, std = _stats(spec, name, x)
  if isinstance(x, np.ndarray):
    return (x.astype(np.float64) * std + mean).astype(np.float32)
  # jax arrays (generated samples): stay on device, float32.
  return x * std.astype(np.float32) + mean.astype(np.float32)

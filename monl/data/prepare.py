"""`prepare`: a directory of per-clip `.npz` files → a monl dataset (see `monl.data.format`).

    python -m monl.data.prepare --input DIR --output DIR \
        [--modalities video,audio] \
        [--segments video=1,1,1,1,1 --segments audio=6,25,25,25,25 | --num_segments N] \
        [--seconds_per_segment 0.425,0.425,... | --seconds_per_segment video=...] \
        [--num_shards 4] [--stats_split train --stats_max_examples 1000] [--dtype float32] \
        [--skip_bad] [--overwrite]

Input: `DIR/<split>/**/*.npz`, one clip per file, one array per modality keyed by modality name
(e.g. `video: [T, H, W, C]`, `audio: [T, C]`, time first, channels last). Every non-hidden
subdirectory of DIR holding at least one `.npz` is a split. Files are taken in sorted path order;
`source_id` is the file's path relative to its split directory. Keys that are not modalities are
ignored (e.g. metadata arrays).

Modality order (= the modality index of a cell): `--modalities` if given; otherwise the keys of the
first file (first split, first file, sorted), ordered `video` first, then `audio`, then the rest
alphabetically.

Segments: `--segments NAME=L1,L2,...` per modality; modalities without one are cut into
`--num_segments` equal parts (an error if the time length is not divisible). One of the two is required
for every modality, and every modality must end up with the same number of segments.

Validation: EVERY file is checked before anything is written: unreadable, missing a modality key,
non-float dtype (or a float dtype other than the first good file's, unless `--dtype` casts explicitly),
rank < 2, rank or shape different from the first good file's, NaN/Inf, and a finite value more than
`--outlier_k` (1000) robust scales from its channel's median over all clips (one 3e38 would otherwise
set the channel's std to ~1e37 and normalise every clip to a constant; 0 turns the check off). By
default any bad file makes prepare refuse (exit 2, every problem printed); `--skip_bad` drops them and
prints the count.

Statistics: per-channel (last axis) mean/std from up to `--stats_max_examples` good files of
`--stats_split`, evenly spaced over its sorted files, accumulated in float64. A constant channel gets
std 1.0 (so it normalises to 0), with a warning and a note in `produced_by.stats.constant_channels`.

Atomic write: shards and then `dataset.json` go into `OUTPUT.tmp-<random>`, which is renamed to
OUTPUT only when complete (on local disks a rename is atomic; gs:// has no rename, so the files are
copied with `dataset.json` last and a replaced dataset loses its `dataset.json` first: a partial copy
never has one). ArrayRecord writes only local files, so a gs:// shard is staged locally and uploaded. A failed prepare removes its temp directory; a
killed one leaves only `OUTPUT.tmp-*`, which has no `dataset.json`. The output is checked before any
input is read: an existing monl dataset (a directory with `dataset.json`) is replaced only with
`--overwrite`; any other non-empty directory, or a file, is refused (nothing else is ever deleted).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import secrets
import shlex
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from array_record.python import array_record_module
from etils import epath
from tqdm import tqdm

from monl.data import format as fmt

MODALITY_PRIORITY = ("video", "audio")
# Errors np.load / zip reading raise on a damaged or non-npz file.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


class BadInputsError(fmt.DatasetError):
  """Some input files failed validation. `problems`: list of (file, reason), all of them."""

  def __init__(self, message: str, problems: list[tuple[str, str]]):
    super().__init__(message)
    self.problems = problems


# ----------------------------------------------------------------------------------------------------
# argument parsing helpers (shared by the CLI and callers that take strings)


def parse_named_lists(items: Sequence[str] | None, cast: type, flag: str) -> dict[str, tuple]:
  """`["video=1,1,1", "audio=6,25,25"]` → `{"video": (1, 1, 1), "audio": (6, 25, 25)}`."""
  out: dict[str, tuple] = {}
  for item in items or ():
    name, sep, values = item.partition("=")
    if not sep or not name or not values:
      raise fmt.DatasetError(f"{flag} {item!r}: expected NAME=V1,V2,... (e.g. video=1,1,1,1,1)")
    try:
      out[name] = tuple(cast(v) for v in values.split(","))
    except ValueError as e:
      raise fmt.DatasetError(f"{flag} {item!r}: values must be {cast.__name__}s ({e})") from e
  return out


def equal_segments(name: str, length: int, num_segments: int) -> tuple[int, ...]:
  """`length` frames cut into `num_segments` equal parts; DatasetError if not divisible."""
  if num_segments <= 0 or length % num_segments:
    raise fmt.DatasetError(f"modality {name!r}: time length {length} is not divisible into "
                           f"{num_segments} equal segments; pass --segments {name}=L1,L2,... instead")
  return (length // num_segments,) * num_segments


def default_modality_order(keys: Iterable[str]) -> list[str]:
  keys = list(keys)
  first = [k for k in MODALITY_PRIORITY if k in keys]
  return first + sorted(k for k in keys if k not in MODALITY_PRIORITY)


# ----------------------------------------------------------------------------------------------------
# input discovery and validation


def _npz_files(root: epath.Path) -> list[epath.Path]:
  # epath refuses `rglob` (it could be thousands of GCS requests); an explicit walk is fine here.
  out = []
  for p in root.iterdir():
    if p.is_dir() and not p.name.startswith("."):
      out += _npz_files(p)
    elif p.name.endswith(".npz"):
      out.append(p)
  return out


def find_split_files(input_dir: epath.PathLike) -> dict[str, list[epath.Path]]:
  """`{split: sorted npz paths}` for every non-hidden subdirectory of `input_dir` with npz files."""
  root = epath.Path(input_dir)
  if not root.is_dir():
    raise fmt.DatasetError(f"--input {root}: not a directory")
  splits = {}
  for sub in sorted(root.iterdir()):
    if sub.is_dir() and not sub.name.startswith("."):
      files = sorted(_npz_files(sub))
      if files:
        splits[sub.name] = files
  if not splits:
    loose = sorted(p.name for p in root.glob("*.npz"))[:3]
    hint = f" (found npz files directly in it, e.g. {loose}: move them into e.g. train/)" if loose else ""
    raise fmt.DatasetError(f"--input {root}: no split subdirectories with .npz files{hint}")
  return splits


class _Bad(Exception):
  """One input file is bad; the message is the reason."""


def _load_npz(path: epath.Path, modalities: Sequence[str]) -> dict[str, np.ndarray]:
  """The modality arrays of one npz file; raises _Bad(reason) for anything intrinsically wrong."""
  try:
    arrays = fmt.load_npz(path, modalities)
  except fmt.NpzError as e:
    raise _Bad(e.reason) from e
  except _READ_ERRORS as e:
    raise _Bad(f"unreadable ({type(e).__name__}: {e})") from e
  for m, x in arrays.items():
    if x.dtype.kind != "f":
      raise _Bad(f"key {m!r} has dtype {x.dtype} (kind {x.dtype.kind!r}), expected a float dtype")
    if x.ndim < 2:
      raise _Bad(f"key {m!r} has rank {x.ndim} (shape {list(x.shape)}), expected rank >= 2 "
                 f"(time first, channels last)")
    if not np.isfinite(x).all():
      n = int(x.size - np.isfinite(x).sum())
      raise _Bad(f"key {m!r} has {n} NaN/Inf values")
  return arrays


@dataclasses.dataclass
class _Reference:
  """Shapes and dtypes every file must match: those of the first good file."""
  source: str
  shapes: dict[str, tuple[int, ...]]
  dtypes: dict[str, np.dtype]


def _check_against(arrays: Mapping[str, np.ndarray], ref: _Reference, cast: np.dtype | None) -> None:
  for m, x in arrays.items():
    if x.ndim != len(ref.shapes[m]):
      raise _Bad(f"key {m!r} has rank {x.ndim} (shape {list(x.shape)}), expected rank "
                 f"{len(ref.shapes[m])} (shape {list(ref.shapes[m])}) like the first good file {ref.source}")
    if x.shape != ref.shapes[m]:
      raise _Bad(f"key {m!r} has shape {list(x.shape)}, expected {list(ref.shapes[m])} like the first "
                 f"good file {ref.source}")
    if cast is None and x.dtype != ref.dtypes[m]:
      raise _Bad(f"key {m!r} has dtype {x.dtype}, expected {ref.dtypes[m]} like the first good file "
                 f"{ref.source} (pass --dtype to cast every file explicitly)")


def _first_keys(splits: Mapping[str, list[epath.Path]]) -> list[str]:
  path = next(iter(splits.values()))[0]
  try:
    with path.open("rb") as f:
      return fmt.npz_keys(f)
  except fmt.NpzError as e:
    raise fmt.DatasetError(f"{path}: {e.reason}; the modality list comes from the first file unless "
                           f"--modalities is given") from e
  except _READ_ERRORS as e:
    raise fmt.DatasetError(f"{path}: unreadable ({type(e).__name__}: {e}); the modality list comes from "
                           f"the first file unless --modalities is given") from e


def validate_inputs(splits: Mapping[str, list[epath.Path]], modalities: Sequence[str],
                    cast: np.dtype | None = None, progress: bool = True, outlier_k: float = 1000.0
                    ) -> tuple[_Reference, dict[str, list[epath.Path]], list[tuple[str, str]]]:
  """Checks every file (and, unless `outlier_k` is 0, every value against its channel's robust range:
  `_OutlierScan`). Returns (reference shapes/dtypes, good files per split, [(file, reason)])."""
  ref: _Reference | None = None
  good: list[tuple[str, epath.Path]] = []
  bad: list[tuple[str, str]] = []
  total = sum(len(v) for v in splits.values())
  scan = _OutlierScan(total, outlier_k) if outlier_k > 0 else None
  with tqdm(total=total, desc="validate", unit="file", disable=not progress) as bar:
    for split, files in splits.items():
      for path in files:
        bar.update(1)
        try:
          arrays = _load_npz(path, modalities)
          if ref is None:
            ref = _Reference(source=str(path), shapes={m: x.shape for m, x in arrays.items()},
                             dtypes={m: x.dtype for m, x in arrays.items()})
          _check_against(arrays, ref, cast)
        except _Bad as e:
          bad.append((str(path), str(e)))
          continue
        if scan is not None:
          scan.add(len(good), arrays)
        good.append((split, path))
  if ref is None:
    raise BadInputsError(_problem_report(bad, total) + "\nno file is good: nothing to prepare", bad)
  outliers = scan.outliers() if scan is not None else {}
  bad += [(str(good[i][1]), reason) for i, reason in sorted(outliers.items())]
  by_split: dict[str, list[epath.Path]] = {s: [] for s in splits}
  for i, (split, path) in enumerate(good):
    if i not in outliers:
      by_split[split].append(path)
  return ref, by_split, bad


class _OutlierScan:
  """Finds clips whose extreme values would dominate a channel's normalisation statistics.

  Per modality and channel it keeps a thin sample of values from every clip, for a robust centre
  (median) and scale (the larger of 1.4826 MAD and the std of the central 99.8%), and the `keep` most
  extreme values at each end with their clips. A value more than `k` robust scales from the centre
  is an outlier: for well-behaved data that never happens (k = 1000 is far beyond any Gaussian or
  heavy-tailed latent tail), while a single 3e38 in one clip would otherwise set that channel's std
  to ~1e37 and normalise every clip's channel to a constant."""

  def __init__(self, num_files: int, k: float, keep: int = 32, sample_rows: int = 8192):
    self.k, self.keep = k, keep
    self.rows_per_file = max(1, sample_rows // max(num_files, 1))
    self.file_stride = max(1, -(-num_files // sample_rows))
    self.samples: dict[str, list[np.ndarray]] = {}
    self.hi: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (values [keep, C], files [keep, C])
    self.lo: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def add(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
    for m, x in arrays.items():
      rows = x.reshape(-1, x.shape[-1])
      if index % self.file_stride == 0:
        pick = np.random.default_rng(index).choice(len(rows), min(self.rows_per_file, len(rows)), replace=False)
        self.samples.setdefault(m, []).append(rows[pick].astype(np.float64))
      for ends, value in ((self.hi, rows.max(axis=0)), (self.lo, -rows.min(axis=0))):
        file = np.full(value.shape, index)
        if m in ends:
          value, file = np.vstack([ends[m][0], value[None]]), np.vstack([ends[m][1], file[None]])
        else:
          value, file = value[None].astype(np.float64), file[None]
        order = np.argsort(-value, axis=0, kind="stable")[:self.keep]
        ends[m] = (np.take_along_axis(value, order, 0), np.take_along_axis(file, order, 0))

  def outliers(self) -> dict[int, str]:
    """{file index: reason} of every clip holding an outlier (the first one found per clip)."""
    found: dict[int, str] = {}
    for m in self.samples:
      sample = np.concatenate(self.samples[m])
      centre = np.median(sample, axis=0)
      mad = 1.4826 * np.median(np.abs(sample - centre), axis=0)
      lo_q, hi_q = np.quantile(sample, [0.001, 0.999], axis=0)
      central = np.where((sample >= lo_q) & (sample <= hi_q), sample, np.nan)
      scale = np.maximum(mad, np.nan_to_num(np.nanstd(central, axis=0)))
      for sign, (values, files) in ((1, self.hi[m]), (-1, self.lo[m])):
        dev = values - centre if sign > 0 else values + centre  # lo holds -min
        for c in np.flatnonzero(scale > 0):
          bad = np.flatnonzero(dev[:, c] > self.k * scale[c])
          if len(bad) == len(values) and len(values) == self.keep:
            raise fmt.DatasetError(
                f"key {m!r} channel {c}: at least {self.keep} clips hold values more than {self.k:g} robust "
                f"scales ({scale[c]:.3g}) from the channel's median {centre[c]:.3g}: these are the data's "
                f"tails, not a few bad clips; pass a larger --outlier_k (or 0 to turn the check off)")
          for j in bad:
            v = sign * values[j, c]
            found.setdefault(int(files[j, c]), (
                f"key {m!r} channel {c} holds {v:.6g}, {dev[j, c] / scale[c]:.3g} robust scales from the "
                f"channel's median {centre[c]:.6g} over the clips (robust scale {scale[c]:.3g}, limit "
                f"--outlier_k={self.k:g}); it would dominate the channel's normalisation std"))
    return found


def _problem_report(bad: list[tuple[str, str]], total: int) -> str:
  lines = [f"{len(bad)} of {total} input files are bad:"]
  lines += [f"  {path}: {reason}" for path, reason in bad]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# statistics


class _ChannelStats:
  """Per-channel mean/variance over all but the last axis, merged across files (Chan et al.), float64."""

  def __init__(self, channels: int):
    self.n = 0
    self.mean = np.zeros(channels, np.float64)
    self.m2 = np.zeros(channels, np.float64)

  def add(self, x: np.ndarray) -> None:
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    n_b, mean_b = x.shape[0], x.mean(axis=0)
    m2_b = ((x - mean_b) ** 2).sum(axis=0)
    n = self.n + n_b
    delta = mean_b - self.mean
    self.mean = self.mean + delta * (n_b / n)
    self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
    self.n = n

  def std(self) -> np.ndarray:
    return np.sqrt(self.m2 / max(self.n, 1))


def _stats_subset(files: Sequence[epath.Path], max_examples: int) -> set[epath.Path]:
  if max_examples <= 0 or max_examples >= len(files):
    return set(files)
  idx = np.unique(np.linspace(0, len(files) - 1, max_examples).round().astype(int))
  return {files[i] for i in idx}


# ----------------------------------------------------------------------------------------------------
# writing


def _is_remote(path: epath.Path) -> bool:
  return "://" in os.fspath(path)  # gs://, s3://: object stores, no rename, no local file handle


def _write_shard(path: epath.Path, records: Iterable[bytes]) -> int:
  """Writes records to one ArrayRecord file; returns how many. (Tests patch this to simulate crashes.)

  ArrayRecord's writer only writes local files: a gs:// shard is written to a local temporary file
  and then uploaded."""
  if _is_remote(path):
    with tempfile.TemporaryDirectory(prefix="monl-shard-") as local:
      staged = epath.Path(local) / path.name
      n = _write_shard(staged, records)
      with staged.open("rb") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst, length=16 << 20)
      return n
  writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  n = 0
  try:
    for rec in records:
      writer.write(rec)
      n += 1
  finally:
    writer.close()
  return n


def _remove_tree(path: epath.Path) -> None:
  if path.exists():
    path.rmtree()


def _commit_remote(tmp: epath.Path, out: epath.Path) -> None:
  """`_commit` on an object store, which cannot rename a directory: an existing dataset loses its
  dataset.json first (it stops being a dataset), then its files; the new shards are copied, and
  dataset.json last, so a reader never sees a dataset.json beside missing or old shards."""
  if (out / fmt.SPEC_FILE).exists():
    (out / fmt.SPEC_FILE).unlink()
  if out.exists():
    for p in out.iterdir():
      if p.is_dir():
        _remove_tree(p)
      else:
        p.unlink()
  files = sorted(tmp.iterdir(), key=lambda p: p.name == fmt.SPEC_FILE)  # dataset.json last
  for p in files:
    p.copy(out / p.name, overwrite=True)
  _remove_tree(tmp)


def _commit(tmp: epath.Path, out: epath.Path) -> None:
  """Moves the finished temp directory to `out`, replacing an existing one only after it is complete."""
  if _is_remote(out):
    return _commit_remote(tmp, out)
  old = None
  if out.exists():
    if any(out.iterdir()):
      old = out.parent / f"{out.name}.old-{secrets.token_hex(4)}"
      out.rename(old)
    else:
      out.rmdir()
  tmp.rename(out)
  if old is not None:
    _remove_tree(old)


def _check_output(out: epath.Path, overwrite: bool) -> None:
  """Refuses an output that is a file, lies under a file, or is a non-empty directory, unless it is a
  monl dataset (has its dataset.json) and `overwrite`: nothing else is ever deleted."""
  parent = out
  while not parent.exists() and parent != parent.parent:
    parent = parent.parent
  if parent != out and not parent.is_dir():
    raise fmt.DatasetError(f"--output {out}: {parent} is a file, not a directory")
  if not out.exists():
    return
  if not out.is_dir():
    raise fmt.DatasetError(f"--output {out}: is a file, not a directory")
  contents = sorted(p.name for p in out.iterdir())
  if not contents:
    return
  if not (out / fmt.SPEC_FILE).exists():
    shown = ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
    raise fmt.DatasetError(f"--output {out}: holds {len(contents)} entries ({shown}) and no {fmt.SPEC_FILE}, "
                           f"so it is not a monl dataset; --overwrite replaces only a monl dataset or "
                           f"an empty directory: choose another --output")
  if not overwrite:
    raise fmt.DatasetError(f"--output {out}: a monl dataset is already there; pass --overwrite to "
                           f"replace it")


def prepare(input_dir: epath.PathLike, output_dir: epath.PathLike, *,
            modalities: Sequence[str] | None = None,
            segments: Mapping[str, Sequence[int]] | None = None,
            num_segments: int | None = None,
            seconds_per_segment: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
            num_shards: int = 4,
            stats_split: str = "train",
            stats_max_examples: int = 1000,
            dtype: str | None = None,
            skip_bad: bool = False,
            outlier_k: float = 1000.0,
            overwrite: bool = False,
            produced_by: Mapping[str, Any] | None = None,
            progress: bool = True,
            source_ids: Mapping[str, str] | None = None) -> fmt.DatasetSpec:
  """Builds a monl dataset at `output_dir` from `input_dir/<split>/*.npz`; returns its spec.

  See the module docstring for every rule. `produced_by` entries are merged into dataset.json's
  `produced_by` (e.g. the synthetic generator's parameters). `source_ids` maps 'split/relative/path.npz'
  to the source id recorded for that file (default: its path relative to the split directory). Raises BadInputsError (all problems
  listed) if any file is bad and not `skip_bad`, DatasetError for every other bad argument or input.
  """
  input_dir, out = epath.Path(input_dir), epath.Path(output_dir)
  if num_shards < 1:
    raise fmt.DatasetError(f"--num_shards is {num_shards}, expected >= 1")
  _check_output(out, overwrite)  # before any input is read
  splits = find_split_files(input_dir)
  if stats_split not in splits:
    raise fmt.DatasetError(f"--stats_split {stats_split!r}: not among the input splits {sorted(splits)} "
                           f"in {input_dir}")
  modalities_from = "argument"
  if modalities is None:
    modalities, modalities_from = default_modality_order(_first_keys(splits)), "first file"
  modalities = list(modalities)
  if not modalities or len(set(modalities)) != len(modalities):
    raise fmt.DatasetError(f"--modalities {modalities}: expected a non-empty list of distinct names")
  segments = {k: tuple(int(s) for s in v) for k, v in (segments or {}).items()}
  unknown = sorted(set(segments) - set(modalities))
  if unknown:
    raise fmt.DatasetError(f"--segments names {unknown} are not modalities {modalities}")
  cast = np.dtype(dtype) if dtype is not None else None
  if cast is not None and cast.kind != "f":
    raise fmt.DatasetError(f"--dtype {dtype}: expected a float dtype")

  ref, good, bad = validate_inputs(splits, modalities, cast, progress, outlier_k)
  total = sum(len(v) for v in splits.values())
  if bad and not skip_bad:
    raise BadInputsError(_problem_report(bad, total) + "\nrefusing to write; fix them or pass --skip_bad",
                         bad)
  if bad:
    print(_problem_report(bad, total), file=sys.stderr)
    print(f"--skip_bad: skipped {len(bad)} bad files of {total}", file=sys.stderr)
  empty = [s for s, f in good.items() if not f]
  if empty:
    raise fmt.DatasetError(f"splits {empty}: no good files left in {input_dir}")

  # Layout from the reference file; segment/time errors name the modality and both numbers.
  seg_of: dict[str, tuple[int, ...]] = {}
  for m in modalities:
    length = ref.shapes[m][0]
    if m in segments:
      if sum(segments[m]) != length or any(s <= 0 for s in segments[m]):
        raise fmt.DatasetError(f"--segments {m}={','.join(map(str, segments[m]))}: sums to "
                               f"{sum(segments[m])}, expected the time length {length} (shape "
                               f"{list(ref.shapes[m])}, all segments > 0)")
      seg_of[m] = segments[m]
    elif num_segments is not None:
      seg_of[m] = equal_segments(m, length, num_segments)
    else:
      raise fmt.DatasetError(f"modality {m!r}: no segments; pass --num_segments N or --segments {m}=...")
  counts = {m: len(s) for m, s in seg_of.items()}
  if len(set(counts.values())) != 1:
    raise fmt.DatasetError(f"segment counts differ between modalities {counts}; every modality needs "
                           f"the same number of time segments")
  if seconds_per_segment is None or isinstance(seconds_per_segment, Mapping):
    sps = {k: tuple(float(v) for v in vs) for k, vs in (seconds_per_segment or {}).items()}
  else:
    sps = {m: tuple(float(v) for v in seconds_per_segment) for m in modalities}

  n_seg = next(iter(counts.values()))
  for m, secs in sps.items():
    if m not in seg_of:
      raise fmt.DatasetError(f"--seconds_per_segment {m}=...: {m!r} is not a modality {modalities}")
    if len(secs) != n_seg:
      raise fmt.DatasetError(f"--seconds_per_segment for {m!r} has {len(secs)} values, expected {n_seg} "
                             f"(one per segment)")

  stats_files = _stats_subset(good[stats_split], stats_max_examples)
  stats = {m: _ChannelStats(ref.shapes[m][-1]) for m in modalities}
  out_dtypes = {m: (cast if cast is not None else ref.dtypes[m]) for m in modalities}
  split_infos: dict[str, fmt.SplitInfo] = {}

  tmp = out.parent / f"{out.name}.tmp-{secrets.token_hex(4)}"
  tmp.mkdir(parents=True)
  try:
    with tqdm(total=sum(len(v) for v in good.values()), desc="write", unit="file",
              disable=not progress) as bar:
      for split, files in good.items():
        n_shards = min(num_shards, len(files))
        for i, chunk in enumerate(np.array_split(np.arange(len(files)), n_shards)):

          def records(chunk=chunk, split=split, files=files) -> Iterator[bytes]:
            for j in chunk:
              path = files[j]
              try:  # validated above; re-read here to keep memory flat
                arrays = _load_npz(path, modalities)
              except _Bad as e:
                raise fmt.DatasetError(f"{path}: changed since validation: {e}") from e
              if path in stats_files and split == stats_split:
                for m in modalities:
                  stats[m].add(arrays[m])
              arrays = {m: arrays[m].astype(out_dtypes[m], copy=False) for m in modalities}
              bar.update(1)
              rel = str(path.relative_to(input_dir / split))
              yield fmt.encode_record((source_ids or {}).get(f"{split}/{rel}", rel), arrays)

          _write_shard(tmp / fmt.shard_name(split, i, n_shards), records())
        split_infos[split] = fmt.SplitInfo(num_examples=len(files), num_shards=n_shards)

    mods, constant = [], []
    for m in modalities:
      std = stats[m].std()
      for c in np.flatnonzero(std < 1e-8):
        constant.append({"modality": m, "channel": int(c)})
        print(f"warning: modality {m!r} channel {c} is constant in the stats subset; std set to 1.0",
              file=sys.stderr)
      std = np.where(std < 1e-8, 1.0, std)
      mods.append(fmt.ModalitySpec(
          name=m, shape=tuple(int(s) for s in ref.shapes[m]), dtype=out_dtypes[m].name,
          segments=seg_of[m], mean=tuple(float(v) for v in stats[m].mean),
          std=tuple(float(v) for v in std), seconds_per_segment=sps.get(m)))
    info: dict[str, Any] = {
        "tool": "monl.data.prepare",
        "input_dir": str(input_dir),
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "modalities_from": modalities_from,
        "stats": {"split": stats_split, "num_examples": len(stats_files),
                  "max_examples": stats_max_examples,
                  "selection": "evenly spaced over the sorted good files", "accumulation": "float64",
                  "constant_channels": constant},
        "skipped_bad": {"count": len(bad), "files": [{"file": p, "reason": r} for p, r in bad[:100]]},
    }
    info.update(produced_by or {})
    spec = fmt.DatasetSpec(modalities=tuple(mods), splits=split_infos, produced_by=info)
    fmt.save_spec(tmp, spec)  # last: its presence marks a complete dataset
    _commit(tmp, out)
  except BaseException:
    _remove_tree(tmp)
    raise
  return spec


# ----------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m monl.data.prepare",
                              description="Per-clip .npz files → a monl dataset (ArrayRecord + dataset.json).")
  p.add_argument("--input", required=True, help="directory with one subdirectory of .npz files per split")
  p.add_argument("--output", required=True, help="dataset directory to create (local or gs://)")
  p.add_argument("--modalities", help="comma-separated modality keys, in order (default: see docs)")
  p.add_argument("--segments", action="append", metavar="NAME=L1,L2,...",
                 help="latent frames per segment of one modality; repeat per modality")
  p.add_argument("--num_segments", type=int, help="equal segments for modalities without --segments")
  p.add_argument("--seconds_per_segment", action="append", metavar="[NAME=]S1,S2,...",
                 help="seconds per segment, for all modalities or NAME= one (repeatable)")
  p.add_argument("--num_shards", type=int, default=4, help="ArrayRecord shards per split (at most)")
  p.add_argument("--stats_split", default="train", help="split the normalisation statistics come from")
  p.add_argument("--stats_max_examples", type=int, default=1000, help="files used for statistics (0 = all)")
  p.add_argument("--dtype", help="cast every modality to this float dtype (default: keep the files')")
  p.add_argument("--skip_bad", action="store_true", help="skip bad input files instead of refusing")
  p.add_argument("--outlier_k", type=float, default=1000.0,
                 help="a value this many robust scales from its channel's median makes its file bad (0 = off)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
  p.add_argument("--no_progress", action="store_true", help="no progress bars")
  return p


def _parse_seconds(items: Sequence[str] | None) -> Sequence[float] | dict[str, tuple] | None:
  if not items:
    return None
  if len(items) == 1 and "=" not in items[0]:
    try:
      return tuple(float(v) for v in items[0].split(","))
    except ValueError as e:
      raise fmt.DatasetError(f"--seconds_per_segment {items[0]!r}: expected floats ({e})") from e
  return parse_named_lists(items, float, "--seconds_per_segment")


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  try:
    spec = prepare(
        args.input, args.output,
        modalities=args.modalities.split(",") if args.modalities else None,
        segments=parse_named_lists(args.segments, int, "--segments"),
        num_segments=args.num_segments,
        seconds_per_segment=_parse_seconds(args.seconds_per_segment),
        num_shards=args.num_shards, stats_split=args.stats_split,
        stats_max_examples=args.stats_max_examples, dtype=args.dtype, skip_bad=args.skip_bad,
        outlier_k=args.outlier_k, overwrite=args.overwrite, progress=not args.no_progress,
        produced_by={"command": "python -m monl.data.prepare " + shlex.join(argv)})
  except fmt.DatasetError as e:
    print(f"prepare: error: {e}", file=sys.stderr)
    return 2
  for name, info in spec.splits.items():
    print(f"{name}: {info.num_examples} examples in {info.num_shards} shards")
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

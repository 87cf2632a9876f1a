"""Grain input pipeline: a monl dataset split → per-process batches of normalised float32 latents.

    source (ArrayRecord shards, or a TFDS data source) → decode + validate + normalise (lazy, per index)
      → .seed(seed).shuffle() → .repeat(num_epochs) → .batch(batch_size, drop_remainder=True)
      → [shard_index::shard_count] → .to_iter_dataset(ReadOptions) [→ .mp_prefetch]

Each element: `{name: np.float32 [B, *shape] normalised, "source_id": np.ndarray of str [B]}`, where
B is the PER-PROCESS batch size (the global batch divided by the number of processes).

Decoding is attached to the source with its record index (`map_with_index`) so that an error names the
record; a MapDataset is lazy, so this costs the same as decoding after shuffling. Every process shuffles
with the same seed, cuts the shared order into batches of `batch_size` and takes every
`shard_count`-th batch: step g's global batch is elements [g*G, (g+1)*G) of the shared order, process
p's rows being its p-th slice of B. The shards are disjoint, together cover every example of every
epoch (each epoch reshuffled), and the global batch sequence is the same for 1, 2 or 4 processes
reading it, so a run may resume on another number of hosts and see the same data in the same order.

Iterator state (`it.get_state()` / `it.set_state()`, or Orbax with `grain.checkpoint.CheckpointSave` /
`CheckpointRestore`) is a batch position, the same on every process: restoring it gives the same
following batches, also on another number of processes (`monl.train.checkpoint` does this).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from etils import epath

from monl.data import format as fmt
from monl.data import shards

Layout = Mapping[str, tuple[Sequence[int], Sequence[int]]]


def check_layout(spec: fmt.DatasetSpec, expected: Layout, where: str) -> None:
  """Raises DatasetError unless the dataset has exactly the expected modalities, shapes and segments.

  expected: `{name: (shape, segments)}` from the model config (see `layout_from_config`); `where` names
  the dataset (e.g. its directory) in the message."""
  if set(spec.names) != set(expected):
    raise fmt.DatasetError(f"{where}: dataset modalities {sorted(spec.names)} != config modalities "
                           f"{sorted(expected)}")
  for name, (shape, segments) in expected.items():
    m = spec.modality(name)
    if tuple(m.shape) != tuple(shape):
      raise fmt.DatasetError(f"{where}: modality {name!r} has shape {list(m.shape)} in the dataset but "
                             f"{list(shape)} in the config (layout.{name}.shape)")
    if tuple(m.segments) != tuple(segments):
      raise fmt.DatasetError(f"{where}: modality {name!r} has segments {list(m.segments)} in the dataset "
                             f"but {list(segments)} in the config (layout.{name}.segments)")


def layout_from_config(layout: Any) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """`config.layout` (modalities + per-modality shape/segments) → the `expected` of `check_layout`."""
  return {name: (tuple(layout[name].shape), tuple(layout[name].segments)) for name in layout.modalities}


class _DecodeRecord:
  """ArrayRecord bytes → normalised example. A class (not a closure) so worker processes can get it."""

  def __init__(self, spec: fmt.DatasetSpec, source: shards.ShardedSource, normalize: bool = True):
    self.spec, self.source, self.normalize = spec, source, normalize

  def __call__(self, index: int, raw: bytes) -> dict[str, Any]:
    ex = fmt.decode_record(raw, self.spec, where=self.source.name(index))
    if not self.normalize:
      return {**{m.name: np.asarray(ex[m.name], np.float32) for m in self.spec.modalities},
              "source_id": ex["source_id"]}
    return _normalized(self.spec, ex)


class _FromTfdsExample:
  """A TFDS example dict (already decoded numpy) → the same normalised example, after checking it."""

  def __init__(self, spec: fmt.DatasetSpec, where: str):
    self.spec, self.where = spec, where

  def __call__(self, index: int, ex: Mapping[str, Any]) -> dict[str, Any]:
    sid = ex["source_id"]
    sid = sid.decode() if isinstance(sid, bytes) else str(sid)
    out: dict[str, Any] = {"source_id": sid}
    for m in self.spec.modalities:
      x = np.asarray(ex[m.name])
      if x.shape != m.shape:
        raise fmt.DatasetError(f"{self.where} example {index} (source_id {sid!r}): modality {m.name!r} "
                               f"has shape {list(x.shape)}, expected {list(m.shape)}")
      out[m.name] = x
    return _normalized(self.spec, out)


def _normalized(spec: fmt.DatasetSpec, ex: dict[str, Any]) -> dict[str, Any]:
  out = {m.name: fmt.normalize(spec, m.name, ex[m.name]) for m in spec.modalities}
  out["source_id"] = ex["source_id"]
  return out


def _build(source: Any, decode: Callable[[int, Any], dict[str, Any]], *, batch_size: int, seed: int,
           shard_index: int, shard_count: int, num_epochs: int | None, shuffle: bool, num_threads: int,
           prefetch: int, worker_count: int) -> grain.IterDataset:
  if batch_size < 1:
    raise fmt.DatasetError(f"batch_size is {batch_size}, expected >= 1 (the per-process batch)")
  if not 0 <= shard_index < shard_count:
    raise fmt.DatasetError(f"shard_index {shard_index} must be in [0, shard_count={shard_count})")
  ds = grain.MapDataset.source(source).map_with_index(decode)
  if shuffle:
    ds = ds.seed(seed).shuffle()
  ds = ds.repeat(num_epochs)  # reseeds the shuffle every epoch
  # Batch, then shard: global batch g is elements [g*G, (g+1)*G) of the shared order (G = batch_size *
  # shard_count) and process p holds its rows [p*B, (p+1)*B), so the global batch sequence does not
  # depend on the number of processes. The cut gives every process the same number of batches.
  ds = ds.batch(batch_size, drop_remainder=True)
  if shard_count > 1:
    ds = ds[:len(ds) // shard_count * shard_count][shard_index::shard_count]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if worker_count > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return it


def _absl_flags_parsed() -> None:
  # Grain's worker processes read absl flags; outside `app.run` they must be marked parsed first.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_dataset(data_dir: fmt.PathLike, split: str, *, batch_size: int, seed: int,
                 shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                 shuffle: bool = True, num_threads: int = 2, prefetch: int = 2,
                 worker_count: int = 0, normalize: bool = True) -> grain.IterDataset:
  """Batches of split `split` of the monl dataset at `data_dir` (local or gs://).

  Yields `{name: np.float32 [batch_size, *shape] normalised, "source_id": str array [batch_size]}`.
  `batch_size` is per process; `shard_index`/`shard_count` are this process's index and the number of
  processes; `num_epochs=None` repeats forever; `normalize=False` yields the raw float32 values (media
  datasets for the autoencoder). `num_threads` read threads fill a buffer of `prefetch`
  batches (keep prefetch >= num_threads, or threads idle); `worker_count > 0` adds that many worker
  processes (slower than threads on small hosts; same batch order). Raises DatasetError for a missing/malformed
  dataset.json, a missing shard file, or shards holding a different number of records than listed."""
  data_dir = epath.Path(data_dir)
  spec = fmt.load_spec(data_dir)
  paths = fmt.shard_paths(data_dir, split, spec)
  source = shards.ShardedSource(paths)
  expected = spec.split(split).num_examples
  if len(source) != expected:
    raise fmt.DatasetError(f"{data_dir}: split {split!r} shards hold {len(source)} records, but "
                           f"{fmt.SPEC_FILE} lists num_examples={expected}")
  return _build(source, _DecodeRecord(spec, source, normalize), batch_size=batch_size,
                seed=seed, shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs,
                shuffle=shuffle, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)


def make_dataset_from_source(source: Any, spec: fmt.DatasetSpec, *, batch_size: int, seed: int,
                             shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                             shuffle: bool = True, num_threads: int = 2, prefetch: int = 2,
                             worker_count: int = 0, where: str = "data source") -> grain.IterDataset:
  """Like `make_dataset`, over any random-access source of decoded example dicts
  `{name: array, "source_id": str | bytes}` (e.g. `tfds.data_source(...)`), normalised with `spec`."""
  return _build(source, _FromTfdsExample(spec, where), batch_size=batch_size, seed=seed,
                shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs,
                shuffle=shuffle, num_threads=num_threads, prefetch=prefetch, worker_count=worker_count)


def read_clips(path: fmt.PathLike, split: str, num: int, names: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
  """The first `num` clips, in storage order and raw (un-normalised), for sampling and evaluation.

  `path` is a monl dataset directory (its `split`) or a directory of `.npz` clips (sorted by name,
  one array per modality). Returns (source ids, {name: [n, *shape]}), n = min(num, available).
  """
  ids, arrays = [], {m: [] for m in names}
  for batch_ids, batch in iter_clips(path, split, num, names, batch=max(num, 1)):
    ids += batch_ids
    for m in names:
      arrays[m].append(batch[m])
  return ids, {m: np.concatenate(v) for m, v in arrays.items()}


def iter_clips(path: fmt.PathLike, split: str, num: int, names: Sequence[str], batch: int
               ) -> Iterator[tuple[list[str], dict[str, np.ndarray]]]:
  """`read_clips` in batches of `batch` clips, read lazily: (ids, {name: [b, *shape]}) per batch, so
  a pass over many clips (e.g. I3D features of 2048 clips) holds one batch in memory."""
  path = epath.Path(path)
  if (path / fmt.SPEC_FILE).exists():
    spec = fmt.load_spec(path)
    source = shards.ShardedSource(fmt.shard_paths(path, split, spec))
    n = min(num, len(source))
    read = lambda i: fmt.decode_record(source[i], spec, where=source.name(i))
    name_of = None
  else:
    files = sorted(path.glob("*.npz"))
    if not files:
      raise fmt.DatasetError(f"{path}: neither a monl dataset ({fmt.SPEC_FILE}) nor a directory of .npz clips")
    n = min(num, len(files))
    read = lambda i: fmt.load_npz(files[i], names)
    name_of = lambda i: files[i].name
  for start in range(0, n, batch):
    clips = [read(i) for i in range(start, min(start + batch, n))]
    ids = [c["source_id"] for c in clips] if name_of is None else [name_of(i) for i in range(start, start + len(clips))]
    yield ids, {m: np.stack([c[m] for c in clips]) for m in names}

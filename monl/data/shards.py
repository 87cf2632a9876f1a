"""Reading a split's ArrayRecord shards so that every failure names the shard file and the record.

ArrayRecord's own errors name neither ("ArrayRecord file should be at least 64KB big", "Corrupted
Riegeli/records file ... at byte 22136", a bare RuntimeError for a truncated file). `ShardedSource` is
the random-access source the pipeline reads (one ArrayRecord reader per shard, global index -> (shard,
record)); `verify` reads and decodes every record of every shard and lists the bad ones
(`python -m monl.main data --verify DIR`).
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence

import grain
from etils import epath
from tqdm import tqdm

from monl.data import format as fmt

# What ArrayRecord / Riegeli raise for a damaged, truncated or unreadable file.
READ_ERRORS = (RuntimeError, OSError, ValueError)


class ShardedSource:
  """`len()` and `[i]` (the raw record bytes) over the shards `paths`, in order.

  Raises DatasetError naming the shard when a shard cannot be opened, and the shard and record
  when a record cannot be read. Picklable (Grain worker processes get a copy)."""

  def __init__(self, paths: Sequence[epath.PathLike]):
    self.paths = [str(p) for p in paths]
    self._sources = [_open(p) for p in self.paths]
    self._ends = []
    total = 0
    for s in self._sources:
      total += len(s)
      self._ends.append(total)

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def _find(self, index: int) -> tuple[int, int]:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of {len(self)}")
    k = bisect.bisect_right(self._ends, index)
    return k, index - (self._ends[k - 1] if k else 0)

  def name(self, index: int) -> str:
    """'<shard path> record <i>' of global record `index` (taken modulo the length, as Grain indexes a
    repeated source), for messages."""
    k, local = self._find(index % len(self))
    return f"{self.paths[k]} record {local}"

  def __getitem__(self, index: int) -> bytes:
    k, local = self._find(index)
    try:
      return self._sources[k][local]
    except READ_ERRORS as e:
      raise fmt.DatasetError(f"{self.paths[k]}: record {local} cannot be read ({type(e).__name__}: {e}); "
                             f"`python -m monl.main data --verify DIR` lists every bad record") from e


def _open(path: str) -> grain.sources.ArrayRecordDataSource:
  try:
    return grain.sources.ArrayRecordDataSource([path])
  except READ_ERRORS as e:
    raise fmt.DatasetError(f"{path}: not a readable ArrayRecord shard ({type(e).__name__}: {e}): "
                           f"truncated, damaged or not written by monl") from e


def verify(data_dir: epath.PathLike, progress: bool = True) -> tuple[int, list[tuple[str, str]]]:
  """Reads and decodes every record of every shard of every split of the dataset at `data_dir`.

  Returns (records read, [(shard or 'shard record i', reason)]); an empty list means all is well.
  Also checks each split's record count against dataset.json."""
  spec = fmt.load_spec(data_dir)
  bad: list[tuple[str, str]] = []
  read = 0
  bar = tqdm(total=sum(s.num_examples for s in spec.splits.values()), desc="verify", unit="record",
             disable=not progress)
  for split, info in spec.splits.items():
    count = 0
    for path in fmt.shard_paths(data_dir, split, spec):
      try:
        source = _open(str(path))
      except fmt.DatasetError as e:
        bad.append((str(path), str(e).split(": ", 1)[1]))
        continue
      count += len(source)
      for i in range(len(source)):
        try:
          fmt.decode_record(source[i], spec, where="record")
        except READ_ERRORS as e:  # includes DatasetError, a ValueError
          bad.append((f"{path} record {i}", f"{type(e).__name__}: {e}"))
        read += 1
        bar.update(1)
    if count != info.num_examples:
      bad.append((f"split {split!r}", f"its readable shards hold {count} records, but {fmt.SPEC_FILE} lists "
                                      f"num_examples={info.num_examples}"))
  bar.close()
  return read, bad

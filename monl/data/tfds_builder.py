"""A TFDS route to the same data: a `GeneratorBasedBuilder` writing ArrayRecord (no TensorFlow needed).

Build (from a monl dataset directory, or from an npz-per-split input directory, which first goes
through `monl.data.prepare` into a temporary monl dataset so validation and statistics follow exactly
the same rules):

    spec = build_tfds(source_dir, tfds_data_dir)                # → tfds_data_dir/monl_latents/1.0.0/
    source, spec = load_tfds_source(tfds_data_dir, "train")     # tfds.data_source(...) + the spec
    ds = pipeline.make_dataset_from_source(source, spec, batch_size=32, seed=0)

Features: one `tfds.features.Tensor(shape, dtype)` per modality (raw, un-normalised values) and
`source_id` (Text). The monl `dataset.json` dict (modalities, segments, normalisation, ...) is kept in
the TFDS metadata (`metadata.json`, key "monl_spec"), so readers normalise exactly like the ArrayRecord
route. TFDS shuffles examples at write time: `source[i]` is not the i-th example of the monl shards;
compare the two routes by `source_id`.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils
from etils import epath

from monl.data import format as fmt

BUILDER_NAME = "monl_latents"
SPEC_METADATA_KEY = "monl_spec"


class MonlLatents(tfds.core.GeneratorBasedBuilder):
  """monl latents as a TFDS dataset. `source_dir` (a monl dataset) is needed to build, not to read."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "monl dataset format v1 (raw latents, normalisation in metadata)."}

  # TFDS 4.9.10 finds a builder's code path via the `importlib_resources` backport, which it does not
  # install on Python >= 3.9 (ModuleNotFoundError when the builder lives in a package): say it here.
  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(self, *, source_dir: fmt.PathLike | None = None, **kwargs: Any):
    self._source_dir = epath.Path(source_dir) if source_dir is not None else None
    self._spec = fmt.load_spec(self._source_dir) if self._source_dir is not None else None
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @property
  def monl_spec(self) -> fmt.DatasetSpec | None:
    """The spec of the source monl dataset (None when the builder only reads)."""
    return self._spec

  def _info(self) -> tfds.core.DatasetInfo:
    if self._spec is None:
      # Reading: TFDS restores features and metadata from the prepared directory's JSON files.
      return tfds.core.DatasetInfo(builder=self, description=__doc__)
    features = {m.name: tfds.features.Tensor(shape=m.shape, dtype=np.dtype(m.dtype))
                for m in self._spec.modalities}
    features["source_id"] = tfds.features.Text()
    metadata = tfds.core.MetadataDict({SPEC_METADATA_KEY: fmt.spec_to_json(self._spec)})
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=tfds.features.FeaturesDict(features), metadata=metadata)

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
    if self._spec is None:
      raise fmt.DatasetError(f"{BUILDER_NAME}: building needs source_dir (a monl dataset directory)")
    return {split: self._generate_examples(split) for split in self._spec.splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    paths = fmt.shard_paths(self._source_dir, split, self._spec)
    source = grain.sources.ArrayRecordDataSource([str(p) for p in paths])
    where = f"{self._source_dir} split {split!r}"
    for i in range(len(source)):
      ex = fmt.decode_record(source[i], self._spec, where=f"{where} record {i}")
      yield ex["source_id"], ex  # source ids are unique within a split (file names)


def build_tfds(source_dir: fmt.PathLike, data_dir: fmt.PathLike,
               prepare_kwargs: Mapping[str, Any] | None = None) -> fmt.DatasetSpec:
  """Builds the TFDS dataset under `data_dir` from a monl dataset, or from an npz input directory.

  An npz input (no dataset.json) is first prepared with `prepare.prepare(**prepare_kwargs)` (e.g.
  `num_segments=4`) into a temporary directory. Returns the spec stored in the TFDS metadata."""
  source_dir = epath.Path(source_dir)
  if (source_dir / fmt.SPEC_FILE).exists():
    return _build_from_monl(source_dir, data_dir)
  from monl.data import prepare  # only this route needs it
  with tempfile.TemporaryDirectory(prefix="monl-tfds-") as tmp:
    out = epath.Path(tmp) / "dataset"
    prepare.prepare(source_dir, out, **{"progress": False, **(prepare_kwargs or {})})
    return _build_from_monl(out, data_dir)


def _build_from_monl(source_dir: epath.Path, data_dir: fmt.PathLike) -> fmt.DatasetSpec:
  builder = MonlLatents(source_dir=source_dir, data_dir=data_dir)
  builder.download_and_prepare()
  return builder.monl_spec


def load_tfds_source(data_dir: fmt.PathLike, split: str) -> tuple[Any, fmt.DatasetSpec]:
  """`(tfds.data_source(monl_latents, split), spec)` for a dataset built by `build_tfds`."""
  path = epath.Path(data_dir)
  if not (path / BUILDER_NAME).exists():
    raise fmt.DatasetError(f"{path}: no TFDS dataset {BUILDER_NAME!r} here (run build_tfds first)")
  builder = tfds.builder(BUILDER_NAME, data_dir=data_dir)
  meta = builder.info.metadata
  if meta is None or SPEC_METADATA_KEY not in meta:
    raise fmt.DatasetError(f"{path}/{BUILDER_NAME}: metadata.json has no {SPEC_METADATA_KEY!r} key "
                           f"(not built by monl.data.tfds_builder?)")
  spec = fmt.spec_from_json(meta[SPEC_METADATA_KEY], where=f"{path}/{BUILDER_NAME} metadata")
  source = tfds.data_source(BUILDER_NAME, split=split, data_dir=data_dir, download=False)
  return source, spec

"""Tests of the TFDS route: same examples as the ArrayRecord route (compared by source_id)."""
import numpy as np
import pytest

from monl.data import format as fmt
from monl.data import pipeline
from monl.data import prepare
from monl.data import synthetic
from monl.data import tfds_builder


def _by_id(ds):
  out = {}
  for b in ds:
    for i, sid in enumerate(b["source_id"]):
      out[str(sid)] = {k: b[k][i] for k in ("video", "audio")}
  return out


@pytest.mark.parametrize("from_npz", [False, True])
def test_tfds_route_yields_the_same_examples(tmp_path, from_npz):
  synthetic.write_npz_dataset(tmp_path / "npz", 6, 3, seed=1)
  prepare.prepare(tmp_path / "npz", tmp_path / "ds", num_segments=4, num_shards=2, progress=False)
  source_dir = tmp_path / "npz" if from_npz else tmp_path / "ds"
  spec = tfds_builder.build_tfds(source_dir, tmp_path / "tfds", {"num_segments": 4, "num_shards": 2})
  assert spec.names == ("video", "audio")
  for split, n in (("train", 6), ("test", 3)):
    source, tspec = tfds_builder.load_tfds_source(tmp_path / "tfds", split)
    assert len(source) == n
    assert tspec.modalities == fmt.load_spec(tmp_path / "ds").modalities  # same normalisation
    via_tfds = _by_id(pipeline.make_dataset_from_source(source, tspec, batch_size=1, seed=0, num_epochs=1))
    via_ar = _by_id(pipeline.make_dataset(tmp_path / "ds", split, batch_size=1, seed=0, num_epochs=1))
    assert set(via_tfds) == set(via_ar) and len(via_ar) == n
    for sid, ex in via_ar.items():
      for k in ("video", "audio"):
        np.testing.assert_array_equal(via_tfds[sid][k], ex[k])


def test_load_errors(tmp_path):
  with pytest.raises(fmt.DatasetError, match=r"no TFDS dataset 'monl_latents' here"):
    tfds_builder.load_tfds_source(tmp_path, "train")

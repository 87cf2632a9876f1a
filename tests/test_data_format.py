"""Tests of the dataset format: dataset.json, records, shard paths, normalisation."""
import json

import numpy as np
import pytest
from etils import epath

from monl.data import format as fmt


def _spec(**overrides) -> fmt.DatasetSpec:
  video = fmt.ModalitySpec(name="video", shape=(4, 2, 2, 3), dtype="float32", segments=(1, 3),
                           mean=(0.5, -1.0, 2.0), std=(1.0, 2.0, 0.5), seconds_per_segment=(0.1, 0.3))
  audio = fmt.ModalitySpec(name="audio", shape=(6, 2), dtype="float32", segments=(3, 3),
                           mean=(0.0, 1.0), std=(3.0, 1.0))
  kw = dict(modalities=(video, audio), splits={"train": fmt.SplitInfo(5, 2), "test": fmt.SplitInfo(1, 1)},
            produced_by={"tool": "test"})
  kw.update(overrides)
  return fmt.DatasetSpec(**kw)


def test_spec_round_trip(tmp_path):
  spec = _spec()
  fmt.save_spec(tmp_path, spec)
  loaded = fmt.load_spec(tmp_path)
  assert loaded == spec
  assert loaded.num_segments == 2
  assert loaded.modality("audio").shape == (6, 2)
  assert loaded.names == ("video", "audio")
  d = json.loads((tmp_path / "dataset.json").read_text())
  assert d["format_version"] == 1 and d["normalization"]["video"]["std"] == [1.0, 2.0, 0.5]
  with pytest.raises(fmt.DatasetError, match=r"modality 'depth'.*\['video', 'audio'\]"):
    loaded.modality("depth")
  with pytest.raises(fmt.DatasetError, match=r"split 'val'"):
    loaded.split("val")


def test_missing_spec_names_the_file(tmp_path):
  with pytest.raises(fmt.DatasetError, match=r"dataset\.json: missing"):
    fmt.load_spec(tmp_path)


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d.pop("splits"), r"missing key 'splits'"),
    (lambda d: d.update(format_version=2), r"format_version is 2, expected 1"),
    (lambda d: d["modalities"][0].update(segments=[1, 2]), r"'video': segments \[1, 2\] \(sum 3\).*shape\[0\] = 4"),
    (lambda d: d["modalities"][1].update(segments=[2, 2, 2]), r"'audio': has 3 segments, expected 2"),
    (lambda d: d["normalization"]["audio"].update(mean=[0.0]), r"normalization\['audio'\]\.mean has 1 entries, expected 2"),
    (lambda d: d["normalization"]["audio"].update(std=[0.0, 1.0]), r"std \[0\.0, 1\.0\] must be > 0"),
    (lambda d: d["modalities"][0].update(dtype="int8"), r"dtype 'int8' has kind 'i'"),
    (lambda d: (d["modalities"][0].update(name="source_id"),
                d["normalization"].update(source_id=d["normalization"]["video"])), r"reserved"),
])
def test_malformed_spec(tmp_path, edit, pattern):
  d = fmt.spec_to_json(_spec())
  edit(d)
  (tmp_path / "dataset.json").write_text(json.dumps(d))
  with pytest.raises(fmt.DatasetError, match=pattern):
    fmt.load_spec(tmp_path)


def test_not_json(tmp_path):
  (tmp_path / "dataset.json").write_text("{not json")
  with pytest.raises(fmt.DatasetError, match=r"dataset\.json: not valid JSON"):
    fmt.load_spec(tmp_path)


def _clip(spec, rng):
  return {m.name: rng.normal(size=m.shape).astype(m.dtype) for m in spec.modalities}


def test_record_round_trip():
  spec = _spec()
  arrays = _clip(spec, np.random.default_rng(0))
  ex = fmt.decode_record(fmt.encode_record("a/b.npz", arrays), spec)
  assert ex["source_id"] == "a/b.npz"
  for name, x in arrays.items():
    assert ex[name].dtype == x.dtype and ex[name].shape == x.shape
    np.testing.assert_array_equal(ex[name], x)


def test_record_errors():
  spec = _spec()
  arrays = _clip(spec, np.random.default_rng(0))
  with pytest.raises(fmt.DatasetError, match=r"shard7: not a valid msgpack record"):
    fmt.decode_record(b"\xc1garbage", spec, where="shard7")
  bad_shape = dict(arrays, audio=np.zeros((5, 2), np.float32))
  with pytest.raises(fmt.DatasetError, match=r"'x\.npz'.*'audio' has shape \[5, 2\], expected \[6, 2\]"):
    fmt.decode_record(fmt.encode_record("x.npz", bad_shape), spec)
  bad_dtype = dict(arrays, audio=arrays["audio"].astype(np.float64))
  with pytest.raises(fmt.DatasetError, match=r"'audio' has dtype float64, expected float32"):
    fmt.decode_record(fmt.encode_record("x.npz", bad_dtype), spec)
  with pytest.raises(fmt.DatasetError, match=r"modalities \['video'\], expected \['audio', 'video'\]"):
    fmt.decode_record(fmt.encode_record("x.npz", {"video": arrays["video"]}), spec)
  raw = fmt.encode_record("x.npz", arrays)
  with pytest.raises(fmt.DatasetError):
    fmt.decode_record(raw[:-7], spec)  # truncated


def test_shard_paths(tmp_path):
  spec = _spec()
  fmt.save_spec(tmp_path, spec)
  for i in range(2):
    (tmp_path / fmt.shard_name("train", i, 2)).write_bytes(b"")
  paths = fmt.shard_paths(tmp_path, "train")
  assert [p.name for p in paths] == ["train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
  with pytest.raises(fmt.DatasetError, match=r"split 'test'.*1 are missing: \['test-00000-of-00001"):
    fmt.shard_paths(tmp_path, "test")


def test_gs_paths_are_built_offline():
  # Path handling only: any gs:// I/O would hang without network.
  paths = fmt.shard_paths("gs://bucket/data/ds", "train", _spec(), check_exists=False)
  assert [str(p) for p in paths] == ["gs://bucket/data/ds/train-00000-of-00002.array_record",
                                     "gs://bucket/data/ds/train-00001-of-00002.array_record"]
  assert str(epath.Path("gs://bucket/data/ds") / fmt.SPEC_FILE) == "gs://bucket/data/ds/dataset.json"


def test_normalize_round_trip():
  spec = _spec()
  x = np.random.default_rng(1).normal(3.0, 5.0, size=(7, 4, 2, 2, 3)).astype(np.float32)
  z = fmt.normalize(spec, "video", x)
  assert z.dtype == np.float32
  np.testing.assert_allclose(z[..., 1], (x[..., 1] + 1.0) / 2.0, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fmt.denormalize(spec, "video", z), x, rtol=1e-6, atol=1e-6)
  with pytest.raises(fmt.DatasetError, match=r"'audio': array has 3 channels.*expected 2"):
    fmt.normalize(spec, "audio", x)

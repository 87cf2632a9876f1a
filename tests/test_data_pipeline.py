"""Tests of the Grain pipeline: round trip, order, resumable state (incl. Orbax), shards, errors."""
import re
import json

import grain
import numpy as np
import pytest
from etils import epath

from monl.data import format as fmt
from monl.data import pipeline
from monl.data import prepare
from monl.data import synthetic

N_TRAIN, N_TEST = 20, 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """A tiny synthetic dataset (3 shards) and its raw clips by (split, source_id)."""
  root = tmp_path_factory.mktemp("pipeline")
  synthetic.write_npz_dataset(root / "npz", N_TRAIN, N_TEST, seed=3)
  prepare.prepare(root / "npz", root / "ds", num_segments=4, num_shards=3, progress=False)
  clips = {}
  for split in ("train", "test"):
    for p in sorted((root / "npz" / split).iterdir()):
      with np.load(p) as z:
        clips[(split, p.name)] = {"video": z["video"], "audio": z["audio"]}
  return root / "ds", clips


def _ids(batches):
  return [sid for b in batches for sid in b["source_id"]]


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_round_trip_after_denormalisation(data):
  ds_dir, clips = data
  spec = fmt.load_spec(ds_dir)
  batches = list(pipeline.make_dataset(ds_dir, "train", batch_size=4, seed=0, num_epochs=1))
  assert len(batches) == N_TRAIN // 4
  b = batches[0]
  assert b["video"].shape == (4, 16, 16, 16, 3) and b["video"].dtype == np.float32
  assert b["audio"].shape == (4, 64, 16) and b["audio"].dtype == np.float32
  assert b["source_id"].shape == (4,) and b["source_id"].dtype.kind == "U"
  assert sorted(_ids(batches)) == sorted(s for (split, s) in clips if split == "train")
  for batch in batches:
    for i, sid in enumerate(batch["source_id"]):
      for name in ("video", "audio"):
        raw = fmt.denormalize(spec, name, batch[name][i])
        np.testing.assert_allclose(raw, clips[("train", sid)][name], rtol=1e-6, atol=1e-6)
  # Normalised: roughly zero mean, unit std per channel over the split.
  audio = np.concatenate([b["audio"] for b in batches])
  assert np.abs(audio.mean(axis=(0, 1))).max() < 0.2 and np.abs(audio.std(axis=(0, 1)) - 1).max() < 0.2


def test_order_depends_on_seed_only(data):
  ds_dir, _ = data
  def order(seed, **kw):
    return _ids(pipeline.make_dataset(ds_dir, "train", batch_size=2, seed=seed, num_epochs=2, **kw))
  assert order(0) == order(0)
  assert order(0) != order(1)
  first, second = order(0)[:N_TRAIN], order(0)[N_TRAIN:]
  assert sorted(first) == sorted(second) and first != second  # every epoch reshuffled
  unshuffled = order(0, shuffle=False)[:N_TRAIN]
  assert unshuffled == sorted(unshuffled)


def test_state_restore_get_set(data):
  ds_dir, _ = data
  ds = pipeline.make_dataset(ds_dir, "train", batch_size=3, seed=5)
  it = iter(ds)
  _take(it, 8)  # past the first epoch boundary (20 / 3 per epoch)
  state = it.get_state()
  expected = _take(it, 5)
  it2 = iter(pipeline.make_dataset(ds_dir, "train", batch_size=3, seed=5))
  it2.set_state(state)
  got = _take(it2, 5)
  for a, b in zip(expected, got):
    assert list(a["source_id"]) == list(b["source_id"])
    np.testing.assert_array_equal(a["video"], b["video"])


def test_state_restore_orbax(data, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  ds_dir, _ = data
  it = iter(pipeline.make_dataset(ds_dir, "train", batch_size=2, seed=1))
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=2)) as mgr:
    mgr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
  expected = _ids(_take(it, 6))
  it2 = iter(pipeline.make_dataset(ds_dir, "train", batch_size=2, seed=1))
  with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
    assert mgr.latest_step() == 3
    mgr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  assert _ids(_take(it2, 6)) == expected


@pytest.mark.parametrize("shard_count", [2, 3])
def test_process_shards_disjoint_equal_and_covering(data, shard_count):
  ds_dir, _ = data
  one = _ids(pipeline.make_dataset(ds_dir, "train", batch_size=1, seed=2, num_epochs=1))
  shards = [_ids(pipeline.make_dataset(ds_dir, "train", batch_size=1, seed=2, num_epochs=1,
                                       shard_index=i, shard_count=shard_count))
            for i in range(shard_count)]
  flat = [s for shard in shards for s in shard]
  assert len(set(map(len, shards))) == 1  # every process runs the same number of steps
  # the 20 examples less the last incomplete round of shard_count batches (20 // 3 * 3 = 18)
  assert len(flat) == len(set(flat)) == N_TRAIN // shard_count * shard_count
  assert set(flat) == set(one[:len(flat)])
  with pytest.raises(fmt.DatasetError, match=r"shard_index 3 must be in \[0, shard_count=3\)"):
    pipeline.make_dataset(ds_dir, "train", batch_size=1, seed=2, shard_index=3, shard_count=3)


def test_global_batches_do_not_depend_on_the_process_count(data):
  """Step k's global batch (process 0's rows, then process 1's, ...) is the same for 1, 2 and 4
  processes, across epoch boundaries (20 examples, global batch 8: the third batch spans two epochs)."""
  ds_dir, _ = data
  steps, global_batch = 7, 8
  def global_ids(count):
    its = [iter(pipeline.make_dataset(ds_dir, "train", batch_size=global_batch // count, seed=4,
                                      shard_index=i, shard_count=count)) for i in range(count)]
    return [[sid for it in parts for sid in it["source_id"]] for parts in zip(*[_take(it, steps) for it in its])]
  one = global_ids(1)
  assert len({sid for batch in one[:2] for sid in batch}) == 16  # distinct within an epoch
  assert global_ids(2) == one and global_ids(4) == one


def test_worker_processes_give_the_same_batches(data):
  ds_dir, _ = data
  kw = dict(batch_size=2, seed=0, num_epochs=1)
  in_process = _ids(pipeline.make_dataset(ds_dir, "test", **kw))
  assert _ids(pipeline.make_dataset(ds_dir, "test", worker_count=1, **kw)) == in_process


def _copy(src, dst):
  dst.mkdir()
  for p in src.iterdir():
    (dst / p.name).write_bytes(p.read_bytes())
  return dst


def test_missing_dataset_and_shard(data, tmp_path):
  ds_dir, _ = data
  with pytest.raises(fmt.DatasetError, match=r"dataset\.json: missing"):
    pipeline.make_dataset(tmp_path, "train", batch_size=2, seed=0)
  broken = _copy(epath.Path(ds_dir), tmp_path / "ds")
  (broken / "train-00001-of-00003.array_record").unlink()
  with pytest.raises(fmt.DatasetError, match=r"1 are missing: \['train-00001-of-00003\.array_record'\]"):
    pipeline.make_dataset(broken, "train", batch_size=2, seed=0)
  with pytest.raises(fmt.DatasetError, match=r"split 'val'"):
    pipeline.make_dataset(ds_dir, "val", batch_size=2, seed=0)


def _rewrite_shard(path, records):
  prepare._write_shard(path, records)


def test_corrupt_record_and_shape_mismatch(data, tmp_path):
  ds_dir, _ = data
  broken = _copy(epath.Path(ds_dir), tmp_path / "ds")
  spec = fmt.load_spec(broken)
  n = spec.splits["test"].num_examples
  paths = fmt.shard_paths(broken, "test")
  for p in paths:
    p.unlink()
  _rewrite_shard(paths[0], [b"\x00not msgpack"] * 2)
  for p in paths[1:]:
    _rewrite_shard(p, [b"\x00not msgpack"] * ((n - 2) // (len(paths) - 1)))
  with pytest.raises(fmt.DatasetError, match=r"test-0000\d-of-0000\d.array_record record \d+ \(source_id|"
                                             r"test-0000\d-of-0000\d.array_record record \d+: not a valid msgpack record"):
    next(iter(pipeline.make_dataset(broken, "test", batch_size=2, seed=0, num_epochs=1)))

  # dataset.json says audio is [64, 8]; the records hold [64, 16].
  bad = _copy(epath.Path(ds_dir), tmp_path / "ds2")
  d = json.loads((bad / "dataset.json").read_text())
  d["modalities"][1]["shape"] = [64, 8]
  d["normalization"]["audio"] = {"mean": [0.0] * 8, "std": [1.0] * 8}
  (bad / "dataset.json").write_text(json.dumps(d))
  with pytest.raises(fmt.DatasetError, match=r"modality 'audio' has shape \[64, 16\], expected \[64, 8\]"):
    next(iter(pipeline.make_dataset(bad, "test", batch_size=2, seed=0)))

  # More or fewer records than dataset.json lists.
  d = json.loads((epath.Path(ds_dir) / "dataset.json").read_text())
  d["splits"]["test"]["num_examples"] = n + 1
  (bad / "dataset.json").write_text(json.dumps(d))
  with pytest.raises(fmt.DatasetError, match=rf"shards hold {n} records, but dataset\.json lists num_examples={n + 1}"):
    pipeline.make_dataset(bad, "test", batch_size=2, seed=0)


def _damage(path, how):
  data = bytearray(path.read_bytes())
  if how == "truncated":
    data = data[:len(data) // 2]
  elif how == "flipped":
    data[len(data) // 3] ^= 0xFF
  elif how == "tiny":
    data = b"x" * 1000
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped", "tiny"])
def test_damaged_shard_is_named_by_train_reads_sample_reads_and_verify(data, tmp_path, how):
  """ArrayRecord's own messages name no file; every read path here names the shard (and the record)."""
  from monl.data import shards
  ds_dir, _ = data
  broken = _copy(epath.Path(ds_dir), tmp_path / "ds")
  shard = fmt.shard_paths(broken, "train")[1]
  _damage(shard, how)
  with pytest.raises(fmt.DatasetError, match=re.escape(str(shard))):
    list(pipeline.make_dataset(broken, "train", batch_size=2, seed=0, num_epochs=1))
  with pytest.raises(fmt.DatasetError, match=re.escape(str(shard))):
    pipeline.read_clips(broken, "train", N_TRAIN, ["video", "audio"])
  read, bad = shards.verify(broken, progress=False)
  assert bad and all(str(shard) in where or where == "split 'train'" for where, _ in bad), bad
  assert read >= N_TRAIN // 3 + N_TEST  # the intact shards are all read
  assert shards.verify(ds_dir, progress=False) == (N_TRAIN + N_TEST, [])


def test_check_layout(data):
  from configs import default
  ds_dir, _ = data
  spec = fmt.load_spec(ds_dir)
  from monl.train import loop
  config = loop.with_data_layout(default.get_config())
  pipeline.check_layout(spec, pipeline.layout_from_config(config.layout), where=str(ds_dir))
  with pytest.raises(fmt.DatasetError, match=r"'video' has shape \[16, 16, 16, 3\] in the dataset but \[16, 32, 32, 3\] in the config"):
    pipeline.check_layout(spec, {"video": ((16, 32, 32, 3), (4,) * 4), "audio": ((64, 16), (16,) * 4)}, "ds")
  with pytest.raises(fmt.DatasetError, match=r"'audio' has segments \[16, 16, 16, 16\] in the dataset but \[4, 20, 20, 20\]"):
    pipeline.check_layout(spec, {"video": ((16, 16, 16, 3), (4,) * 4), "audio": ((64, 16), (4, 20, 20, 20))}, "ds")
  with pytest.raises(fmt.DatasetError, match=r"dataset modalities \['audio', 'video'\] != config modalities \['video'\]"):
    pipeline.check_layout(spec, {"video": ((16, 16, 16, 3), (4,) * 4)}, "ds")

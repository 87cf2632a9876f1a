"""Tests of `monl.data.prepare`: validation of every input file, statistics, segments, atomic writes."""
import re

import numpy as np
import pytest

from monl.data import format as fmt
from monl.data import prepare

VIDEO = (4, 2, 2, 3)
AUDIO = (8, 5)


def _write_inputs(root, n_train=6, n_test=2, seed=0):
  rng = np.random.default_rng(seed)
  clips = {}
  for split, n in (("train", n_train), ("test", n_test)):
    (root / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      # Keys deliberately not in the default order (video first).
      c = {"audio": rng.normal(1.0, 2.0, AUDIO).astype(np.float32),
           "video": rng.uniform(0, 1, VIDEO).astype(np.float32)}
      np.savez(root / split / f"c{i:02d}.npz", **c)
      clips[(split, f"c{i:02d}.npz")] = c
  return clips


def _no_leftovers(tmp_path, name="out"):
  return not [p.name for p in tmp_path.iterdir() if p.name.startswith(name)]


def test_prepare_happy_path(tmp_path):
  clips = _write_inputs(tmp_path / "in")
  (tmp_path / "in" / "train" / "nested").mkdir()
  c = {"audio": np.ones(AUDIO, np.float32), "video": np.zeros(VIDEO, np.float32), "extra": np.ones(3)}
  np.savez(tmp_path / "in" / "train" / "nested" / "z.npz", **c)
  clips[("train", "nested/z.npz")] = c
  spec = prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, num_shards=4,
                         modalities=["video", "audio"], progress=False)
  assert spec == fmt.load_spec(tmp_path / "out")
  assert spec.names == ("video", "audio")
  assert spec.modality("video").segments == (2, 2) and spec.modality("audio").segments == (4, 4)
  assert spec.splits["train"] == fmt.SplitInfo(7, 4)
  assert spec.splits["test"] == fmt.SplitInfo(2, 2)  # never more shards than examples
  assert len(fmt.shard_paths(tmp_path / "out", "train")) == 4
  train = np.stack([c["audio"] for (s, _), c in clips.items() if s == "train"]).astype(np.float64)
  np.testing.assert_allclose(spec.modality("audio").mean, train.reshape(-1, 5).mean(0), rtol=1e-10)
  np.testing.assert_allclose(spec.modality("audio").std, train.reshape(-1, 5).std(0), rtol=1e-10)
  assert spec.produced_by["stats"]["num_examples"] == 7
  assert _no_leftovers(tmp_path, "out.")


def test_default_modality_order_and_explicit_segments(tmp_path):
  _write_inputs(tmp_path / "in")
  spec = prepare.prepare(tmp_path / "in", tmp_path / "out", segments={"video": (1, 3), "audio": (2, 6)},
                         seconds_per_segment={"video": (0.25, 0.75)}, num_shards=1, progress=False)
  assert spec.names == ("video", "audio")  # from keys (audio, video): video first
  assert spec.produced_by["modalities_from"] == "first file"
  assert spec.modality("video").segments == (1, 3)
  assert spec.modality("video").seconds_per_segment == (0.25, 0.75)
  assert spec.modality("audio").seconds_per_segment is None


def test_non_divisible_segments(tmp_path):
  _write_inputs(tmp_path / "in")
  with pytest.raises(fmt.DatasetError, match=r"modality 'audio': time length 8 is not divisible into 3"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", segments={"video": (1, 1, 2)}, num_segments=3,
                    progress=False)
  with pytest.raises(fmt.DatasetError, match=r"--segments video=1,1: sums to 2, expected the time length 4"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", segments={"video": (1, 1)}, num_segments=2,
                    progress=False)
  with pytest.raises(fmt.DatasetError, match=r"segment counts differ"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", segments={"video": (1, 1, 2)}, num_segments=2,
                    progress=False)
  assert _no_leftovers(tmp_path)


def _write_bad_inputs(root):
  clips = _write_inputs(root)
  good = clips[("train", "c00.npz")]
  bad = {
      "missing_key.npz": ({"video": good["video"]}, r"missing key\(s\) \['audio'\]"),
      "rank.npz": ({"video": good["video"][0], "audio": good["audio"]}, r"'video' has rank 3 .* expected rank 4"),
      "shape.npz": ({"video": good["video"], "audio": good["audio"][:7]}, r"'audio' has shape \[7, 5\], expected \[8, 5\]"),
      "nan.npz": ({"video": good["video"], "audio": np.where(np.eye(8, 5) > 0, np.nan, good["audio"]).astype(np.float32)},
                  r"'audio' has 5 NaN/Inf"),
      "inf.npz": ({"video": np.full(VIDEO, np.inf, np.float32), "audio": good["audio"]}, r"'video' has 48 NaN/Inf"),
      "int.npz": ({"video": good["video"].astype(np.int32), "audio": good["audio"]}, r"'video' has dtype int32 \(kind 'i'\)"),
      "f64.npz": ({"video": good["video"].astype(np.float64), "audio": good["audio"]}, r"'video' has dtype float64, expected float32"),
  }
  for name, (arrays, _) in bad.items():
    np.savez(root / "train" / name, **arrays)
  (root / "test" / "text.npz").write_bytes(b"this is not a zip file")
  (root / "test" / "damaged.npz").write_bytes(b"PK\x03\x04 and then nothing a zip needs")
  reasons = {name: pattern for name, (_, pattern) in bad.items()}
  reasons["text.npz"] = r"is not an \.npz archive \(a zip of \.npy arrays\): it starts with b'this is not a zi'"
  reasons["damaged.npz"] = r"unreadable \(BadZipFile"
  return reasons


def test_every_bad_file_reported_and_nothing_written(tmp_path):
  reasons = _write_bad_inputs(tmp_path / "in")
  with pytest.raises(prepare.BadInputsError, match=r"9 of 17 input files are bad") as e:
    prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, progress=False)
  problems = {p.rsplit("/", 1)[-1]: r for p, r in e.value.problems}
  assert set(problems) == set(reasons)
  for name, pattern in reasons.items():
    assert re.search(pattern, problems[name]), (name, problems[name])
  assert _no_leftovers(tmp_path)


def test_cli_refuses_then_skip_bad(tmp_path, capsys):
  _write_bad_inputs(tmp_path / "in")
  args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--num_segments", "2",
          "--no_progress"]
  assert prepare.main(args) == 2
  err = capsys.readouterr().err
  assert "refusing to write" in err and err.count(".npz: ") == 9
  assert not (tmp_path / "out").exists()
  assert prepare.main(args + ["--skip_bad", "--num_shards", "2"]) == 0
  err = capsys.readouterr().err
  assert "--skip_bad: skipped 9 bad files of 17" in err
  spec = fmt.load_spec(tmp_path / "out")
  assert spec.splits["train"].num_examples == 6 and spec.splits["test"].num_examples == 2
  assert spec.produced_by["skipped_bad"]["count"] == 9
  assert spec.produced_by["command"].startswith("python -m monl.data.prepare --input")


def test_refuses_to_overwrite(tmp_path):
  _write_inputs(tmp_path / "in")
  prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, progress=False)
  with pytest.raises(fmt.DatasetError, match=r"a monl dataset is already there; pass --overwrite"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, progress=False)
  spec = prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=4, num_shards=1, overwrite=True,
                         progress=False)
  assert fmt.load_spec(tmp_path / "out").modality("video").segments == (1, 1, 1, 1) == spec.modality("video").segments
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
      "dataset.json", "test-00000-of-00001.array_record", "train-00000-of-00001.array_record"]
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out.")] == []


def test_crash_mid_write_leaves_no_complete_dataset(tmp_path, monkeypatch):
  _write_inputs(tmp_path / "in")
  calls = []
  real = prepare._write_shard

  def flaky(path, records):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("disk full (simulated)")
    return real(path, records)

  monkeypatch.setattr(prepare, "_write_shard", flaky)
  with pytest.raises(OSError, match="simulated"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, progress=False)
  assert _no_leftovers(tmp_path)  # temp dir cleaned up, no output

  # A killed process gets no cleanup: the temp dir stays, but never looks like a dataset.
  calls.clear()
  monkeypatch.setattr(prepare, "_remove_tree", lambda path: None)
  with pytest.raises(OSError, match="simulated"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, progress=False)
  left = [p for p in tmp_path.iterdir() if p.name.startswith("out")]
  assert len(left) == 1 and left[0].name.startswith("out.tmp-")
  assert not (left[0] / "dataset.json").exists()
  with pytest.raises(fmt.DatasetError, match="missing"):
    fmt.load_spec(tmp_path / "out")
  with pytest.raises(fmt.DatasetError, match="missing"):
    fmt.load_spec(left[0])


def test_input_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(fmt.DatasetError, match=r"no split subdirectories"):
    prepare.prepare(tmp_path / "empty", tmp_path / "out", num_segments=2, progress=False)
  _write_inputs(tmp_path / "in")
  with pytest.raises(fmt.DatasetError, match=r"--stats_split 'val': not among the input splits \['test', 'train'\]"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, stats_split="val", progress=False)
  with pytest.raises(fmt.DatasetError, match=r"modality 'video': no segments"):
    prepare.prepare(tmp_path / "in", tmp_path / "out", progress=False)
  with pytest.raises(fmt.DatasetError, match=r"--segments 'video=1,x': values must be ints"):
    prepare.parse_named_lists(["video=1,x"], int, "--segments")


def test_overwrite_replaces_only_a_dataset_and_the_output_is_checked_first(tmp_path, monkeypatch):
  _write_inputs(tmp_path / "in")
  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "notes.txt").write_text("keep me")
  read = []
  monkeypatch.setattr(prepare, "find_split_files", lambda d: read.append(d) or {})
  with pytest.raises(fmt.DatasetError, match=r"holds 1 entries \(notes.txt\) and no dataset.json, so it is "
                                             r"not a monl dataset; --overwrite replaces only"):
    prepare.prepare(tmp_path / "in", notes, num_segments=2, overwrite=True, progress=False)
  assert (notes / "notes.txt").read_text() == "keep me"
  afile = tmp_path / "afile"
  afile.write_text("x")
  with pytest.raises(fmt.DatasetError, match=r"--output .*afile: is a file, not a directory"):
    prepare.prepare(tmp_path / "in", afile, num_segments=2, overwrite=True, progress=False)
  with pytest.raises(fmt.DatasetError, match=r"--output .*afile/sub: .*afile is a file, not a directory"):
    prepare.prepare(tmp_path / "in", afile / "sub", num_segments=2, progress=False)
  assert read == []  # refused before any input was read
  assert afile.read_text() == "x"


def test_one_huge_finite_value_is_reported_not_normalised_away(tmp_path):
  _write_inputs(tmp_path / "in", n_train=40)
  with np.load(tmp_path / "in" / "train" / "c07.npz") as z:
    clip = {k: z[k].copy() for k in z.files}
  clip["audio"][3, 2] = 3e38
  np.savez(tmp_path / "in" / "train" / "c07.npz", **clip)
  with pytest.raises(prepare.BadInputsError, match=r"1 of 42 input files are bad") as e:
    prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, progress=False)
  (path, reason), = e.value.problems
  assert path.endswith("train/c07.npz")
  assert re.match(r"key 'audio' channel 2 holds 3e\+38, [0-9.e+]+ robust scales from the channel's median", reason)
  spec = prepare.prepare(tmp_path / "in", tmp_path / "out", num_segments=2, skip_bad=True, progress=False)
  np.testing.assert_allclose(spec.modality("audio").std, 2.0, rtol=0.2)  # the data's std, not ~1e37
  # heavy tails are not outliers: Student-t (3 degrees of freedom) values in every clip pass
  rng = np.random.default_rng(1)
  for i in range(40):
    np.savez(tmp_path / "in" / "train" / f"c{i:02d}.npz", video=rng.uniform(0, 1, VIDEO).astype(np.float32),
             audio=rng.standard_t(3, AUDIO).astype(np.float32))
  prepare.prepare(tmp_path / "in", tmp_path / "t3", num_segments=2, progress=False)
  # a limit inside the data's own tails is refused as a whole, not clip by clip
  with pytest.raises(fmt.DatasetError, match=r"at least 32 clips hold values more than 0.5 robust scales .* pass a "
                                             r"larger --outlier_k"):
    prepare.prepare(tmp_path / "in", tmp_path / "k", num_segments=2, outlier_k=0.5, progress=False)

"""gs:// end to end against a GCS server on 127.0.0.1 (tests/gcs_emulator.py: gcp-storage-emulator).

prepare writes a dataset to the bucket (atomically); train streams it through Grain and writes
checkpoints, TensorBoard events and config.json to the bucket; SIGTERM -> 42 -> rerun, and kill -9 ->
rerun, both end with the arrays of an uninterrupted local run (the checkpoints' content checksums);
sample and evaluate read the run and the data from the bucket and write there; two processes read
disjoint parts of the same gs:// dataset.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from cli_util import ROOT, interrupt, read_batches, train_command
from cli_util import env as base_env
from conftest import tiny_config
import gcs_emulator
from monl.data import format as fmt
from monl.data import prepare
from monl.train import loop

TOTAL = 8
OVERRIDES = {"train.num_steps": TOTAL, "ckpt.every": 2, "train.log_every": 1}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator's environment; the server runs for this module and is stopped after it."""
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
  proc, port = gcs_emulator.start("bucket", log=log)
  saved = {k: os.environ.get(k) for k in gcs_emulator.environment(port)}
  os.environ.update(gcs_emulator.environment(port))  # for this process's own gcsfs reads
  import gcsfs
  gcsfs.GCSFileSystem.clear_instance_cache()
  yield dict(base_env(), **gcs_emulator.environment(port))
  proc.terminate()
  proc.wait(timeout=30)
  log.close()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  gcsfs.GCSFileSystem.clear_instance_cache()


def _fs():
  import gcsfs
  # no listing cache: each test looks at what the subprocesses have written since
  return gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True, use_listings_cache=False)


def _run(args, env, timeout=300):
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def gs_data(gcs, builtin_dataset, tmp_path_factory):
  """The test copy of the built-in dataset, prepared again from its clips into gs://bucket/latents."""
  from monl.data import pipeline
  root = tmp_path_factory.mktemp("clips")
  spec = fmt.load_spec(builtin_dataset)
  for split in spec.splits:
    ids, arrays = pipeline.read_clips(builtin_dataset, split, 10**6, spec.names)
    for i, sid in enumerate(ids):
      path = root / split / sid
      path.parent.mkdir(parents=True, exist_ok=True)
      np.savez(path, **{m: arrays[m][i] for m in spec.names})
  out = prepare.prepare(root, "gs://bucket/latents", segments={m.name: m.segments for m in spec.modalities},
                        num_shards=2, progress=False)
  assert out.names == spec.names
  return "gs://bucket/latents", root


def test_prepare_on_gs_is_atomic_and_the_dataset_verifies(gcs, gs_data, monkeypatch):
  url, clips = gs_data
  fs = _fs()
  assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("bucket/latents")) == [
      "dataset.json", "test-00000-of-00002.array_record", "test-00001-of-00002.array_record",
      "train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
  assert not [p for p in fs.ls("bucket") if ".tmp-" in p]  # the staging directory is gone
  rc, out = _run([sys.executable, "-m", "monl.main", "data", f"--verify={url}"], gcs)
  assert rc == 0 and f"{url}: read 80 records; all good" in out, out
  # a prepare that fails mid-write leaves nothing under the final name
  real, calls = prepare._write_shard, []

  def flaky(path, records):
    calls.append(path)
    if len(calls) == 2:
      raise OSError("upload failed (simulated)")
    return real(path, records)
  monkeypatch.setattr(prepare, "_write_shard", flaky)
  with pytest.raises(OSError, match="simulated"):
    prepare.prepare(clips, "gs://bucket/crashed", num_segments=4, num_shards=2, progress=False)
  assert not fs.exists("bucket/crashed/dataset.json") and not [p for p in fs.ls("bucket") if "crashed" in p]


@pytest.fixture(scope="module")
def straight(builtin_dataset, tmp_path_factory):
  """Checksums of every array of the final checkpoint of an uninterrupted local run."""
  work = tmp_path_factory.mktemp("local")
  loop.train(tiny_config(builtin_dataset, **OVERRIDES), str(work))
  return json.loads((work / "checkpoints" / str(TOTAL) / "record" / "metadata").read_text())["arrays"]


def _final_checksums(run):
  record = json.loads(_fs().cat(f"{run[5:]}/checkpoints/{TOTAL}/record/metadata"))
  return record["arrays"]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, loop.PREEMPTED_EXIT_CODE), (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["sigterm", "kill-9"])
def test_train_on_gs_is_interrupted_and_resumes_to_the_uninterrupted_arrays(gcs, gs_data, straight, sig, code):
  url, _ = gs_data
  run = f"gs://bucket/run_{sig.name}"
  rc, out = interrupt(train_command(url, run, **OVERRIDES), gcs, sig, after_step=3)
  assert rc == code, out
  rc, out = _run(train_command(url, run, **OVERRIDES), gcs)
  assert rc == 0 and "resumed from step" in out, out
  assert _final_checksums(run) == straight  # bit-identical to the uninterrupted local run
  fs = _fs()
  names = {p.rsplit("/", 1)[-1] for p in fs.ls(run[5:])}
  assert {"checkpoints", "config.json", "configs", "tb"} <= names, names
  assert any("events.out.tfevents" in p for p in fs.ls(f"{run[5:]}/tb"))


def test_sample_evaluate_and_check_read_and_write_gs(gcs, gs_data, straight):
  url, _ = gs_data
  run = "gs://bucket/run_SIGTERM"  # trained above (the module's tests run in order)
  if not _fs().exists(f"{run[5:]}/checkpoints/{TOTAL}"):
    rc, out = _run(train_command(url, run, **OVERRIDES), gcs)
    assert rc == 0, out
  rc, out = _run([sys.executable, "-m", "monl.main", "sample", f"--workdir={run}", "--task=a2v", "--num=2",
                  "--steps=2", f"--output={run}/samples"], gcs)
  assert rc == 0, out
  assert _fs().exists(f"{run[5:]}/samples/a2v/manifest.json")
  rc, out = _run([sys.executable, "-m", "monl.main", "evaluate", f"--workdir={run}", "--tasks=a2v", "--num=4",
                  "--steps=2", "--config.eval.i3d=False", f"--output={run}/eval"], gcs)
  assert rc == 0, out
  results = json.loads(_fs().cat(f"{run[5:]}/eval/results.json"))
  assert "a2v" in json.dumps(results)
  rc, out = _run([sys.executable, "-m", "monl.main", "check", f"--workdir={run}"], gcs)
  assert rc == 0 and f"{run}: all good" in out, out


def test_two_processes_read_disjoint_parts_of_a_gs_dataset(gcs, gs_data, tmp_path):
  url, _ = gs_data
  work = tmp_path / "mp"  # record_batches appends to a local file
  cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", "2", "--timeout_s", "400",
         "--"] + train_command(url, str(work), **{"train.num_steps": 2, "ckpt.every": 2, "train.record_batches": True})
  rc, out = _run(cmd, gcs, timeout=450)
  assert rc == 0, out[-6000:]
  seen = [read_batches(work / f"batches.p{i}.jsonl") for i in range(2)]
  for s in range(2):
    assert len(seen[0][s]) == len(seen[1][s]) == 4 and not set(seen[0][s]) & set(seen[1][s])


def test_record_batches_on_gs_is_refused_before_anything_runs(builtin_dataset):
  from monl import validate
  with pytest.raises(validate.ConfigError, match=r"config.train.record_batches appends .* use a local --workdir"):
    loop.train(tiny_config(builtin_dataset, **{"train.record_batches": True}), "gs://bucket/no_record")

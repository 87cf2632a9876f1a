"""Fault injection (issue 14): damaged checkpoints, another layout or model shape, bad numbers, and the
config history of a resumed run. Every error must name its file, array or config field, and nothing
may be restored wrong, restarted from scratch or overwritten silently.

One tiny run (checkpoints 2 and 4) is trained once per module; tests that damage or resume it work on
a copy.
"""
import glob
import importlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cli_util import ROOT, env
from conftest import tiny_config, xla_flags
from monl import validate
from monl.sample import run
from monl.train import checkpoint as ckpt_lib
from monl.train import checksum
from monl.train import loop

STEPS = 4
OVERRIDES = {"train.num_steps": STEPS, "ckpt.every": 2, "train.log_every": 2}


@pytest.fixture(scope="module")
def run4(builtin_dataset, tmp_path_factory):
  """(config, workdir, final state on the host) of a tiny run with checkpoints 2 and 4."""
  work = tmp_path_factory.mktemp("faults_run")
  config = tiny_config(builtin_dataset, **OVERRIDES)
  state = loop.train(config, str(work))
  return config, work, jax.device_get(state)


def _copy(run4, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(run4[1], dst)
  return dst


def _steps(work) -> list[str]:
  return sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.isdigit())


def _flip_bit_in_raw_array(directory, state) -> str:
  """Flips one bit in the middle of the first array of `state` whose bytes a data file of checkpoint
  `directory` stores raw, outside OCDBT's CRC-protected b-tree nodes (the silent case); returns its path.

  OCDBT inlines small values into b-tree nodes (`state/d/...`, CRC-32C checked: TensorStore reports a
  flip there itself) and writes the others, uncompressed when zstd gains nothing, into per-process data
  files (`state/ocdbt.process_0/d/...`) that carry no checksum of their own. A flip counts only once a
  plain Orbax read of the checkpoint returns the changed array: raw bytes the manifest does not point
  at (a duplicate write) would otherwise leave nothing for the checksums to find.
  """
  files = {f: open(f, "rb").read() for f in glob.glob(f"{directory}/**/*", recursive=True) if os.path.isfile(f)}
  tried = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    leaf = np.asarray(leaf)
    if leaf.size < 16 or np.unique(leaf).size != leaf.size:  # zeros or repeats would match unrelated bytes
      continue
    needle = leaf.tobytes()
    hits = [f for f, data in files.items() for _ in range(data.count(needle))]
    if len(hits) != 1 or "/ocdbt.process_" not in hits[0]:
      continue
    data = bytearray(files[hits[0]])
    data[data.index(needle) + len(needle) // 2] ^= 0x10
    open(hits[0], "wb").write(bytes(data))
    read = {checksum.path_name(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(ocp.StandardCheckpointer().restore(directory))[0]}
    if not np.array_equal(np.asarray(read[checksum.path_name(path)]), leaf):
      return checksum.path_name(path)
    open(hits[0], "wb").write(files[hits[0]])  # not what a restore reads: undo, try the next array
    tried.append(checksum.path_name(path))
  raise AssertionError(f"no array of the state is stored raw in a data file under {directory} "
                       f"(stored raw but not read back changed: {tried})")


# -- item 1: the layout a checkpoint was trained with ---------------------------------------------------

def test_other_modality_order_is_refused_by_resume_and_sample(run4, builtin_dataset, tmp_path):
  """Swapped modalities keep every shape: the restore used to succeed with the embeddings swapped."""
  work = _copy(run4, tmp_path)
  before = (work / "config.json").read_text()
  swapped = tiny_config(builtin_dataset, **OVERRIDES, **{"layout.modalities": ("audio", "video")})
  expected = r"config\.layout\.modalities: checkpoint \('video', 'audio'\), now \('audio', 'video'\)"
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=expected) as e:
    loop.train(swapped, str(work))
  assert str(ckpt_lib.Checkpointer(work / "checkpoints").record_path(4)) in str(e.value)
  assert (work / "config.json").read_text() == before  # the record of the run is not overwritten
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=expected):
    run.Generator(swapped, str(work))  # sample and evaluate restore through the Generator


def test_checkpoint_records_layout_and_checksums(run4):
  config, work, final = run4
  record = json.loads((work / "checkpoints" / "4" / "record" / "metadata").read_text())
  # patch (2, 0, 0) of configs/default.py is recorded resolved: 0 = the whole axis
  assert record["layout"] == {"modalities": ["video", "audio"],
                              "video": {"shape": [16, 16, 16, 3], "patch": [2, 16, 16], "segments": [4, 4, 4, 4]},
                              "audio": {"shape": [64, 16], "patch": [4], "segments": [16, 16, 16, 16]}}
  assert record["config"]["model"]["width"] == 32 and record["step"] == 4
  sums = checksum.tree_checksums(final)
  assert {k: v["checksum"] for k, v in record["arrays"].items()} == sums
  assert any(k.startswith("opt_state/") for k in sums) and "ema_params/params/modality_embedding" in sums


# -- item 3: a changed model shape names the config field ------------------------------------------------

def test_changed_model_width_names_the_config_field_not_orbax(run4, builtin_dataset, tmp_path):
  wide = tiny_config(builtin_dataset, **OVERRIDES, **{"model.width": 48})
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"config\.model\.width: checkpoint 32, now 48") as e:
    loop.train(wide, str(_copy(run4, tmp_path)))
  msg = str(e.value)
  assert "params/params/block_0/adaln/bias: checkpoint float32[192], now float32[288]" in msg, msg
  assert "strict" not in msg


# -- items 2 and 3: damaged checkpoints ----------------------------------------------------------------

def test_flipped_bit_is_detected_and_resume_from_step_recovers_exactly(run4, tmp_path, capsys):
  config, _, final = run4
  work = _copy(run4, tmp_path)
  name = _flip_bit_in_raw_array(work / "checkpoints" / "4" / "state", final)
  with pytest.raises(ckpt_lib.CheckpointCorruptError) as e:
    loop.train(config, str(work))
  msg = str(e.value)
  assert "checkpoint 4" in msg and "is corrupt: 1 array(s)" in msg, msg
  assert f"{name}: checksum" in msg, msg
  assert f"Checkpoint 2 ({work / 'checkpoints' / '2'}) is intact" in msg and "--resume_from_step 2" in msg, msg
  assert _steps(work) == ["2", "4"]  # nothing moved or deleted by the failed resume

  capsys.readouterr()
  state = loop.train(config, str(work), resume_from_step=2)
  assert "moved the later checkpoint(s) [4]" in capsys.readouterr().out
  assert (work / "discarded_checkpoints" / "4" / "state").is_dir()  # kept, not deleted
  assert int(state.step) == STEPS and _steps(work) == ["2", "4"]
  for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(jax.device_get(state))):
    np.testing.assert_array_equal(a, b)  # the same final state as the undamaged run


def test_resume_from_a_missing_step_lists_the_checkpoints(run4, tmp_path):
  with pytest.raises(ckpt_lib.CheckpointError, match=r"no complete checkpoint 3 .*there: \[2, 4\]"):
    loop.train(run4[0], str(_copy(run4, tmp_path)), resume_from_step=3)


def test_truncated_or_missing_metadata_names_the_file_and_the_intact_checkpoint(run4, tmp_path):
  config = run4[0]
  work = _copy(run4, tmp_path)
  meta = work / "checkpoints" / "4" / "state" / "_METADATA"
  meta.write_bytes(meta.read_bytes()[:100])
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match="is not valid JSON") as e:
    loop.train(config, str(work))
  assert str(meta) in str(e.value) and "Checkpoint 2" in str(e.value) and "--resume_from_step 2" in str(e.value)
  meta.unlink()
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match=f"{meta} is missing"):
    run.Generator(config, str(work))  # sample and evaluate say the same
  earlier = work / "checkpoints" / "2" / "state" / "_METADATA"
  earlier.write_text("{")
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match="No earlier checkpoint is intact") as e:
    loop.train(config, str(work))
  assert "never restarts from scratch" in str(e.value)
  assert _steps(work) == ["2", "4"] and not (work / "configs" / "config_step4.json").exists()


def test_damaged_btree_node_names_the_file_and_the_intact_checkpoint(run4, tmp_path):
  """OCDBT's own b-tree nodes carry a CRC: TensorStore names the file, the message keeps it (and drops the
  pages of TensorStore spec after it) and says which checkpoint is intact."""
  work = _copy(run4, tmp_path)
  node = max(glob.glob(f"{work}/checkpoints/4/state/d/*"), key=os.path.getsize)
  data = bytearray(open(node, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(node, "wb").write(bytes(data))
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match="checkpoint 4 .* is damaged: reading it failed") as e:
    run.Generator(run4[0], str(work))
  msg = str(e.value)
  assert os.path.basename(node) in msg and "tensorstore_spec" not in msg, msg
  assert "Checkpoint 2" in msg and "--resume_from_step 2" in msg, msg


_OTHER_MESH = """
import sys, tempfile
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from monl.train import checkpoint as ckpt_lib, checksum
auto = lambda n: (jax.sharding.AxisType.Auto,) * n
mesh4 = jax.make_mesh((2, 2), ("a", "b"), axis_types=auto(2))
tree = {"w": jax.device_put(np.arange(64 * 24, dtype=np.float32).reshape(64, 24) / 7, NamedSharding(mesh4, P("a", "b"))),
        "v": jax.device_put(np.linspace(0, 1, 40, dtype=np.float32), NamedSharding(mesh4, P("a")))}
ck = ckpt_lib.Checkpointer(tempfile.mkdtemp(), async_save=False)
ck.save(1, tree)
ck.wait()
mesh2 = jax.make_mesh((2,), ("x",), devices=jax.devices()[2:], axis_types=auto(1))
for mesh, specs in ((mesh2, {"w": P(None, "x"), "v": P()}), (jax.make_mesh((1,), ("x",), axis_types=auto(1)), {"w": P(), "v": P()})):
  abstract = {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, specs[k])) for k, x in tree.items()}
  restored = ck.restore(1, abstract)  # verifies every checksum on the new mesh
  assert checksum.tree_checksums(restored) == checksum.tree_checksums(tree)
  assert all(np.array_equal(np.asarray(restored[k]), np.asarray(tree[k])) for k in tree)
ck.close()
print("ok")
"""


def test_checksums_verify_on_another_mesh(tmp_path):
  """Sums of integer words do not depend on the sharding: a checkpoint saved on a 2x2 mesh verifies on a
  2-device and a 1-device mesh (four fake CPU devices, in a subprocess)."""
  e = dict(env(), XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"))
  proc = subprocess.run([sys.executable, "-c", _OTHER_MESH], cwd=ROOT, env=e, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_checkpoint_without_record_warns_that_it_is_unverified(run4, tmp_path, capsys):
  work = _copy(run4, tmp_path)
  shutil.rmtree(work / "checkpoints" / "4" / "record")
  capsys.readouterr()
  state = loop.train(run4[0], str(work))
  out = capsys.readouterr().out
  assert "WARNING: checkpoint 4" in out and "NOT verified" in out
  assert "nothing to train: checkpoint 4 has already reached config.train.num_steps=4" in out
  assert int(state.step) == STEPS


def test_checksum_sees_every_single_bit_and_swapped_elements():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5)).astype(np.float32)
  ref = checksum.tree_checksums({"x": x})["x"]
  words = x.view(np.uint32)
  for i in range(x.size):
    for bit in (0, 13, 31):
      y = words.copy().reshape(-1)
      y[i] ^= np.uint32(1 << bit)
      assert checksum.tree_checksums({"x": y.view(np.float32).reshape(x.shape)})["x"] != ref
  swapped = x.copy().reshape(-1)
  swapped[[0, 7]] = swapped[[7, 0]]
  assert checksum.tree_checksums({"x": swapped.reshape(x.shape)})["x"] != ref


# -- item 7: config history on resume ------------------------------------------------------------------

def test_resume_with_other_settings_keeps_the_config_history_and_says_what_changed(run4, builtin_dataset,
                                                                                   tmp_path, capsys):
  work = _copy(run4, tmp_path)
  changed = tiny_config(builtin_dataset, **dict(OVERRIDES, **{
      "train.num_steps": 6, "train.lr": 1e-3, "data.shuffle_seed": 7, "mixture.weights": (1.0, 0.0, 0.0, 0.0)}))
  capsys.readouterr()
  assert int(loop.train(changed, str(work)).step) == 6
  out = capsys.readouterr().out
  assert "NOTICE: resuming from step 4" in out and "data, mixture, optimiser/schedule" in out, out
  for line in ("config.train.lr: checkpoint 0.002, now 0.001", "config.data.shuffle_seed: checkpoint 0, now 7",
               "config.mixture.weights: checkpoint (1.0, 1.0, 1.0, 1.0), now (1.0, 0.0, 0.0, 0.0)",
               "config.train.num_steps: checkpoint 4, now 6"):
    assert line in out, out
  first = json.loads((work / "configs" / "config_step0.json").read_text())
  second = json.loads((work / "configs" / "config_step4.json").read_text())
  assert (first["train"]["lr"], first["data"]["shuffle_seed"]) == (0.002, 0)
  assert (second["train"]["lr"], second["data"]["shuffle_seed"]) == (0.001, 7)
  assert json.loads((work / "config.json").read_text()) == second
  record = json.loads((work / "checkpoints" / "6" / "record" / "metadata").read_text())
  assert record["config"]["train"]["lr"] == 0.001  # each checkpoint says what it was trained with

  assert int(loop.train(changed, str(work)).step) == 6  # already complete: says so, changes nothing
  assert "nothing to train: checkpoint 6" in capsys.readouterr().out
  assert sorted(p.name for p in (work / "configs").iterdir()) == ["config_step0.json", "config_step4.json"]


# -- items 6 and 9: numbers checked at start-up ---------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("steps", 0, r"--steps=0: must be an integer >= 1"),
    ("steps", -3, r"--steps=-3: must be an integer >= 1"),
    ("num", 0, r"--num=0: must be an integer >= 1"),
    ("num", -2, r"--num=-2: must be an integer >= 1"),
    ("previews", -1, r"--previews=-1: must be an integer >= 0"),
])
def test_sample_numbers_are_refused_before_restoring(run4, tmp_path, field, value, message):
  config, work, _ = run4
  req = run.SampleRequest(task="joint", **dict({"num": 2, "steps": 2, "previews": 0}, **{field: value}))
  with pytest.raises(validate.ConfigError, match=message):
    run.run(config, str(work), req, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value,message", [
    ("train.num_steps", 0, r"config\.train\.num_steps=0: must be an integer >= 1"),
    ("ckpt.every", 0, r"config\.ckpt\.every=0: must be an integer >= 1"),
    ("ckpt.every", -5, r"config\.ckpt\.every=-5: must be an integer >= 1"),
    ("data.batch_size", 0, r"config\.data\.batch_size=0: must be an integer >= 1"),
    ("train.lr", -1e-3, r"config\.train\.lr=-0\.001: must be a number > 0"),
    ("mixture.clean_prob", 1.5, r"config\.mixture\.clean_prob=1\.5: must be a number in \[0, 1\)"),
    ("sample.steps", 2000, r"config\.sample\.steps=2000: must be at most config\.schedule\.num_steps=1000"),
])
def test_bad_config_numbers_are_refused_at_start_up(builtin_dataset, tmp_path, field, value, message):
  with pytest.raises(validate.ConfigError, match=message):
    loop.train(tiny_config(builtin_dataset, **{field: value}), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused before anything was written, read or compiled


def test_every_shipped_config_passes_the_start_up_checks():
  names = [os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/configs/*.py")]
  configs = [importlib.import_module(f"configs.{n}") for n in names  # AVDiT configs (not autoencoder_*)
             if n not in ("__init__", "common") and not n.startswith("autoencoder_")]
  assert len(configs) >= 3
  for module in configs:
    validate.check_config(module.get_config())


@pytest.mark.parametrize("argv,message", [
    (["sample", "--steps=0"], "--steps=0: must be an integer in [1, 1000]"),
    (["sample", "--num=-2"], "--num=-2: must be an integer >= 1"),
    (["evaluate", "--steps=0"], "--steps=0: must be an integer in [1, 1000]"),
    (["train", "--config.train.num_steps=0"], "config.train.num_steps=0: must be an integer >= 1"),
    (["train", "--config.ckpt.every=0"], "config.ckpt.every=0: must be an integer >= 1"),
    (["train", "--resume_from_step=0"], "--resume_from_step=0: must be an integer >= 1"),
])
def test_cli_refuses_bad_numbers_before_building_anything(tmp_path, argv, message):
  work = tmp_path / "run"
  cmd = [sys.executable, "-m", "monl.main", argv[0], f"--config={ROOT}/configs/default.py",
         f"--workdir={work}", *argv[1:]]
  proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert message in proc.stderr, proc.stderr
  assert not work.exists()


# -- one check for everything ----------------------------------------------------------------------------

def test_check_lists_every_problem_of_a_run(run4, tmp_path):
  from monl import check
  config, _, final = run4
  work = _copy(run4, tmp_path)
  lines = []
  assert check.check(str(work), say=lines.append) == []
  assert "  checkpoint 4: complete, layout and shapes match, checksums verified" in lines
  name = _flip_bit_in_raw_array(work / "checkpoints" / "4" / "state", final)
  shutil.rmtree(work / "checkpoints" / "2" / "data")
  saved = json.loads((work / "config.json").read_text())
  saved["model"]["width"] = 64
  (work / "configs" / "config_step9.json").write_text(json.dumps(saved))
  problems = check.check(str(work), say=lambda line: None)
  assert len(problems) == 3, problems
  assert "config_step9.json: a (re)start with other checkpoint-defining fields" in problems[0]
  assert "config.model.width: then 64, now 32" in problems[0]
  assert problems[1].startswith("checkpoint 2: ") and "(the data-iterator position) is missing" in problems[1]
  assert problems[2].startswith("checkpoint 4: ") and f"{name}: checksum" in problems[2]
  # the CLI: one line per problem, exit status 1
  proc = subprocess.run([sys.executable, "-m", "monl.main", "check", f"--workdir={work}"], cwd=ROOT, env=env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert proc.stdout.count("PROBLEM ") == 3 and f"{work}: 3 problem(s)" in proc.stdout, proc.stdout


def test_check_names_a_damaged_dataset_and_data_verify_lists_the_bad_records(run4, builtin_dataset, tmp_path):
  from monl import check
  from monl.data import format as data_format
  data = tmp_path / "data"
  shutil.copytree(builtin_dataset, data)
  shard = data_format.shard_paths(data, "train")[1]
  shard.write_bytes(shard.read_bytes()[:-5000])  # truncated: the footer is gone
  work = _copy(run4, tmp_path)
  saved = json.loads((work / "config.json").read_text())
  saved["data"]["dir"] = str(data)
  (work / "config.json").write_text(json.dumps(saved))
  problems = check.check(str(work), say=lambda line: None)
  assert len(problems) == 1 and problems[0].startswith(f"dataset split 'train': {shard}: not a readable "
                                                       f"ArrayRecord shard"), problems
  proc = subprocess.run([sys.executable, "-m", "monl.main", "data", f"--verify={data}"], cwd=ROOT, env=env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert f"BAD {shard}: not a readable ArrayRecord shard" in proc.stdout, proc.stdout
  assert f"BAD split 'train': its readable shards hold 32 records, but dataset.json lists num_examples=64" \
      in proc.stdout, proc.stdout
  proc = subprocess.run([sys.executable, "-m", "monl.main", "data", f"--verify={tmp_path}"], cwd=ROOT, env=env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and f"{tmp_path}/dataset.json: missing" in proc.stderr, proc.stderr

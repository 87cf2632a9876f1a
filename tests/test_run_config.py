"""A run directory describes itself (`monl.run_config`): train on a dataset of another shape with no
layout flags, then sample from the run with no --config; changes the checkpoints cannot take are refused
naming the field and both values."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cli_util import ROOT, TINY_FLAGS, env
from configs import common
from monl import run_config
from monl.data import prepare

VIDEO, AUDIO = (8, 8, 8, 3), (32, 4)  # not the built-in shapes: 2 segments of 4 video / 16 audio frames


def _main(*args, timeout=600):
  proc = subprocess.run([sys.executable, "-m", "monl.main", *args], cwd=ROOT, env=env(), capture_output=True,
                        text=True, timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def other_dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("other")
  rng = np.random.default_rng(0)
  for split, n in (("train", 16), ("test", 4)):
    (root / "in" / split).mkdir(parents=True)
    for i in range(n):
      np.savez(root / "in" / split / f"c{i:02d}.npz", video=rng.uniform(0, 1, VIDEO).astype(np.float32),
               audio=rng.normal(0, 1, AUDIO).astype(np.float32))
  prepare.prepare(root / "in", root / "data", num_segments=2, num_shards=1, modalities=["video", "audio"],
                  progress=False)
  return str(root / "data")


@pytest.fixture(scope="module")
def run(other_dataset, tmp_path_factory):
  """A 2-step run of configs/default.py on `other_dataset`, with only --config.data.dir pointing at it."""
  work = tmp_path_factory.mktemp("run") / "run"
  flags = dict(TINY_FLAGS, **{"train.num_steps": 2, "ckpt.every": 2, "data.dir": other_dataset})
  rc, out, err = _main("train", f"--config={ROOT}/configs/default.py", f"--workdir={work}",
                       *[f"--config.{k}={v}" for k, v in flags.items()])
  assert rc == 0, out + err
  assert "layout from the data: layout.modalities = ['video', 'audio']" in out, out
  return work


def test_train_takes_the_layout_from_the_data_and_records_it(run):
  saved = json.loads((run / "config.json").read_text())["layout"]
  assert saved["modalities"] == ["video", "audio"]
  assert saved["video"] == {"shape": list(VIDEO), "segments": [4, 4], "patch": [2, 0, 0]}  # default.py's patch
  assert saved["audio"] == {"shape": list(AUDIO), "segments": [16, 16], "patch": [4]}
  config = run_config.load(run)  # the run's config, rebuilt: tuples again, fields added since keep defaults
  assert config.layout.video.shape == VIDEO and config.model.width == 32


def test_sample_and_resume_from_the_run_alone(run, tmp_path):
  out = tmp_path / "samples"
  rc, stdout, err = _main("sample", f"--workdir={run}", "--task=a2v", "--num=2", "--steps=2", f"--output={out}")
  assert rc == 0, stdout + err
  with np.load(next(out.rglob("*.npz"))) as z:
    assert z["video"].shape[-4:] == VIDEO and z["audio"].shape[-2:] == AUDIO
  # a resume with an optimiser change but no --config continues the run
  rc, stdout, err = _main("train", f"--workdir={run}", "--config.train.num_steps=3", "--config.ckpt.every=3")
  assert rc == 0, stdout + err
  assert (run / "checkpoints" / "3").exists()


@pytest.mark.parametrize("command,flags,message", [
    ("sample", ["--config.model.width=64"], "config.model.width: run 32, now 64"),
    ("evaluate", ["--config.layout.video.patch=(1,0,0)"], "config.layout.video.patch: run "),
    ("train", ["--config.schedule.kind=cosine"], "config.schedule.kind: run 'linear', now 'cosine'"),
])
def test_changes_the_checkpoints_cannot_take_are_refused(run, command, flags, message):
  rc, out, err = _main(command, f"--workdir={run}", *flags, timeout=180)
  assert rc == 2, out + err
  assert message in err and "depend on" in err, err


def test_a_contradicting_layout_flag_names_the_field_and_the_data(other_dataset, tmp_path):
  rc, out, err = _main("train", f"--config={ROOT}/configs/default.py", f"--workdir={tmp_path / 'w'}",
                       f"--config.data.dir={other_dataset}", "--config.layout.audio.shape=(64,16)", timeout=180)
  assert rc == 2, out + err
  assert (f"config.layout.audio.shape is [64, 16], but modality 'audio' of {other_dataset}/dataset.json has "
          f"shape [32, 4]") in err, err
  assert not (tmp_path / "w").exists()


def test_data_command_shows_the_layout_the_model_would_use(other_dataset):
  rc, out, err = _main("data", f"--input={other_dataset}", timeout=180)
  assert rc == 0, out + err
  assert "splits: test 4 clips in 1 shard(s), train 16 clips in 1 shard(s)" in out, out
  # the base config's rule: 4 frame-sized tokens (1, 8, 8) per 4-frame video cell; audio 16 -> patch 4
  assert "video: shape [8, 8, 8, 3], segments [4, 4], patch (1, 8, 8) -> 8 tokens of 192 values" in out, out
  assert "audio: shape [32, 4], segments [16, 16], patch (4,) -> 8 tokens of 16 values" in out, out
  assert "layout.video.patch = (1, 8, 8) (default rule, tokens_per_cell=4)" in out, out


def test_sample_without_config_on_a_non_run_is_a_usage_error(tmp_path):
  rc, out, err = _main("sample", f"--workdir={tmp_path}", timeout=180)
  assert rc != 0 and f"--config is required: {tmp_path} has no config.json" in err, err


def test_ablation_refuses_to_mix_two_configs_in_one_out(tmp_path):
  from monl import ablate
  from monl.train import loop
  config = loop.with_data_layout(common.base_config(), quiet=True)
  ablate._same_base_config(config, tmp_path)
  ablate._same_base_config(run_config.load(tmp_path), tmp_path)  # continuing with its own config is fine
  other = config.copy_and_resolve_references()
  other.model.width = 64
  other.mesh.data = 8  # where it runs is not part of the recipe: not reported
  with pytest.raises(ValueError, match=r"holds an ablation of another config") as e:
    ablate._same_base_config(other, tmp_path)
  assert "model.width" in str(e.value) and "mesh" not in str(e.value)


def test_run_config_load_keeps_new_defaults_and_names_bad_files(tmp_path):
  saved = common.base_config().to_dict()
  del saved["sample"]["steps"]  # a field added after the run was made
  saved["model"]["width"] = 48
  run_config.path(tmp_path).write_text(json.dumps(saved, default=list))
  config = run_config.load(tmp_path)
  assert config.model.width == 48 and config.sample.steps == common.base_config().sample.steps
  assert config.layout.modalities == ()  # JSON lists come back as tuples
  run_config.path(tmp_path).write_text("{not json")
  with pytest.raises(run_config.RunConfigError, match=r"config.json is not valid JSON"):
    run_config.load(tmp_path)
  with pytest.raises(run_config.RunConfigError, match=r"does not exist: .* is not a monl run"):
    run_config.load(tmp_path / "nothing")


def test_runtime_fields_may_change_under_checkpoints():
  run = {"model": {"width": 32, "attention": "dot", "dtype": "float32"}, "layout": {"tokens_per_cell": 4}}
  now = {"model": {"width": 32, "attention": "splash", "dtype": "bfloat16"}, "layout": {"tokens_per_cell": 8},
         "train": {"lr": 1.0}}
  assert run_config.checkpoint_changes(run, now) == []
  now["model"]["width"] = 64
  assert run_config.checkpoint_changes(run, now) == [("model.width", 32, 64)]

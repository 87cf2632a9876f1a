"""The sample command on a tiny trained checkpoint: outputs, manifest, previews, determinism."""
import json

import numpy as np
import pytest

from conftest import tiny_config
from monl.data import pipeline
from monl.sample import run


def test_sample_task_outputs_and_manifest(trained, tmp_path, builtin_dataset):
  config, workdir = trained
  req = run.SampleRequest(task="a2v", num=5, steps=3, seed=1, previews=2)
  manifests = run.run(config, workdir, req, str(tmp_path))
  m = manifests["a2v"]
  out = tmp_path / "a2v"
  ids, clips = pipeline.read_clips(builtin_dataset, "test", 5, ("video", "audio"))
  assert [c["source_id"] for c in m["clips"]] == ids
  assert (m["task"], m["mask"], m["steps"], m["seed"], m["checkpoint_step"]) == ("a2v", "video:none,audio:all", 3, 1, 4)
  assert m["sampler"] == config.sample.sampler and m["use_ema"] is True
  on_disk = json.loads((out / "manifest.json").read_text())
  assert on_disk == m
  for i in range(5):
    with np.load(out / f"{i:05d}.npz") as z:
      assert z["video"].shape == (16, 16, 16, 3) and z["audio"].shape == (64, 16)
      # given audio comes back de-normalised to the data's own values (normalise/denormalise in float32)
      np.testing.assert_allclose(z["audio"], clips["audio"][i], rtol=1e-5, atol=1e-5)
  assert {"00000.gif", "00000.wav", "00001.gif", "contact_sheet.png"} <= {p.name for p in out.iterdir()}


def test_sampling_is_deterministic_for_a_seed(trained, tmp_path):
  config, workdir = trained
  gen = run.Generator(config, workdir)
  clips = pipeline.read_clips(gen.data_dir, "test", 4, gen.layout.names)
  outs = []
  for seed, sub in ((0, "a"), (0, "b"), (1, "c")):
    req = run.SampleRequest(task="continue", num=4, steps=3, seed=seed, previews=0)
    run.sample_task(gen, "continue", req, tmp_path / sub, *clips)
    with np.load(tmp_path / sub / "00002.npz") as z:
      outs.append(z["video"])
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])


def test_guidance_flag_parsing(trained):
  config, workdir = trained
  gen = run.Generator(config, workdir)
  assert gen.guidance_scales("") == (1.0, 1.0)  # config.sample.guidance of configs/default.py
  assert gen.guidance_scales("0") is None  # no unconditional branch at all
  assert gen.guidance_scales("1.5") == (1.5, 1.5)
  assert gen.guidance_scales("audio=2") == (0.0, 2.0)
  with pytest.raises(ValueError, match="unknown modality 'sound'"):
    gen.guidance_scales("sound=1")


def test_missing_checkpoint_is_a_clear_error(builtin_dataset, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint under .*train first"):
    run.Generator(tiny_config(builtin_dataset), str(tmp_path))


def test_long_clip_through_the_model(trained, tmp_path):
  config, workdir = trained
  gen = run.Generator(config, workdir)
  clips = pipeline.read_clips(gen.data_dir, "test", 2, gen.layout.names)
  req = run.SampleRequest(task="continue", num=2, steps=2, long_segments=6, previews=1)
  m = run.sample_task(gen, "continue", req, tmp_path, *clips)
  with np.load(tmp_path / "00000.npz") as z:
    assert z["video"].shape == (24, 16, 16, 3) and z["audio"].shape == (96, 16)
    np.testing.assert_allclose(z["video"][:8], clips[1]["video"][0][:8], rtol=1e-5, atol=1e-5)  # given start
  assert m["long_segments"] == 6 and (tmp_path / "contact_sheet.png").exists()


def test_dpmpp_solver_through_the_model(trained, tmp_path):
  """--solver dpmpp_2m: the request overrides config.sample.solver, is recorded in the manifest with the
  spacing that config.sample.spacing = 'auto' picks for it (logsnr; uniform for DDIM), keeps the given
  cells, and samples differently from DDIM; an unknown solver or spacing names the field."""
  config, workdir = trained
  gen = run.Generator(config, workdir)
  ids, clips = pipeline.read_clips(gen.data_dir, "test", 3, gen.layout.names)
  outs = {}
  for solver in ("ddim", "dpmpp_2m"):
    req = run.SampleRequest(task="a2v", num=3, steps=4, solver=solver, previews=0)
    m = run.sample_task(gen, "a2v", req, tmp_path / solver, ids, clips)
    assert m["solver"] == solver and m["steps"] == 4
    assert m["spacing"] == {"ddim": "uniform", "dpmpp_2m": "logsnr"}[solver]
    with np.load(tmp_path / solver / "00001.npz") as z:
      np.testing.assert_allclose(z["audio"], clips["audio"][1], rtol=1e-5, atol=1e-5)  # given audio
      assert np.all(np.isfinite(z["video"]))
      outs[solver] = z["video"]
  # bit-identical would mean the solver was not used
  assert not np.array_equal(outs["ddim"], outs["dpmpp_2m"])
  assert gen.sampler_config(run.SampleRequest(solver="ddim", spacing="karras"), None).spacing == "karras"
  with pytest.raises(ValueError, match="solver .*='heun': expected one of"):
    gen.sampler_config(run.SampleRequest(solver="heun"), None)
  with pytest.raises(ValueError, match="spacing .*='even': expected one of \\('auto', 'uniform'"):
    gen.sampler_config(run.SampleRequest(spacing="even"), None)

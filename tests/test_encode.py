"""`python -m monl.data.encode` on video files written here with PyAV (odd sizes, frame and sample
rates; one file without audio, one truncated), and the whole path from MP4 files to generated MP4
files with sound: train a tiny autoencoder -> encode -> train AVDiT -> sample -> MP4 read back."""
import json
import os

import numpy as np
import pytest

av = pytest.importorskip("av")

from ae_util import tiny_ae_config, truncate, write_av  # noqa: E402
from monl.data import encode  # noqa: E402
from monl.data import format as fmt  # noqa: E402
from monl.data import pipeline  # noqa: E402

CLIP = 17 / 25  # s: the tiny encoder's clip (17 frames at 25 fps)


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
  """train/: odd.mp4 (97x61, 30 fps, 44.1 kHz: 2 clips), cam/tall.mp4 (51x77, 24 fps, 22.05 kHz: 1
  clip), silent.mp4 (no audio), cut.mp4 (truncated); test/: t.mp4 (64x48, 25 fps, 16 kHz: 2 clips)."""
  d = tmp_path_factory.mktemp("clips")
  for sub in ("train/cam", "test"):
    os.makedirs(d / sub)
  write_av(d / "train" / "odd.mp4", seconds=1.5, fps=30, rate=44100, width=97, height=61)
  write_av(d / "train" / "cam" / "tall.mp4", seconds=0.8, fps=24, rate=22050, width=51, height=77)
  write_av(d / "train" / "silent.mp4", seconds=1.0, fps=25, rate=16000, width=32, height=32, audio=False)
  whole = write_av(d / "whole.mp4", seconds=1.5, fps=25, rate=16000, width=40, height=40,
                   options={"movflags": "+faststart"})
  truncate(whole, d / "train" / "cut.mp4")
  os.remove(whole)
  write_av(d / "test" / "t.mp4", seconds=1.4, fps=25, rate=16000, width=64, height=48)
  return str(d)


def run_cli(argv):
  """(exit code, stdout, stderr) of `python -m monl.data.encode ARGV`, in this process."""
  import contextlib
  import io
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):  # tqdm too: it writes to sys.stderr
    rc = encode.main(argv)
  return rc, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def raw_media(clips_dir, tmp_path_factory):
  """(dir, exit code, stdout, stderr) of `encode --raw` over `clips_dir` at 16 px: the clips themselves."""
  out = str(tmp_path_factory.mktemp("media") / "media")
  return (out, *run_cli(["--input", clips_dir, "--output", out, "--raw", "--size", "16", "--no_progress"]))


@pytest.fixture(scope="module")
def encoder_run(raw_media, tmp_path_factory):
  """A tiny autoencoder trained 2 steps on `raw_media` (the fixture files; checkpoint at step 2)."""
  from monl.autoencoder import train as ae_train
  run = str(tmp_path_factory.mktemp("ae") / "run")
  config = tiny_ae_config("", **{"data.dir": raw_media[0], "data.batch_size": 2, "train.num_steps": 2,
                                 "ckpt.every": 2, "eval.num": 2, "eval.batch_size": 2})
  ae_train.train(config, run)
  return run


@pytest.fixture(scope="module")
def encoded(encoder_run, clips_dir, tmp_path_factory):
  """(output dir, exit code, stdout, stderr) of one `encode` CLI run over `clips_dir`."""
  out = str(tmp_path_factory.mktemp("latents") / "latents")
  return (out, *run_cli(["--input", clips_dir, "--output", out, "--encoder", encoder_run, "--batch_size", "2",
                         "--num_shards", "2"]))


def test_encode_raw_writes_the_clips_train_autoencoder_reads(clips_dir, raw_media):
  from monl import media
  out, rc, stdout, stderr = raw_media
  assert rc == 0, stderr
  assert "skipped train/silent.mp4: no audio stream" in stderr and "2 of 5 skipped as bad" in stdout
  spec = fmt.load_spec(out)
  assert spec.produced_by["raw"] and spec.produced_by["encoder"] is None
  assert spec.modality("video").shape == (17, 16, 16, 3) and spec.modality("audio").shape == (10880, 1)
  assert spec.modality("video").segments == (1, 4, 4, 4, 4)
  assert spec.modality("audio").segments == (640, 2560, 2560, 2560, 2560)
  ids, clips = pipeline.read_clips(out, "test", 10, ("video", "audio"))
  assert ids == ["t.mp4@0.0s", "t.mp4@0.68s"]
  src = list(media.read_clips(os.path.join(clips_dir, "test", "t.mp4"), fps=25, sample_rate=16000, size=16,
                              clip_seconds=CLIP))
  np.testing.assert_array_equal(clips["video"][1], src[1].video / np.float32(255))
  np.testing.assert_array_equal(clips["audio"][1, :, 0], src[1].audio)
  from monl.data import decoders
  assert decoders.decoder_for(spec) is None  # not latents: nothing to decode


def test_encode_cli_writes_a_latent_dataset_the_pipeline_reads(encoder_run, clips_dir, encoded):
  out, rc, stdout, stderr = encoded
  assert rc == 0, stderr
  # broken files are skipped by name with the reason; the progress bar shows clips/s
  assert "skipped train/silent.mp4: no audio stream" in stderr
  assert [ln for ln in stderr.splitlines() if ln.startswith("skipped train/cut.mp4: truncated")], stderr
  assert "clips_per_s=" in stderr
  assert "encode: 5 file(s) encoded now (5 clips), 0 already done; 2 of 5 skipped as bad" in stdout, stdout

  spec = fmt.load_spec(out)
  pb = spec.produced_by
  assert pb["tool"] == "monl.data.encode" and pb["encoder"]["run"] == os.path.abspath(encoder_run)
  assert pb["encoder"]["checkpoint_step"] == 2
  prep = pb["preprocessing"]
  assert (prep["fps"], prep["sample_rate"], prep["size"], prep["frames"], prep["samples"]) == (25, 16000, 16, 17, 10880)
  assert prep["clip_seconds"] == pytest.approx(CLIP)
  assert {s["file"] for s in pb["skipped"]} == {"train/silent.mp4", "train/cut.mp4"}
  assert spec.modality("video").shape == (5, 2, 2, 8) and spec.modality("audio").shape == (34, 4)
  assert spec.modality("video").segments == (1, 1, 1, 1, 1)
  assert spec.modality("audio").segments == (2, 8, 8, 8, 8)  # the same time spans at 50 latent frames/s
  assert spec.split("train").num_examples == 3 and spec.split("test").num_examples == 2

  ids, clips = pipeline.read_clips(out, "train", 10, ("video", "audio"))
  assert sorted(ids) == ["cam/tall.mp4@0.0s", "odd.mp4@0.0s", "odd.mp4@0.68s"]
  # the stored latents are the encoder's posterior means of the clips monl.media cuts
  from monl import media
  from monl.autoencoder import load as ae_load
  codec = ae_load.load(encoder_run, batch_size=2)
  src = list(media.read_clips(os.path.join(clips_dir, "train", "odd.mp4"), fps=25, sample_rate=16000, size=16,
                              clip_seconds=CLIP))
  want = codec.encode(np.stack([c.video for c in src]), np.stack([c.audio for c in src]))
  got = {m: clips[m][[ids.index("odd.mp4@0.0s"), ids.index("odd.mp4@0.68s")]] for m in ("video", "audio")}
  np.testing.assert_allclose(got["video"], want["video"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["audio"], want["audio"], rtol=1e-5, atol=1e-6)
  # the training pipeline reads it unchanged (normalised batches with source ids)
  batch = next(iter(pipeline.make_dataset(out, "train", batch_size=2, seed=0)))
  assert batch["video"].shape == (2, 5, 2, 2, 8) and batch["audio"].shape == (2, 34, 4)
  assert set(batch["source_id"]) <= set(ids)


def test_encode_rerun_skips_what_is_written_and_refuses_another_job(encoder_run, clips_dir, encoded, capfd,
                                                                   tmp_path):
  import shutil
  src_out, rc, _, _ = encoded
  assert rc == 0
  # copies (mtimes kept: copy2), so that this test changes nothing the others read
  clips, out = str(tmp_path / "clips"), str(tmp_path / "latents")
  shutil.copytree(clips_dir, clips)
  shutil.copytree(src_out, out)
  shutil.copytree(src_out + encode.PARTS_SUFFIX, out + encode.PARTS_SUFFIX)
  before = open(os.path.join(out, fmt.SPEC_FILE)).read()
  rc = encode.main(["--input", clips, "--output", out, "--encoder", encoder_run, "--no_progress"])
  cap = capfd.readouterr()
  assert rc == 0 and "up to date" in cap.out and "0 file(s) encoded now (0 clips), 5 already done" in cap.out, cap.out
  assert open(os.path.join(out, fmt.SPEC_FILE)).read() == before
  # a file added since: only it is encoded, the dataset is rewritten with it
  write_av(os.path.join(clips, "train", "new.mp4"), seconds=0.7, fps=25, rate=16000, width=20, height=20)
  rc = encode.main(["--input", clips, "--output", out, "--encoder", encoder_run, "--no_progress"])
  cap = capfd.readouterr()
  assert rc == 0 and "1 file(s) encoded now (1 clips), 5 already done" in cap.out, cap.out
  assert "[encode] batch size 16 (" in cap.err, cap.err  # no --batch_size: fitted (a tiny encoder fits 16)
  assert fmt.load_spec(out).split("train").num_examples == 4
  # other preprocessing into the same parts: refused, naming both jobs
  rc = encode.main(["--input", clips, "--output", out, "--encoder", encoder_run, "--size", "8",
                    "--no_progress"])
  cap = capfd.readouterr()
  assert rc == 2 and "holds clips encoded by another job" in cap.err and '"size": 8' in cap.err
  # preprocessing the encoder cannot take: refused before anything is read
  rc = encode.main(["--input", clips, "--output", str(tmp_path / "x"), "--encoder", encoder_run,
                    "--clip_seconds", "0.6", "--no_progress"])
  cap = capfd.readouterr()
  assert rc == 2 and "needs 1 + 4k frames" in cap.err and not (tmp_path / "x").exists()


def test_the_default_batch_size_is_what_the_encoders_memory_plan_fits(encoder_run, monkeypatch):
  """fitting_batch_size: the free memory's half over XLA's per-clip plan, at most `most`, at least 1."""
  from monl.autoencoder import load as ae_load
  codec = ae_load.load(encoder_run, batch_size=2)
  per_clip = codec.clip_bytes(17, 16, 10880)
  assert per_clip > 17 * 16 * 16 * 3 * 4  # at least the float32 frames themselves
  assert codec.clip_bytes(17, 32, 10880) > 2 * per_clip  # 4x the pixels (the audio stays): the plan grows
  for free, want in [(1e15, 16), (2 * 5.5 * per_clip, 5), (2 * 3.2 * per_clip, 3), (0.3 * per_clip, 1)]:
    monkeypatch.setattr(ae_load, "available_bytes", lambda free=free: (free, "in a test"))
    got, how = codec.fitting_batch_size(17, 16, 10880, most=16)
    assert got == want, (free / per_clip, got, how)
    assert "in a test" in how and ("may not fit" in how) == (want == 1)
  assert ae_load.available_bytes()[0] > 0


def test_encode_refuses_a_folder_without_video_and_a_run_that_is_not_an_encoder(clips_dir, tmp_path, capfd):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "notes.txt").write_text("x")
  rc = encode.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--encoder", str(tmp_path)])
  assert rc == 2 and "no video files" in capfd.readouterr().err
  rc = encode.main(["--input", clips_dir, "--output", str(tmp_path / "o"), "--encoder", str(tmp_path / "in")])
  err = capfd.readouterr().err
  assert rc == 2 and "config.json" in err, err
  assert not (tmp_path / "o").exists() and not (tmp_path / ("o" + encode.PARTS_SUFFIX)).exists()


@pytest.fixture(scope="module")
def avdit_run(encoded, tmp_path_factory):
  """(config, workdir) of AVDiT (the tiny test shrink of configs/default.py) trained 2 steps on `encoded`."""
  from conftest import tiny_config
  from monl.train import loop
  out, rc, _, stderr = encoded
  assert rc == 0, stderr
  # latent video segments are 1 frame each and audio ones 2 or 8: the default (2, 0, 0) / (4,) patches
  # do not divide them
  config = tiny_config(out, **{"train.num_steps": 2, "ckpt.every": 2, "data.batch_size": 2,
                               "sample.batch_size": 2, "layout.video.patch": (1, 0, 0),
                               "layout.audio.patch": (2,)})
  workdir = str(tmp_path_factory.mktemp("avdit") / "run")
  loop.train(config, workdir)
  return config, workdir


def read_mp4(path):
  """(fps, frames uint8 [T, H, W, 3], audio samples, sample rate, duration s) as PyAV reads them."""
  with av.open(str(path)) as c:
    vs, au = c.streams.video[0], c.streams.audio[0]
    frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(vs)])
    c.seek(0)
    samples = sum(f.samples for f in c.decode(au))
    return float(vs.average_rate), frames, samples, au.sample_rate, float(c.duration / av.time_base)


def test_mp4_folder_to_generated_mp4_with_sound(encoder_run, avdit_run, tmp_path):
  """The README path: mp4 folder -> encode --raw -> train_autoencoder -> encode (the fixtures) -> train
  AVDiT a few steps -> sample -> MP4 + compare MP4 decoded by that autoencoder."""
  from monl.autoencoder import load as ae_load
  from monl.media import frames as frames_lib
  from monl.sample import run as run_lib
  config, workdir = avdit_run
  req = run_lib.SampleRequest(task="continue", split="test", num=2, steps=2, previews=1)
  manifests = run_lib.run(config, workdir, req, str(tmp_path / "samples"))
  files = manifests["continue"]["previews"]
  assert files == ["00000.mp4", "00000_compare.mp4"], files  # latents: no GIF/WAV/contact sheet
  for name, width in (("00000.mp4", 128), ("00000_compare.mp4", 3 * 128 + 4)):
    fps, frames, samples, rate, seconds = read_mp4(tmp_path / "samples" / "continue" / name)
    assert fps == 25 and frames.shape[:3] == (17, 128 + 8 * (name != "00000.mp4"), width), frames.shape
    assert rate == 16000 and 10880 <= samples < 10880 + 2 * 1024  # AAC pads to whole 1024-sample frames
    assert seconds == pytest.approx(CLIP, abs=0.07)
  # the MP4 shows the autoencoder's decoding of the generated latents (to H.264's precision)
  gen = np.load(tmp_path / "samples" / "continue" / "00000.npz")
  codec = ae_load.load(encoder_run, batch_size=2)
  rgb = codec.decode({"video": gen["video"][None], "audio": gen["audio"][None]})["video"][0]
  want = frames_lib.upscale_nearest(frames_lib.to_uint8(rgb), 128).astype(int)
  _, got, _, _, _ = read_mp4(tmp_path / "samples" / "continue" / "00000.mp4")
  err = np.abs(got.astype(int) - want).mean()  # yuv420p halves the chroma resolution: a few levels off
  assert err < 8 and np.abs(got.astype(int) - 128).mean() > 4 * err, err


def test_evaluate_scores_the_media_the_autoencoder_decodes(encoder_run, avdit_run, tmp_path, monkeypatch):
  """AV-align, FVD/KVD (and FAD's waveforms) on latents score the autoencoder's RGB and waveform."""
  from conftest import FakeI3D
  from monl.autoencoder import load as ae_load
  from monl.data import decoders
  from monl.eval import evaluate as ev
  from monl.eval import metrics
  config, workdir = avdit_run
  config = config.copy_and_resolve_references()
  config.eval.cache_dir = str(tmp_path / "cache")
  fake = FakeI3D()
  monkeypatch.setattr(ev, "make_i3d", lambda settings: fake)
  res = ev.evaluate(config, workdir, tasks="joint", num=2, steps=2, i3d=True, i3d_max_clips=2,
                    output=str(tmp_path / "e"), quiet=True)
  m = res["tasks"]["joint"]
  assert {"latent_fd_video", "latent_fd_audio", "av_align", "fvd_i3d", "kvd_i3d"} <= set(m["metrics"])
  assert "config.eval.vggish_weights is ''" in m["skipped"]["fad_vggish"]
  assert any(f"decoded by autoencoder {encoder_run}@2" in n for n in res["notes"]), res["notes"]
  assert "decoding of the real clips' latents" in res["real_reference"]["av_align"]["label"]
  files = set(os.listdir(tmp_path / "e" / "samples" / "joint"))
  assert "00000.mp4" in files and "00000_compare.mp4" not in files  # joint gives nothing to compare
  # I3D saw the decoded clips (17 RGB frames of 16 x 16 in [0, 255]), real and generated
  assert fake.calls == [(2, 17, 16, 16, 3)] * 2, fake.calls
  assert m["metrics"]["fvd_i3d"]["provenance"]["decoded_by"] == f"autoencoder {encoder_run}@2"
  # AV-align per clip is that of the autoencoder's decoding of the samples, recomputed here
  samples = [np.load(tmp_path / "e" / "samples" / "joint" / f"{i:05d}.npz") for i in range(2)]
  lat = {k: np.stack([g[k] for g in samples]) for k in ("video", "audio")}
  dec = ae_load.load(encoder_run, batch_size=2).decode(lat)
  want = [metrics.av_align_waveform(v, w, 25.0, 16000) for v, w in zip(dec["video"], dec["audio"])]
  np.testing.assert_allclose(m["metrics"]["av_align"]["per_clip"], want)
  # FAD's waveforms: the decoded samples of the chosen audio latent frames (320 per frame), in order
  decoder = decoders.decoder_for(fmt.load_spec(res["dataset"]))
  wave = ev.fad_waveforms(lat, np.array([3, 4, 9]), decoder)
  want = np.concatenate([dec["audio"][:, f * 320:(f + 1) * 320] for f in (3, 4, 9)], axis=1)
  np.testing.assert_allclose(wave, want, atol=1e-6)


def test_a_dataset_whose_encoder_run_is_gone_says_so():
  from monl.data import decoders
  spec = fmt.DatasetSpec(modalities=(), splits={}, produced_by={
      "tool": "monl.data.encode", "encoder": {"run": "/nonexistent/ae", "checkpoint_step": 7}})
  with pytest.raises(decoders.DecoderError, match=r"produced_by.encoder.run = '/nonexistent/ae' at checkpoint_step 7"):
    decoders.decoder_for(spec)
  with pytest.raises(decoders.DecoderError, match="must hold 'run' and 'checkpoint_step'"):
    decoders.decoder_for(fmt.DatasetSpec(modalities=(), splits={}, produced_by={"tool": "monl.data.encode"}))

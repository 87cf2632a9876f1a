"""Tests of the built-in synthetic dataset: shapes, determinism, build/reuse, decoders, scores."""
import wave

import numpy as np
import pytest
from PIL import Image

from configs import default
from monl.data import format as fmt
from monl.data import pipeline
from monl.data import synthetic as syn
from monl.train import loop


@pytest.fixture(scope="module")
def clips():
  cs = [syn.generate_clip(syn.clip_rng(0, 0, i)) for i in range(48)]
  return np.stack([c["video"] for c in cs]), np.stack([c["audio"] for c in cs]), cs


def test_clip_matches_default_config(clips):
  video, audio, _ = clips
  layout = loop.with_data_layout(default.get_config()).layout  # from builtin_modalities, not the data
  assert video.shape[1:] == tuple(layout.video.shape) and video.dtype == np.float32
  assert audio.shape[1:] == tuple(layout.audio.shape) and audio.dtype == np.float32
  assert syn.VIDEO_SEGMENTS == tuple(layout.video.segments)
  assert syn.AUDIO_SEGMENTS == tuple(layout.audio.segments)
  assert 0.0 <= video.min() and video.max() <= 1.0
  assert np.isfinite(audio).all()


def test_generator_is_deterministic():
  a = syn.generate_clip(syn.clip_rng(7, 0, 3))
  b = syn.generate_clip(syn.clip_rng(7, 0, 3))
  c = syn.generate_clip(syn.clip_rng(8, 0, 3))
  np.testing.assert_array_equal(a["video"], b["video"])
  np.testing.assert_array_equal(a["audio"], b["audio"])
  assert not np.array_equal(a["video"], c["video"])


def test_physics_ground_truth(clips):
  _, _, cs = clips
  for c in cs:
    m = c["meta"]
    assert len(m["bounce_times"]) >= 1  # every clip has something to hear
    assert (m["video_xy"] >= m["radius"] - 1e-9).all() and (m["video_xy"] <= 1 - m["radius"] + 1e-9).all()
  # The estimators recover the true positions.
  video, audio, _ = clips
  true_xy = np.stack([c["meta"]["video_xy"] for c in cs])
  assert np.abs(syn.ball_positions(video.astype(np.float64)) - true_xy).max() < 0.02
  true_y = np.stack([c["meta"]["audio_y"] for c in cs])
  assert np.abs(syn.audio_heights(audio.astype(np.float64)) - true_y).max() < 0.01


def test_scores_ground_truth_vs_shuffled(clips):
  video, audio, _ = clips
  shuffled = np.roll(audio, 1, axis=0)  # every video with another clip's audio
  gt, bad = syn.av_agreement(video, audio), syn.av_agreement(video, shuffled)
  assert gt.shape == (len(video),)
  assert gt.max() < 0.02 and bad.mean() > 0.08 and (bad > gt).mean() > 0.95
  gt, bad = syn.bounce_sync(video, audio), syn.bounce_sync(video, shuffled)
  assert gt.mean() < 0.03 and gt.max() < 0.1 and bad.mean() > 0.08
  rng = np.random.default_rng(0)
  frame_shuffled = np.stack([v[rng.permutation(len(v))] for v in video])
  gt, bad = syn.trajectory_error(video), syn.trajectory_error(frame_shuffled)
  assert gt.max() < 0.04 and bad.min() > 2 * gt.max() and bad.mean() > 0.1
  frozen = np.repeat(video[:, :1], video.shape[1], axis=1)  # a still frame ignores gravity
  assert syn.trajectory_error(frozen).min() > 0.04
  # One clip in, one float out.
  assert isinstance(syn.av_agreement(video[0], audio[0]), float)


def test_background_noise_sees_speckle_but_not_the_ball(clips):
  video = clips[0].astype(np.float64)
  assert syn.background_noise(video).max() == 0.0  # a flat background, whatever the ball does
  rng = np.random.default_rng(0)
  speckled = video + 0.03 * rng.standard_normal(video.shape)
  np.testing.assert_allclose(syn.background_noise(speckled), 0.03, rtol=0.1)
  # a second ball far from the first is counted; the same ball brighter is not
  ghost = video.copy()
  ghost[:, :, :3, :3] = 1.0 - ghost[:, :, :3, :3]
  far = syn.background_noise(ghost) > 0.05
  assert far.mean() > 0.5
  ball = np.abs(video - video[:, :, :1, :1]).max(-1, keepdims=True) > 0  # corner pixel = background
  ball &= np.abs(video - video[:, :, -1:, -1:]).max(-1, keepdims=True) > 0
  assert syn.background_noise(np.where(ball, 0.5 * video, video)).max() == 0.0
  assert isinstance(syn.background_noise(video[0]), float)


def test_appearance_drift_sees_colour_changes_but_not_motion(clips):
  video = clips[0].astype(np.float64)
  assert syn.appearance_drift(video).max() == 0.0  # the ball moves; no colour changes
  background = np.all(video == video[:, :, :1, :1], axis=-1, keepdims=True) | \
      np.all(video == video[:, :, -1:, -1:], axis=-1, keepdims=True)  # a corner is always background
  # A continuation whose second half lightens the background by 0.1: half the frames 0.05 off the
  # median, each the average of background (0.05) and ball (0) -> 0.025; background_noise sees nothing.
  lighter = video.copy()
  lighter[:, 8:] = np.where(background[:, 8:], video[:, 8:] + 0.1, video[:, 8:])
  np.testing.assert_allclose(syn.appearance_drift(lighter), 0.025, atol=1e-9)
  assert syn.background_noise(lighter).max() < 1e-12
  # A ball dimmed to 0.7 in 3 frames of 16 raises it; scenes cut from unrelated clips raise it far more.
  dim = video.copy()
  dim[:, [3, 7, 11]] = np.where(background[:, [3, 7, 11]], video[:, [3, 7, 11]], 0.7 * video[:, [3, 7, 11]])
  dimmed = syn.appearance_drift(dim)
  assert dimmed.min() > 0.005
  cut = np.concatenate([np.roll(video, s, axis=0)[:, 4 * s:4 * s + 4] for s in range(4)], axis=1)
  assert syn.appearance_drift(cut).mean() > 4 * dimmed.mean()
  assert isinstance(syn.appearance_drift(video[0]), float)


def test_decoders(clips, tmp_path):
  video, audio, _ = clips
  frames = syn.video_to_frames(video[0], scale=4)
  assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
  syn.write_gif(tmp_path / "a.gif", frames, fps=8)
  with Image.open(tmp_path / "a.gif") as im:
    assert im.n_frames == 16 and im.size == (64, 64)
  w = syn.audio_to_waveform(audio[0])
  assert w.shape == (32000,) and w.dtype == np.float32 and np.abs(w).max() <= 1.0 and np.abs(w).max() > 0.05
  syn.write_wav(tmp_path / "a.wav", w, 16000)
  with wave.open(str(tmp_path / "a.wav")) as f:
    assert f.getframerate() == 16000 and f.getnframes() == 32000 and f.getsampwidth() == 2
  # The loudest frequency in a frame is the tone's bin (pitch follows height).
  frame = slice(16000, 16000 + 500)
  spectrum = np.abs(np.fft.rfft(w[frame] * np.hanning(500)))
  peak_hz = np.fft.rfftfreq(500, 1 / 16000)[spectrum.argmax()]
  bin_hz = syn.BIN_FREQS_HZ[audio[0][32].argmax()]
  assert abs(np.log2(peak_hz / bin_hz)) < 0.3


def test_ensure_builtin_dataset(tmp_path, capsys):
  out = syn.ensure_builtin_dataset(tmp_path / "syn", num_train=6, num_test=2, seed=0, num_shards=2)
  spec = fmt.load_spec(out)
  pipeline.check_layout(spec, pipeline.layout_from_config(loop.with_data_layout(default.get_config()).layout), str(out))
  assert spec.produced_by["generator"] == syn.generator_params(6, 2, 0, 2)
  assert spec.modality("video").seconds_per_segment == (0.5,) * 4
  stamp = (out / "dataset.json").stat().mtime
  assert syn.ensure_builtin_dataset(tmp_path / "syn", num_train=6, num_test=2, seed=0, num_shards=2) == out
  assert (out / "dataset.json").stat().mtime == stamp  # reused, not rebuilt
  syn.ensure_builtin_dataset(tmp_path / "syn", num_train=4, num_test=2, seed=0, num_shards=2)
  assert "rebuilding" in capsys.readouterr().err
  assert fmt.load_spec(out).splits["train"].num_examples == 4
  # Someone else's dataset or files are never overwritten.
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(fmt.DatasetError, match=r"other: exists, is not empty and has no dataset\.json"):
    syn.ensure_builtin_dataset(tmp_path / "other", num_train=4, num_test=2)


def test_resolve_data_dir(tmp_path):
  config = default.get_config()
  config.data.dir = str(tmp_path / "mine")
  assert str(syn.resolve_data_dir(config.data)) == str(tmp_path / "mine")

"""Tests for monl.eval.metrics (Fréchet / kernel distances, FeatureStats) and monl.eval.latent_fd."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monl.eval import latent_fd as lfd
from monl.eval import metrics
from monl.eval.metrics import (FeatureStats, frechet_distance, kernel_distance, mmd2_unbiased)


def _stats(mean: np.ndarray, cov: np.ndarray) -> FeatureStats:
  return FeatureStats(mean=np.asarray(mean, np.float64), cov=np.asarray(cov, np.float64), num=0)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _closed_form_fd(mu1, s1, mu2, s2) -> float:
  """Independent reference: Tr((S1^½ S2 S1^½)^½) via symmetric eigendecompositions."""
  r1 = _psd_sqrt(s1)
  cross = _psd_sqrt(r1 @ s2 @ r1)
  d = mu1 - mu2
  return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


def test_fd_diagonal_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet_distance(_stats(mu1, np.diag(a)), _stats(mu2, np.diag(b)))
  assert got == pytest.approx(expected, rel=1e-10)


def test_fd_general_covariances_match_reference():
  rng = np.random.default_rng(0)
  d = 8
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  got = frechet_distance(_stats(mu1, s1), _stats(mu2, s2))
  assert got == pytest.approx(_closed_form_fd(mu1, s1, mu2, s2), rel=1e-8)


def test_fd_from_large_samples_close_to_closed_form():
  rng = np.random.default_rng(1)
  d, n = 4, 20000
  mu1, mu2 = np.zeros(d), np.array([1.0, 0.0, 0.5, 0.0])
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  x = rng.multivariate_normal(mu1, s1, size=n)
  y = rng.multivariate_normal(mu2, s2, size=n)
  got = frechet_distance(FeatureStats.from_features(x), FeatureStats.from_features(y))
  assert got == pytest.approx(_closed_form_fd(mu1, s1, mu2, s2), rel=0.05)


def test_fd_zero_symmetric_positive():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(500, 16))
  y = rng.normal(size=(500, 16)) + 0.5
  sx, sy = FeatureStats.from_features(x), FeatureStats.from_features(y)
  assert abs(frechet_distance(sx, sx)) < 1e-8
  assert frechet_distance(sx, sy) == pytest.approx(frechet_distance(sy, sx), rel=1e-8)
  assert frechet_distance(sx, sy) > 16 * 0.25 * 0.8  # ≈ ‖shift‖² = 4


def test_fd_rank_deficient_covariance_is_finite():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(5, 32))  # N < D: rank-deficient covariance
  s = FeatureStats.from_features(x)
  fd = frechet_distance(s, s)
  assert np.isfinite(fd) and abs(fd) < 1e-2


def test_fd_eps_retry_when_sqrtm_not_finite(monkeypatch):
  calls = []
  real_sqrtm = metrics._sqrtm

  def fake_sqrtm(mat):
    calls.append(mat.copy())
    return np.full_like(mat, np.inf) if len(calls) == 1 else real_sqrtm(mat)

  monkeypatch.setattr(metrics, "_sqrtm", fake_sqrtm)
  s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
  fd = frechet_distance(_stats(np.zeros(2), s1), _stats(np.zeros(2), s2), eps=1e-3)
  assert len(calls) == 2
  np.testing.assert_allclose(calls[1], (s1 + 1e-3 * np.eye(2)) @ (s2 + 1e-3 * np.eye(2)))
  assert fd == pytest.approx(2.0, abs=1e-2)  # (1-2)² + (2-1)² up to the offset


def test_fd_rejects_large_imaginary_part_and_dim_mismatch():
  bad = _stats(np.zeros(2), np.diag([1.0, -1.0]))  # not a covariance: sqrt has imaginary diagonal
  with pytest.raises(ValueError, match="imaginary"):
    frechet_distance(bad, _stats(np.zeros(2), np.eye(2)))
  with pytest.raises(ValueError, match="feature dims differ"):
    frechet_distance(_stats(np.zeros(2), np.eye(2)), _stats(np.zeros(3), np.eye(3)))


# ---------------------------------------------------------------------------------------------
# Kernel distance
# ---------------------------------------------------------------------------------------------


def _reference_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Direct O(n²) loops over pairs with k(a, b) = (a·b/d + 1)³."""
  m, d = x.shape
  k = lambda a, b: (float(a @ b) / d + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kernel_distance_matches_direct_reference():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.3
  ref = _reference_mmd2(x, y)
  assert mmd2_unbiased(x, y) == pytest.approx(ref, rel=1e-10)
  # One subset holding every row is a permutation of the sets, which MMD² does not see.
  mean, std = kernel_distance(x, y, subset_size=12, num_subsets=1)
  assert mean == pytest.approx(ref, rel=1e-10) and std == 0.0


def test_kernel_distance_same_vs_shifted():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
  same, same_std = kernel_distance(x, y, subset_size=200, num_subsets=20)
  shifted, _ = kernel_distance(x, y + 1.0, subset_size=200, num_subsets=20)
  assert abs(same) < 0.05 and same_std > 0
  assert shifted > 0.5 and shifted > 20 * abs(same)
  # Deterministic given the seed; FeatureStats with features are accepted.
  again = kernel_distance(FeatureStats.from_features(x), y, subset_size=200, num_subsets=20)
  assert again == (same, same_std)


def test_kernel_distance_needs_raw_features():
  s = FeatureStats.from_features(np.random.default_rng(0).normal(size=(10, 3)), keep_features=False)
  with pytest.raises(ValueError, match="without raw features"):
    kernel_distance(s, s)


# ---------------------------------------------------------------------------------------------
# FeatureStats persistence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_features", [True, False])
def test_feature_stats_npz_round_trip(tmp_path, keep_features):
  feats = np.random.default_rng(6).normal(size=(30, 7))
  meta = {"extractor": "i3d", "resize": "tf1_bilinear", "n": 30, "nested": {"split": "train"}}
  s = FeatureStats.from_features(feats, keep_features=keep_features, meta=meta)
  path = tmp_path / "ref_stats.npz"
  s.save(path)
  with np.load(path, allow_pickle=False) as raw:  # readable without pickle
    assert json.loads(str(raw["meta_json"])) == meta
  t = FeatureStats.load(path)
  np.testing.assert_array_equal(t.mean, s.mean)
  np.testing.assert_array_equal(t.cov, s.cov)
  assert t.num == 30 and t.meta == meta and t.mean.dtype == np.float64
  if keep_features:
    np.testing.assert_array_equal(t.features, feats)
  else:
    assert t.features is None


def test_feature_stats_validation(tmp_path):
  with pytest.raises(ValueError, match="non-finite"):
    FeatureStats.from_features(np.array([[0.0, np.nan], [1.0, 2.0]]))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    FeatureStats.from_features(np.zeros(5))
  path = tmp_path / "other.npz"
  np.savez(path, mean=np.zeros(3))
  with pytest.raises(ValueError, match="other.npz.*missing fields"):
    FeatureStats.load(path)


# ---------------------------------------------------------------------------------------------
# Latent FD proxy
# ---------------------------------------------------------------------------------------------


def test_latent_fd_excludes_conditioning_segments():
  rng = np.random.default_rng(7)
  b, seg = 200, (2, 3, 3)  # T = 8 latent frames in three segments; segment 0 is conditioning
  real = rng.normal(size=(b, 8, 2, 2))
  gen = rng.normal(size=(b, 8, 2, 2))
  gen[:, :2] += 50.0  # garbage in the conditioning frames must not count
  mask = np.array([False, True, True])

  masked = lfd.latent_fd(real, gen, "video", segment_lengths=seg, generated_mask=mask)
  sliced = lfd.latent_fd(real[:, 2:], gen[:, 2:], "video")
  unmasked = lfd.latent_fd(real, gen, "video")
  assert masked["name"] == "latent_fd_video (proxy, not comparable to literature)"
  assert masked["value"] == pytest.approx(sliced["value"], rel=1e-9)
  assert unmasked["value"] > 100 * masked["value"]
  assert masked["feature_dim"] == 2 * 4 and masked["num_real"] == b


def test_latent_fd_per_clip_mask_and_flatten():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(4, 6, 3))  # audio-like [B, T, C]
  per_clip = np.array([[True, False], [False, True], [True, True], [True, False]])
  feats = lfd.latent_clip_features(x, segment_lengths=(3, 3), generated_mask=per_clip)
  np.testing.assert_allclose(feats[1, :3], x[1, 3:].mean(axis=0))
  np.testing.assert_allclose(feats[1, 3:], x[1, 3:].std(axis=0))
  flat = lfd.latent_clip_features(x, segment_lengths=(3, 3), generated_mask=[False, True],
                                  pooling="flatten")
  np.testing.assert_array_equal(flat, x[:, 3:].reshape(4, -1))
  with pytest.raises(ValueError, match="same number of kept frames"):
    lfd.latent_clip_features(x, segment_lengths=(3, 3), generated_mask=per_clip, pooling="flatten")
  with pytest.raises(ValueError, match="sum to"):
    lfd.latent_clip_features(x, segment_lengths=(3, 2), generated_mask=[True, True])
  with pytest.raises(ValueError, match="no generated segment"):
    lfd.latent_clip_features(x, segment_lengths=(3, 3), generated_mask=[False, False])
  stats = lfd.latent_feature_stats(x, "audio")
  assert stats.meta["metric"] == lfd.latent_fd_label("audio") and stats.dim == 6


# ---------------------------------------------------------------------------------------------
# AV-align
# ---------------------------------------------------------------------------------------------

_V_FPS, _A_FPS = 8, 32  # the built-in datasets' frame rates: 4 audio frames per video frame


def _event_video(events, t=16, size=8) -> np.ndarray:
  """[t, size, size, 3] grey box with a white square that jumps to a new place at each event frame."""
  v = np.full((t, size, size, 3), 0.1)
  corner = 0
  for j in range(t):
    if j in events:
      corner = (corner + 3) % (size - 2)
    v[j, corner:corner + 2, 1:3] = 1.0
  return v


def _event_spec(onset_frames, t=64, bins=16, seed=0) -> np.ndarray:
  """[t, bins] log spectrogram: a jittered noise floor with a broadband click at each onset frame."""
  mag = 0.01 * np.exp(0.2 * np.random.default_rng(seed).standard_normal((t, bins)))
  for k in onset_frames:
    if 0 <= k < t:
      mag[k] += 0.6
  return np.log(mag)


def _click_frames(video_events, shift_video_frames=0):
  # the click in the first audio frame of the event's video frame (centre 3/64 s before the frame's centre)
  return [4 * (j + shift_video_frames) for j in video_events]


def test_av_align_aligned_clip_scores_one():
  events = [3, 7, 11]
  v, a = _event_video(events), _event_spec(_click_frames(events))
  np.testing.assert_allclose(metrics.video_peaks(v, _V_FPS), (np.array(events) + 0.5) / _V_FPS)
  np.testing.assert_allclose(metrics.audio_onsets(a, _A_FPS), (np.array(events) * 4 + 0.5) / _A_FPS)
  assert metrics.av_align(v, a, _V_FPS, _A_FPS) == 1.0


def test_av_align_shift_beyond_window_drops_score():
  events = [3, 7, 11]
  v = _event_video(events)
  # clicks at audio frame 4j are 3/64 s before the peaks at (j + 0.5) / 8: a shift of s video frames
  # puts them s/8 - 3/64 s away, inside the open ±1/8 s window for s = 1 and outside for s = 2, -2, 3
  for shift, want in ((1, 1.0), (2, 0.0), (-2, 0.0), (3, 0.0)):
    a = _event_spec(_click_frames(events, shift))
    assert metrics.av_align(v, a, _V_FPS, _A_FPS) == want, shift
  # one of three events shifted out: 2 matched of 3 + 3 events -> 2 / 4
  a = _event_spec(_click_frames([3, 7]) + _click_frames([11], 2))
  assert metrics.av_align(v, a, _V_FPS, _A_FPS) == pytest.approx(0.5)
  # a wider window accepts the 2-frame shift
  a = _event_spec(_click_frames(events, 2))
  assert metrics.av_align(v, a, _V_FPS, _A_FPS, window_frames=2.5) == 1.0


def _random_events(rng) -> list[int]:
  """Three video frames in 2..13, at least 3 apart (so motion peaks stay separate)."""
  while True:
    ev = sorted(rng.choice(np.arange(2, 14), 3, replace=False))
    if min(np.diff(ev)) >= 3:
      return [int(e) for e in ev]


def test_av_align_unrelated_clips_score_low():
  rng = np.random.default_rng(0)
  aligned, unrelated = [], []
  for i in range(40):
    ev_v, ev_a = _random_events(rng), _random_events(rng)
    v = _event_video(ev_v)
    aligned.append(metrics.av_align(v, _event_spec(_click_frames(ev_v), seed=i), _V_FPS, _A_FPS))
    unrelated.append(metrics.av_align(v, _event_spec(_click_frames(ev_a), seed=i), _V_FPS, _A_FPS))
  # pure noise in both modalities
  noise = [metrics.av_align(rng.uniform(size=(16, 8, 8, 3)), rng.normal(size=(64, 16)), _V_FPS, _A_FPS)
           for _ in range(20)]
  assert np.mean(aligned) == 1.0
  assert np.mean(unrelated) < 0.4 and np.mean(noise) < 0.4, (np.mean(unrelated), np.mean(noise))


def test_av_align_edge_cases_are_zero():
  events = [3, 7, 11]
  v, a = _event_video(events), _event_spec(_click_frames(events))
  silent = np.full((64, 16), np.log(0.01))
  still = np.full((16, 8, 8, 3), 0.3)
  assert len(metrics.audio_onsets(silent, _A_FPS)) == 0 and len(metrics.video_peaks(still, _V_FPS)) == 0
  assert metrics.av_align(v, silent, _V_FPS, _A_FPS) == 0.0  # no onsets
  assert metrics.av_align(still, a, _V_FPS, _A_FPS) == 0.0  # no peaks
  assert metrics.av_align(still, silent, _V_FPS, _A_FPS) == 0.0  # neither: defined, not 0/0
  with pytest.raises(ValueError, match=r"motion_curve.*\[T >= 3, H, W, 3\]"):
    metrics.av_align(v[..., :1], a, _V_FPS, _A_FPS)
  with pytest.raises(ValueError, match="onset_strength.*non-finite"):
    metrics.av_align(v, np.full((64, 16), np.nan), _V_FPS, _A_FPS)
  with pytest.raises(ValueError, match="3 videos but 2"):
    metrics.av_align_batch(np.stack([v] * 3), np.stack([a] * 2), _V_FPS, _A_FPS)


def test_av_align_matching_is_one_to_one():
  # two onsets near one peak: one match, IoU 1 / (2 + 1 - 1); the reference would give 2 / 1
  assert metrics.match_events([0.10, 0.12], [0.11], 0.125) == 1
  assert metrics.av_align_score([0.10, 0.12], [0.11], 0.125) == pytest.approx(0.5)
  # greedy in time order finds the maximum matching
  assert metrics.match_events([0.0, 0.2], [0.1, 0.3], 0.15) == 2
  assert metrics.av_align_score([0.5], [0.5 + 0.125], 0.125) == 0.0  # the window is open


def test_onset_strength_and_peak_picking():
  spec = np.zeros((6, 2))
  spec[2] = [1.0, -1.0]  # rise in bin 0 only counts, the fall in bin 1 does not
  np.testing.assert_allclose(metrics.onset_strength(spec), [0, 0, 1, 1, 0, 0])
  env = np.array([0, 0, 1.0, 0.2, 0, 0, 0.05, 0, 0.9, 0.95, 0, 0])
  # 0.05 is below mean + delta; 0.9 is followed by a larger value, so 0.95 is the peak
  np.testing.assert_array_equal(metrics.pick_peaks(env, 32), [2, 9])
  np.testing.assert_array_equal(metrics.pick_peaks(np.ones(10), 32), [])


def test_av_align_waveform_variant():
  sr, events = 16000, [3, 7, 11]
  v = _event_video(events)
  rng = np.random.default_rng(0)

  def clicks(frames):
    w = 0.01 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)
    for j in frames:  # a 20 ms noise burst at the start of video frame j
      s = int(j / _V_FPS * sr)
      w[s:s + sr // 50] += 0.5 * rng.standard_normal(sr // 50)
    return w

  spec, rate, offset = metrics.log_spectrogram(clicks(events), sr)
  assert spec.shape == (1 + (2 * sr - 400) // 160, 201) and rate == 100.0 and offset == 1.25
  assert metrics.av_align_waveform(v, clicks(events), _V_FPS, sr) == 1.0
  assert metrics.av_align_waveform(v, clicks([j + 2 for j in events]), _V_FPS, sr) == 0.0
  with pytest.raises(ValueError, match="mono"):
    metrics.av_align_waveform(v, np.zeros((2, 100)), _V_FPS, sr)


def test_av_align_on_builtin_bouncing_ball_beats_shuffled_pairs():
  from monl.data import synthetic
  clips = [synthetic.generate_clip(np.random.default_rng(i)) for i in range(24)]
  video = np.stack([c["video"] for c in clips])
  audio = np.stack([c["audio"] for c in clips])
  real = metrics.av_align_batch(video, audio, synthetic.VIDEO_FPS, synthetic.AUDIO_FPS)
  shuffled = metrics.av_align_batch(video, np.roll(audio, 1, axis=0), synthetic.VIDEO_FPS,
                                    synthetic.AUDIO_FPS)
  assert real.shape == (24,) and ((0 <= real) & (real <= 1)).all()
  assert real.mean() > shuffled.mean() + 0.15

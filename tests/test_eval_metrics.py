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

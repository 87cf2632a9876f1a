"""Distribution distances over extracted features: Fréchet distance and kernel (MMD²) distance.

Everything here is host-side numpy/scipy in float64, independent of which network produced the
features, so the same code serves FVD (I3D features), FAD (VGGish embeddings), KVD/KID and the
latent-space proxies.

* `FeatureStats` holds the Gaussian fit (mean [D], cov [D, D]) and optionally the raw features
  [N, D] (needed for the kernel distance), plus a JSON-serialisable `meta` dict recording which
  extractor / port / resize rule produced the features. It round-trips through a pickle-free `.npz`.
* `frechet_distance` follows the standard implementations (pytorch-fid, TF-GAN):
  ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}) with `scipy.linalg.sqrtm`, the eps-offset retry
  when the product is singular, and a small imaginary part discarded (a large one is an error).
* `kernel_distance` is the unbiased polynomial-kernel MMD² of KID/KVD, k(x, y) = (x·y / d + 1)³,
  averaged over random subsets as in `polynomial_mmd_averages` (Bińkowski et al.; MM-Diffusion).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import numpy as np
import scipy.linalg

# Bumped when the on-disk layout of `FeatureStats.save` changes.
_STATS_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Feature statistics
# ----------------------------------------------------------------------------------------------


def _as_features(feats: Any, name: str = "features") -> np.ndarray:
  """Validates and converts features to float64 [N, D]."""
  arr = np.asarray(feats, dtype=np.float64)
  if arr.ndim != 2:
    raise ValueError(f"{name} must have shape [N, D]; got shape {arr.shape}")
  if arr.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 samples for a covariance; got N={arr.shape[0]}")
  if not np.isfinite(arr).all():
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    raise ValueError(f"{name} contain {bad} non-finite values (NaN/inf); refusing to fit stats")
  return arr


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Gaussian statistics of a feature set, optionally with the raw features.

  Attributes:
    mean: [D] float64 sample mean.
    cov: [D, D] float64 sample covariance (ddof=1, as numpy/pytorch-fid/TF-GAN).
    num: N, the number of feature vectors the statistics were computed from.
    features: optional [N, D] float64 raw features (kept for `kernel_distance`; None when only the
      Gaussian fit is stored, e.g. cached reference stats without KVD).
    meta: JSON-serialisable provenance (extractor name, package/port, weights hash, resize rule,
      dataset split, ...). Stored inside the npz as a JSON string.
  """

  mean: np.ndarray
  cov: np.ndarray
  num: int
  features: np.ndarray | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    d = self.mean.shape[0] if self.mean.ndim == 1 else -1
    if self.mean.ndim != 1 or self.cov.shape != (d, d):
      raise ValueError(
          f"FeatureStats: mean must be [D] and cov [D, D]; got mean {self.mean.shape}, "
          f"cov {self.cov.shape}")
    if self.features is not None and (self.features.ndim != 2 or self.features.shape[1] != d):
      raise ValueError(
          f"FeatureStats: features must be [N, {d}]; got {self.features.shape}")

  @property
  def dim(self) -> int:
    return int(self.mean.shape[0])

  @classmethod
  def from_features(cls, feats: Any, *, keep_features: bool = True,
                    meta: dict[str, Any] | None = None) -> "FeatureStats":
    """Fits mean/covariance to `feats` [N, D] (N >= 2) in float64."""
    arr = _as_features(feats)
    mean = arr.mean(axis=0)
    cov = np.cov(arr, rowvar=False)
    cov = np.atleast_2d(cov)  # np.cov returns a 0-d array when D == 1
    meta = dict(meta or {})
    json.dumps(meta)  # fail now, not at save time, if meta is not JSON-serialisable
    return cls(mean=mean, cov=cov, num=int(arr.shape[0]),
               features=arr if keep_features else None, meta=meta)

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes a pickle-free `.npz` (numeric arrays plus `meta` as a JSON string)."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(_STATS_FORMAT_VERSION, dtype=np.int64),
        "mean": np.asarray(self.mean, dtype=np.float64),
        "cov": np.asarray(self.cov, dtype=np.float64),
        "num": np.asarray(self.num, dtype=np.int64),
        # A unicode scalar array, which np.load reads back without pickle.
        "meta_json": np.asarray(json.dumps(self.meta, sort_keys=True)),
    }
    if self.features is not None:
      arrays["features"] = np.asarray(self.features, dtype=np.float64)
    with open(path, "wb") as f:  # an open file keeps np.savez from appending ".npz"
      np.savez(f, **arrays)

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> "FeatureStats":
    """Reads stats written by `save`; errors name the file and the bad field."""
    with np.load(path, allow_pickle=False) as data:
      missing = [k for k in ("format_version", "mean", "cov", "num", "meta_json")
                 if k not in data.files]
      if missing:
        raise ValueError(f"{os.fspath(path)}: not a FeatureStats file, missing fields {missing} "
                         f"(has {sorted(data.files)})")
      version = int(data["format_version"])
      if version != _STATS_FORMAT_VERSION:
        raise ValueError(f"{os.fspath(path)}: field 'format_version' is {version}, this code "
                         f"reads version {_STATS_FORMAT_VERSION}")
      try:
        meta = json.loads(str(data["meta_json"]))
      except json.JSONDecodeError as e:
        raise ValueError(f"{os.fspath(path)}: field 'meta_json' is not valid JSON: {e}") from e
      features = data["features"].astype(np.float64) if "features" in data.files else None
      try:
        return cls(mean=data["mean"].astype(np.float64), cov=data["cov"].astype(np.float64),
                   num=int(data["num"]), features=features, meta=meta)
      except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from e


# ----------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------


def _sqrtm(mat: np.ndarray) -> np.ndarray:
  """scipy's matrix square root, with its singular-matrix warning silenced (we check finiteness)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
    return scipy.linalg.sqrtm(mat)


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats, *, eps: float = 1e-6,
                     imag_atol: float = 1e-3) -> float:
  """Fréchet distance between the Gaussian fits of two feature sets (FID/FVD/FAD).

  FD = ‖μ_a − μ_b‖² + Tr(Σ_a) + Tr(Σ_b) − 2 Tr((Σ_a Σ_b)^{1/2}), in float64.

  Args:
    stats_a, stats_b: statistics with the same feature dimension D.
    eps: diagonal offset added to both covariances when the product's square root is not finite
      (singular product, e.g. N <= D), as pytorch-fid does.
    imag_atol: the square root's diagonal may carry a numerical imaginary part; up to this size it
      is discarded, beyond it the inputs are considered broken and a ValueError is raised.

  Returns:
    The distance as a Python float (>= 0 up to round-off).
  """
  if stats_a.dim != stats_b.dim:
    raise ValueError(f"frechet_distance: feature dims differ ({stats_a.dim} vs {stats_b.dim}); "
                     f"meta a={stats_a.meta}, b={stats_b.meta}")
  mu1, mu2 = stats_a.mean.astype(np.float64), stats_b.mean.astype(np.float64)
  s1, s2 = stats_a.cov.astype(np.float64), stats_b.cov.astype(np.float64)
  diff = mu1 - mu2

  covmean = _sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    # Singular product: regularise both covariances, as the reference implementations do.
    offset = np.eye(s1.shape[0]) * eps
    covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if not np.isfinite(covmean).all():
      raise ValueError(f"frechet_distance: sqrtm(cov_a @ cov_b) is not finite even with "
                       f"eps={eps} added to the diagonals")
  if np.iscomplexobj(covmean):
    max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
    if max_imag > imag_atol:
      raise ValueError(f"frechet_distance: sqrtm(cov_a @ cov_b) has an imaginary diagonal "
                       f"component of {max_imag:.3g} > {imag_atol}; the covariances are likely "
                       f"degenerate or not from the same feature space")
    covmean = covmean.real

  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# Kernel (MMD²) distance: KID / KVD / KAD
# ----------------------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3,
                      gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
  """k(x, y) = (γ x·y + c)^degree with γ = 1/D by default (sklearn's defaults). x [N, D], y [M, D]."""
  if gamma is None:
    gamma = 1.0 / x.shape[1]
  return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None,
                  coef0: float = 1.0) -> float:
  """Unbiased MMD² of KID for equal-size sets x, y [m, D].

  Within-set terms drop the diagonal (m(m−1) pairs); the cross term averages all m² pairs, exactly
  as `_mmd2_and_variance(..., mmd_est='unbiased')` in the KID reference code and TF-GAN.
  """
  m = x.shape[0]
  if y.shape[0] != m:
    raise ValueError(f"mmd2_unbiased expects equal set sizes; got {x.shape[0]} and {y.shape[0]}")
  k_xx = polynomial_kernel(x, x, degree=degree, gamma=gamma, coef0=coef0)
  k_yy = polynomial_kernel(y, y, degree=degree, gamma=gamma, coef0=coef0)
  k_xy = polynomial_kernel(x, y, degree=degree, gamma=gamma, coef0=coef0)
  sum_xx = k_xx.sum() - np.trace(k_xx)
  sum_yy = k_yy.sum() - np.trace(k_yy)
  return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def _raw_features(feats: Any, name: str) -> Any:
  """Unwraps FeatureStats; the kernel distance needs the raw features, not the Gaussian fit."""
  if isinstance(feats, FeatureStats):
    if feats.features is None:
      raise ValueError(f"kernel_distance: {name} is a FeatureStats without raw features "
                       f"(saved with keep_features=False; meta={feats.meta}); KVD needs them")
    return feats.features
  return feats


def kernel_distance(feats_a: Any, feats_b: Any, *, degree: int = 3, gamma: float | None = None,
                    coef0: float = 1.0, subset_size: int = 1000, num_subsets: int = 100,
                    seed: int = 0) -> tuple[float, float]:
  """Unbiased polynomial-kernel MMD² (KID/KVD), averaged over random subsets.

  Each of `num_subsets` rounds draws `min(subset_size, N_a, N_b)` rows without replacement from
  each set and computes `mmd2_unbiased`; the result is the mean over rounds and the standard
  deviation of the per-round estimates (the numbers `polynomial_mmd_averages` in MM-Diffusion /
  the KID code reports; TF-GAN's block version reports std/√blocks instead).

  Args:
    feats_a: [N_a, D] features (e.g. I3D logits of real clips). `FeatureStats` with features works.
    feats_b: [N_b, D] features of the other set.
    degree, gamma, coef0: kernel (γ x·y + c)^degree; γ=None means 1/D.
    subset_size: rows per subset (1000 in KID/MM-Diffusion); clipped to the smaller set size.
    num_subsets: number of random subsets (100 in MM-Diffusion's KVD, 50 in KID's default).
    seed: seed of the numpy Generator drawing the subsets, so results are reproducible.

  Returns:
    (mean, std) of the subset MMD² estimates, as Python floats. The mean can be slightly negative
    when the two sets come from the same distribution (the estimator is unbiased).
  """
  a = _as_features(_raw_features(feats_a, "feats_a"), "feats_a")
  b = _as_features(_raw_features(feats_b, "feats_b"), "feats_b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"kernel_distance: feature dims differ ({a.shape[1]} vs {b.shape[1]})")
  if num_subsets < 1 or subset_size < 2:
    raise ValueError(f"kernel_distance: need num_subsets >= 1 and subset_size >= 2; got "
                     f"num_subsets={num_subsets}, subset_size={subset_size}")
  m = min(subset_size, a.shape[0], b.shape[0])
  rng = np.random.default_rng(seed)
  ests = np.empty(num_subsets, dtype=np.float64)
  for i in range(num_subsets):
    xa = a[rng.choice(a.shape[0], m, replace=False)]
    xb = b[rng.choice(b.shape[0], m, replace=False)]
    ests[i] = mmd2_unbiased(xa, xb, degree=degree, gamma=gamma, coef0=coef0)
  return float(ests.mean()), float(ests.std())

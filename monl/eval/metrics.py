"""Distribution distances over extracted features (Fréchet, kernel MMD²) and the AV-align score.

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
* `av_align` is the per-clip audio-video synchrony score of TempoTokens / Diff-Foley (audio onsets vs
  video motion peaks, IoU within ±1 video frame), from RGB video and a log spectrogram
  (`av_align_waveform` from a waveform); its differences from the reference are listed at its section.
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


# ----------------------------------------------------------------------------------------------
# AV-align: audio onsets vs video motion peaks (TempoTokens / Diff-Foley), higher is better
# ----------------------------------------------------------------------------------------------
#
# The reference (TempoTokens `av_align.py`, reused by Seeing-and-Hearing, JavisBench) detects audio
# onsets with `librosa.onset.onset_detect` and video peaks as local maxima of the mean Farnebäck
# optical-flow magnitude between consecutive frames, then counts an onset as matched when a peak lies
# strictly within ±1 video frame. Differences here, each on purpose:
# * no librosa/OpenCV: onset strength is the positive spectral flux of the log spectrogram (what
#   librosa's `onset_strength` computes on a log-mel spectrogram, lag 1), normalised to [0, 1], and
#   peaks are picked with librosa's rule (local max, above a moving mean + delta, a minimum gap);
#   motion is the mean absolute luma difference of consecutive frames instead of optical-flow
#   magnitude (both grow with displacement while it is below the object's size);
# * a video peak must also reach `min_motion` × the clip's largest motion, so compression-level
#   jitter in a near-static (e.g. generated) clip does not count as motion;
# * matching is one-to-one (each peak pairs with at most one onset), so the score stays in [0, 1]
#   (the reference lets several onsets match one peak, and can exceed 1);
# * no events on either side gives 0, not a ZeroDivisionError: a silent or static clip shows no
#   evidence of alignment and is not rewarded.

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as cv2.COLOR_BGR2GRAY


def onset_strength(log_spec: Any) -> np.ndarray:
  """Positive spectral flux: log_spec [T, F] (log magnitudes) -> [T] >= 0, o[0] = 0.

  o[k] = Σ_f max(0, S[k, f] − S[k−1, f]); the event is placed at frame k, the later frame."""
  s = np.asarray(log_spec, np.float64)
  if s.ndim != 2 or s.shape[0] < 2:
    raise ValueError(f"onset_strength: log_spec must be [T >= 2, F]; got shape {s.shape}")
  if not np.isfinite(s).all():
    raise ValueError("onset_strength: log_spec has non-finite values (NaN/inf)")
  return np.concatenate([[0.0], np.maximum(np.diff(s, axis=0), 0.0).sum(axis=1)])


def pick_peaks(envelope: Any, frame_rate: float, *, delta: float = 0.07, max_s: float = 0.03,
               avg_s: float = 0.10, wait_s: float = 0.03) -> np.ndarray:
  """Onset frames of an onset envelope [T] (librosa `onset_detect`'s peak picking), int [K].

  The envelope is shifted and scaled to [0, 1]; frame n is picked when it is the maximum of the
  ±w_max window (strictly above the frames before it), at least `delta` above the mean of the ±w_avg
  window, and more than w_wait frames after the previous pick. Windows are the given seconds at
  `frame_rate`, at least 1 frame. A constant envelope has no onsets."""
  x = np.asarray(envelope, np.float64)
  x = x - x.min(initial=0.0)
  top = x.max(initial=0.0)
  if top <= 0.0:
    return np.zeros(0, np.int64)
  x = x / top
  w_max, w_avg = (max(1, int(round(s * frame_rate))) for s in (max_s, avg_s))
  wait = max(1, int(round(wait_s * frame_rate)))
  out: list[int] = []
  for n in range(len(x)):
    lo_m, lo_a = max(0, n - w_max), max(0, n - w_avg)
    if (x[lo_m:n] >= x[n]).any() or (x[n + 1:n + 1 + w_max] > x[n]).any():
      continue
    if x[n] < x[lo_a:n + w_avg + 1].mean() + delta:
      continue
    if out and n - out[-1] <= wait:
      continue
    out.append(n)
  return np.asarray(out, np.int64)


def audio_onsets(log_spec: Any, frame_rate: float, *, time_offset: float = 0.5, **peak_kw) -> np.ndarray:
  """Onset times in seconds [K] of a log-magnitude spectrogram log_spec [T, F] at `frame_rate`.

  Frame k is taken to show time (k + time_offset) / frame_rate (0.5: frame centres, as the built-in
  datasets)."""
  frames = pick_peaks(onset_strength(log_spec), frame_rate, **peak_kw)
  return (frames + time_offset) / frame_rate


def log_spectrogram(waveform: Any, sample_rate: int, *, window_s: float = 0.025,
                    hop_s: float = 0.010, floor: float = 1e-3) -> tuple[np.ndarray, float, float]:
  """Mono waveform [S] -> (log-magnitude STFT frames [F, bins], frame rate in Hz, time offset).

  Periodic-Hann frames of `window_s` every `hop_s`, no padding; frame k starts at k·hop, so its
  centre is at (k + time_offset) / frame_rate with time_offset = window / (2·hop)."""
  w = np.asarray(waveform, np.float64)
  win, hop = int(round(sample_rate * window_s)), int(round(sample_rate * hop_s))
  if w.ndim != 1 or w.shape[0] < win + hop:
    raise ValueError(f"log_spectrogram: waveform must be mono [S >= {win + hop}] at {sample_rate} Hz; "
                     f"got shape {w.shape}")
  n = 1 + (w.shape[0] - win) // hop
  idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)
  mag = np.abs(np.fft.rfft(w[idx] * hann, axis=1)) / hann.sum()
  return np.log(mag + floor), sample_rate / hop, win / (2.0 * hop)


def motion_curve(video: Any) -> np.ndarray:
  """Mean absolute luma difference of consecutive frames: video [T, H, W, 3] -> [T].

  m[i] is the motion from frame i−1 to i; m[0] = m[1] (as the reference duplicates the first flow)."""
  v = np.asarray(video, np.float64)
  if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 3:
    raise ValueError(f"motion_curve: video must be RGB [T >= 3, H, W, 3]; got shape {v.shape}")
  if not np.isfinite(v).all():
    raise ValueError("motion_curve: video has non-finite values (NaN/inf)")
  diff = np.abs(np.diff(v @ _LUMA, axis=0)).mean(axis=(1, 2))
  return np.concatenate([diff[:1], diff])


def video_peaks(video: Any, fps: float, *, time_offset: float = 0.5, min_motion: float = 0.1) -> np.ndarray:
  """Motion peak times in seconds [K] of video [T, H, W, 3]: i with m[i−1] < m[i] > m[i+1] and
  m[i] >= min_motion · max(m) (`motion_curve`); frame i shows time (i + time_offset) / fps."""
  m = motion_curve(video)
  inner = (m[1:-1] > m[:-2]) & (m[1:-1] > m[2:]) & (m[1:-1] >= min_motion * m.max())
  return (np.flatnonzero(inner) + 1 + time_offset) / fps


def match_events(a: Any, b: Any, window: float) -> int:
  """Largest one-to-one matching of event times a [K_a], b [K_b] with |a_i − b_j| < window.

  Greedy over both sorted lists, which is optimal for a symmetric window on a line."""
  a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
  i = j = matched = 0
  while i < len(a) and j < len(b):
    if abs(a[i] - b[j]) < window:
      matched, i, j = matched + 1, i + 1, j + 1
    elif a[i] < b[j]:
      i += 1
    else:
      j += 1
  return matched


def av_align_score(onsets: Any, peaks: Any, window: float) -> float:
  """IoU of audio onsets and video peaks: |matched| / (|onsets| + |peaks| − |matched|), in [0, 1].

  0 when either side has no events (and when both have none)."""
  n_a, n_v = len(onsets), len(peaks)
  if n_a == 0 or n_v == 0:
    return 0.0
  m = match_events(onsets, peaks, window)
  return m / (n_a + n_v - m)


def av_align(video: Any, log_spec: Any, video_fps: float, audio_fps: float, *,
             video_time_offset: float = 0.5, audio_time_offset: float = 0.5,
             window_frames: float = 1.0, min_motion: float = 0.1, **peak_kw) -> float:
  """AV-align of one clip: video [T, H, W, 3] (any intensity scale) and its audio as log-magnitude
  spectrogram frames log_spec [T_a, F]; onsets and peaks match within ±`window_frames` video frames.
  Higher is better (1 = every onset has its own motion peak and vice versa)."""
  onsets = audio_onsets(log_spec, audio_fps, time_offset=audio_time_offset, **peak_kw)
  peaks = video_peaks(video, video_fps, time_offset=video_time_offset, min_motion=min_motion)
  return av_align_score(onsets, peaks, window_frames / video_fps)


def av_align_waveform(video: Any, waveform: Any, video_fps: float, sample_rate: int, **kw) -> float:
  """AV-align of video [T, H, W, 3] and a mono waveform [S] (through `log_spectrogram`, 25 ms / 10 ms).

  Both start at time 0; `kw` as `av_align` (not the audio frame rate / offset, which the STFT sets)."""
  spec, rate, offset = log_spectrogram(waveform, sample_rate)
  return av_align(video, spec, video_fps, rate, audio_time_offset=offset, **kw)


def av_align_batch(videos: Any, log_specs: Any, video_fps: float, audio_fps: float, **kw) -> np.ndarray:
  """`av_align` per clip: videos [B, T, H, W, 3], log_specs [B, T_a, F] -> float64 [B]."""
  if len(videos) != len(log_specs):
    raise ValueError(f"av_align_batch: {len(videos)} videos but {len(log_specs)} audio clips")
  return np.asarray([av_align(v, a, video_fps, audio_fps, **kw) for v, a in zip(videos, log_specs)],
                    np.float64)

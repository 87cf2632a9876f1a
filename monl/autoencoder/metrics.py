"""Reconstruction metrics (numpy, float64): per-frame PSNR and SSIM of video, log-spectral distance of audio.

  psnr(x, y)  [..., H, W, C] in [0, data_range] -> [...] dB per frame: 10 log10(range² / MSE)
  ssim(x, y)  [..., H, W, C] -> [...] per frame: Wang et al. 2004 with the standard 11x11 Gaussian
              window (σ = 1.5), K1 = 0.01, K2 = 0.03, L = data_range, statistics over 'valid' window
              positions (as the reference MATLAB code and tf.image.ssim), averaged over positions and
              channels. Identical frames give 1; SSIM is symmetric in x and y.
  moving_psnr(x, y)  [..., T, H, W, C] -> [...] dB per clip over the "moving" pixels only: those
              more than `MOVING_THRESHOLD` (mean over C) from the clip's per-pixel temporal median
              (of y, the reference); NaN for a clip with none.
  static_baseline_psnr(y)  [..., T, H, W, C] -> [...]: PSNR of predicting every frame by y's
              per-pixel temporal median: what an autoencoder that ignores motion would score.
  log_spectral_distance(a, b)  [..., S] -> [...] dB: mean over STFT frames of sqrt(mean over
              frequency of (10 log10 |A|² - 10 log10 |B|²)²), |·|² floored at 1e-10 (−100 dB);
              n_fft 512, hop 128 (32 / 8 ms at 16 kHz), Hann window.
"""
from __future__ import annotations

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LSD_N_FFT, LSD_HOP = 512, 128
MOVING_THRESHOLD = 0.1  # of the [0, 1] range


def psnr(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
  """Per-frame PSNR in dB over the last three axes [H, W, C]; inf for identical frames."""
  mse = np.mean(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64)), axis=(-3, -2, -1))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(data_range ** 2 / mse)


def moving_mask(y: np.ndarray, threshold: float = MOVING_THRESHOLD) -> np.ndarray:
  """bool [..., T, H, W] of clips y [..., T, H, W, C]: pixels farther than `threshold` (mean over C)
  from their temporal median."""
  y = np.asarray(y, np.float64)
  return np.mean(np.abs(y - np.median(y, axis=-4, keepdims=True)), axis=-1) > threshold


def moving_psnr(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
  """Per-clip PSNR (dB) of x vs the reference y [..., T, H, W, C] over `moving_mask(y)`; NaN without any."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mask = moving_mask(y)
  se = np.sum(np.square(x - y).mean(axis=-1) * mask, axis=(-3, -2, -1))
  count = mask.sum(axis=(-3, -2, -1))
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(count > 0, 10.0 * np.log10(data_range ** 2 / (se / np.maximum(count, 1))), np.nan)


def static_baseline_psnr(y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
  """Per-clip PSNR (mean over frames) of y's per-pixel temporal median as a prediction of y [..., T, H, W, C]."""
  y = np.asarray(y, np.float64)
  return psnr(np.broadcast_to(np.median(y, axis=-4, keepdims=True), y.shape), y, data_range).mean(axis=-1)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """[size] 1-D Gaussian summing to 1 (the 2-D window is its outer product)."""
  r = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-0.5 * np.square(r / sigma))
  return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
  """Separable 'valid' filtering of x [..., H, W, C] along H and W with the 1-D window g."""
  k = len(g)
  h, w = x.shape[-3], x.shape[-2]
  rows = sum(g[i] * x[..., i:h - k + 1 + i, :, :] for i in range(k))
  return sum(g[i] * rows[..., :, i:w - k + 1 + i, :] for i in range(k))


def ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> np.ndarray:
  """Per-frame SSIM of [..., H, W, C] (H, W >= 11) -> [...]."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape:
    raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
  if min(x.shape[-3], x.shape[-2]) < SSIM_WINDOW:
    raise ValueError(f"ssim: frames {x.shape[-3]}x{x.shape[-2]} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} window")
  g = gaussian_window()
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  mx, my = _filter_valid(x, g), _filter_valid(y, g)
  sxx = _filter_valid(x * x, g) - mx * mx
  syy = _filter_valid(y * y, g) - my * my
  sxy = _filter_valid(x * y, g) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  return s.mean(axis=(-3, -2, -1))


def _power_db(audio: np.ndarray) -> np.ndarray:
  s = audio.shape[-1]
  frames = 1 + (s - LSD_N_FFT) // LSD_HOP
  idx = np.arange(frames)[:, None] * LSD_HOP + np.arange(LSD_N_FFT)[None, :]
  window = np.hanning(LSD_N_FFT + 1)[:-1]
  power = np.square(np.abs(np.fft.rfft(audio[..., idx] * window, axis=-1)))
  return 10.0 * np.log10(np.maximum(power, 1e-10))


def log_spectral_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-clip LSD in dB of waveforms [..., S] (S >= 512)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = _power_db(a) - _power_db(b)
  return np.sqrt(np.mean(np.square(d), axis=-1)).mean(axis=-1)

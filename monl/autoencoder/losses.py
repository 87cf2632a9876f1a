"""Training losses of the autoencoder: pixels, waveform + multi-resolution STFT, KL.

  video:  mean w·(|x - x̂| + (x - x̂)²) / mean w      over [B, T, H, W, 3] in [0, 1]
          w = 1 + motion_weight · m / mean m,  m = |x - x̄_t| (each pixel's distance from its clip's
          temporal mean, averaged over RGB); motion_weight 0: the plain mean
  audio:  mean |a - â| + Σ_r (spectral convergence_r + mean |log|A_r| - log|Â_r||)   (r: FFT sizes)
  KL:     mean over latent elements of KL(N(μ, σ²) || N(0, 1)), weighted by `kl_weight`

The multi-resolution STFT term (Yamamoto et al. 2020, Parallel WaveGAN) is what makes a waveform decoder
learn pitch and timbre: a waveform L1 alone is blind to phase-shifted but equal-sounding signals and
prefers muffled outputs.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def stft_magnitude(audio: jax.Array, n_fft: int, hop: int) -> jax.Array:
  """audio [B, S] -> |STFT| [B, frames, n_fft // 2 + 1], Hann window, frames = 1 + (S - n_fft) // hop
  (no padding: every frame lies inside the signal)."""
  s = audio.shape[-1]
  frames = 1 + (s - n_fft) // hop
  idx = (np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :])  # [F, n_fft], a constant
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
  spec = jnp.fft.rfft(audio[..., idx] * window, axis=-1)
  return jnp.abs(spec)


def multi_resolution_stft(pred: jax.Array, target: jax.Array, resolutions: Sequence[tuple[int, int]],
                          eps: float = 1e-5) -> jax.Array:
  """Σ over (n_fft, hop) of spectral convergence ‖|S| - |Ŝ|‖_F / ‖|S|‖_F + mean |log(|S| + eps) -
  log(|Ŝ| + eps)|; pred, target [B, S]."""
  total = 0.0
  for n_fft, hop in resolutions:
    p = stft_magnitude(pred, n_fft, hop)
    t = stft_magnitude(target, n_fft, hop)
    sc = jnp.sqrt(jnp.sum(jnp.square(t - p), axis=(-2, -1))) / (jnp.sqrt(jnp.sum(jnp.square(t), axis=(-2, -1))) + eps)
    logmag = jnp.mean(jnp.abs(jnp.log(t + eps) - jnp.log(p + eps)), axis=(-2, -1))
    total = total + jnp.mean(sc) + jnp.mean(logmag)
  return total


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
  return jnp.mean(0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar))


def motion_weights(target: jax.Array, motion_weight: float, eps: float = 1e-3) -> jax.Array:
  """Per-pixel loss weights [B, T, H, W, 1] of target [B, T, H, W, 3]: 1 + motion_weight · m / mean m.

  m is the pixel's distance from its temporal mean, so what moves or changes weighs more than the
  static background; normalised per clip (a clip without motion has m = 0 and w = 1)."""
  m = jnp.mean(jnp.abs(target - jnp.mean(target, axis=1, keepdims=True)), axis=-1, keepdims=True)
  return 1.0 + motion_weight * m / (jnp.mean(m, axis=(1, 2, 3, 4), keepdims=True) + eps)


def video_loss(pred: jax.Array, target: jax.Array, motion_weight: float = 0.0) -> jax.Array:
  """Pixel L1 + L2 of pred, target [B, T, H, W, 3]; `motion_weight` > 0 weights them by `motion_weights`.

  Why a weight: a small moving object is a few % of the pixels, so the plain mean lets an autoencoder
  paint it over with background (the tiny config's ball held 81 % of the squared error)."""
  d = pred - target
  err = jnp.abs(d) + jnp.square(d)
  if not motion_weight:
    return jnp.mean(err)
  w = jax.lax.stop_gradient(motion_weights(target, motion_weight))
  return jnp.mean(w * err) / jnp.mean(w)


def audio_loss(pred: jax.Array, target: jax.Array, resolutions: Sequence[tuple[int, int]],
               stft_weight: float) -> tuple[jax.Array, jax.Array]:
  """(waveform L1, multi-resolution STFT) of pred, target [B, S]; the loss is l1 + stft_weight * stft."""
  return jnp.mean(jnp.abs(pred - target)), stft_weight * multi_resolution_stft(pred, target, resolutions)

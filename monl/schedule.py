"""Diffusion noise schedule with one integer level per (modality, segment) cell.

Levels are integers in {0..T}; level 0 means clean (ᾱ[0] = 1). A timestep *matrix* `t: [B, M, N]`
gives every cell its own level. Arrays being noised or denoised carry a cell axis at position 1:
`z: [B, K, ...]` with `cell_index: [K]` naming the flattened cell (m * N + n) of each of the K entries
(latent frames or tokens). Per-cell coefficients are gathered once into [B, M * N], then indexed by
`cell_index` and broadcast over the trailing axes: no Python loop over cells.

The update rules (DDPM posterior, DDIM) take *per-element* ᾱ arrays for the current level t and the
target level s < t, so the samplers can move different cells between different levels in one step
(e.g. a pyramid schedule along time), and cells whose level does not change stay put.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> np.ndarray:
  """[T] betas for levels 1..T, linear from beta_start to beta_end (DDPM)."""
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """[T] betas of the cosine schedule (Nichol & Dhariwal), clipped at max_beta."""
  f = lambda t: np.cos((t / num_steps + offset) / (1 + offset) * np.pi / 2) ** 2
  t = np.arange(num_steps + 1, dtype=np.float64)
  alpha_bar = f(t) / f(0)
  return np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """`alpha_bar: [T + 1]` float32 with alpha_bar[0] = 1 (level 0 = clean)."""
  alpha_bar: np.ndarray

  @property
  def num_steps(self) -> int:
    return len(self.alpha_bar) - 1

  @classmethod
  def from_betas(cls, betas: np.ndarray) -> "Schedule":
    alpha_bar = np.concatenate([[1.0], np.cumprod(1.0 - np.asarray(betas, np.float64))])
    return cls(alpha_bar.astype(np.float32))

  @classmethod
  def from_config(cls, cfg) -> "Schedule":
    """From `config.schedule` (kind, num_steps, beta_start, beta_end)."""
    if cfg.kind == "linear":
      return cls.from_betas(linear_betas(cfg.num_steps, cfg.beta_start, cfg.beta_end))
    if cfg.kind == "cosine":
      return cls.from_betas(cosine_betas(cfg.num_steps))
    raise ValueError(f"config.schedule.kind={cfg.kind!r}: expected 'linear' or 'cosine'")

  def __hash__(self):  # static argument of jitted functions
    return hash(self.alpha_bar.tobytes())

  def __eq__(self, other):
    return isinstance(other, Schedule) and np.array_equal(self.alpha_bar, other.alpha_bar)

  def alpha_bar_of(self, t: jax.Array) -> jax.Array:
    """ᾱ at integer levels `t` (any shape), float32."""
    return jnp.asarray(self.alpha_bar)[t]


def per_element(cell_values: jax.Array, cell_index, ndim: int) -> jax.Array:
  """Broadcasts per-cell values to an array with a cell axis at position 1.

  Args:
    cell_values: [B, M, N] or [B, M * N].
    cell_index: [K] flattened cell of each entry along axis 1.
    ndim: rank of the target array [B, K, ...].
  Returns:
    [B, K, 1, ..., 1] with `ndim` axes.
  """
  flat = cell_values.reshape(cell_values.shape[0], -1)
  out = jnp.take(flat, jnp.asarray(cell_index), axis=1)
  return out.reshape(out.shape + (1,) * (ndim - 2))


def add_noise(schedule: Schedule, z0: jax.Array, eps: jax.Array, t: jax.Array, cell_index) -> jax.Array:
  """z_t = sqrt(ᾱ[t]) z0 + sqrt(1 - ᾱ[t]) eps, each cell at its own level.

  Args:
    z0, eps: [B, K, ...] clean latents and unit Gaussian noise.
    t: [B, M, N] integer levels.
    cell_index: [K] flattened cell of each entry along axis 1.
  """
  ab = per_element(schedule.alpha_bar_of(t), cell_index, z0.ndim).astype(z0.dtype)
  # Clean cells (ᾱ = 1) come back bit-identical whatever the noise holds.
  noisy = jnp.sqrt(ab) * z0 + jnp.sqrt(1.0 - ab) * eps
  return jnp.where(ab == 1.0, z0, noisy)


def eps_to_x0(x_t, eps, ab):
  """x0 from the noisy value and predicted noise; `ab` is per-element ᾱ at the current level."""
  return (x_t - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)


def x0_to_eps(x_t, x0, ab):
  """Noise implied by x0; undefined at ᾱ = 1 (clean cells have no noise)."""
  return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(jnp.maximum(1.0 - ab, 1e-12))


def eps_to_v(x0, eps, ab):
  """v = sqrt(ᾱ) eps - sqrt(1 - ᾱ) x0 (Salimans & Ho)."""
  return jnp.sqrt(ab) * eps - jnp.sqrt(1.0 - ab) * x0


def v_to_eps(x_t, v, ab):
  return jnp.sqrt(ab) * v + jnp.sqrt(1.0 - ab) * x_t


def v_to_x0(x_t, v, ab):
  return jnp.sqrt(ab) * x_t - jnp.sqrt(1.0 - ab) * v


# What the network outputs (config.model.prediction). "eps" is the paper's; "v" weights the loss by
# 1/ᾱ relative to eps (v - v̂ = (ε - ε̂)/sqrt(ᾱ)), i.e. towards the high-noise levels that decide a
# sample's layout, and stays well conditioned at every level. "x0" outputs the clean latent itself:
# what the network cannot represent is then missing from x̂0, where with eps or v it is left as noise
# (x̂0 = sqrt(ᾱ) z - sqrt(1 - ᾱ) v̂ keeps sqrt(ᾱ) z wherever v̂ is blind). That matters when tokens are
# large and the head cannot express per-element noise (docs/diagnosis.md). Its loss is weighted per
# cell by `x0_loss_weight`.
PREDICTIONS = ("eps", "v", "x0")


def check_prediction(prediction: str) -> str:
  if prediction not in PREDICTIONS:
    raise ValueError(f"config.model.prediction={prediction!r}: expected one of {PREDICTIONS}")
  return prediction


def prediction_target(schedule: Schedule, prediction: str, z0, eps, t, cell_index):
  """The regression target of a `prediction` network: eps, v or z0. Shapes as in `add_noise`."""
  if check_prediction(prediction) == "eps":
    return eps
  if prediction == "x0":
    return z0
  return eps_to_v(z0, eps, per_element(schedule.alpha_bar_of(t), cell_index, z0.ndim))


def x0_skip_coefficients(ab, sigma_data: float):
  """(c_skip, c_out) of the x0 estimate c_skip · z_t + c_out · F (Karras et al. 2022, in VP form).

  With z_t = α x0 + σ ε (α² = ᾱ): c_skip = σ_d² α / (σ² + α² σ_d²), c_out = σ σ_d / sqrt(σ² + α² σ_d²).
  σ_d = 0 is plain x0-prediction (c_skip = 0, F = x̂0 up to scale); σ_d = 1 is v-prediction (F = -v).
  In between, the skip carries what the head cannot express (it is rank-limited: width < token size)
  at low noise, where the input is nearly clean, and stays off at high noise, where it would pass the
  noise on. The MMSE-optimal c_skip for the part of x0 the head cannot reach is exactly this one with
  σ_d² = that part's variance per element (docs/diagnosis.md). Clean cells (ᾱ = 1): x̂0 = z_t."""
  if sigma_data == 0:
    return jnp.zeros_like(ab), jnp.ones_like(ab)
  alpha, sig = jnp.sqrt(ab), jnp.sqrt(jnp.maximum(1.0 - ab, 0.0))
  denom = sig**2 + ab * sigma_data**2
  return sigma_data**2 * alpha / denom, sig * sigma_data / jnp.sqrt(denom)


def output_to_x0(schedule: Schedule, z_t, out, t, cell_index, sigma_data: float = 0.0):
  """The x0 estimate of an "x0" network's raw output `out` (`x0_skip_coefficients`; σ_d = 0: `out`)."""
  if sigma_data == 0:
    return out
  c_skip, c_out = x0_skip_coefficients(per_element(schedule.alpha_bar_of(t), cell_index, z_t.ndim), sigma_data)
  return c_skip * z_t + c_out * out


def output_to_eps(schedule: Schedule, prediction: str, z_t, out, t, cell_index, x0_skip: float = 0.0):
  """The noise implied by a `prediction` network's output at noisy `z_t` (what the samplers use).

  For x0 the noise of a clean cell (ᾱ = 1) is undefined; it is returned as 0, so that the x0 implied
  back (`eps_to_x0`, e.g. for self-conditioning) is the clean input itself. `x0_skip`: σ_d of an x0
  network's skip parameterisation (`output_to_x0`)."""
  if check_prediction(prediction) == "eps":
    return out
  ab = per_element(schedule.alpha_bar_of(t), cell_index, z_t.ndim)
  if prediction == "x0":
    x0 = output_to_x0(schedule, z_t, out, t, cell_index, x0_skip)
    return jnp.where(ab >= 1.0, 0.0, x0_to_eps(z_t, x0, ab))
  return v_to_eps(z_t, out, ab)


def x0_loss_weight(schedule: Schedule, t, cap: float):
  """[B, M, N] per-cell weight of an x0 prediction's squared error: min(1 + SNR, cap) = min(1 / (1 - ᾱ),
  cap). Uncapped this is exactly the v loss (|v̂ - v|² = |x̂0 - x0|² / (1 - ᾱ)); the cap keeps the
  nearly clean levels, where it diverges, from dominating (min-SNR-γ style, Hang et al. 2023)."""
  ab = schedule.alpha_bar_of(t)
  return jnp.minimum(1.0 / jnp.maximum(1.0 - ab, 1e-12), cap)


def ddpm_posterior(x_t, x0, ab_t, ab_s):
  """Mean and variance of q(x_s | x_t, x0) for levels s < t (respaced steps allowed).

  Where t == s (a cell that does not move this step) the mean is x_t and the variance 0.
  """
  alpha_ts = ab_t / ab_s
  beta_ts = 1.0 - alpha_ts
  denom = jnp.maximum(1.0 - ab_t, 1e-12)
  mean = (jnp.sqrt(ab_s) * beta_ts / denom) * x0 + (jnp.sqrt(alpha_ts) * (1.0 - ab_s) / denom) * x_t
  var = beta_ts * (1.0 - ab_s) / denom
  moving = ab_t < ab_s
  return jnp.where(moving, mean, x_t), jnp.where(moving, var, 0.0)


def ddim_step(x_t, eps, ab_t, ab_s, eta: float, noise):
  """One DDIM update from level t to s < t, per element (η = 1 equals DDPM ancestral sampling).

  x_s = sqrt(ᾱ_s) x0 + sqrt(1 - ᾱ_s - σ²) eps + σ z, σ = η sqrt((1-ᾱ_s)/(1-ᾱ_t)) sqrt(1 - ᾱ_t/ᾱ_s).
  Elements whose level does not change (ᾱ_t == ᾱ_s) are returned unchanged.
  """
  x0 = eps_to_x0(x_t, eps, ab_t)
  sigma = eta * jnp.sqrt((1.0 - ab_s) / jnp.maximum(1.0 - ab_t, 1e-12)) * jnp.sqrt(
      jnp.maximum(1.0 - ab_t / ab_s, 0.0))
  dir_coef = jnp.sqrt(jnp.maximum(1.0 - ab_s - sigma**2, 0.0))
  x_s = jnp.sqrt(ab_s) * x0 + dir_coef * eps + sigma * noise
  return jnp.where(ab_t < ab_s, x_s, x_t)


def ddpm_step(x_t, eps, ab_t, ab_s, noise):
  """One ancestral step from level t to s < t through the DDPM posterior with the x0 estimate."""
  mean, var = ddpm_posterior(x_t, eps_to_x0(x_t, eps, ab_t), ab_t, ab_s)
  return mean + jnp.sqrt(var) * noise

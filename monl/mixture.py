"""Mixture of Noise Levels: training distributions over timestep matrices `t: [B, M, N]`.

Every example first draws a reference matrix `t_ref` i.i.d. uniform on {1..T}, then one strategy:
  vanilla       t[m, n] = t_ref[0, 0]   one level for the whole clip (joint generation)
  per_modality  t[m, n] = t_ref[m, 0]   one level per modality (A2V, V2A)
  per_segment   t[m, n] = t_ref[0, n]   one level per time segment (continuation, interpolation)
  per_cell      t[m, n] = t_ref[m, n]   one level per cell (temporal cross-modal correspondence)
The strategy is drawn per example from `weights` (MoNL = equal weights; a single non-zero weight is a
single-strategy baseline). Optionally each cell is independently made clean (t = 0) with
`clean_prob`, so the model sees the clean conditioning cells it gets at inference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

STRATEGIES = ("vanilla", "per_modality", "per_segment", "per_cell")


def _apply_strategies(t_ref: jax.Array) -> jax.Array:
  """[B, M, N] -> [S, B, M, N]: the matrix each strategy builds from the same reference."""
  shape = t_ref.shape
  return jnp.stack([
      jnp.broadcast_to(t_ref[:, :1, :1], shape),
      jnp.broadcast_to(t_ref[:, :, :1], shape),
      jnp.broadcast_to(t_ref[:, :1, :], shape),
      t_ref,
  ])


def sample_levels(key: jax.Array, batch: int, num_modalities: int, num_segments: int, *,
                  num_steps: int, weights, clean_prob: float = 0.0):
  """Draws timestep matrices from the mixture.

  Args:
    key: PRNG key.
    batch, num_modalities, num_segments: B, M, N.
    num_steps: T; noisy levels are drawn from {1..T}.
    weights: one non-negative weight per entry of STRATEGIES (need not sum to 1).
    clean_prob: probability that a cell is set to level 0.
  Returns:
    (t: int32 [B, M, N], strategy: int32 [B] index into STRATEGIES).
  """
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (len(STRATEGIES),):
    raise ValueError(f"mixture weights {weights.shape}: need one weight per strategy {STRATEGIES}")
  k_ref, k_strat, k_clean = jax.random.split(key, 3)
  t_ref = jax.random.randint(k_ref, (batch, num_modalities, num_segments), 1, num_steps + 1, jnp.int32)
  strategy = jax.random.categorical(k_strat, jnp.log(weights), shape=(batch,)).astype(jnp.int32)
  options = _apply_strategies(t_ref)
  t = jnp.take_along_axis(options, strategy[None, :, None, None], axis=0)[0]
  if clean_prob > 0:
    clean = jax.random.bernoulli(k_clean, clean_prob, t.shape)
    t = jnp.where(clean, 0, t)
  return t, strategy


def validate_weights(weights, where: str = "config.mixture.weights") -> tuple[float, ...]:
  """Checks a weight tuple from a config; returns it as floats."""
  w = tuple(float(x) for x in weights)
  if len(w) != len(STRATEGIES) or any(x < 0 for x in w) or sum(w) <= 0:
    raise ValueError(f"{where}={w}: need {len(STRATEGIES)} non-negative weights for {STRATEGIES}, "
                     "not all zero")
  return w

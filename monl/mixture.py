"""Mixture of Noise Levels: training distributions over timestep matrices `t: [B, M, N]`.

Every example first draws a reference matrix `t_ref` i.i.d. uniform on {1..T}, then one strategy:
  vanilla       t[m, n] = t_ref[0, 0]   one level for the whole clip (joint generation)
  per_modality  t[m, n] = t_ref[m, 0]   one level per modality (A2V, V2A)
  per_segment   t[m, n] = t_ref[0, n]   one level per time segment (continuation, interpolation)
  per_cell      t[m, n] = t_ref[m, n]   one level per cell (temporal cross-modal correspondence)
The strategy is drawn per example from `weights` (MoNL = equal weights; a single non-zero weight is a
single-strategy baseline). Optionally each cell is independently made clean (t = 0) with
`clean_prob`, so the model sees the clean conditioning cells it gets at inference.

Task-specific ("conditional") baselines (paper §4) instead train on one task's conditioning mask:
`conditional_levels` puts the given cells at t = 0 and every other cell at one level per example
(the vanilla level), selected by `config.mixture.condition_mask` (`condition_mask`).
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


def conditional_levels(key: jax.Array, batch: int, given_mask, num_steps: int):
  """Levels of a task-specific model: given cells clean, the rest at one shared level per example.

  Args:
    key: PRNG key.
    batch: B.
    given_mask: [M, N] bool (array or nested tuples), True where a cell is given at inference.
    num_steps: T; the shared level is drawn uniformly from {1..T}.
  Returns:
    (t: int32 [B, M, N], strategy: int32 [B], all 0 = vanilla), like `sample_levels`.
  """
  given = jnp.asarray(given_mask, bool)
  level = jax.random.randint(key, (batch, 1, 1), 1, num_steps + 1, jnp.int32)
  t = jnp.where(given[None], 0, jnp.broadcast_to(level, (batch, *given.shape)))
  return t, jnp.zeros((batch,), jnp.int32)


def condition_mask(spec: str, names, num_segments: int, k: int = 2,
                   where: str = "config.mixture.condition_mask") -> tuple[tuple[bool, ...], ...] | None:
  """A task name or mask string (`monl.sample.tasks.task_mask`, k = continuation length) -> the
  [M][N] mask of given cells as nested tuples (hashable, for the jitted objective); '' -> None."""
  if not spec:
    return None
  from monl.sample import tasks as tasks_lib  # numpy-only; task masks live with the sampler
  try:
    given = tasks_lib.task_mask(spec, names, num_segments, k=k)
  except tasks_lib.MaskError as e:
    raise ValueError(f"{where}={spec!r}: {e}") from None
  if given.all():
    raise ValueError(f"{where}={spec!r}: every cell is given, nothing would be trained")
  return tuple(tuple(bool(x) for x in row) for row in given)


def validate_weights(weights, where: str = "config.mixture.weights") -> tuple[float, ...]:
  """Checks a weight tuple from a config; returns it as floats."""
  w = tuple(float(x) for x in weights)
  if len(w) != len(STRATEGIES) or any(x < 0 for x in w) or sum(w) <= 0:
    raise ValueError(f"{where}={w}: need {len(STRATEGIES)} non-negative weights for {STRATEGIES}, "
                     "not all zero")
  return w

"""Clips longer than the training length: sliding-window continuation, stitched without seams.

Window 0 is sampled as usual. Every later window takes the last `overlap` segments of the previous
one as its first `overlap` given segments (bit-identical, so the seam is exactly continuous) and
generates the remaining N - overlap segments; only those are appended. Needs every modality's
segments to be equal in length (otherwise a shifted segment would not fit its new slot).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from monl import layout as layout_lib

# window_fn(x0_tokens {m: [B, L_m, P_m]}, given [M, N] bool, key) -> tokens {m: [B, L_m, P_m]}
WindowFn = Callable[[Mapping[str, jax.Array], np.ndarray, jax.Array], dict]


def check_uniform(layout: layout_lib.Layout) -> None:
  for m in layout.modalities:
    if len(set(m.segments)) != 1:
      raise ValueError(f"long clips need equal segments; modality {m.name!r} has segments {m.segments}")


def sample_long(window_fn: WindowFn, layout: layout_lib.Layout, x0_tokens: Mapping[str, jax.Array],
                given: np.ndarray, key: jax.Array, *, total_segments: int, overlap: int):
  """Samples `total_segments` segments (>= N) per modality.

  Args:
    window_fn: samples one window (N segments) given clean tokens and a mask.
    x0_tokens, given: conditioning of the first window (e.g. the `continue` task on a real clip).
    overlap: segments carried from one window into the next (1..N-1).
  Returns:
    {m: [B, total_segments * frames_per_segment_m, ...]} in data layout (unpatchified).
  """
  check_uniform(layout)
  n = layout.num_segments
  if not 0 < overlap < n:
    raise ValueError(f"overlap={overlap} must be in 1..{n - 1}")
  if total_segments < n:
    raise ValueError(f"total_segments={total_segments} is shorter than one window ({n} segments)")
  window = window_fn(x0_tokens, given, jax.random.fold_in(key, 0))
  pieces = {m: [layout[m].unpatchify(window[m])] for m in layout.names}
  produced, w = n, 1
  carry_given = np.zeros((layout.num_modalities, n), bool)
  carry_given[:, :overlap] = True
  while produced < total_segments:
    x0 = {}
    for mod in layout.modalities:
      per_seg = mod.num_tokens // n
      tail = window[mod.name][:, (n - overlap) * per_seg:]
      x0[mod.name] = jnp.concatenate([tail, jnp.zeros_like(window[mod.name][:, overlap * per_seg:])], axis=1)
    window = window_fn(x0, carry_given, jax.random.fold_in(key, w))
    for mod in layout.modalities:
      frames = mod.unpatchify(window[mod.name])
      pieces[mod.name].append(frames[:, overlap * mod.segments[0]:])
    produced += n - overlap
    w += 1
  out = {}
  for mod in layout.modalities:
    full = jnp.concatenate(pieces[mod.name], axis=1)
    out[mod.name] = full[:, :total_segments * mod.segments[0]]
  return out

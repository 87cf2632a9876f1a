"""Fréchet distance in the model's own latent space, per modality: a cheap *proxy* metric.

No pretrained audio feature extractor installs offline (see `monl.eval.plugins`), so during
training we compare generated and real latents directly. The number depends on our autoencoder and
is **not comparable to literature FVD/FAD**; every result is labelled
`"latent_fd_<modality> (proxy, not comparable to literature)"`.

Per-clip features. A latent clip [T, ...] is viewed as T per-frame vectors [T, F] (F = product of
the trailing dims). Two poolings:

* `"mean_std"` (default): concat(mean over kept frames, std over kept frames) -> [2F]. Robust to
  how many frames are kept, and small enough for a well-conditioned covariance with a few hundred
  clips when F is a latent channel count times a small spatial grid.
* `"flatten"`: the whole kept latent [T_kept * F]. Keeps temporal order, but the covariance has
  rank <= N - 1, so use it only when T_kept * F is well below the number of clips.

Conditioning segments. With MoNL a clip is a sequence of time segments, some given as
conditioning (copied from the data) and some generated. Including the conditioning frames would
pull the distance toward zero, so `segment_lengths` (latent frames per segment, summing to T) and
`generated_mask` (True = generated, kept) select only generated frames, in both the real and the
generated set (the same positions are compared).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np

from monl.eval.metrics import FeatureStats, frechet_distance

Pooling = Literal["mean_std", "flatten"]


def latent_fd_label(modality: str) -> str:
  """The name every latent-FD result carries, so it is never mistaken for FVD/FAD."""
  return f"latent_fd_{modality} (proxy, not comparable to literature)"


def _frame_mask(num_clips: int, num_frames: int, segment_lengths: Sequence[int] | None,
                generated_mask: Any) -> np.ndarray:
  """Expands a per-segment mask ([S] or [B, S]) to a per-frame boolean mask [B, T]."""
  if segment_lengths is None and generated_mask is None:
    return np.ones((num_clips, num_frames), dtype=bool)
  if segment_lengths is None or generated_mask is None:
    raise ValueError("latent FD: pass both segment_lengths and generated_mask, or neither; got "
                     f"segment_lengths={segment_lengths}, generated_mask={generated_mask}")
  lengths = np.asarray(segment_lengths, dtype=np.int64)
  if lengths.ndim != 1 or (lengths <= 0).any() or lengths.sum() != num_frames:
    raise ValueError(f"latent FD: segment_lengths {lengths.tolist()} must be positive and sum to "
                     f"the latent length T={num_frames}")
  mask = np.asarray(generated_mask, dtype=bool)
  if mask.ndim == 1:
    mask = np.broadcast_to(mask, (num_clips, mask.shape[0]))
  if mask.shape != (num_clips, lengths.shape[0]):
    raise ValueError(f"latent FD: generated_mask must be [S] or [B, S] = [{num_clips}, "
                     f"{lengths.shape[0]}]; got {np.shape(generated_mask)}")
  frames = np.repeat(mask, lengths, axis=1)  # [B, T]
  empty = np.flatnonzero(~frames.any(axis=1))
  if empty.size:
    raise ValueError(f"latent FD: clips {empty.tolist()[:8]} have no generated segment "
                     f"(generated_mask all False); nothing to measure")
  return frames


def latent_clip_features(latents: Any, *, segment_lengths: Sequence[int] | None = None,
                         generated_mask: Any = None, pooling: Pooling = "mean_std") -> np.ndarray:
  """Per-clip features from latents.

  Args:
    latents: [B, T, ...] latents of one modality (e.g. video [B, T, h, w, c], audio [B, T, c]).
    segment_lengths: latent frames per time segment, summing to T; None keeps every frame.
    generated_mask: [S] or [B, S] booleans, True where the segment was generated (kept).
    pooling: "mean_std" -> [B, 2F] or "flatten" -> [B, T_kept * F] (see module docstring).

  Returns:
    float64 [B, D] features.
  """
  x = np.asarray(latents, dtype=np.float64)
  if x.ndim < 3:
    raise ValueError(f"latent FD expects latents [B, T, ...] with at least one feature axis; got "
                     f"shape {x.shape}")
  b, t = x.shape[:2]
  x = x.reshape(b, t, -1)  # [B, T, F]
  keep = _frame_mask(b, t, segment_lengths, generated_mask)  # [B, T]
  if pooling == "mean_std":
    w = keep[..., None].astype(np.float64)
    n = w.sum(axis=1)  # [B, 1]
    mean = (x * w).sum(axis=1) / n
    std = np.sqrt(((x - mean[:, None]) ** 2 * w).sum(axis=1) / n)
    return np.concatenate([mean, std], axis=1)
  if pooling == "flatten":
    counts = keep.sum(axis=1)
    if (counts != counts[0]).any():
      raise ValueError(f"latent FD pooling='flatten' needs the same number of kept frames per "
                       f"clip; got {sorted(set(counts.tolist()))}. Use pooling='mean_std'.")
    return x[keep].reshape(b, -1)
  raise ValueError(f"latent FD: unknown pooling {pooling!r}; choose 'mean_std' or 'flatten'")


def latent_feature_stats(latents: Any, modality: str, *, segment_lengths: Sequence[int] | None = None,
                         generated_mask: Any = None, pooling: Pooling = "mean_std",
                         meta: dict[str, Any] | None = None) -> FeatureStats:
  """`FeatureStats` of `latent_clip_features`, with the proxy label and pooling in `meta`."""
  feats = latent_clip_features(latents, segment_lengths=segment_lengths,
                               generated_mask=generated_mask, pooling=pooling)
  info = {"metric": latent_fd_label(modality), "modality": modality, "pooling": pooling,
          "latent_shape": list(np.shape(latents)[1:]),
          "segment_lengths": None if segment_lengths is None else [int(v) for v in segment_lengths]}
  info.update(meta or {})
  return FeatureStats.from_features(feats, keep_features=False, meta=info)


def latent_fd(real_latents: Any, gen_latents: Any, modality: str, *,
              segment_lengths: Sequence[int] | None = None, generated_mask: Any = None,
              real_generated_mask: Any = None, pooling: Pooling = "mean_std") -> dict[str, Any]:
  """Latent-space Fréchet distance between real and generated latents of one modality.

  Args:
    real_latents: [N_r, T, ...] encoded real clips.
    gen_latents: [N_g, T, ...] generated latents (same T and trailing shape).
    modality: "video", "audio", ... (goes into the label).
    segment_lengths, generated_mask: see `latent_clip_features`; applied to the generated set.
    real_generated_mask: mask for the real set; None reuses `generated_mask` when it is per-segment
      ([S]), which compares the same time positions.
    pooling: "mean_std" or "flatten".

  Returns:
    {"name": "latent_fd_<modality> (proxy, not comparable to literature)", "value": float,
     "num_real": N_r, "num_gen": N_g, "feature_dim": D, "pooling": pooling}.
  """
  if np.shape(real_latents)[1:] != np.shape(gen_latents)[1:]:
    raise ValueError(f"latent FD ({modality}): real latents {np.shape(real_latents)} and generated "
                     f"{np.shape(gen_latents)} differ beyond the batch axis")
  if real_generated_mask is None and generated_mask is not None:
    if np.ndim(generated_mask) != 1:
      raise ValueError(f"latent FD ({modality}): generated_mask is per clip {np.shape(generated_mask)}; "
                       f"pass real_generated_mask for the real set explicitly")
    real_generated_mask = generated_mask
  real = latent_feature_stats(real_latents, modality, segment_lengths=segment_lengths,
                              generated_mask=real_generated_mask, pooling=pooling)
  gen = latent_feature_stats(gen_latents, modality, segment_lengths=segment_lengths,
                             generated_mask=generated_mask, pooling=pooling)
  return {"name": latent_fd_label(modality), "value": frechet_distance(real, gen),
          "num_real": real.num, "num_gen": gen.num, "feature_dim": real.dim, "pooling": pooling}

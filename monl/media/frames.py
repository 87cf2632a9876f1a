"""Frame arrays for media files: uint8 conversion, centre crop + resize, nearest upscaling, even padding
for yuv420p, side-by-side panels. numpy + Pillow only (no PyAV)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_uint8(video: np.ndarray) -> np.ndarray:
  """uint8 stays; float `[..., 3]` in [0, 1] -> uint8 (clipped, rounded). Any other dtype is refused."""
  v = np.asarray(video)
  if v.dtype == np.uint8:
    return v
  if v.dtype.kind != "f":
    raise ValueError(f"video: expected uint8 or float in [0, 1], got dtype {v.dtype}")
  return (np.clip(v, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def centre_crop_resize(frame: np.ndarray, size: int) -> np.ndarray:
  """uint8 `frame: [H, W, 3]` -> `[size, size, 3]`: the centred min(H, W) square (offset rounded down),
  resized with Pillow's bilinear filter. Pillow widens that filter by the shrink factor, so shrinking
  averages over each output pixel's footprint (close to an area resize) instead of aliasing."""
  from PIL import Image
  h, w = frame.shape[:2]
  side = min(h, w)
  y, x = (h - side) // 2, (w - side) // 2
  square = np.ascontiguousarray(frame[y:y + side, x:x + side])
  if side == size:
    return square
  return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR))


def upscale_nearest(video: np.ndarray, min_size: int) -> np.ndarray:
  """`video: [T, H, W, 3]` -> `[T, H*k, W*k, 3]` with the smallest integer k >= 1 that makes
  min(H, W)*k >= min_size (nearest neighbour: pixels stay crisp squares)."""
  k = max(1, -(-min_size // min(video.shape[1:3])))
  return video if k == 1 else video.repeat(k, axis=1).repeat(k, axis=2)


def pad_even(video: np.ndarray) -> np.ndarray:
  """`video: [T, H, W, 3]` with an odd H or W gets one more row / column, a copy of the last one:
  yuv420p (what H.264 players expect) stores colour at half resolution and needs even sizes."""
  _, h, w, _ = video.shape
  if h % 2 == 0 and w % 2 == 0:
    return video
  return np.pad(video, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def side_by_side(videos: Sequence[np.ndarray], gap: int = 2, fill: int = 255) -> np.ndarray:
  """Panels `[T, H_i, W_i, 3]` (uint8 or float in [0, 1], the same T) -> uint8 `[T, max H_i,
  sum W_i + gap * (n - 1), 3]`, left to right, `gap` columns of `fill` between them, tops aligned (a
  shorter panel has `fill` below it)."""
  panels = [to_uint8(v) for v in videos]
  if not panels:
    raise ValueError("side_by_side: no videos")
  lengths = {p.shape[0] for p in panels}
  if len(lengths) != 1 or any(p.ndim != 4 or p.shape[-1] != 3 for p in panels):
    raise ValueError(f"side_by_side: expected [T, H, W, 3] panels of one T, got shapes "
                     f"{[list(p.shape) for p in panels]}")
  t, h = lengths.pop(), max(p.shape[1] for p in panels)
  out = np.full((t, h, sum(p.shape[2] for p in panels) + gap * (len(panels) - 1), 3), fill, np.uint8)
  x = 0
  for p in panels:
    out[:, : p.shape[1], x:x + p.shape[2]] = p
    x += p.shape[2] + gap
  return out

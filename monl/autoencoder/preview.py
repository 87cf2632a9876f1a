"""RUN/reconstructions.png of `train_autoencoder`: the test clips next to their reconstructions."""
from __future__ import annotations

import numpy as np
from etils import epath


def reconstruction_sheet(path: epath.Path, real: np.ndarray, recon: np.ndarray, scale: int = 3) -> epath.Path:
  """Two rows per clip, every frame left to right: real on top, reconstructed below; white gaps between
  clips. real, recon: [B, T, H, W, 3] in [0, 1]; frames upscaled by nearest neighbour x `scale`."""
  from PIL import Image
  if real.shape != recon.shape or real.ndim != 5:
    raise ValueError(f"reconstruction_sheet: real {real.shape} and recon {recon.shape} must be equal [B, T, H, W, 3]")
  b, t, h, w, _ = real.shape
  fh, fw, gap = h * scale, w * scale, 2
  sheet = np.full((b * (2 * fh + 3 * gap), t * (fw + gap), 3), 255, np.uint8)
  for i in range(b):
    for r, clip in enumerate((real[i], recon[i])):
      y = i * (2 * fh + 3 * gap) + r * (fh + gap)
      frames = (np.clip(clip, 0.0, 1.0) * 255 + 0.5).astype(np.uint8).repeat(scale, 1).repeat(scale, 2)
      for j in range(t):
        sheet[y:y + fh, j * (fw + gap):j * (fw + gap) + fw] = frames[j]
  path = epath.Path(path)
  with path.open("wb") as f:
    Image.fromarray(sheet).save(f, format="PNG")
  return path

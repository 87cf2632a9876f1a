"""Pictures and sounds of generated clips from the built-in datasets: GIF + WAV per clip and a contact
sheet PNG showing, for every clip, which cells were given (green) and which were generated (red).

Both built-in datasets (bouncing ball, symbols) share the frame rates (8 video / 32 audio frames per
second), the 16 bins and the noise floor of `monl.data.synthetic`, so one decoder serves both; the
contact sheet takes any number of segments and frames."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from etils import epath

from monl.data import synthetic

GIVEN, GENERATED = np.array([40, 170, 60], np.uint8), np.array([210, 50, 50], np.uint8)


def write_clip(out_dir: epath.Path, stem: str, video: np.ndarray, audio: np.ndarray) -> list[str]:
  """Writes `stem.gif` (video [T, H, W, 3] in [0, 1]) and `stem.wav` (audio [T, F] log-magnitudes)."""
  gif = synthetic.write_gif(out_dir / f"{stem}.gif", synthetic.video_to_frames(video))
  wav = synthetic.write_wav(out_dir / f"{stem}.wav", synthetic.audio_to_waveform(audio))
  return [gif.name, wav.name]


def _spectrogram_image(audio: np.ndarray, width: int, height: int) -> np.ndarray:
  """[T, F] log-magnitudes -> uint8 [height, width, 3], low frequencies at the bottom."""
  a = np.asarray(audio, np.float32).T[::-1]  # [F, T]
  # a fixed scale (noise floor .. loud click), so given and generated parts are comparable
  lo, hi = np.log(synthetic.NOISE_FLOOR), np.log(1.0 + synthetic.CLICK)
  a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
  rows = np.linspace(0, a.shape[0] - 1, height).round().astype(int)
  cols = np.linspace(0, a.shape[1] - 1, width).round().astype(int)
  grey = (a[np.ix_(rows, cols)] * 255).astype(np.uint8)
  return np.stack([grey] * 3, -1)


def contact_sheet(path: epath.Path, videos: np.ndarray, audios: np.ndarray, given: np.ndarray,
                  names: Sequence[str], video_segments: Sequence[int], audio_segments: Sequence[int],
                  scale: int = 4) -> epath.Path:
  """One row per clip: every video frame, then the spectrogram, each with a bar per segment coloured
  by whether that cell was given or generated.

  Args:
    videos: [B, T, H, W, 3] in [0, 1]; audios: [B, T_a, F]; given: [M, N] or [B, M, N] bool.
  """
  from PIL import Image
  b, t, h, w, _ = videos.shape
  given = np.broadcast_to(np.asarray(given, bool), (b, len(names), len(video_segments)))
  vi, ai = list(names).index("video"), list(names).index("audio")
  fh, fw = h * scale, w * scale
  bar = 4
  strip_w = t * (fw + 2)
  spec_h = fh
  row_h = fh + bar + 2 + spec_h + bar + 8
  sheet = np.full((b * row_h, strip_w, 3), 255, np.uint8)
  frame_seg = np.repeat(np.arange(len(video_segments)), video_segments)
  audio_seg = np.repeat(np.arange(len(audio_segments)), audio_segments)
  for i in range(b):
    y = i * row_h
    frames = synthetic.video_to_frames(videos[i], scale)
    for j in range(t):
      x = j * (fw + 2)
      sheet[y:y + fh, x:x + fw] = frames[j]
      sheet[y + fh:y + fh + bar, x:x + fw] = GIVEN if given[i, vi, frame_seg[j]] else GENERATED
    ys = y + fh + bar + 2
    sheet[ys:ys + spec_h] = _spectrogram_image(audios[i], strip_w, spec_h)
    cols = np.linspace(0, len(audio_seg) - 1, strip_w).round().astype(int)
    colours = np.where(given[i, ai, audio_seg[cols]][:, None], GIVEN, GENERATED)
    sheet[ys + spec_h:ys + spec_h + bar] = colours[None]
  path = epath.Path(path)
  with path.open("wb") as f:
    Image.fromarray(sheet).save(f, format="PNG")
  return path

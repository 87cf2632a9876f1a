"""`write_mp4`: RGB frames + a mono waveform -> an MP4 (H.264 video in yuv420p, AAC audio) that browsers,
players and `monl.media.read_clips` read back at the given frame rate."""
from __future__ import annotations

import fractions
import os
import shutil
import tempfile

import numpy as np
from etils import epath

from monl.media import frames as frames_lib
from monl.media import source

# the sample rates FFmpeg's AAC encoder takes
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def write_mp4(path: source.PathLike, video: np.ndarray, audio: np.ndarray, *, fps: float,
              sample_rate: int, crf: int = 18) -> epath.Path:
  """Writes `video: [T, H, W, 3]` (uint8, or float in [0, 1], clipped) at `fps` with `audio: [S]` (mono
  float in [-1, 1], clipped) at `sample_rate` as MP4: libx264 at constant quality `crf` (18: close to
  visually lossless), yuv420p, AAC; the index is at the front (`+faststart`) so it plays while loading.

  An odd H or W gets one more row / column, a copy of the last (`frames.pad_even`; yuv420p needs even
  sizes). Frame i has timestamp i / fps. AAC rounds the audio up to whole frames of 1024 samples, so a
  reader may decode up to 1023 more (silent) samples. `path` may be any epath (gs://): FFmpeg writes a
  local temporary file that is then copied there."""
  av = source.require_av()
  v = frames_lib.to_uint8(video)
  if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] == 0:
    raise ValueError(f"write_mp4 {path}: video must be [T >= 1, H, W, 3], got shape {list(v.shape)}")
  a = np.asarray(audio, np.float32)
  if a.ndim != 1 or a.size == 0:
    raise ValueError(f"write_mp4 {path}: audio must be a mono waveform [S >= 1], got shape {list(a.shape)}")
  if sample_rate not in AAC_RATES:
    raise ValueError(f"write_mp4 {path}: sample_rate {sample_rate} is not an AAC rate {AAC_RATES}")
  if not fps > 0:
    raise ValueError(f"write_mp4 {path}: fps must be > 0, got {fps}")
  v = frames_lib.pad_even(v)
  a = np.clip(a, -1.0, 1.0)
  dest = epath.Path(path)
  if source.is_local(path):
    _encode(av, os.fspath(path), v, a, fps, sample_rate, crf)
    return dest
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, dest.name or "clip.mp4")
    _encode(av, local, v, a, fps, sample_rate, crf)
    # through the destination's own backend: a local path's copy() would not know gs://
    with open(local, "rb") as src, dest.open("wb") as dst:
      shutil.copyfileobj(src, dst)
  return dest


def _encode(av, filename: str, video: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int,
            crf: int) -> None:
  rate = fractions.Fraction(fps).limit_denominator(1001)  # 29.97 -> 2997/100, 8 -> 8
  with av.open(filename, "w", format="mp4", options={"movflags": "+faststart"}) as c:
    vs = c.add_stream("libx264", rate=rate, options={"crf": str(crf)})
    vs.width, vs.height, vs.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
    au = c.add_stream("aac", rate=sample_rate)
    au.layout = "mono"
    per_frame = sample_rate / fps
    done = 0  # audio samples encoded so far: each frame's audio follows it, so the file is interleaved
    for i, img in enumerate(video):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
      frame.pts = i  # the stream's time base is 1 / rate
      c.mux(vs.encode(frame))
      until = len(audio) if i == len(video) - 1 else min(len(audio), int(round((i + 1) * per_frame)))
      if until > done:  # the encoder cuts these into AAC's 1024-sample frames
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, done:until]), format="flt",
                                           layout="mono")
        chunk.sample_rate, chunk.pts = sample_rate, done
        c.mux(au.encode(chunk))
        done = until
    c.mux(vs.encode(None))
    c.mux(au.encode(None))

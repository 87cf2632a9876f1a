"""`probe(path)`: what a media file holds (duration, video fps and size, audio rate and channels), for
error messages and the `python -m monl.media` listing. Reads the container header only, decodes nothing."""
from __future__ import annotations

import dataclasses

from monl.media import source


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """The first video and audio stream of a file; `None` where the file has no such stream or does not say."""
  path: str
  duration: float | None  # seconds, from the container (or its longest stream)
  fps: float | None  # the video stream's average frame rate
  width: int | None
  height: int | None
  num_frames: int | None  # as the header states it (0 or absent in many WebM files -> None)
  video_codec: str | None
  sample_rate: int | None
  channels: int | None
  audio_codec: str | None

  def __str__(self) -> str:
    d = "?" if self.duration is None else f"{self.duration:.3f} s"
    v = ("no video" if self.video_codec is None else
         f"video {self.video_codec} {self.width}x{self.height} at {self.fps:g} fps"
         + ("" if self.num_frames is None else f" ({self.num_frames} frames)"))
    a = "no audio" if self.audio_codec is None else f"audio {self.audio_codec} {self.sample_rate} Hz x {self.channels}"
    return f"{self.path}: {d}, {v}, {a}"


def _seconds(value, time_base) -> float | None:
  return None if value is None or time_base is None else float(value * time_base)


def probe(path: source.PathLike) -> MediaInfo:
  """MediaInfo of `path`; MediaError when it is missing or FFmpeg cannot open it."""
  with source.open_input(path) as c:
    vs = c.streams.video[0] if c.streams.video else None
    au = c.streams.audio[0] if c.streams.audio else None
    durations = [_seconds(s.duration, s.time_base) for s in (vs, au) if s is not None]
    duration = c.duration / 1e6 if c.duration else max((d for d in durations if d), default=None)
    fps = float(vs.average_rate) if vs is not None and vs.average_rate else None
    return MediaInfo(
        path=str(path), duration=duration, fps=fps,
        width=vs.width if vs else None, height=vs.height if vs else None,
        num_frames=(vs.frames or None) if vs else None, video_codec=vs.codec_context.name if vs else None,
        sample_rate=au.rate if au else None, channels=au.channels if au else None,
        audio_codec=au.codec_context.name if au else None)

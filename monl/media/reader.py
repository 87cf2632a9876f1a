"""`read_clips`: a video file with sound -> fixed-length clips of square RGB frames and a mono waveform.

Timing (seconds from the container's start, usually 0):
  * video: output frame i stands for [i / fps, (i + 1) / fps) and shows time (i + 0.5) / fps, the
    convention of monl's decoders (`monl.data.decoders.Decoder`). It is the source frame on screen at
    that time, i.e. the last one whose timestamp is <= (i + 0.5) / fps (a frame is shown from its
    timestamp until the next one's). Frames are picked, never blended, so motion stays sharp; a slower
    source repeats frames. Before the first source frame the first frame is used.
  * audio: resampled to `sample_rate` by FFmpeg's swresample (PyAV's AudioResampler, float32), then
    mono = the mean of the channels (swresample's own downmix weighs stereo by 1/sqrt(2) each, which
    takes full-scale audio past 1); sample j is at time j / sample_rate. The decoded samples are taken as
    contiguous from the first audio frame's timestamp: audio that starts late gets leading zeros,
    audio that starts early is cut; gaps inside the stream are not filled.
  * clip k covers [k * hop, k * hop + clip_seconds); only clips wholly inside both streams are made
    (the tail shorter than a clip is dropped, nothing is padded at the end).
Pixels: the centred square, resized to `size` (`frames.centre_crop_resize`: Pillow bilinear,
antialiased when shrinking). Display rotation and non-square pixels of the source are ignored.

The file is decoded once, both streams interleaved, and clips are yielded as soon as they are complete,
so memory holds about one clip. A file whose decoded streams end well before its header says
(a truncated download) raises MediaError after the clips read so far were yielded: collect a file's
clips (`list(...)`) before using them when a partly read file must not count.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from etils import epath

from monl.media import frames as frames_lib
from monl.media import info as info_lib
from monl.media import source

# decoded streams may end this much (or 3 source frames, if longer) before the header's duration
_TRUNCATION_SLACK_S = 0.25


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip: `video` uint8 [T, size, size, 3] (T = clip_seconds * fps), `audio` float32 [S] mono in
  about [-1, 1] (S = clip_seconds * sample_rate), `source_id` 'file.mp4@12.0s', `start` in seconds."""
  video: np.ndarray
  audio: np.ndarray
  source_id: str
  start: float


def _count(seconds: float, rate: float, what: str) -> int:
  n = seconds * rate
  if n < 1 or abs(n - round(n)) > 1e-6:
    raise ValueError(f"read_clips: {what} must be a whole number >= 1, got {n:g}")
  return int(round(n))


@dataclasses.dataclass(frozen=True)
class _Grid:
  """Clip k: frames [k * hop_frames, + frames), samples [k * hop_samples, + samples)."""
  fps: float
  sample_rate: int
  frames: int
  hop_frames: int
  samples: int
  hop_samples: int

  @classmethod
  def make(cls, fps, sample_rate, clip_seconds, hop_seconds) -> _Grid:
    if not fps > 0 or not sample_rate > 0 or not clip_seconds > 0 or not hop_seconds > 0:
      raise ValueError(f"read_clips: fps={fps}, sample_rate={sample_rate}, clip_seconds={clip_seconds}, "
                       f"hop_seconds={hop_seconds}: all must be > 0")
    return cls(fps=float(fps), sample_rate=int(sample_rate),
               frames=_count(clip_seconds, fps, "clip_seconds * fps"),
               hop_frames=_count(hop_seconds, fps, "hop_seconds * fps"),
               samples=_count(clip_seconds, sample_rate, "clip_seconds * sample_rate"),
               hop_samples=_count(hop_seconds, sample_rate, "hop_seconds * sample_rate"))

  def wants_frame(self, i: int, first_clip: int) -> bool:
    """Whether output frame i belongs to clip `first_clip` or a later one (a hop longer than the clip
    skips frames)."""
    last = i // self.hop_frames
    earliest = max(first_clip, -(-(i - self.frames + 1) // self.hop_frames))
    return earliest <= last


class _Cutter:
  """Collects output frames and samples, hands out finished clips, forgets what no later clip needs."""

  def __init__(self, grid: _Grid):
    self.grid = grid
    self.frames: dict[int, np.ndarray] = {}
    self.frames_done = 0  # output frames 0 .. frames_done - 1 are final
    self.audio: list[np.ndarray] = []
    self.audio_start = 0  # sample index of audio[0][0]; < 0 while audio before time 0 is held
    self.audio_len = 0
    self.next_clip = 0

  def add_audio(self, samples: np.ndarray) -> None:
    self.audio.append(samples)
    self.audio_len += len(samples)

  def ready(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    g = self.grid
    while True:
      k = self.next_clip
      f0, s0 = k * g.hop_frames, k * g.hop_samples
      if self.frames_done < f0 + g.frames or self.audio_start + self.audio_len < s0 + g.samples:
        return
      video = np.stack([self.frames[i] for i in range(f0, f0 + g.frames)])
      audio = np.concatenate(self.audio) if len(self.audio) > 1 else self.audio[0]
      clip_audio = audio[s0 - self.audio_start: s0 - self.audio_start + g.samples].copy()
      self.next_clip = k + 1
      f1, s1 = f0 + g.hop_frames, s0 + g.hop_samples
      self.frames = {i: f for i, f in self.frames.items() if i >= f1}
      keep = max(0, s1 - self.audio_start)
      self.audio, self.audio_start = [audio[keep:]], self.audio_start + keep
      self.audio_len = len(self.audio[0])
      yield k, video, clip_audio


def _seconds_label(x: float) -> str:
  s = f"{x:.3f}".rstrip("0")
  return s + "0" if s.endswith(".") else s


def read_clips(path: source.PathLike, *, fps: float, sample_rate: int, size: int, clip_seconds: float,
               hop_seconds: float | None = None) -> Iterator[Clip]:
  """Clips of `clip_seconds` every `hop_seconds` (default: back to back) of a video file with sound.

  Args:
    path: an mp4 / webm / mov (anything FFmpeg reads), local or any epath backend (gs://).
    fps, sample_rate: output frame and sample rates; clip and hop lengths must be whole numbers of
      both (e.g. 2 s at 8 fps and 16 kHz).
    size: output frames are [size, size, 3].
  Returns:
    an iterator of `Clip` (see the module docstring for timing and pixels).
  Raises:
    ValueError: a rate or length that does not fit the rules above (at the call).
    MediaError: naming the file: no such file, undecodable, no video stream, no audio stream or shorter
      than one clip by its header (at the call); truncated or damaged, or shorter than one clip once
      decoded (while iterating).
  """
  hop_seconds = clip_seconds if hop_seconds is None else hop_seconds
  grid = _Grid.make(fps, sample_rate, clip_seconds, hop_seconds)
  if not isinstance(size, int | np.integer) or size < 1:
    raise ValueError(f"read_clips: size must be an integer >= 1, got {size!r}")
  info = info_lib.probe(path)
  if info.video_codec is None:
    raise source.MediaError(path, f"no video stream ({info})")
  if info.audio_codec is None:
    raise source.MediaError(path, f"no audio stream; clips need sound ({info})")
  if info.duration is not None and info.duration < clip_seconds - 1e-3:
    raise source.MediaError(path, f"shorter than one clip: {info.duration:.3f} s < clip_seconds "
                            f"{clip_seconds:g} s")
  return _decode(path, grid, int(size), info)


def _declared_end(stream, origin: float, fallback: float | None) -> float | None:
  if stream.duration:
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else origin
    return start - origin + float(stream.duration * stream.time_base)
  return fallback


def _decode(path, grid: _Grid, size: int, info: info_lib.MediaInfo) -> Iterator[Clip]:
  av = source.require_av()
  name = epath.Path(path).name
  cutter = _Cutter(grid)
  container = source.open_input(path)
  try:
    vs, au = container.streams.video[0], container.streams.audio[0]
    vs.thread_type = "AUTO"  # frame threads: decoding dominates the cost of a long file
    origin = container.start_time / 1e6 if container.start_time is not None else 0.0
    src_fps = float(vs.average_rate) if vs.average_rate else grid.fps
    resampler = av.AudioResampler(format="fltp", rate=grid.sample_rate)  # the source's channels
    held, held_rgb, video_end, audio_t0 = None, None, 0.0, None

    def cover(until: float, frame) -> None:
      """Output frames whose centre time is before `until` show `frame`."""
      nonlocal held_rgb
      while (cutter.frames_done + 0.5) / grid.fps < until - 1e-9:
        i = cutter.frames_done
        if grid.wants_frame(i, cutter.next_clip):
          if held_rgb is None:
            held_rgb = frames_lib.centre_crop_resize(frame.to_ndarray(format="rgb24"), size)
          cutter.frames[i] = held_rgb
        cutter.frames_done += 1

    t = 0.0
    try:
      for packet in container.demux(vs, au):
        for frame in packet.decode():
          if packet.stream.type == "video":
            t = video_end if frame.pts is None else float(frame.pts * vs.time_base) - origin
            first = held is None
            cover(t, frame if first else held)
            if not first:  # the cached pixels were the previous frame's
              held_rgb = None
            held = frame
            step = float(frame.duration * vs.time_base) if frame.duration else 1.0 / src_fps
            video_end = t + step
          else:
            if audio_t0 is None:
              audio_t0 = 0.0 if frame.pts is None else float(frame.pts * au.time_base) - origin
              lead = int(round(audio_t0 * grid.sample_rate))
              if lead > 0:
                cutter.add_audio(np.zeros(lead, np.float32))
              else:
                cutter.audio_start = lead
            for out in resampler.resample(frame):
              cutter.add_audio(out.to_ndarray().mean(0))
        yield from _clips(cutter, name, grid)
      if held is not None:
        cover(video_end, held)
      for out in resampler.resample(None):
        cutter.add_audio(out.to_ndarray().mean(0))
    except av.FFmpegError as e:
      declared = "" if info.duration is None else f" of the {info.duration:.2f} s its header declares"
      raise source.MediaError(path, f"truncated or damaged: decoding failed at {t:.2f} s{declared} "
                              f"({type(e).__name__}: {e.strerror})") from e
    yield from _clips(cutter, name, grid)
    audio_end = (cutter.audio_start + cutter.audio_len) / grid.sample_rate
    slack = max(_TRUNCATION_SLACK_S, 3.0 / src_fps)
    for what, end, declared in (("video", video_end, _declared_end(vs, origin, info.duration)),
                                ("audio", audio_end, _declared_end(au, origin, info.duration))):
      if declared is not None and end < declared - slack:
        raise source.MediaError(path, f"truncated: its {what} ends at {end:.2f} s, its header declares "
                                f"{declared:.2f} s")
    if cutter.next_clip == 0:
      raise source.MediaError(path, f"shorter than one clip: decoded video {video_end:.3f} s, audio "
                              f"{audio_end:.3f} s < clip_seconds {grid.frames / grid.fps:g} s")
  finally:
    container.close()


def _clips(cutter: _Cutter, name: str, grid: _Grid) -> Iterator[Clip]:
  for k, video, audio in cutter.ready():
    start = k * grid.hop_frames / grid.fps
    yield Clip(video=video, audio=audio, source_id=f"{name}@{_seconds_label(start)}s", start=start)

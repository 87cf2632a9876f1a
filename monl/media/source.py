"""Opening media files with PyAV: the lazy `av` import, local paths or epath file objects, and FFmpeg's
failures turned into `MediaError` naming the file and the reason."""
from __future__ import annotations

import os
from typing import Any

from etils import epath

PathLike = str | os.PathLike | epath.Path


class MediaError(ValueError):
  """A media file cannot be used: `path` and `reason` (no video stream, truncated, ...) are attributes."""

  def __init__(self, path: PathLike, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path, self.reason = str(path), reason


def require_av():
  """The `av` module (PyAV, FFmpeg in its wheel), or an ImportError that says how to install it."""
  try:
    import av
  except ImportError as e:
    raise ImportError("monl.media needs PyAV to read and write video files: pip install av "
                      "(its wheel ships FFmpeg; no system ffmpeg is needed)") from e
  return av


def is_local(path: PathLike) -> bool:
  """Whether FFmpeg can open `path` by name (gs:// and other epath backends cannot)."""
  return "://" not in os.fspath(path)


def open_input(path: PathLike) -> Any:
  """An `av` input container for `path` (local, or any epath backend through a file object).

  Raises MediaError: no such file, or FFmpeg cannot open it (not a media file, or an MP4 cut before its
  index, which the default MP4 muxer writes at the end)."""
  av = require_av()
  p = epath.Path(path)
  if not p.exists():
    raise MediaError(path, "no such file")
  try:
    return av.open(os.fspath(path) if is_local(path) else p.open("rb"), "r")
  except av.FFmpegError as e:
    raise MediaError(path, f"undecodable: FFmpeg cannot open it ({type(e).__name__}: {e.strerror}; "
                     "an MP4 cut short loses its index, the 'moov' atom at the end)") from e

"""MP4 previews with sound of generated clips, for datasets whose clips a `monl.data.decoders.Decoder`
turns into RGB video in [0, 1] + a waveform (the built-in ones, and autoencoder latents from
`monl.data.encode`); these functions take the decoded RGB frames and waveform:

  <stem>.mp4          the generated clip: frames upscaled by nearest neighbour to >= `MIN_SIZE` px (a
                      16x16 clip becomes 128x128), with the decoded sound.
  <stem>_compare.mp4  conditional tasks only: given input | generated | real, side by side, 2 px white
                      gaps. The given-input panel is the real clip with every frame of a video segment
                      the task did not give blanked to mid grey; under it a bar per frame, its upper half
                      for the video cell and its lower half for the audio cell at that time, green when
                      given and red when generated (the contact sheet's colours). The sound is the
                      generated clip's, whose given audio cells are the real ones. Frames past the real
                      clip (long clips) are grey in the given-input and real panels.
"""
from __future__ import annotations

import numpy as np
from etils import epath

from monl.media import frames as frames_lib
from monl.media import writer
from monl.sample import preview

MIN_SIZE = 128  # px: smaller clips are hard to watch
BLANK = 0.5  # grey of the frames the task did not give
BAR = 8  # px: height of the given/generated bar under the given-input panel


def clip_mp4(path: epath.Path, video: np.ndarray, waveform: np.ndarray, fps: float, sample_rate: int) -> epath.Path:
  """`video: [T, H, W, 3]` RGB in [0, 1], `waveform: [S]` mono -> MP4 (H.264 + AAC)."""
  frames = frames_lib.upscale_nearest(frames_lib.to_uint8(video), MIN_SIZE)
  return writer.write_mp4(path, frames, waveform, fps=fps, sample_rate=sample_rate)


def frame_given(given_row: np.ndarray, segments, num_frames: int) -> np.ndarray:
  """[N] given per segment, segment lengths -> [num_frames] given per frame."""
  per_frame = np.repeat(np.asarray(given_row, bool), segments)
  if len(per_frame) != num_frames:
    raise ValueError(f"segments {list(segments)} cover {len(per_frame)} frames, the clip has {num_frames}")
  return per_frame


def audio_given_at_frames(given_row: np.ndarray, segments, num_audio_frames: int, num_frames: int,
                          video_fps: float, audio_fps: float) -> np.ndarray:
  """[T] whether the audio cell at each video frame's time ((i + 0.5) / video_fps) was given."""
  per_audio_frame = frame_given(given_row, segments, num_audio_frames)
  idx = np.floor((np.arange(num_frames) + 0.5) / video_fps * audio_fps).astype(int)
  return per_audio_frame[np.clip(idx, 0, num_audio_frames - 1)]


def _status_bar(video_given: np.ndarray, audio_given: np.ndarray, width: int) -> np.ndarray:
  """[T] video-cell given, [T] audio-cell given -> uint8 [T, BAR, width, 3] (upper half video)."""
  colour = lambda g: np.where(g[:, None], preview.GIVEN, preview.GENERATED)  # [T, 3]
  bar = np.empty((len(video_given), BAR, width, 3), np.uint8)
  bar[:, : BAR // 2] = colour(video_given)[:, None, None]
  bar[:, BAR // 2:] = colour(audio_given)[:, None, None]
  return bar


def _fit(video: np.ndarray, num_frames: int) -> np.ndarray:
  """[T', H, W, 3] -> [num_frames, H, W, 3]: cut, or padded with BLANK frames."""
  if len(video) >= num_frames:
    return video[:num_frames]
  pad = np.full((num_frames - len(video),) + video.shape[1:], BLANK, video.dtype)
  return np.concatenate([video, pad])


def compare_mp4(path: epath.Path, real_video: np.ndarray, generated_video: np.ndarray,
                generated_waveform: np.ndarray, video_given: np.ndarray, audio_given: np.ndarray,
                fps: float, sample_rate: int) -> epath.Path:
  """Given input | generated | real (module docstring).

  Args:
    real_video: [T', H, W, 3] RGB in [0, 1] (the clip the task conditioned on); generated_video:
      [T, H, W, 3]; generated_waveform: [S]; video_given, audio_given: [T] bool per video frame
      (`frame_given`, `audio_given_at_frames`).
  """
  t = len(generated_video)
  real = _fit(np.asarray(real_video, np.float32), t)
  given_input = np.where(np.asarray(video_given, bool)[:, None, None, None], real, BLANK)
  panels = [frames_lib.upscale_nearest(frames_lib.to_uint8(v), MIN_SIZE)
            for v in (given_input, generated_video, real)]
  left = np.concatenate([panels[0], _status_bar(video_given, audio_given, panels[0].shape[2])], axis=1)
  frames = frames_lib.side_by_side([left] + panels[1:])
  return writer.write_mp4(path, frames, generated_waveform, fps=fps, sample_rate=sample_rate)

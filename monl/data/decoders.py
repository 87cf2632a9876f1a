"""How a dataset's clips are seen and heard: the decoder registry (`decoder_for(spec)`).

A `Decoder` turns a dataset's (denormalised) video and audio arrays into RGB frames and a mono
waveform: what `sample`/`evaluate` write as MP4 and what the decoded-media metrics of `monl.eval`
score. Two kinds:

- the built-in datasets (bouncing ball, symbols): their clips are RGB pixels [T, H, W, 3] and
  log-magnitude spectrogram frames [T_a, F] already; `to_waveform` resynthesises one clip's
  spectrogram additively. `spectrogram` is True: the AV-align and FAD code read these arrays directly.
- datasets written by `monl.data.encode`: latents of a `train_autoencoder` run. The decoder restores
  that run at the checkpoint step `dataset.json` records (`produced_by.encoder`) and decodes with it;
  latent frame 0 decodes to 1 video frame, every later one to `temporal_upsample` frames (the causal
  1 + 4k rule). `spectrogram` is False.

Any other dataset has no decoder (None). A dataset that names an encoder run which is missing, or no
longer holds the recorded step, raises DecoderError naming dataset.json's field and the path.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

ENCODE_TOOL = "monl.data.encode"  # dataset.json produced_by.tool of an autoencoder latent dataset


class DecoderError(Exception):
  """The dataset names a decoder that cannot be restored (its encoder run or checkpoint is missing)."""


@dataclasses.dataclass(frozen=True)
class Decoder:
  """Dataset clips -> RGB + waveform.

  video_fps: decoded RGB frames per second; audio_fps: frames per second of the dataset's *audio
  modality* (spectrogram frames, or autoencoder latent frames); sample_rate: Hz of the waveform.
  decode_clips(video [B, T', ...], audio [B, T_a, ...]) -> (rgb [B, T, H, W, 3] in [0, 1], waveform [B, S]).
  to_waveform: audio [T_a, F] spectrogram frames -> waveform [S] (spectrogram decoders only; None else).
  temporal_upsample: decoded frames per dataset video frame after the first (1: the frames are RGB).
  spatial_upsample: decoded pixels per dataset video position along H and W (1: the frames are RGB).
  """
  video_fps: float
  audio_fps: float
  sample_rate: int
  decode_clips: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
  to_waveform: Callable[[np.ndarray], np.ndarray] | None = None
  temporal_upsample: int = 1
  spatial_upsample: int = 1
  name: str = ""

  @property
  def spectrogram(self) -> bool:
    """Whether the dataset's own arrays are RGB video + spectrogram frames (the metrics read them)."""
    return self.to_waveform is not None

  def decode(self, video: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """video [B, T', ...], audio [B, T_a, ...] -> (rgb float32 [B, T, H, W, 3] in [0, 1], waveform [B, S])."""
    rgb, wave = self.decode_clips(np.asarray(video, np.float32), np.asarray(audio, np.float32))
    return np.clip(np.asarray(rgb, np.float32), 0.0, 1.0), np.asarray(wave, np.float32)

  @property
  def hop(self) -> int:
    """Waveform samples per frame of the dataset's audio modality."""
    return int(round(self.sample_rate / self.audio_fps))

  def decoded_video_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
    """A dataset video shape [T', H', W', C'] -> the decoded RGB clip's [T, H, W, 3]."""
    if self.spectrogram:
      return tuple(shape)
    t, h, w = shape[:3]
    return (sum(self.decoded_segments((t,))), h * self.spatial_upsample, w * self.spatial_upsample, 3)

  def decoded_chunks(self, video: np.ndarray, audio: np.ndarray, chunk: int = 64):
    """Yields `decode` of clips [lo, lo + chunk) of video [B, T', ...], audio [B, T_a, ...] in order,
    so that at most `chunk` decoded clips are in memory."""
    for lo in range(0, len(video), chunk):
      yield self.decode(video[lo:lo + chunk], audio[lo:lo + chunk])

  def decoded_segments(self, segments: Sequence[int]) -> tuple[int, ...]:
    """Video segment lengths in dataset frames -> the same segments in decoded RGB frames."""
    r, out, start = self.temporal_upsample, [], 0
    for s in segments:
      out.append(sum(1 if j == 0 else r for j in range(start, start + s)))
      start += s
    return tuple(out)


def _spectrogram_decoder(video_fps: float, audio_fps: float, to_waveform, name: str) -> Decoder:
  def decode(video, audio):
    return video, np.stack([to_waveform(a) for a in audio])
  return Decoder(video_fps=video_fps, audio_fps=audio_fps, sample_rate=16000, decode_clips=decode,
                 to_waveform=to_waveform, name=name)


@functools.cache
def decoder_registry() -> dict[str, Decoder]:
  """`produced_by.generator.name` -> its Decoder. Both built-in datasets are pixels + spectrograms at
  8 / 32 frames per second already, with the additive-resynthesis WAV decoder of the previews."""
  from monl.data import symbols, synthetic
  return {synthetic.GENERATOR_NAME: _spectrogram_decoder(synthetic.VIDEO_FPS, synthetic.AUDIO_FPS,
                                                         synthetic.audio_to_waveform, synthetic.GENERATOR_NAME),
          symbols.GENERATOR_NAME: _spectrogram_decoder(symbols.VIDEO_FPS, synthetic.AUDIO_FPS,
                                                       synthetic.audio_to_waveform, symbols.GENERATOR_NAME)}


def encoded_by(spec) -> Mapping | None:
  """`produced_by.encoder` ({'run', 'checkpoint_step', ...}) of a dataset written by `monl.data.encode`,
  else None."""
  pb = spec.produced_by
  if pb.get("tool") != ENCODE_TOOL or pb.get("raw"):  # raw: clips for train_autoencoder, not latents
    return None
  enc = pb.get("encoder")
  if not isinstance(enc, Mapping) or "run" not in enc or "checkpoint_step" not in enc:
    raise DecoderError(f"dataset.json: produced_by.encoder must "
                       f"hold 'run' and 'checkpoint_step' (written by {ENCODE_TOOL}); got {enc!r}")
  return enc


@functools.cache
def autoencoder_decoder(run: str, step: int) -> Decoder:
  """The decoder of the autoencoder run `run` restored at checkpoint `step` (cached per run and step)."""
  from monl import run_config
  from monl.autoencoder import load as ae_load
  try:
    codec = ae_load.load(run, step=step)
  except (FileNotFoundError, run_config.RunConfigError) as e:
    raise DecoderError(f"dataset.json produced_by.encoder.run = {run!r} at checkpoint_step {step}: {e}. "
                       f"Restore that autoencoder run (or sample with --previews 0: no MP4s)") from None
  m = codec.config.media

  def decode(video, audio):
    out = codec.decode({"video": video, "audio": audio})
    return out["video"], out["audio"]
  return Decoder(video_fps=float(m.fps), audio_fps=float(m.sample_rate) / codec.hop, sample_rate=int(m.sample_rate),
                 decode_clips=decode, temporal_upsample=codec.temporal_downsample,
                 spatial_upsample=codec.spatial_downsample, name=f"autoencoder {run}@{step}")


def decoder_for(spec) -> Decoder | None:
  """The decoder of `spec`'s dataset: a built-in generator's, the autoencoder that encoded it, or None."""
  enc = encoded_by(spec)
  if enc is not None:
    return autoencoder_decoder(str(enc["run"]), int(enc["checkpoint_step"]))
  gen = spec.produced_by.get("generator")
  return decoder_registry().get(gen.get("name")) if isinstance(gen, Mapping) else None

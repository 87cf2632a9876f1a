"""The audio-video autoencoder: a causal 3-D conv VAE for video and a 1-D conv VAE for the waveform.

Video (`VideoEncoder` / `VideoDecoder`), shapes for the defaults (spatial x8, two temporal halvings):

    video [B, 1 + 4k, H, W, 3] in [0, 1]  --encode-->  mean, logvar [B, 1 + k, H/8, W/8, C]
    latent [B, 1 + k, H/8, W/8, C]        --decode-->  video [B, 1 + 4k, H, W, 3]

  The first frame is encoded alone and every later latent frame j covers frames 4j - 3 .. 4j (the
  paper's MAGVIT-v2 rule, 17 frames -> 5): every temporal kernel is causal (first frame replicated in
  front, `layers.CausalConv3d`) and time is halved twice by stride-2 causal convs, 1 + 4k -> 1 + 2k ->
  1 + k. Latent frame j therefore depends on frames <= 4j only (tested). Spatial downsampling is one
  stride-2 conv per level, `len(channels) - 1` levels, after an optional space-to-depth of the input by
  `patch` (x8 = patch 1 and 4 entries, or patch 2 and 3 entries, ...); the time halvings are in the
  first two levels (the full-resolution levels then see 1 + 2k and 1 + k frames, not 1 + 4k). (A patch of 2 makes the tiny CPU config ~4x cheaper: XLA:CPU's 3-D convs are slow
  at full resolution.) The decoder mirrors it: nearest-neighbour x2 in space and causal
  depth-to-time x2 in time (`layers.upsample_time_causal`), so 1 + k latent frames give 1 + 4k frames.
  With `shortcuts` every level's conv has a parameter-free path beside it (space and time folded into
  channels and averaged on the way down, repeated and unfolded on the way up; also into the latent
  and out of it), DC-AE's residual autoencoding: the tiny config learns per-clip colour and the ball
  with them and stays at the dataset's mean colour without (see `layers.down_shortcut`).

Audio (`AudioEncoder` / `AudioDecoder`): SoundStream-like, over the mono waveform directly.

    audio [B, S, 1] in [-1, 1]  --encode-->  mean, logvar [B, S / hop, C_a]   (hop = prod(strides))
    latent [B, S / hop, C_a]    --decode-->  audio [B, S, 1] (tanh): a waveform, no vocoder

  Strides (2, 4, 5, 8) give hop 320: 16 kHz -> 50 latent frames/s, as SoundStream's.

Bottleneck: continuous latents with a KL term (a diagonal Gaussian posterior, `mean` and `logvar`
channels, weight `kl_weight` ~1e-6..1e-4; `logvar_offset` -6 starts the posterior's std at 0.05
rather than 1, which at the start of training would drown latents of scale ~0.5 in noise), not FSQ:
it trains stably from the first step on 2 CPU cores with a plain L1/L2 loss, the latent is what a
diffusion model consumes directly, and `monl.data.encode`
writes the posterior mean (deterministic; the decoder was trained on samples around it, so it tolerates
the small errors of generated latents). Latent scale is not controlled here: `prepare`'s per-channel
normalisation takes care of it.

`AVAutoencoder` holds both; `encode`, `decode` and `reconstruct` are its methods (use with
`.apply(params, ..., method=...)`). Losses are in `monl.autoencoder.losses`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from monl.autoencoder import layers


@dataclasses.dataclass(frozen=True)
class VideoConfig:
  channels: tuple[int, ...] = (32, 64, 128, 128)  # per resolution level; len - 1 spatial halvings
  num_res_blocks: int = 1  # residual blocks per level (the bottom level has at least one)
  latent_channels: int = 8  # C
  temporal_downsample: int = 4  # 1 (none), 2 or 4: halvings in the first log2(.) levels
  patch: int = 1  # space-to-depth of the input (and depth-to-space of the output) by this factor
  shortcuts: bool = False  # parameter-free paths beside every resolution change (`layers.down_shortcut`)
  logvar_offset: float = 0.0  # added to the encoder's log-variance: the posterior's std starts at e^(offset/2)

  def __post_init__(self):
    if not self.shortcuts:
      return
    downs = self.time_down_levels()
    pairs = [(self.channels[i] * 4 * (2 if t else 1), self.channels[i + 1]) for i, t in enumerate(downs)]
    pairs += [(self.channels[-1], self.latent_channels)]
    for a, b in pairs:
      if max(a, b) % min(a, b):
        raise ValueError(f"model.video.shortcuts: channels {self.channels} (latent {self.latent_channels}): "
                         f"a shortcut would map {a} folded channels onto {b}; one must divide the other")

  @property
  def spatial_downsample(self) -> int:
    return self.patch * 2 ** (len(self.channels) - 1)

  @property
  def time_halvings(self) -> int:
    return int(round(math.log2(self.temporal_downsample)))

  def time_down_levels(self) -> tuple[bool, ...]:
    """Per downsampling level (len(channels) - 1 of them): whether it also halves time."""
    n = len(self.channels) - 1
    if self.time_halvings > n:
      raise ValueError(f"temporal_downsample {self.temporal_downsample} needs {self.time_halvings} "
                       f"downsampling levels, channels {self.channels} give {n}")
    return tuple(i < self.time_halvings for i in range(n))

  def latent_shape(self, frames: int, size: int) -> tuple[int, int, int, int]:
    """[T_latent, H/d, W/d, C] of a clip of `frames` frames (1 + temporal_downsample * k) at size x size."""
    r = self.temporal_downsample
    if (frames - 1) % r or frames < 1:
      raise ValueError(f"video of {frames} frames: the causal rule needs 1 + {r}k frames (e.g. {1 + 4 * r})")
    if size % self.spatial_downsample:
      raise ValueError(f"video of {size} px: not divisible by the spatial downsampling {self.spatial_downsample}")
    d = self.spatial_downsample
    return (1 + (frames - 1) // r, size // d, size // d, self.latent_channels)


@dataclasses.dataclass(frozen=True)
class AudioConfig:
  channels: tuple[int, ...] = (16, 32, 64, 128)  # after the input conv, then after each stride
  strides: tuple[int, ...] = (2, 4, 5, 8)  # hop = product (320: 16 kHz -> 50 frames/s)
  latent_channels: int = 16  # C_a
  dilations: tuple[int, ...] = (1, 3)  # residual units per level
  logvar_offset: float = 0.0  # as VideoConfig's

  @property
  def hop(self) -> int:
    return math.prod(self.strides)

  def latent_shape(self, samples: int) -> tuple[int, int]:
    if samples % self.hop:
      raise ValueError(f"audio of {samples} samples: not divisible by the hop {self.hop}")
    return (samples // self.hop, self.latent_channels)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  video: VideoConfig
  audio: AudioConfig

  @classmethod
  def from_config(cls, model_cfg: Any) -> "AutoencoderConfig":
    """`config.model` (groups `video`, `audio`) -> the dataclass (tuples made hashable)."""
    v, a = model_cfg.video, model_cfg.audio
    return cls(
        video=VideoConfig(channels=tuple(int(c) for c in v.channels), num_res_blocks=int(v.num_res_blocks),
                          latent_channels=int(v.latent_channels), temporal_downsample=int(v.temporal_downsample),
                          patch=int(v.get("patch", 1)), shortcuts=bool(v.get("shortcuts", False)),
                          logvar_offset=float(v.get("logvar_offset", 0.0))),
        audio=AudioConfig(channels=tuple(int(c) for c in a.channels), strides=tuple(int(s) for s in a.strides),
                          latent_channels=int(a.latent_channels), dilations=tuple(int(d) for d in a.dilations),
                          logvar_offset=float(a.get("logvar_offset", 0.0))))


class VideoEncoder(nn.Module):
  """video [B, T, H, W, 3] -> (mean, logvar) each [B, 1 + (T-1)/r, H/d, W/d, C]."""
  cfg: VideoConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = self.cfg
    h = layers.CausalConv3d(c.channels[0])(layers.space_to_depth(x * 2.0 - 1.0, c.patch))
    for level, down_t in enumerate(c.time_down_levels()):
      for _ in range(c.num_res_blocks):
        h = layers.ResBlock3d(c.channels[level])(h)
      out = c.channels[level + 1]
      down = layers.CausalConv3d(out, strides=(2 if down_t else 1, 2, 2))(nn.silu(h))
      h = down + layers.down_shortcut(h, out, down_t) if c.shortcuts else down
    for _ in range(max(c.num_res_blocks, 1)):  # the bottom level always has one
      h = layers.ResBlock3d(c.channels[-1])(h)
    mean, logvar = jnp.split(layers.CausalConv3d(2 * c.latent_channels)(nn.silu(layers.FrameNorm()(h))), 2, axis=-1)
    if c.shortcuts:
      mean = mean + layers.resize_channels(h, c.latent_channels)
    return mean, jnp.clip(logvar + c.logvar_offset, -30.0, 20.0)


class VideoDecoder(nn.Module):
  """latent [B, 1 + k, H/d, W/d, C] -> video [B, 1 + r k, H, W, 3] (unbounded; ~[0, 1])."""
  cfg: VideoConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c = self.cfg
    h = layers.CausalConv3d(c.channels[-1])(z)
    if c.shortcuts:
      h = h + layers.resize_channels(z, c.channels[-1])
    for _ in range(max(c.num_res_blocks, 1)):
      h = layers.ResBlock3d(c.channels[-1])(h)
    for level in reversed(range(len(c.channels) - 1)):
      down_t = c.time_down_levels()[level]
      out = c.channels[level]
      if down_t:  # 2 * out channels per frame, then split into two frames (first one dropped)
        up = layers.upsample_time_causal(layers.CausalConv3d(2 * out)(nn.silu(h)))
      else:
        up = layers.CausalConv3d(out)(nn.silu(h))
      up = layers.CausalConv3d(out)(nn.silu(layers.upsample_space(up)))
      h = up + layers.up_shortcut(h, out, down_t) if c.shortcuts else up
      for _ in range(c.num_res_blocks):
        h = layers.ResBlock3d(out)(h)
    h = layers.CausalConv3d(3 * c.patch * c.patch)(nn.silu(layers.FrameNorm()(h)))
    return (layers.depth_to_space(h, c.patch) + 1.0) * 0.5


class AudioEncoder(nn.Module):
  """audio [B, S, 1] -> (mean, logvar) each [B, S / hop, C_a]."""
  cfg: AudioConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = self.cfg
    h = layers.Conv1d(c.channels[0], kernel=7)(x)
    for i, s in enumerate(c.strides):
      for d in c.dilations:
        h = layers.ResUnit1d(d)(h)
      out = c.channels[min(i + 1, len(c.channels) - 1)]
      h = layers.Conv1d(out, kernel=2 * s, stride=s)(nn.elu(h))
    h = layers.Conv1d(2 * c.latent_channels, kernel=3)(nn.elu(h))
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar + c.logvar_offset, -30.0, 20.0)


class AudioDecoder(nn.Module):
  """latent [B, F, C_a] -> audio [B, F * hop, 1] in (-1, 1)."""
  cfg: AudioConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c = self.cfg
    h = layers.Conv1d(c.channels[-1], kernel=7)(z)
    for i in reversed(range(len(c.strides))):
      s = c.strides[i]
      out = c.channels[i]
      h = layers.upsample_time_1d(layers.Conv1d(out * s, kernel=3)(nn.elu(h)), s)
      for d in c.dilations:
        h = layers.ResUnit1d(d)(h)
    return jnp.tanh(layers.Conv1d(1, kernel=7)(nn.elu(h)))


class AVAutoencoder(nn.Module):
  """Video and audio autoencoders side by side (no shared parameters).

  `__call__(video, audio, key)` -> reconstructions and posteriors (training);
  `encode(video, audio)` -> {'video': mean, 'audio': mean} (+ logvars with `with_logvar`);
  `decode(latents)` -> {'video': [B, T, H, W, 3] clipped to [0, 1], 'audio': [B, S] in (-1, 1)}.
  audio is [B, S] mono everywhere outside this module (a channel axis is added inside)."""
  cfg: AutoencoderConfig

  def setup(self):
    self.video_encoder = VideoEncoder(self.cfg.video)
    self.video_decoder = VideoDecoder(self.cfg.video)
    self.audio_encoder = AudioEncoder(self.cfg.audio)
    self.audio_decoder = AudioDecoder(self.cfg.audio)

  def posteriors(self, video: jax.Array, audio: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
    return {"video": self.video_encoder(video), "audio": self.audio_encoder(audio[..., None])}

  def encode(self, video: jax.Array, audio: jax.Array) -> dict[str, jax.Array]:
    """video [B, 1 + 4k, H, W, 3], audio [B, S] -> posterior means {'video': [B, 1 + k, h, w, C],
    'audio': [B, S / hop, C_a]}."""
    return {m: mean for m, (mean, _) in self.posteriors(video, audio).items()}

  def decode_raw(self, latents: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {"video": self.video_decoder(latents["video"]), "audio": self.audio_decoder(latents["audio"])[..., 0]}

  def decode(self, latents: dict[str, jax.Array]) -> dict[str, jax.Array]:
    out = self.decode_raw(latents)
    return {"video": jnp.clip(out["video"], 0.0, 1.0), "audio": out["audio"]}

  def __call__(self, video: jax.Array, audio: jax.Array, key: jax.Array | None = None):
    """-> (reconstruction {'video', 'audio'} unclipped, posteriors {m: (mean, logvar)}); latents are
    sampled with `key` (the mean without one)."""
    post = self.posteriors(video, audio)
    z = {}
    for i, (m, (mean, logvar)) in enumerate(post.items()):
      z[m] = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(
          jax.random.fold_in(key, i), mean.shape, mean.dtype)
    return self.decode_raw(z), post


def init_params(model: AVAutoencoder, key: jax.Array, frames: int, size: int, samples: int):
  """Boxed (logically partitioned) variables for clips of `frames` x size x size and `samples` samples."""
  video = jnp.zeros((1, frames, size, size, 3), jnp.float32)
  audio = jnp.zeros((1, samples), jnp.float32)
  return model.init(key, video, audio)


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(params))))


def latent_shapes(cfg: AutoencoderConfig, frames: int, size: int, samples: int) -> dict[str, Sequence[int]]:
  return {"video": cfg.video.latent_shape(frames, size), "audio": cfg.audio.latent_shape(samples)}

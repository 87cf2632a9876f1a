"""Convolutional building blocks of the autoencoders: causal 3-D convs for video, 1-D convs for audio.

Every kernel and bias carries logical axis names (`conv_in`, `conv_out`; spatial/temporal kernel axes
unnamed). No rule set of `monl.parallel.rules` maps these names, so the autoencoders' parameters are
replicated and only the batch is sharded: they are small (a few M parameters) next to the AVDiT.

Causality in time: a temporal kernel of size k is preceded by k - 1 copies of the first frame
("replicate" padding), so output frame t reads input frames <= t only; normalisation is per frame
(GroupNorm over H, W and channel groups of one frame), never across time.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _kernel_init(axes: tuple):
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)


def _bias_init():
  return nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",))


class CausalConv3d(nn.Module):
  """x: [B, T, H, W, C_in] -> [B, T', H', W', features]; causal in time, 'SAME'-like in space.

  Time: `kernel[0] - 1` replicated first frames in front, then stride `strides[0]`: with kernel 3 and
  stride 2, T = 1 + 2m frames become 1 + m, output frame j reading input frames 2j - 2 .. 2j (frame 0
  alone for j = 0). Space: zero padding so that H' = H / stride (H divisible by the stride).

  Computed as one 2-D conv over the kt time-shifted copies of the input stacked along channels (the
  same arithmetic as a 3-D conv with kernel [kt, kh, kw, C_in, features]): XLA:CPU runs 2-D convs
  several times faster than 3-D ones, and only the output frames a temporal stride keeps are computed."""
  features: int
  kernel: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kt, kh, kw = self.kernel
    st, sh, sw = self.strides
    b, t, h, w, c = x.shape
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    kernel = self.param("kernel", nn.with_logical_partitioning(init, (None, None, None, "conv_in", "conv_out")),
                        (kt, kh, kw, c, self.features), jnp.float32)
    bias = self.param("bias", _bias_init(), (self.features,), jnp.float32)
    if kt > 1:
      x = jnp.concatenate([jnp.repeat(x[:, :1], kt - 1, axis=1), x], axis=1)
    t_out = (t - 1) // st + 1
    # output frame j reads padded frames j*st .. j*st + kt - 1
    frames = [x[:, dt: dt + (t_out - 1) * st + 1: st] for dt in range(kt)]  # kt x [B, T', H, W, C]
    stacked = jnp.concatenate(frames, axis=-1).reshape(b * t_out, h, w, kt * c)
    k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kt * c, self.features)
    pads = []
    for k, s in ((kh, sh), (kw, sw)):
      total = max(k - s, 0)
      pads.append((total // 2 + total % 2, total // 2) if s > 1 else ((k - 1) // 2, k // 2))
    y = jax.lax.conv_general_dilated(stacked, k2, window_strides=(sh, sw), padding=pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y + bias
    return y.reshape((b, t_out) + y.shape[1:])


class FrameNorm(nn.Module):
  """GroupNorm of each frame on its own (x: [B, T, H, W, C]), so that no statistic crosses time."""
  groups: int = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t = x.shape[:2]
    groups = _groups(x.shape[-1], self.groups)
    y = nn.GroupNorm(num_groups=groups, scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))(
                         x.reshape((b * t,) + x.shape[2:]))
    return y.reshape(x.shape)


def _groups(channels: int, want: int) -> int:
  g = min(want, channels)
  while channels % g:
    g -= 1
  return g


class ResBlock3d(nn.Module):
  """Pre-norm residual block of two causal 3x3x3 convs; x: [B, T, H, W, C] -> [B, T, H, W, features]."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = CausalConv3d(self.features)(nn.silu(FrameNorm()(x)))
    h = CausalConv3d(self.features, zero_init=True)(nn.silu(FrameNorm()(h)))
    if x.shape[-1] != self.features:
      x = CausalConv3d(self.features, kernel=(1, 1, 1))(x)
    return x + h


class Conv1d(nn.Module):
  """x: [B, S, C_in] -> [B, S / stride, features], 'SAME' padding (total kernel - stride, split evenly)."""
  features: int
  kernel: int = 7
  stride: int = 1
  dilation: int = 1
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    total = self.dilation * (self.kernel - 1) + 1 - self.stride
    pad = (total - total // 2, total // 2)
    init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
    return nn.Conv(self.features, (self.kernel,), strides=(self.stride,), padding=[pad],
                   kernel_dilation=(self.dilation,),
                   kernel_init=nn.with_logical_partitioning(init, (None, "conv_in", "conv_out")),
                   bias_init=_bias_init())(x)


class ResUnit1d(nn.Module):
  """SoundStream-style residual unit: ELU, dilated conv k7, ELU, conv k1; [B, S, C] -> same shape."""
  dilation: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    h = Conv1d(c, kernel=7, dilation=self.dilation)(nn.elu(x))
    h = Conv1d(c, kernel=1, zero_init=True)(nn.elu(h))
    return x + h


def upsample_time_1d(x: jax.Array, factor: int) -> jax.Array:
  """[B, S, factor * C] -> [B, S * factor, C] (sub-pixel shuffle: channel groups become samples)."""
  b, s, c = x.shape
  return x.reshape(b, s, factor, c // factor).reshape(b, s * factor, c // factor)


def upsample_space(x: jax.Array) -> jax.Array:
  """[B, T, H, W, C] -> [B, T, 2H, 2W, C] by nearest neighbour (a conv follows: no checkerboard)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


def upsample_time_causal(x: jax.Array) -> jax.Array:
  """[B, 1 + m, H, W, 2C] -> [B, 1 + 2m, H, W, C]: each frame's channels split into two frames (depth
  to time, as MAGVIT-v2), then the first frame dropped, since latent frame 0 stands for one frame."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h, w, 2, c // 2)
  x = jnp.moveaxis(x, 4, 2).reshape(b, 2 * t, h, w, c // 2)
  return x[:, 1:]


def time_to_depth_causal(x: jax.Array) -> jax.Array:
  """[B, 1 + 2m, H, W, C] -> [B, 1 + m, H, W, 2C], the inverse of `upsample_time_causal`: frame 0 is
  paired with a copy of itself, then frames (1, 2), (3, 4), ... (the causal rule: output j holds frames
  <= 2j only)."""
  x = jnp.concatenate([x[:, :1], x], axis=1)
  b, t, h, w, c = x.shape
  x = jnp.moveaxis(x.reshape(b, t // 2, 2, h, w, c), 2, 4)
  return x.reshape(b, t // 2, h, w, 2 * c)


def resize_channels(x: jax.Array, channels: int) -> jax.Array:
  """[..., C] -> [..., channels] without parameters: the mean of each group of C / channels adjacent
  channels, or each channel repeated channels / C times (one must divide the other)."""
  c = x.shape[-1]
  if c >= channels:
    if c % channels:
      raise ValueError(f"resize_channels: {c} channels do not average into {channels}")
    return x.reshape(x.shape[:-1] + (channels, c // channels)).mean(axis=-1)
  if channels % c:
    raise ValueError(f"resize_channels: {c} channels do not repeat into {channels}")
  return jnp.repeat(x, channels // c, axis=-1)


def down_shortcut(x: jax.Array, features: int, halve_time: bool) -> jax.Array:
  """The parameter-free path beside a stride-2 level: [B, T, H, W, C] -> [B, T', H/2, W/2, features]
  (T' = 1 + (T - 1) / 2 when halve_time): space (and time) folded into channels, then their group means.

  Why: an autoencoder with a high compression ratio learns far faster when each resolution change has
  an identity-like path (Chen et al. 2024, DC-AE's residual autoencoding); without it the tiny config
  stayed at about the dataset's mean colour for 1,000 steps (the longest run tried)."""
  c = x.shape[-1]
  if halve_time:
    x = time_to_depth_causal(x)
  x = space_to_depth(x, 2)  # channels (y, x, [frame,] c): bring c first, so that a group mean pools
  f = x.shape[-1] // c  # the positions of one channel (as DC-AE), rather than mixing channels
  x = jnp.swapaxes(x.reshape(x.shape[:-1] + (f, c)), -1, -2).reshape(x.shape)
  return resize_channels(x, features)


def up_shortcut(x: jax.Array, features: int, double_time: bool) -> jax.Array:
  """The inverse path of `down_shortcut`: [B, T, h, w, C] -> [B, T', 2h, 2w, features] (T' = 2T - 1
  when double_time): channels repeated (or averaged), then unfolded into time and space."""
  f = 4 * (2 if double_time else 1)
  x = resize_channels(x, features * f)  # channels (features, positions): copies of a channel side by side
  x = jnp.swapaxes(x.reshape(x.shape[:-1] + (features, f)), -1, -2).reshape(x.shape)  # (positions, features)
  if double_time:
    x = upsample_time_causal(x)
  return depth_to_space(x, 2)


def space_to_depth(x: jax.Array, p: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T, H/p, W/p, p*p*C] (each p x p block of pixels becomes channels)."""
  if p == 1:
    return x
  b, t, h, w, c = x.shape
  x = x.reshape(b, t, h // p, p, w // p, p, c)
  return jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6)).reshape(b, t, h // p, w // p, p * p * c)


def depth_to_space(x: jax.Array, p: int) -> jax.Array:
  """The inverse of `space_to_depth`: [B, T, h, w, p*p*C] -> [B, T, h*p, w*p, C]."""
  if p == 1:
    return x
  b, t, h, w, pc = x.shape
  c = pc // (p * p)
  x = x.reshape(b, t, h, w, p, p, c)
  return jnp.transpose(x, (0, 1, 2, 4, 3, 5, 6)).reshape(b, t, h * p, w * p, c)

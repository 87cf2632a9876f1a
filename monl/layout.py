"""Layout of a multimodal latent: modalities, time segments, patches, and the cell of every token.

A clip is a dict of per-modality latents, each with its time axis first:
`video: [T_v, H, W, C]`, `audio: [T_a, C]` (any number of modalities, any rank >= 2).
Each modality's time axis is cut into the same number N of contiguous segments (lengths may differ
between segments and modalities, e.g. the paper's video [1,1,1,1,1] and audio [6,25,25,25,25]).
Cell (m, n) is segment n of modality m; its index in a flattened [M * N] view is `m * N + n`.

Tokens: every non-channel axis is cut into patches (video (pt, ph, pw), audio (pt,)); tokens are
ordered time-major inside a modality and modalities are concatenated in order, so the tokens of one
cell are contiguous. `cell_of_token: [L]` maps each token to its flattened cell index.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np


class LayoutError(ValueError):
  """A modality's shape, patch or segments are inconsistent."""


@dataclasses.dataclass(frozen=True)
class ModalityLayout:
  """One modality: `shape` per example (time first, channels last), `patch` per non-channel axis.

  A patch size of 0 means the whole axis (e.g. video patch (2, 0, 0): one token per two whole frames).
  """
  name: str
  shape: tuple[int, ...]
  patch: tuple[int, ...]
  segments: tuple[int, ...]

  def __post_init__(self):
    shape, patch, segs = tuple(self.shape), tuple(self.patch), tuple(self.segments)
    patch = tuple(size if p == 0 else p for size, p in zip(shape, patch)) + patch[len(shape):]
    object.__setattr__(self, "shape", shape)
    object.__setattr__(self, "patch", patch)
    object.__setattr__(self, "segments", segs)
    where = f"modality {self.name!r}"
    if len(shape) < 2:
      raise LayoutError(f"{where}: shape {shape} needs a time axis and a channel axis")
    if len(patch) != len(shape) - 1:
      raise LayoutError(f"{where}: patch {patch} needs one size per non-channel axis of shape {shape} "
                        f"({len(shape) - 1} sizes)")
    if any(p < 0 for p in patch) or any(s <= 0 for s in segs):
      raise LayoutError(f"{where}: patch {patch} must be positive (0 = the whole axis) and segments "
                        f"{segs} positive")
    if sum(segs) != shape[0]:
      raise LayoutError(f"{where}: segments {segs} sum to {sum(segs)}, but the time length is {shape[0]}")
    for axis, (size, p) in enumerate(zip(shape[:-1], patch)):
      if size % p:
        raise LayoutError(f"{where}: patch {p} does not divide axis {axis} of length {size} (shape {shape})")
    for n, seg in enumerate(segs):
      if seg % patch[0]:
        raise LayoutError(f"{where}: segment {n} has {seg} frames, which a temporal patch of {patch[0]} "
                          f"would straddle (segments {segs})")

  @property
  def grid(self) -> tuple[int, ...]:
    """Patches along each non-channel axis, e.g. video (T/pt, H/ph, W/pw)."""
    return tuple(s // p for s, p in zip(self.shape[:-1], self.patch))

  @property
  def channels(self) -> int:
    return self.shape[-1]

  @property
  def num_tokens(self) -> int:
    return math.prod(self.grid)

  @property
  def tokens_per_frame_patch(self) -> int:
    """Tokens sharing one temporal patch (the spatial grid size)."""
    return math.prod(self.grid[1:])

  @property
  def patch_dim(self) -> int:
    return math.prod(self.patch) * self.channels

  @property
  def segment_of_frame(self) -> np.ndarray:
    """[T] segment index of every latent frame."""
    return np.repeat(np.arange(len(self.segments)), self.segments).astype(np.int32)

  @property
  def time_patch_times(self) -> np.ndarray:
    """[T / pt] time of each temporal patch in *segment units*: frame k of segment n sits at
    n + (k + 0.5) / len(segment n), averaged over the patch. Shared by all modalities, so tokens of
    different modalities in the same cell get comparable times even with uneven segments."""
    seg = self.segment_of_frame
    starts = np.concatenate([[0], np.cumsum(self.segments)[:-1]])
    lengths = np.asarray(self.segments, np.float64)
    frame_time = seg + (np.arange(self.shape[0]) - starts[seg] + 0.5) / lengths[seg]
    return frame_time.reshape(-1, self.patch[0]).mean(axis=1)

  @property
  def segment_of_token(self) -> np.ndarray:
    """[L_m] segment index of every token (time-major order)."""
    seg_of_time_patch = self.segment_of_frame[:: self.patch[0]]
    return np.repeat(seg_of_time_patch, self.tokens_per_frame_patch).astype(np.int32)

  def patchify(self, x):
    """[B, *shape] -> [B, L_m, patch_dim]; works on numpy and jax arrays."""
    b = x.shape[0]
    k = len(self.patch)
    split = []
    for g, p in zip(self.grid, self.patch):
      split += [g, p]
    x = x.reshape(b, *split, self.channels)
    # axes: 0=B, grid axes 1,3,5.., patch axes 2,4,6.., channel last
    perm = [0] + [1 + 2 * i for i in range(k)] + [2 + 2 * i for i in range(k)] + [1 + 2 * k]
    x = x.transpose(perm)
    return x.reshape(b, self.num_tokens, self.patch_dim)

  def unpatchify(self, tokens):
    """[B, L_m, patch_dim] -> [B, *shape]."""
    b = tokens.shape[0]
    k = len(self.patch)
    x = tokens.reshape(b, *self.grid, *self.patch, self.channels)
    perm = [0]
    for i in range(k):
      perm += [1 + i, 1 + k + i]
    perm.append(1 + 2 * k)
    x = x.transpose(perm)
    return x.reshape(b, *self.shape)


@dataclasses.dataclass(frozen=True)
class Layout:
  """All modalities of a clip, in order, sharing N time segments."""
  modalities: tuple[ModalityLayout, ...]

  def __post_init__(self):
    mods = tuple(self.modalities)
    object.__setattr__(self, "modalities", mods)
    if not mods:
      raise LayoutError("a layout needs at least one modality")
    names = [m.name for m in mods]
    if len(set(names)) != len(names):
      raise LayoutError(f"modality names must be unique, got {names}")
    counts = {m.name: len(m.segments) for m in mods}
    if len(set(counts.values())) != 1:
      raise LayoutError(f"every modality needs the same number of segments, got {counts}")

  @classmethod
  def from_config(cls, layout_config) -> "Layout":
    """Builds from a complete `config.layout` (`modalities` tuple + one group per modality).

    A config that leaves fields to the data (see `monl.data.infer_layout`) is completed first by
    `monl.train.loop.with_data_layout(config)`, as every command does."""
    incomplete = ("config.layout leaves {} unset (to be taken from the data): complete it with "
                  "monl.train.loop.with_data_layout(config) first")
    if not layout_config.modalities:
      raise LayoutError(incomplete.format("modalities"))
    mods = []
    for name in layout_config.modalities:
      if name not in layout_config:
        raise LayoutError(f"config.layout.modalities names {name!r}, but config.layout.{name} is missing")
      group = layout_config[name]
      unset = [k for k in ("shape", "patch", "segments") if group.get(k) is None]
      if unset:
        raise LayoutError(incomplete.format(", ".join(f"{name}.{k}" for k in unset)))
      mods.append(ModalityLayout(name, tuple(group.shape), tuple(group.patch), tuple(group.segments)))
    return cls(tuple(mods))

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(m.name for m in self.modalities)

  @property
  def num_modalities(self) -> int:
    return len(self.modalities)

  @property
  def num_segments(self) -> int:
    return len(self.modalities[0].segments)

  @property
  def num_cells(self) -> int:
    return self.num_modalities * self.num_segments

  @property
  def num_tokens(self) -> int:
    return sum(m.num_tokens for m in self.modalities)

  def __getitem__(self, name: str) -> ModalityLayout:
    for m in self.modalities:
      if m.name == name:
        return m
    raise KeyError(f"no modality {name!r} in layout {self.names}")

  def cell_of_frame(self, name: str) -> np.ndarray:
    """[T_m] flattened cell index of every frame of modality `name`."""
    m = self.names.index(name)
    return m * self.num_segments + self[name].segment_of_frame

  def cell_of_token_by_modality(self) -> dict[str, np.ndarray]:
    """{name: [L_m]} flattened cell index of every token of each modality."""
    return {mod.name: (m * self.num_segments + mod.segment_of_token).astype(np.int32)
            for m, mod in enumerate(self.modalities)}

  @property
  def cell_of_token(self) -> np.ndarray:
    """[L] flattened cell index of every token of the concatenated sequence."""
    return np.concatenate(list(self.cell_of_token_by_modality().values()))

  @property
  def token_times(self) -> np.ndarray:
    """[L] time of every token of the concatenated sequence in segment units (shared by modalities)."""
    return np.concatenate([np.repeat(m.time_patch_times, m.tokens_per_frame_patch) for m in self.modalities])

  @property
  def modality_of_token(self) -> np.ndarray:
    """[L] index of every token's modality."""
    return np.concatenate([np.full(m.num_tokens, i, np.int32) for i, m in enumerate(self.modalities)])

  @property
  def elements_per_cell(self) -> np.ndarray:
    """[M * N] number of latent elements in each cell (for per-cell loss means)."""
    out = []
    for mod in self.modalities:
      per_frame = math.prod(mod.shape[1:])
      out += [seg * per_frame for seg in mod.segments]
    return np.asarray(out, np.float32)

  def patchify(self, clip: Mapping[str, object]) -> dict[str, object]:
    """{name: [B, *shape]} -> {name: [B, L_m, patch_dim_m]}."""
    return {m.name: m.patchify(clip[m.name]) for m in self.modalities}

  def unpatchify(self, tokens: Mapping[str, object]) -> dict[str, object]:
    """{name: [B, L_m, patch_dim_m]} -> {name: [B, *shape]}."""
    return {m.name: m.unpatchify(tokens[m.name]) for m in self.modalities}

  def check_shapes(self, clip: Mapping[str, object], where: str, batched: bool = True) -> None:
    """Raises naming the modality and both shapes when `clip` does not match this layout."""
    if set(clip) < set(self.names):
      raise LayoutError(f"{where}: modalities {sorted(clip)} lack {sorted(set(self.names) - set(clip))}")
    for m in self.modalities:
      got = tuple(clip[m.name].shape)[1 if batched else 0:]
      if got != m.shape:
        raise LayoutError(f"{where}: modality {m.name!r} has shape {got}, the layout expects {m.shape}")


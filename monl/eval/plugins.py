"""Feature extractors whose weights cannot be installed offline (FAD), loaded from a local file.

No PyPI/Debian package ships VGGish, PANNs, CLAP, AudioCLIP, ImageBind or VideoMAE-v2 weights
(see docs/peers.md B.3-B.5), so an extractor here takes a *local* weights path and fails with a
`MissingWeightsError` naming the metric, the expected file and where to get it.

What exists (`available_extractors()`):

* `vggish`: VGGish (Hershey et al. 2017; FAD, Kilgour et al.) in Flax, with the exact log-mel
  front end of `vggish_input.waveform_to_examples` in numpy. Weights are a flat `.npz` (layout in
  `VGGISH_NPZ_KEYS`, with the transposes a torch checkpoint needs), converted by the user from
  `vggish_model.ckpt` (TF) or torchvggish's `vggish-10086976.pth` (no converter ships: it would need
  TensorFlow or torch); keys and shapes are checked on load and the file's sha256 is recorded.
  The embedding is the raw 128-d `fc2` output (no PCA/quantisation), which is what FAD uses.
  `monl.eval.evaluate` computes `fad_vggish` with it when `config.eval.vggish_weights` is set.

Not implemented: PANNs Cnn14, LAION-CLAP and AudioCLIP (the FAD variants of some peers, e.g.
AudioCLIP ×1e4 in MM-Diffusion). Add an extractor with `register_extractor`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class MissingWeightsError(FileNotFoundError):
  """A metric's extractor weights are not available locally."""


@runtime_checkable
class FeatureExtractor(Protocol):
  """What every plug-in returns from `load_extractor`."""

  name: str
  provenance: dict[str, str]

  def __call__(self, batch: Any) -> np.ndarray:
    """batch (extractor-specific input, leading axis B) -> np.float32 [B, D]."""
    ...


@dataclasses.dataclass(frozen=True)
class PluginSpec:
  """Registry entry: what a plug-in measures, which file it needs and how to build it."""

  name: str
  metric: str
  expected_file: str
  source: str
  loader: Callable[[pathlib.Path], FeatureExtractor]


_REGISTRY: dict[str, PluginSpec] = {}


def register_extractor(spec: PluginSpec) -> None:
  """Adds (or replaces) a plug-in under `spec.name`."""
  _REGISTRY[spec.name] = spec


def available_extractors() -> list[str]:
  return sorted(_REGISTRY)


def load_extractor(name: str, weights_path: str | os.PathLike[str] | None) -> FeatureExtractor:
  """Builds extractor `name` from a local weights file.

  Raises:
    KeyError: unknown name.
    MissingWeightsError: `weights_path` is None or does not exist.
  """
  if name not in _REGISTRY:
    raise KeyError(f"unknown feature extractor {name!r}; available: {available_extractors()}")
  spec = _REGISTRY[name]
  if weights_path is None or not pathlib.Path(weights_path).is_file():
    got = "no weights_path was given" if weights_path is None else f"{weights_path} does not exist"
    raise MissingWeightsError(
        f"{spec.metric} needs local weights for extractor {name!r}: expected {spec.expected_file}, "
        f"but {got}. Get them from {spec.source}. They cannot be downloaded in this environment.")
  return spec.loader(pathlib.Path(weights_path))


# ----------------------------------------------------------------------------------------------
# VGGish log-mel front end (numpy port of vggish_input / mel_features)
# ----------------------------------------------------------------------------------------------

VGGISH_SAMPLE_RATE = 16000
_STFT_WINDOW_S = 0.025
_STFT_HOP_S = 0.010
_NUM_MEL_BINS = 64
_MEL_MIN_HZ = 125.0
_MEL_MAX_HZ = 7500.0
_LOG_OFFSET = 0.01  # log(mel + 0.01) avoids log(0)
EXAMPLE_FRAMES = 96  # 0.96 s of 10 ms frames per example, non-overlapping
_EXAMPLE_HOP_FRAMES = 96


def _hertz_to_mel(hz: np.ndarray) -> np.ndarray:
  """HTK mel scale, as VGGish."""
  return 1127.0 * np.log(1.0 + hz / 700.0)


def _mel_matrix(num_spectrogram_bins: int) -> np.ndarray:
  """[num_spectrogram_bins, 64] triangular mel weights (VGGish's spectrogram_to_mel_matrix)."""
  bins_mel = _hertz_to_mel(np.linspace(0.0, VGGISH_SAMPLE_RATE / 2.0, num_spectrogram_bins))
  edges = np.linspace(_hertz_to_mel(np.float64(_MEL_MIN_HZ)), _hertz_to_mel(np.float64(_MEL_MAX_HZ)),
                      _NUM_MEL_BINS + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  lower_slope = (bins_mel[:, None] - lower) / (center - lower)
  upper_slope = (upper - bins_mel[:, None]) / (upper - center)
  weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
  weights[0, :] = 0.0  # the DC bin carries no mel energy in VGGish
  return weights


def log_mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
  """Mono 16 kHz waveform [S] -> log-mel frames [F, 64], F = 1 + (S - 400) // 160."""
  window = int(round(VGGISH_SAMPLE_RATE * _STFT_WINDOW_S))
  hop = int(round(VGGISH_SAMPLE_RATE * _STFT_HOP_S))
  fft_length = 2 ** int(np.ceil(np.log2(window)))
  if waveform.shape[0] < window:
    raise ValueError(f"waveform too short for one STFT frame: {waveform.shape[0]} < {window} samples")
  num_frames = 1 + (waveform.shape[0] - window) // hop
  idx = np.arange(window)[None, :] + hop * np.arange(num_frames)[:, None]
  periodic_hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window) / window)
  spec = np.abs(np.fft.rfft(waveform[idx] * periodic_hann, n=fft_length))
  mel = spec @ _mel_matrix(spec.shape[1])
  return np.log(mel + _LOG_OFFSET)


def waveform_to_examples(waveforms: Any, sample_rate: int = VGGISH_SAMPLE_RATE) -> np.ndarray:
  """Waveforms [B, S] (or [S]) at 16 kHz in [-1, 1] -> float32 log-mel examples [B, K, 96, 64].

  K = 1 + (F - 96) // 96 non-overlapping 0.96 s examples (F from `log_mel_spectrogram`); e.g. a
  1.6 s clip (25600 samples) gives K = 1. Resampling is left to the caller on purpose: VGGish used
  `resampy`, and a different resampler would change the numbers.
  """
  if sample_rate != VGGISH_SAMPLE_RATE:
    raise ValueError(f"VGGish expects {VGGISH_SAMPLE_RATE} Hz audio; got sample_rate={sample_rate}. "
                     f"Resample first (VGGish used resampy).")
  arr = np.asarray(waveforms, dtype=np.float64)
  if arr.ndim == 1:
    arr = arr[None]
  if arr.ndim != 2:
    raise ValueError(f"waveforms must be [B, S] or [S] mono; got shape {arr.shape}")
  out = []
  for wav in arr:
    frames = log_mel_spectrogram(wav)
    if frames.shape[0] < EXAMPLE_FRAMES:
      raise ValueError(f"waveform of {wav.shape[0]} samples gives {frames.shape[0]} log-mel frames; "
                       f"VGGish needs >= {EXAMPLE_FRAMES} (0.975 s at 16 kHz)")
    k = 1 + (frames.shape[0] - EXAMPLE_FRAMES) // _EXAMPLE_HOP_FRAMES
    out.append(np.stack([frames[i * _EXAMPLE_HOP_FRAMES:i * _EXAMPLE_HOP_FRAMES + EXAMPLE_FRAMES]
                         for i in range(k)]))
  return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# VGGish network
# ----------------------------------------------------------------------------------------------

# Conv layer names in order; a 2x2/2 max-pool follows conv1, conv2, conv3_2 and conv4_2.
_VGGISH_CONVS = ("conv1", "conv2", "conv3_1", "conv3_2", "conv4_1", "conv4_2")
_VGGISH_POOL_AFTER = ("conv1", "conv2", "conv3_2", "conv4_2")
_VGGISH_FCS = ("fc1_1", "fc1_2", "fc2")

# Expected `.npz` layout (real VGGish sizes; a smaller network with the same keys also loads):
#   <conv>/kernel [3, 3, C_in, C_out]   (HWIO, as Flax/TF; torch OIHW must be transposed (2,3,1,0))
#   <conv>/bias   [C_out]               C_out: conv1 64, conv2 128, conv3_* 256, conv4_* 512
#   fc1_1/kernel  [6*4*512, 4096]       input flattened in (H, W, C) order like TF; torch [out, in]
#   fc1_2/kernel  [4096, 4096]          weights must be transposed
#   fc2/kernel    [4096, 128]
#   fc*/bias      [out]
VGGISH_NPZ_KEYS = tuple(f"{layer}/{p}" for layer in _VGGISH_CONVS + _VGGISH_FCS
                        for p in ("kernel", "bias"))


class VGGish(nn.Module):
  """VGGish: log-mel examples [B, 96, 64] -> embeddings [B, embedding_size].

  Conv 3x3 (SAME, ReLU) stack 64 / pool / 128 / pool / 256, 256 / pool / 512, 512 / pool, flatten
  (H, W, C), FC 4096 ReLU, FC 4096 ReLU, FC 128. `final_relu=True` reproduces torchvggish, which
  applies a ReLU after fc2; TF VGGish (and FAD) does not.
  """

  conv_features: Sequence[int] = (64, 128, 256, 256, 512, 512)
  fc_features: Sequence[int] = (4096, 4096)
  embedding_size: int = 128
  final_relu: bool = False

  @nn.compact
  def __call__(self, log_mel: jax.Array) -> jax.Array:
    x = log_mel[..., None]  # [B, 96, 64, 1]
    for name, feats in zip(_VGGISH_CONVS, self.conv_features, strict=True):
      x = nn.relu(nn.Conv(feats, (3, 3), padding="SAME", name=name)(x))
      if name in _VGGISH_POOL_AFTER:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)  # [B, 6*4*C] in (H, W, C) order
    for name, feats in zip(_VGGISH_FCS[:-1], self.fc_features, strict=True):
      x = nn.relu(nn.Dense(feats, name=name)(x))
    x = nn.Dense(self.embedding_size, name=_VGGISH_FCS[-1])(x)
    return nn.relu(x) if self.final_relu else x


def vggish_params_to_flat(params: dict[str, Any]) -> dict[str, np.ndarray]:
  """Flax params {'conv1': {'kernel', 'bias'}, ...} -> flat {'conv1/kernel': array, ...}."""
  return {f"{layer}/{p}": np.asarray(params[layer][p])
          for layer in _VGGISH_CONVS + _VGGISH_FCS for p in ("kernel", "bias")}


def save_vggish_npz(params: dict[str, Any], path: str | os.PathLike[str]) -> None:
  """Writes Flax VGGish params in the `VGGISH_NPZ_KEYS` layout (for converters and tests)."""
  with open(path, "wb") as f:
    np.savez(f, **vggish_params_to_flat(params))


def _load_vggish_npz(path: pathlib.Path) -> tuple[VGGish, dict[str, Any]]:
  """Reads an npz, checks keys/shapes, and infers the layer widths from the kernels."""
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in VGGISH_NPZ_KEYS if k not in data.files]
    if missing:
      raise ValueError(f"{path}: VGGish weights are missing keys {missing}; expected "
                       f"{list(VGGISH_NPZ_KEYS)}")
    flat = {k: np.asarray(data[k], dtype=np.float32) for k in VGGISH_NPZ_KEYS}
  c_in = 1
  for layer in _VGGISH_CONVS:
    k, b = flat[f"{layer}/kernel"], flat[f"{layer}/bias"]
    if k.ndim != 4 or k.shape[:3] != (3, 3, c_in) or b.shape != (k.shape[3],):
      raise ValueError(f"{path}: '{layer}/kernel' must be [3, 3, {c_in}, C] with bias [C]; got "
                       f"{k.shape} and {b.shape}")
    c_in = k.shape[3]
  d_in = (EXAMPLE_FRAMES // 16) * (_NUM_MEL_BINS // 16) * c_in  # four 2x pools: 96x64 -> 6x4
  for layer in _VGGISH_FCS:
    k, b = flat[f"{layer}/kernel"], flat[f"{layer}/bias"]
    if k.ndim != 2 or k.shape[0] != d_in or b.shape != (k.shape[1],):
      raise ValueError(f"{path}: '{layer}/kernel' must be [{d_in}, D] with bias [D]; got "
                       f"{k.shape} and {b.shape}")
    d_in = k.shape[1]
  model = VGGish(
      conv_features=tuple(flat[f"{c}/kernel"].shape[3] for c in _VGGISH_CONVS),
      fc_features=tuple(flat[f"{c}/kernel"].shape[1] for c in _VGGISH_FCS[:-1]),
      embedding_size=flat["fc2/kernel"].shape[1])
  params = {layer: {p: flat[f"{layer}/{p}"] for p in ("kernel", "bias")}
            for layer in _VGGISH_CONVS + _VGGISH_FCS}
  return model, params


class VGGishExtractor:
  """FAD feature extractor: log-mel examples [B, 96, 64] -> np.float32 [B, 128].

  For FAD, embed every 0.96 s example of every clip and fit one Gaussian to all of them
  (`embed_waveforms(w).reshape(-1, D)`), as google-research/frechet_audio_distance does.
  """

  name = "vggish"

  def __init__(self, weights_path: str | os.PathLike[str], batch_size: int = 64) -> None:
    path = pathlib.Path(weights_path)
    self._model, params = _load_vggish_npz(path)
    self._params = jax.device_put(params)
    self.batch_size = batch_size
    self.embedding_size = self._model.embedding_size
    self.provenance: dict[str, str] = {
        "extractor": "vggish",
        "weights_file": str(path),
        "weights_sha256": _sha256(path),
        "frontend": "vggish_input numpy port: 16 kHz, 25 ms periodic-Hann STFT / 10 ms hop, "
                    "64 HTK-mel bins 125-7500 Hz, log(mel + 0.01), 96-frame examples",
        "embedding": "raw fc2 output (no PCA/quantisation)",
    }
    self._apply = jax.jit(lambda p, x: self._model.apply({"params": p}, x))

  def __call__(self, batch: Any) -> np.ndarray:
    """batch: log-mel examples [B, 96, 64] -> np.float32 [B, embedding_size]."""
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (EXAMPLE_FRAMES, _NUM_MEL_BINS):
      raise ValueError(f"VGGish expects log-mel examples [B, {EXAMPLE_FRAMES}, {_NUM_MEL_BINS}]; "
                       f"got {x.shape}")
    outs = []
    for start in range(0, x.shape[0], self.batch_size):
      chunk = x[start:start + self.batch_size]
      real = chunk.shape[0]
      if real < self.batch_size:  # pad to one fixed shape, so jit compiles once
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - real,) + chunk.shape[1:],
                                                np.float32)])
      outs.append(np.asarray(self._apply(self._params, jnp.asarray(chunk)))[:real])
    return np.concatenate(outs).astype(np.float32)

  def embed_waveforms(self, waveforms: Any, sample_rate: int = VGGISH_SAMPLE_RATE) -> np.ndarray:
    """Waveforms [B, S] at 16 kHz -> embeddings [B, K, embedding_size] (K examples per clip)."""
    examples = waveform_to_examples(waveforms, sample_rate)  # [B, K, 96, 64]
    b, k = examples.shape[:2]
    return self(examples.reshape(b * k, *examples.shape[2:])).reshape(b, k, -1)


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------------

register_extractor(PluginSpec(
    name="vggish",
    metric="FAD (VGGish)",
    expected_file=("vggish.npz (flat keys conv1/kernel ... fc2/bias, layout documented at "
                   "monl.eval.plugins.VGGISH_NPZ_KEYS)"),
    source=("https://storage.googleapis.com/audioset/vggish_model.ckpt (TF) or torchvggish's "
            "vggish-10086976.pth (github.com/harritaylor/torchvggish releases), converted to npz"),
    loader=VGGishExtractor))

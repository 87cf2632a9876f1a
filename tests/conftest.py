"""Test-wide settings: CPU only, quiet logs, unoptimised XLA code (below), the longest files first, repo
root importable (for `configs`)."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# gcsfs reads this when imported; its bucket-type probe would wait 60 s per call on the test GCS server
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# The tests check behaviour, not speed, and most of their programs are small: much of a test's time is
# XLA compiling them, and LLVM's optimisation passes are a large part of that. Without them the summed
# test time fell from 2161 to 1855 s on a 2-core AVX2 host (wall 19 min 28 s -> 16 min 41 s), though
# tests bound by run time (the 4000-sample oracle, I3D) got slower. Semantics are the same (XLA:CPU's
# fast-math stays off at every level).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(*extra: str) -> str:
  """XLA_FLAGS for a test's subprocess: the suite's own flags and `extra`."""
  return " ".join((TEST_XLA_FLAGS,) + extra)


if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", "")).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


# The files that take a minute or more, longest first (`--durations=0` on 2 cores). `--dist loadfile`
# hands whole files to the two workers in collection order; with a long file last, one worker ran it
# alone at the end while the other sat idle.
LONG_FILES = ("test_sampler.py", "test_gcs.py", "test_eval_i3d.py", "test_multiprocess.py", "test_autoencoder.py",
              "test_train.py", "test_model.py", "test_ablate.py", "test_encode.py", "test_parallel.py",
              "test_run_config.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order


@pytest.fixture(scope="session")
def builtin_dataset(tmp_path_factory):
  """A small copy of the built-in synthetic dataset (64 train / 16 test clips), built once."""
  from monl.data import synthetic
  return str(synthetic.ensure_builtin_dataset(tmp_path_factory.mktemp("synthetic") / "data",
                                              num_train=64, num_test=16, seed=0, num_shards=2))


def tiny_config(data_dir: str, base: str = "default", **overrides):
  """The `configs/<base>.py` config (default: default.py) shrunk for tests: width 32, 2 layers,
  batch 8, a 64-wide mlp head (not the token's 1536), on `data_dir`."""
  import importlib
  c = importlib.import_module(f"configs.{base}").get_config()
  c.data.dir = data_dir
  c.data.batch_size = 8
  c.model.width, c.model.depth, c.model.num_heads, c.model.freq_embed_dim = 32, 2, 2, 32
  c.model.head_hidden = 64
  c.train.num_steps, c.train.warmup_steps, c.train.log_every = 20, 5, 10
  c.ckpt.every = 10
  c.ckpt.async_save = False
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope="session")
def trained(builtin_dataset, tmp_path_factory):
  """(config, workdir) of a tiny model trained for 4 steps on `builtin_dataset`, built once."""
  from monl.train import loop
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(builtin_dataset, **{"train.num_steps": 4, "ckpt.every": 4, "sample.batch_size": 4})
  loop.train(config, str(workdir))
  return config, str(workdir)


class FakeI3D:
  """Stands in for I3D (1.5 s per clip on CPU): a fixed projection of the mean frame; records the
  shape of every `features` pass and that its clips arrived in chunks of at most `batch_size`."""
  provenance = {"extractor": "fake", "package": "test", "port_of": "none", "resize": "none"}
  batch_size = 3

  def __init__(self):
    self.calls = []
    self.w = np.random.default_rng(0).normal(size=(16 * 16 * 3, 6))

  def features(self, chunks, total=None, out=None, progress=None):
    chunks = list(chunks)
    assert all(len(c) <= self.batch_size for c in chunks)  # streamed from disk, one batch at a time
    videos = np.concatenate(chunks)
    assert videos.shape[1] >= 9 and videos.max() <= 255.0 and len(videos) == total
    self.calls.append(videos.shape)
    feats = videos.reshape(*videos.shape[:2], -1).mean(1) @ self.w
    if out is not None:
      np.save(out, feats)
    return feats

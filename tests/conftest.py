"""Test-wide settings: CPU only, quiet logs, repo root importable (for `configs`)."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# gcsfs reads this when imported; its bucket-type probe would wait 60 s per call on the test GCS server
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def builtin_dataset(tmp_path_factory):
  """A small copy of the built-in synthetic dataset (64 train / 16 test clips), built once."""
  from monl.data import synthetic
  return str(synthetic.ensure_builtin_dataset(tmp_path_factory.mktemp("synthetic") / "data",
                                              num_train=64, num_test=16, seed=0, num_shards=2))


def tiny_config(data_dir: str, base: str = "default", **overrides):
  """The `configs/<base>.py` config (default: default.py) shrunk for tests: width 32, 2 layers,
  batch 8, on `data_dir`."""
  import importlib
  c = importlib.import_module(f"configs.{base}").get_config()
  c.data.dir = data_dir
  c.data.batch_size = 8
  c.model.width, c.model.depth, c.model.num_heads, c.model.freq_embed_dim = 32, 2, 2, 32
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

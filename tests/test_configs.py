"""Every shipped config file and variant loads, builds a valid layout and model config."""
import glob
import importlib.util
import os

import pytest

from configs import common
from monl import layout as L
from monl import mixture
from monl.models import avdit
from monl.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# AVDiT configs; the autoencoder's (configs/autoencoder_*.py) are tested in tests/test_autoencoder.py
CONFIG_FILES = sorted(f for f in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                      if os.path.basename(f) not in ("__init__.py", "common.py")
                      and not os.path.basename(f).startswith("autoencoder_"))
VARIANTS = [None] + [f"strategy={s}" for s in common.STRATEGY_PRESETS] + ["strategy=pm,clean_prob=0.1"]


def _load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("variant", VARIANTS)
def test_config_loads(path, variant):
  config = loop.with_data_layout(_load(path).get_config(variant))  # built-in data: no data read
  lay = L.Layout.from_config(config.layout)
  avdit.AVDiTConfig.from_config(config.model)
  mixture.validate_weights(config.mixture.weights)
  assert lay.num_segments >= 1
  if variant and variant.startswith("strategy="):
    name = variant.split(",")[0].split("=")[1]
    assert tuple(config.mixture.weights) == common.STRATEGY_PRESETS[name]


def test_paper_config_matches_paper():
  config = _load(os.path.join(ROOT, "configs", "avdit_paper.py")).get_config()
  lay = L.Layout.from_config(config.layout)
  assert lay["audio"].segments == (6, 25, 25, 25, 25) and lay["video"].shape == (5, 16, 16, 8)
  assert (config.model.depth, config.model.width, config.model.num_heads) == (24, 1024, 16)
  assert config.model.self_cond_rate == 0.9 and config.train.lr == 5e-4 and config.data.batch_size == 256


def test_bad_variant():
  with pytest.raises(ValueError, match="strategy='nope'"):
    common.apply_variant(common.base_config(), "strategy=nope")
  with pytest.raises(ValueError, match="expected key=value"):
    common.apply_variant(common.base_config(), "pm")

"""Tiny default config: trains on the built-in synthetic audiovisual dataset on 2 CPU cores in minutes.

Usage: `python -m monl.main train --config configs/default.py --workdir /tmp/monl`
Variants: `configs/default.py:strategy=pm` (any mixture strategy preset, see `common.STRATEGY_PRESETS`).
"""
from configs import common


def get_config(arg: str | None = None):
  config = common.base_config()

  # Data: the built-in synthetic dataset (bouncing balls + pitch-following audio), built on first use.
  config.data.dir = ""  # '' = built-in synthetic dataset under data.builtin_dir
  config.data.builtin_dir = "~/.cache/monl/synthetic_v1"
  config.data.batch_size = 16  # global batch

  # Latent layout of the built-in data: video [T, H, W, C], audio [T, F] log-spectrogram frames.
  # N = 4 time segments of 0.5 s each.
  config.layout.modalities = ("video", "audio")
  config.layout.video.shape = (16, 16, 16, 3)
  config.layout.video.patch = (2, 4, 4)
  config.layout.video.segments = (4, 4, 4, 4)
  config.layout.audio.shape = (64, 16)
  config.layout.audio.patch = (4,)
  config.layout.audio.segments = (16, 16, 16, 16)

  config.model.width = 128
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.mlp_ratio = 4
  config.model.self_cond_rate = 0.0
  # Unrolled layers: on XLA:CPU the scanned stack's per-layer residual slicing costs 8-15% of a train
  # step (benchmarks/PERF_LOG.md, section 6); compile time grows ~20%. The paper config keeps the scan.
  config.model.scan_layers = False
  # v-prediction (the paper predicts eps): at this budget it halves the audio-video disagreement of
  # joint samples and turns the video from speckle into one moving ball (README, "Sample quality").
  config.model.prediction = "v"

  # The paper's linear schedule. (Cosine reaches ᾱ_T ≈ 2e-9, where an ε-prediction's x0 estimate
  # amplifies the model's error by ~500x in the first DDIM step out of T.)
  config.schedule.kind = "linear"
  config.schedule.num_steps = 1000

  config.train.num_steps = 2000
  config.train.lr = 1e-3
  config.train.warmup_steps = 200
  config.train.weight_decay = 0.01
  config.train.ema_decay = 0.999
  config.train.log_every = 50
  config.ckpt.every = 500

  config.sample.steps = 50
  config.sample.batch_size = 16

  common.apply_variant(config, arg)
  return config

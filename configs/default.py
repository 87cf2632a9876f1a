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

  # Latent layout: shapes and segments come from the data (built-in: video [16, 16, 16, 3], audio
  # [64, 16] log-spectrogram frames, N = 4 segments of 0.5 s); the patches are this recipe's choice.
  # One token per two WHOLE frames (patch 0 = the whole axis): with 4x4-pixel patches the model did not
  # learn to use the other modality at all in 2k steps (docs/diagnosis.md); whole-frame tokens make the
  # cross-modal read-out one attention hop and a step ~6x cheaper (24 tokens instead of 144).
  config.layout.video.patch = (2, 0, 0)
  config.layout.audio.patch = (4,)

  config.model.width = 128
  config.model.depth = 4
  config.model.num_heads = 4
  config.model.mlp_ratio = 4
  config.model.self_cond_rate = 0.0
  # Unrolled layers: on XLA:CPU the scanned stack's per-layer residual slicing costs 8-15% of a train
  # step (benchmarks/PERF_LOG.md, section 6); compile time grows ~20%. The paper config keeps the scan.
  config.model.scan_layers = False
  # x0-prediction (the paper predicts eps) with the v loss's weight capped at 5: whole-frame tokens
  # leave per-pixel noise that eps or v cannot cancel as speckle; an x0 output simply omits it.
  config.model.prediction = "x0"
  config.model.x0_loss_cap = 5.0
  # ... through a two-layer head as wide as the token (Dense(1536) -> GELU -> Dense(1536)) for the
  # video, whose tokens hold 1536 values: a linear head from 128 features can only output a 128-dim
  # subspace of them (91% of the frames' variance), which leaves ringing and fading balls. The skip
  # that fixed this before (model.x0_skip = 0.3) drew the other 9% as Gaussian noise: speckle
  # (docs/diagnosis.md). Measured at 10k steps, two seeds each: background_noise 0.035 -> 0.0077, joint
  # av_agreement 0.019 / 0.022 -> 0.015 / 0.015, joint trajectory error 0.052 / 0.057 -> 0.046 / 0.043.
  # Its 2.56M parameters (4.0M in all, from 1.7M) make a step 1.5x slower (19.5 vs 29.5 steps/s); a
  # 512-wide hidden layer (25.5 steps/s) removed the speckle too but left more failed joint clips.
  config.model.head = "mlp"
  # A learned relative-time attention bias, started at attending to the other modality's tokens of the
  # same moment: without it cross-modal attention stays time-blind (docs/diagnosis.md).
  config.model.time_bias = True
  config.model.time_bias_prior = 4.0

  # The paper's linear schedule. (Cosine reaches ᾱ_T ≈ 2e-9, where an ε-prediction's x0 estimate
  # amplifies the model's error by ~500x in the first DDIM step out of T.)
  config.schedule.kind = "linear"
  config.schedule.num_steps = 1000

  # 22-28 steps/s on 2 cores (the same machine varies): 6-7.5 min. With the skip, 12k steps took the
  # quickstart to 10m18s on a slow day for joint / continue trajectory 0.055 / 0.020 (README).
  config.train.num_steps = 10000
  config.train.lr = 2e-3  # vs 1e-3 at 8k steps: joint / continue trajectory error 0.083 / 0.040 -> 0.072 / 0.035
  config.train.warmup_steps = 400
  config.train.weight_decay = 0.01
  config.train.ema_decay = 0.999
  config.train.log_every = 200
  config.ckpt.every = 2000

  config.sample.steps = 50
  # Guidance for free (the unconditional branch drops the given cells): at s = 1 a2v / v2a
  # disagreement 0.019 -> 0.014 / 0.016 and continuation trajectory error 0.045 -> 0.040 (README).
  config.sample.guidance = 1.0
  config.sample.batch_size = 16

  common.apply_variant(config, arg)
  return config

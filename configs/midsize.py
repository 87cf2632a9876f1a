"""Mid-size config for CPU performance work: 12 layers, width 384, 6 heads, 512 tokens, batch 8.

Layout (512 tokens, 8 cells):
  video [16, 24, 32, 4] latents, patch (2, 4, 4) -> 8 x 6 x 8 = 384 tokens of 128 values,
  audio [128, 16] frames,     patch (1,)     -> 128 tokens of 16 values,
  N = 4 segments: video (4, 4, 4, 4) frames, audio (32, 32, 32, 32) frames.
This is the shape of issue 7's comparison (a 12-layer width-384 DiT over 8 x 512 tokens) with the
AVDiT's two modalities. It trains on random data in `benchmarks/`; there is no dataset of this shape,
so point `--config.data.dir` at one (prepared with `python -m monl.data.prepare`) to train for real.

Usage: `python benchmarks/train_step.py --configs midsize`
Variants: `configs/midsize.py:strategy=pm` (see `common.STRATEGY_PRESETS`).
"""
from configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  config.data.dir = ""  # no dataset has this layout; set --config.data.dir to a prepared one
  config.data.batch_size = 8

  config.layout.modalities = ("video", "audio")
  config.layout.video.shape = (16, 24, 32, 4)
  config.layout.video.patch = (2, 4, 4)
  config.layout.video.segments = (4, 4, 4, 4)
  config.layout.audio.shape = (128, 16)
  config.layout.audio.patch = (1,)
  config.layout.audio.segments = (32, 32, 32, 32)

  config.model.width = 384
  config.model.depth = 12
  config.model.num_heads = 6
  config.model.mlp_ratio = 4
  config.model.self_cond_rate = 0.0
  # Unrolled layers: on XLA:CPU the scanned stack's per-layer residual slicing costs 8-15% of a train
  # step (benchmarks/PERF_LOG.md, section 6); compile time grows ~20%. The paper config keeps the scan.
  config.model.scan_layers = False

  config.schedule.kind = "linear"
  config.schedule.num_steps = 1000

  config.train.num_steps = 10_000
  config.train.lr = 3e-4
  config.train.warmup_steps = 500
  config.train.weight_decay = 0.01
  config.train.ema_decay = 0.9999

  config.sample.steps = 50
  config.sample.batch_size = 8

  common.apply_variant(config, arg)
  return config

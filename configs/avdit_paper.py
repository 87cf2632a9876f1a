"""The paper's AVDiT (Kim et al., 2024): 24 layers, width 1024, 16 heads, on MAGVIT-v2 + SoundStream latents.

Video: 17 frames at 128x128 -> latent 5x16x16x8 (causal: frame 1 alone, then groups of 4).
Audio: 16 kHz SoundStream at 50 Hz before quantisation -> 106 frames x 1024 channels for 2.125 s.
N = 5 segments, one per video latent frame: audio frames [6, 25, 25, 25, 25].
Point `--config.data.dir` at a dataset prepared with `python -m monl.data.prepare`.
Variants: `configs/avdit_paper.py:strategy=pm` etc. (see common.STRATEGY_PRESETS).
"""
from configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  config.data.dir = "gs://YOUR_BUCKET/avdit_latents"  # prepared dataset (dataset.json + ArrayRecord)
  config.data.batch_size = 256
  config.data.num_threads = 16
  config.data.prefetch = 4

  config.layout.modalities = ("video", "audio")
  config.layout.video.shape = (5, 16, 16, 8)
  config.layout.video.patch = (1, 2, 2)
  config.layout.video.segments = (1, 1, 1, 1, 1)
  config.layout.audio.shape = (106, 1024)
  config.layout.audio.patch = (1,)
  config.layout.audio.segments = (6, 25, 25, 25, 25)

  config.model.width = 1024
  config.model.depth = 24
  config.model.num_heads = 16
  config.model.mlp_ratio = 4
  config.model.self_cond_rate = 0.9
  config.model.dtype = "bfloat16"
  config.model.remat_policy = "dots_no_batch"
  # The Pallas splash kernel when compiling for TPU (L = 426 tokens, padded to 512 inside the kernel
  # call), einsum attention elsewhere. See benchmarks/results/tpu_attention.md.
  config.model.attention = "auto"

  config.schedule.kind = "linear"
  config.schedule.num_steps = 1000

  config.train.num_steps = 400_000
  config.train.lr = 5e-4
  config.train.warmup_steps = 5000
  config.train.weight_decay = 0.01
  config.train.ema_decay = 0.9999
  config.train.log_every = 100
  config.ckpt.every = 2000
  config.ckpt.keep = 5

  # FSDP within groups of 16 chips (a v5e 4x4 block / one v5p-32), data-parallel across groups: params +
  # EMA + Adam (7.4 GB fp32) shrink 16x per chip and the all-gathers stay on short ICI paths. Pure
  # data parallel also fits on v5e (see README "Running on a pod"), but leaves 3/4 of HBM for activations
  # instead of 9/10. Needs a multiple of 16 devices.
  config.mesh.data = -1
  config.mesh.fsdp = 16
  config.mesh.rules = "fsdp"

  config.sample.steps = 250
  config.sample.batch_size = 16

  common.apply_variant(config, arg)
  return config

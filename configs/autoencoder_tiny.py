"""Tiny audio-video autoencoder: trains on 2 CPU cores in about 5 minutes on the built-in media data.

    python -m monl.main train_autoencoder --config configs/autoencoder_tiny.py --workdir runs/ae_tiny

Clips: 17 frames of 32x32 RGB at 25 fps (0.68 s) with a 16 kHz waveform (10,880 samples).
Latents: video [5, 4, 4, 8] (x8 in space, 1 + 4k -> 1 + k in time), audio [34, 16] (hop 320).
Measured (README, "From your own MP4 files"): 1,200 steps at ~4.3 steps/s; on the test split PSNR 23.5 dB,
SSIM 0.78, 14.4 dB on the moving pixels (a static per-pixel-median reference: 18.8 dB); 400 steps: 18.5 dB.
"""
from configs import autoencoder_common


def get_config(arg: str | None = None):
  del arg
  c = autoencoder_common.base_config()
  # x8 = a 2x2 space-to-depth then two stride-2 levels (both also halving time); no residual blocks
  # but the bottom level's: ~0.3 s per step at batch 8 on 2 cores (XLA:CPU convs are slow at 32x32)
  c.model.video.patch = 2
  c.model.video.channels = (16, 32, 64)
  c.model.video.num_res_blocks = 0
  c.model.video.latent_channels = 8
  c.model.audio.channels = (8, 16, 32, 64)
  c.model.audio.dilations = (1,)
  c.model.audio.latent_channels = 16
  c.data.batch_size = 8
  c.train.num_steps = 1200  # the video PSNR still rises ~2.5 dB per 400 steps here
  c.train.lr = 2e-3
  c.train.log_every = 100
  c.ckpt.every = 400
  c.eval.num = 64
  return c

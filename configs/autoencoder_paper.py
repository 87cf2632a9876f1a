"""Audio-video autoencoder sized for the paper's clips: 128x128 at 25 fps, 17 frames, 16 kHz audio.

Video latents [5, 16, 16, 8] (the shape of the paper's MAGVIT-v2 latents for 17 frames at 128x128:
spatial x8, 1 + 4k -> 1 + k), audio latents [34, 64] at 50 frames/s (SoundStream's hop 320; the
paper's 1024 SoundStream channels are far more than a continuous KL latent needs: our choice, 64).
Built and shape-checked in the tests (`jax.eval_shape`); it needs an accelerator to train.
"""
from configs import autoencoder_common


def get_config(arg: str | None = None):
  del arg
  c = autoencoder_common.base_config()
  c.media.size = 128
  c.model.video.channels = (128, 256, 256, 512)  # x8
  c.model.video.num_res_blocks = 2
  c.model.video.latent_channels = 8
  c.model.audio.channels = (32, 64, 128, 256)
  c.model.audio.latent_channels = 64
  c.data.dir = ""  # point at your media dataset (python -m monl.data.encode --raw)
  c.data.batch_size = 64
  c.train.num_steps = 200_000
  c.train.lr = 2e-4
  c.train.warmup_steps = 2000
  c.train.ema_decay = 0.999
  c.train.log_every = 100
  c.ckpt.every = 5000
  c.ckpt.keep = 3
  c.eval.num = 256
  c.eval.use_ema = True
  c.eval.i3d = True  # reconstruction FVD/KVD of the 256 test clips (an accelerator makes it cheap)
  return c

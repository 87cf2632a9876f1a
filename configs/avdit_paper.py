"""The paper's AVDiT (Kim et al., 2024): 24 layers, width 1024, 16 heads, on MAGVIT-v2 + SoundStream latents.

Video: 17 frames at 128x128 -> latent 5x16x16x8 (causal: frame 1 alone, then groups of 4).
Audio: 16 kHz SoundStream at 50 Hz before quantisation -> 106 frames x 1024 channels for 2.125 s.
N = 5 segments, one per video latent frame: audio frames [6, 25, 25, 25, 25].
Point `--config.data.dir` at a dataset prepared with `python -m monl.data.prepare`.
Variants: `configs/avdit_paper.py:strategy=pm` etc. (see common.STRATEGY_PRESETS).

Evaluation: MAGVIT-v2 / SoundStream latents have no decoder here, so on them `evaluate` computes only
the latent-space Fréchet proxy (no FVD/KVD, FAD, AV-align or ground-truth scores) and says so when it
runs. On a dataset written by `python -m monl.data.encode --encoder RUN` (monl's own autoencoder, e.g.
configs/autoencoder_paper.py; set `layout.audio` to its latents as README "At the paper's scale" shows),
`sample` and `evaluate` decode through that run: MP4 with sound, FVD/KVD, FAD and AV-align on the media.
Fields where the paper is silent carry a comment "not stated in the paper; our choice because ..."
(some restate the value of `configs/common.py`, so that the choice is visible here).
"""
from configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  config.data.dir = "gs://YOUR_BUCKET/avdit_latents"  # prepared dataset (dataset.json + ArrayRecord)
  config.data.batch_size = 256
  # Not stated in the paper; our choice: each batch is read by one thread, one request per record, so
  # min(num_threads, prefetch) batches are in flight; 16 hide an 80 ms bucket round trip (README, "On
  # gs://": benchmarks/data_throughput.py --gcs).
  config.data.num_threads = 16
  config.data.prefetch = 16

  config.layout.modalities = ("video", "audio")
  config.layout.video.shape = (5, 16, 16, 8)
  # not stated in the paper; our choice because 2x2 is DiT's finest patch on a latent grid (320 video
  # tokens) and a temporal patch of 1 keeps each latent frame (= one segment) its own token row
  config.layout.video.patch = (1, 2, 2)
  config.layout.video.segments = (1, 1, 1, 1, 1)
  config.layout.audio.shape = (106, 1024)
  # not stated in the paper; our choice because one token per 20 ms SoundStream frame keeps the audio's
  # time resolution, and a temporal patch of 2 would straddle the 25-frame segments (a LayoutError)
  config.layout.audio.patch = (1,)
  config.layout.audio.segments = (6, 25, 25, 25, 25)

  config.model.width = 1024
  config.model.depth = 24
  config.model.num_heads = 16
  # not stated in the paper; our choice because 4 is the ViT/DiT standard. With it the model has 460M
  # parameters vs the paper's ~420M (README "Training"); each unit of ratio is 50.4M.
  config.model.mlp_ratio = 4
  # adaLN parameterisation (no field; monl/models/avdit.py Block): not stated in the paper; our choice
  # because DiT's adaLN-Zero (a full-rank d -> 6d layer per block, zero-initialised) is the design the
  # paper builds on; it costs 151M of the 460M.

  # not stated in the paper (only "sinusoidal + MLP"); our choice because it is DiT's frequency size
  config.model.freq_embed_dim = 256
  # rate 0.9 is the paper's; the wiring is not stated in the paper; our choice because concatenating the
  # previous x0 estimate (stop-gradient) to the input is how W.A.L.T / Chen et al. (2022) do it
  config.model.self_cond_rate = 0.9
  # not stated in the paper; our choice because the TPU v5e MXU runs bfloat16 (parameters stay float32)
  config.model.dtype = "bfloat16"
  config.model.remat_policy = "dots_no_batch"
  # The Pallas splash kernel when compiling for TPU (L = 426 tokens, padded to 512 inside the kernel
  # call), einsum attention elsewhere. See benchmarks/results/tpu_attention.md.
  config.model.attention = "auto"

  config.schedule.kind = "linear"
  config.schedule.num_steps = 1000
  # linear schedule endpoints: not stated in the paper; our choice because 1e-4 -> 2e-2 over T = 1000 is
  # the DDPM (Ho et al. 2020) linear schedule that "linear, T = 1000" usually means
  config.schedule.beta_start = 1e-4
  config.schedule.beta_end = 2e-2

  config.train.num_steps = 400_000
  config.train.lr = 5e-4
  config.train.warmup_steps = 5000
  # cosine decay's end value: not stated in the paper; our choice because decaying to 0 is the standard
  # cosine schedule
  config.train.end_lr_fraction = 0.0
  # not stated in the paper (only "AdamW"); our choice because 0.01 is PyTorch's AdamW default (applied
  # here to every parameter, no mask)
  config.train.weight_decay = 0.01
  # not stated in the paper; our choice because (0.9, 0.999) are Adam's defaults, which DiT trains with
  config.train.b1 = 0.9
  config.train.b2 = 0.999
  # not stated in the paper; our choice because a global-norm clip of 1.0 is a cheap guard against loss
  # spikes in long bfloat16 runs
  config.train.grad_clip = 1.0
  # EMA decay: not stated in the paper (only "EMA"); our choice because 0.9999 is DiT's
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
  # DDIM eta: not stated in the paper; our choice because eta = 0 is deterministic DDIM (Song et al.)
  config.sample.eta = 0.0
  # guidance scale: not stated in the paper; our choice because 0 (plain conditional sampling) assumes
  # nothing; pass `--guidance` and report the scale with the numbers
  config.sample.guidance = 0.0
  config.sample.batch_size = 16

  common.apply_variant(config, arg)
  return config

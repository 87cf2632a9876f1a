"""Shared skeleton of the autoencoder configs (`train_autoencoder`): every field with its default.

`autoencoder_tiny.py` and `autoencoder_paper.py` start from `base_config()` and override what differs.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.kind = "autoencoder"  # tells the config apart from an AVDiT config (monl.main train_autoencoder)
  c.seed = 0  # root of the parameter init and per-step randomness (fold_in(key, step))

  # What a clip is. These are also the defaults of `python -m monl.data.encode` for this encoder.
  c.media = ml_collections.ConfigDict()
  c.media.fps = 25  # video frames per second
  c.media.frames = 17  # frames per clip: 1 + 4k (the causal rule); clip_seconds = frames / fps
  c.media.size = 32  # square frames, px (divisible by the spatial downsampling)
  c.media.sample_rate = 16000  # Hz, mono

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # a media dataset (monl format, video [T, H, W, 3] in [0, 1], audio [S, 1]); '' = built-in
  c.data.builtin_dir = "~/.cache/monl/media_v1"  # where the built-in media dataset is built on first use
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.batch_size = 8  # global batch
  c.data.shuffle_seed = 0
  c.data.num_threads = 2
  c.data.prefetch = 2
  c.data.worker_count = 0
  c.data.synthetic = ml_collections.ConfigDict()  # the built-in media dataset (monl.data.synthetic_media)
  c.data.synthetic.num_train = 512
  c.data.synthetic.num_test = 64
  c.data.synthetic.seed = 0
  c.data.synthetic.num_shards = 2

  c.model = ml_collections.ConfigDict()
  c.model.video = ml_collections.ConfigDict()
  c.model.video.patch = 1  # space-to-depth of the input first (spatial downsampling = patch * 2^levels)
  c.model.video.channels = (32, 64, 128, 128)  # per level; len - 1 stride-2 levels (4 entries, patch 1: x8)
  c.model.video.num_res_blocks = 1
  c.model.video.latent_channels = 8
  c.model.video.temporal_downsample = 4  # 1 + 4k frames -> 1 + k latent frames
  c.model.video.shortcuts = True  # parameter-free paths beside each resolution change (DC-AE); runs without the key: False
  c.model.video.logvar_offset = -6.0  # the posterior's std starts at 0.05; runs without the key: 0
  c.model.audio = ml_collections.ConfigDict()
  c.model.audio.channels = (16, 32, 64, 128)
  c.model.audio.strides = (2, 4, 5, 8)  # hop 320: 50 latent frames/s at 16 kHz
  c.model.audio.latent_channels = 16
  c.model.audio.dilations = (1, 3)

  c.loss = ml_collections.ConfigDict()
  c.loss.kl_weight = 1e-6  # small: a regulariser of the latent scale, not a rate constraint
  c.loss.motion_weight = 0.0  # > 0: pixels far from their temporal mean (what moves) weigh more
  c.loss.audio_weight = 1.0  # audio loss relative to the video loss
  c.loss.stft_weight = 1.0  # multi-resolution STFT term relative to the waveform L1
  c.loss.stft_resolutions = ((128, 32), (256, 64), (512, 128), (1024, 256))  # (n_fft, hop)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.lr = 1e-3
  c.train.warmup_steps = 50
  c.train.end_lr_fraction = 0.1
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.99
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.0  # 0 = no EMA (the EMA copy equals the parameters)
  c.train.log_every = 50

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 500
  c.ckpt.keep = 2
  c.ckpt.async_save = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.sequence = 1
  c.mesh.rules = "dp"  # the autoencoders' parameters are replicated under every rule set
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1

  c.eval = ml_collections.ConfigDict()
  c.eval.num = 64  # held-out clips scored at the end of training (RUN/eval.json)
  c.eval.batch_size = 8
  c.eval.use_ema = False
  # reconstruction FVD/KVD (I3D K400 logits of real vs reconstructed test clips, >= 9 frames): ~1.5 s
  # per clip on a CPU, twice per clip, so off here; on in configs/autoencoder_paper.py
  c.eval.i3d = False
  c.eval.i3d_batch_size = 8
  c.eval.i3d_resize = "tf1_bilinear"  # as monl.eval.evaluate's config.eval.i3d_resize
  return c

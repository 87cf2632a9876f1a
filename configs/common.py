"""Shared config skeleton: every field of every group, with its default and one line on what it does.

Config files (`default.py`, `avdit_paper.py`, ...) start from `base_config()` and override what differs.
Variants after the colon (`configs/default.py:strategy=pm,clean_prob=0.1`) go through `apply_variant`.
"""
import ml_collections
from ml_collections import config_dict

# Mixture-of-noise-levels presets: weights over (vanilla, per_modality, per_segment, per_cell).
# `per_cell` is the paper's "per time-segment and modality" strategy.
STRATEGY_PRESETS = {
    "monl": (1.0, 1.0, 1.0, 1.0),
    "vanilla": (1.0, 0.0, 0.0, 0.0),
    "pm": (0.0, 1.0, 0.0, 0.0),
    "pt": (0.0, 0.0, 1.0, 0.0),
    "ptm": (0.0, 0.0, 0.0, 1.0),
    "pt_pm_ptm": (0.0, 1.0, 1.0, 1.0),
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # root of every random stream (params, noise, data order)

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # dataset directory, local or gs://; '' = built-in synthetic dataset
  c.data.builtin = "bouncing_ball"  # which built-in dataset data.dir='' means: bouncing_ball | symbols
  c.data.builtin_dir = "~/.cache/monl/synthetic_v1"  # where the built-in dataset is built on first use
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.batch_size = 16  # global batch, split over processes
  c.data.shuffle_seed = 0
  c.data.num_threads = 2  # Grain read threads per process
  c.data.prefetch = 2  # Grain prefetch buffer (batches)
  c.data.worker_count = 0  # Grain worker processes (0 = in-process; faster on small hosts)
  c.data.synthetic = ml_collections.ConfigDict()  # size and seed of whichever built-in dataset
  c.data.synthetic.num_train = 2048
  c.data.synthetic.num_test = 256
  c.data.synthetic.seed = 0
  c.data.synthetic.num_shards = 4

  # Latent layout. What the data fixes (modality names and order, per-example shapes with the time axis
  # first, segment lengths) is taken from the dataset's dataset.json when left unset (None / ()); a
  # value set here must agree with the data. The patch per non-channel axis is the model's choice:
  # unset, the default rule of monl.data.infer_layout (the finest patch with at most `tokens_per_cell`
  # tokens in every (modality, segment) cell). `python -m monl.main data` prints the result.
  c.layout = ml_collections.ConfigDict()
  c.layout.modalities = ()  # () = the dataset's
  c.layout.tokens_per_cell = 4  # bound of the default patch rule
  for name in ("video", "audio"):  # the usual names, so that flags can set them; other names work too
    c.layout[name] = ml_collections.ConfigDict()
    c.layout[name].shape = config_dict.placeholder(tuple)  # [T, ..., C]
    c.layout[name].patch = config_dict.placeholder(tuple)  # one size per non-channel axis, 0 = whole axis
    c.layout[name].segments = config_dict.placeholder(tuple)  # frames per segment, summing to T

  c.model = ml_collections.ConfigDict()
  c.model.width = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.mlp_ratio = 4
  c.model.self_cond_rate = 0.0  # probability of a self-conditioning pass in training (paper: 0.9)
  c.model.dtype = "float32"  # compute dtype
  c.model.param_dtype = "float32"
  c.model.remat_policy = "none"  # none | full | dots | dots_no_batch
  c.model.scan_layers = True
  # xla (einsum, heads-major; layers.cpu_attention on CPU) | dot_product (jax.nn.dot_product_attention)
  # | splash (Pallas TPU kernel) | cpu_kernel (fused C++ kernel for XLA:CPU, built on first use with the
  # host's g++) | auto (splash when compiling for TPU, cpu_kernel on CPU where it builds, else xla)
  c.model.attention = "auto"
  c.model.freq_embed_dim = 256  # sinusoidal timestep features before the MLP
  c.model.aligned_time = False  # one temporal position code shared by all modalities (segment units)
  c.model.time_bias = False  # learned per-head attention bias by relative time, within / across modalities
  c.model.time_bias_prior = 0.0  # initial cross-modal bias at offset 0 (Gaussian in offset); 0 = zeros
  c.model.prediction = "eps"  # network output: eps (the paper) | v | x0 (see monl.schedule.PREDICTIONS)
  c.model.x0_loss_cap = 5.0  # x0 prediction: per-cell loss weight min(1 + SNR, cap)
  # linear | mlp: a two-layer head for modalities whose token is larger than the width (avdit.HEADS)
  c.model.head = "linear"
  c.model.head_hidden = 0  # mlp head's hidden width (0 = the token size)
  # x0 prediction: sigma_data of the skip c_skip z_t + c_out F (0 = plain x0). With a linear head and
  # tokens larger than the width, sampling draws the part the head cannot reach as N(0, sigma_data^2)
  # noise (docs/diagnosis.md); the mlp head is the fix.
  c.model.x0_skip = 0.0

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "linear"  # linear | cosine
  c.schedule.num_steps = 1000  # T
  c.schedule.beta_start = 1e-4  # linear schedule endpoints
  c.schedule.beta_end = 2e-2

  c.mixture = ml_collections.ConfigDict()
  c.mixture.weights = STRATEGY_PRESETS["monl"]  # (vanilla, per_modality, per_segment, per_cell)
  c.mixture.clean_prob = 0.0  # probability that a cell is drawn clean (t = 0); excluded from the loss
  # Task-specific baseline: '' = off; else a task name or mask (monl.sample.tasks.task_mask, with
  # k = sample.continue_segments) whose given cells train at t = 0 and the rest at one shared level.
  c.mixture.condition_mask = ""

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.lr = 1e-3
  c.train.warmup_steps = 100
  c.train.end_lr_fraction = 0.0  # cosine decays to lr * this
  c.train.weight_decay = 0.0
  c.train.b1 = 0.9
  c.train.b2 = 0.999
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.9999
  c.train.log_every = 50
  c.train.num_level_buckets = 4  # metrics per noise-level bucket
  c.train.record_batches = False  # debug: append each step's source ids to WORKDIR/batches.p<process>.jsonl

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 500
  c.ckpt.keep = 3
  c.ckpt.async_save = True
  c.ckpt.preemption_check_every = 10  # multi-process: steps between agreeing on a SIGTERM stop (one allgather)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = fill with the remaining devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.sequence = 1
  c.mesh.rules = "dp"  # dp | fsdp | fsdp_tp
  c.mesh.dcn_data = 1  # slices (multi-slice over DCN) the data axis spans; the sizes above are per slice
  c.mesh.dcn_fsdp = 1  # slices the fsdp axis spans
  c.mesh.max_replicated_fraction = 0.05  # fsdp/fsdp_tp: max fraction of parameter bytes left replicated

  # Multi-host: jax.distributed.initialize only when configured here or by MONL_* environment variables.
  c.dist = ml_collections.ConfigDict()
  c.dist.coordinator = ""  # host:port of process 0's coordinator ('' = single process, or env/auto)
  c.dist.num_processes = 0  # number of processes (0 = from MONL_NUM_PROCESSES)
  c.dist.process_id = -1  # this process's index (-1 = from MONL_PROCESS_ID)
  c.dist.bind_address = ""  # address the coordinator listens on ('' = all interfaces; tests: 127.0.0.1:PORT)
  c.dist.timeout_s = 300  # give up if the processes have not all connected by then
  c.dist.auto = False  # TPU pods / SLURM: let JAX detect the cluster (no-argument initialize)

  c.sample = ml_collections.ConfigDict()
  c.sample.sampler = "ddim"  # ddim | ddpm
  # ddim: the one-step update of `sampler`; dpmpp_2m | dpmpp_3m: DPM-Solver++ multistep ODE solver
  # (deterministic: needs sampler=ddim, eta=0; ~25 steps instead of 250)
  c.sample.solver = "ddim"
  # how the steps' levels are spread over 1..T: uniform (the paper's DDIM respacing) | logsnr | karras
  # (denser at low noise, see monl.sample.sampler.spaced_levels) | auto (uniform for ddim, logsnr for the
  # multistep solvers, which need logsnr levels to match 250 DDIM steps in 25)
  c.sample.spacing = "auto"
  c.sample.steps = 50
  c.sample.eta = 0.0  # DDIM eta
  c.sample.guidance = 0.0  # s in (1 + s) eps_cond - s eps_uncond
  c.sample.mode = "monl"  # monl | replacement
  c.sample.batch_size = 16
  c.sample.use_ema = True
  c.sample.continue_segments = 2  # k for the `continue` task

  c.eval = ml_collections.ConfigDict()
  c.eval.num = 256
  c.eval.tasks = "all"
  c.eval.i3d = True  # FVD/KVD with I3D on RGB video with >= 9 generated frames
  c.eval.i3d_max_clips = 32  # I3D on at most this many clips per task (CPU: ~1.5 s per clip)
  c.eval.i3d_resize = "tf1_bilinear"  # tf1_bilinear (google-research FVD) | half_pixel_bilinear
  c.eval.i3d_batch_size = 8
  c.eval.video_scale = 255.0  # raw video * this -> [0, 255] for I3D (built-in video is in [0, 1])
  c.eval.cache_dir = "~/.cache/monl/eval_stats"  # cached real-data feature statistics (.npz)
  c.eval.kvd_subsets = 100
  c.eval.pooling = "mean_std"  # latent FD pooling: mean_std | flatten
  c.eval.previews = 2  # GIF/WAV previews per task
  # FAD: a local VGGish .npz (layout monl.eval.plugins.VGGISH_NPZ_KEYS); '' = FAD off (weights are not
  # downloadable offline). Needs a dataset with an audio decoder (the built-in ones).
  c.eval.vggish_weights = ""
  return c


def apply_variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies `key=value[,key=value]` variants: `strategy=<preset>`, `clean_prob=<float>`."""
  if not arg:
    return config
  for item in arg.split(","):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config variant {item!r}: expected key=value (e.g. strategy=pm)")
    if key == "strategy":
      if value not in STRATEGY_PRESETS:
        raise ValueError(f"config variant strategy={value!r}: known presets are {sorted(STRATEGY_PRESETS)}")
      config.mixture.weights = STRATEGY_PRESETS[value]
    elif key == "clean_prob":
      config.mixture.clean_prob = float(value)
    else:
      raise ValueError(f"config variant {key!r}: known keys are strategy, clean_prob")
  return config

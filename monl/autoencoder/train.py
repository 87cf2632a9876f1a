"""`train_autoencoder`: trains the audio-video autoencoder on a media dataset, then scores it on the test split.

    python -m monl.main train_autoencoder --config configs/autoencoder_tiny.py --workdir RUN

The conventions of `monl.train.loop`, with its pieces: the mesh and rule set from `config.mesh`
(`monl.parallel`), abstract-first init (`jax.eval_shape` -> logical shardings -> `jit(init,
out_shardings=...)`), the train step jitted with explicit in/out shardings, the batch sharded over the
mesh's batch axes and the state donated; per-step randomness `fold_in(key, step)` (the posterior
samples), the Grain iterator saved with the state by `monl.train.checkpoint.Checkpointer` (Orbax,
async, keep-last-N, checksums), so a resumed run is bit-identical to an uninterrupted one (tested);
`monl.train.logger.Logger` for steps/s, ETA and TensorBoard scalars (RUN/tb); a non-finite loss or
gradient skips the update and stops the run naming the step.

The data is a media dataset in the monl format with raw values (read with `normalize=False`): `video`
[T, H, W, 3] in [0, 1] and `audio` [S, 1] in [-1, 1]; by default the built-in one
(`monl.data.synthetic_media`, built on first use under `config.data.builtin_dir`).

At the end (and whenever the run is already complete), `evaluate` reconstructs the first
`config.eval.num` clips of `config.data.eval_split` through the posterior means and writes RUN/eval.json:
per-frame PSNR and SSIM of the video, PSNR over the moving pixels next to a static reference,
log-spectral distance and SNR of the audio (`monl.autoencoder.metrics`), mean and standard error over
clips; with `config.eval.i3d` (clips of >= 9 frames), reconstruction FVD and KVD: I3D K400 logits of the
real clips against those of their reconstructions (`monl.eval.i3d`); and RUN/reconstructions.png (real
above reconstructed, `SHEET_CLIPS` clips, every frame).

RUN/config.json holds the config: `monl.autoencoder.load` (and `monl.data.encode --encoder RUN`)
rebuild the model from it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from monl import allocator
from monl.autoencoder import losses as losses_lib
from monl.autoencoder import metrics as metrics_lib
from monl.autoencoder import model as model_lib
from monl.autoencoder import preview
from monl.data import format as data_format
from monl.data import pipeline
from monl.parallel import mesh as mesh_lib
from monl.parallel import rules as rules_lib
from monl.parallel import sharding
from monl.train import checkpoint as ckpt_lib
from monl.train import config_history
from monl.train import logger as logger_lib
from monl.train import step as step_lib

RUN_CONFIG = "config.json"
EVAL_FILE = "eval.json"
SHEET_FILE = "reconstructions.png"
SHEET_CLIPS = 8


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm became NaN or Inf."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
  kl_weight: float
  audio_weight: float
  stft_weight: float
  stft_resolutions: tuple[tuple[int, int], ...]
  motion_weight: float = 0.0

  @classmethod
  def from_config(cls, loss_cfg) -> "LossConfig":
    return cls(kl_weight=float(loss_cfg.kl_weight), audio_weight=float(loss_cfg.audio_weight),
               stft_weight=float(loss_cfg.stft_weight),
               stft_resolutions=tuple((int(n), int(h)) for n, h in loss_cfg.stft_resolutions),
               motion_weight=float(loss_cfg.get("motion_weight", 0.0)))


def clip_samples(config) -> int:
  """Audio samples per clip: frames / fps * sample_rate (a whole number)."""
  s = config.media.frames / config.media.fps * config.media.sample_rate
  if abs(s - round(s)) > 1e-6:
    raise ValueError(f"config.media: {config.media.frames} frames at {config.media.fps} fps are "
                     f"{s:g} samples at {config.media.sample_rate} Hz, not a whole number")
  return int(round(s))


def build_model(config) -> model_lib.AVAutoencoder:
  return model_lib.AVAutoencoder(model_lib.AutoencoderConfig.from_config(config.model))


def resolve_data_dir(config) -> str:
  """`config.data.dir`, or the built-in media dataset (built on first use)."""
  if config.data.dir:
    return str(config.data.dir)
  from monl.data import synthetic_media
  syn = config.data.synthetic
  if config.media.fps != synthetic_media.FPS or config.media.frames != synthetic_media.FRAMES or \
      config.media.sample_rate != synthetic_media.SAMPLE_RATE:
    raise ValueError(f"config.media {dict(config.media)}: the built-in media data is {synthetic_media.FRAMES} "
                     f"frames at {synthetic_media.FPS} fps, {synthetic_media.SAMPLE_RATE} Hz; set config.data.dir")
  return str(synthetic_media.ensure_builtin_dataset(
      config.data.builtin_dir, num_train=syn.num_train, num_test=syn.num_test, seed=syn.seed,
      num_shards=syn.num_shards, size=config.media.size))


def check_data(config, data_dir: str) -> data_format.DatasetSpec:
  """The dataset's spec; DatasetError unless it holds video [frames, size, size, 3] and audio [S, 1]."""
  spec = data_format.load_spec(data_dir)
  want = {"video": (config.media.frames, config.media.size, config.media.size, 3), "audio": (clip_samples(config), 1)}
  for name, shape in want.items():
    got = tuple(spec.modality(name).shape)
    if got != shape:
      raise data_format.DatasetError(f"{data_dir}: modality {name!r} has shape {list(got)}, config.media "
                                     f"needs {list(shape)} (frames, size, sample_rate)")
  return spec


# ----------------------------------------------------------------------------------------------------
# the step


def loss_and_metrics(params, model: model_lib.AVAutoencoder, loss_cfg: LossConfig, batch, key):
  """batch {'video': [B, T, H, W, 3], 'audio': [B, S, 1]} -> (loss, metrics)."""
  video, audio = batch["video"], batch["audio"][..., 0]
  rec, post = model.apply(params, video, audio, key)
  v = losses_lib.video_loss(rec["video"], video, loss_cfg.motion_weight)
  a_l1, a_stft = losses_lib.audio_loss(rec["audio"], audio, loss_cfg.stft_resolutions, loss_cfg.stft_weight)
  kl = {m: losses_lib.kl_divergence(*post[m]) for m in post}
  loss = v + loss_cfg.audio_weight * (a_l1 + a_stft) + loss_cfg.kl_weight * (kl["video"] + kl["audio"])
  mse = jnp.mean(jnp.square(jnp.clip(rec["video"], 0.0, 1.0) - video))
  return loss, {"loss": loss, "loss_video": v, "loss_audio_l1": a_l1, "loss_audio_stft": a_stft,
                "kl_video": kl["video"], "kl_audio": kl["audio"], "video_mse": mse}


def train_step(state: step_lib.TrainState, batch, base_key, *, model, loss_cfg: LossConfig,
               tx: optax.GradientTransformation, ema: float):
  """One step; randomness fold_in(base_key, step); a non-finite loss/gradient leaves the state as it was."""
  key = jax.random.fold_in(base_key, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(
      state.params, model, loss_cfg, batch, key)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  d = step_lib.ema_decay(state.step, ema)
  ema_params = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = step_lib.TrainState(step=state.step + 1, params=keep(params, state.params),
                                  ema_params=keep(ema_params, state.ema_params),
                                  opt_state=keep(opt_state, state.opt_state))
  return new_state, dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))


class StateFactory:
  """Abstract-first sharded state of the autoencoder: shapes and shardings without allocation."""

  def __init__(self, config, model, tx, mesh, rules):
    self.mesh, self.rules = mesh, rules
    # rbg, not threefry: XLA:CPU compiles ~100 threefry-driven initialisers in ~30 s, rbg in ~4 s. The
    # values are the same on every run of a backend; the parameters are replicated, so no sharding
    # changes them. (Per-step keys stay threefry: base_key.)
    self.key = jax.random.key(config.seed, impl="rbg")
    clip_samples(config)  # checks the clip length
    # Parameter shapes do not depend on the clip size (all convs): init on the smallest clip, one frame
    # of one latent pixel (a full-size init takes XLA:CPU ~30 s to compile for the tiny model)
    frames, size, samples = 1, model.cfg.video.spatial_downsample, model.cfg.audio.hop

    def init(key):
      params = model_lib.init_params(model, key, frames, size, samples)
      return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                                 opt_state=tx.init(params))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      boxed = jax.eval_shape(init, self.key)
    self.shardings = sharding.logical_shardings(boxed, mesh, rules)
    self.abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                 nn.meta.unbox(boxed), self.shardings)
    self.num_params = model_lib.count_params(boxed.params)
    self._init = jax.jit(lambda k: nn.meta.unbox(init(k)), out_shardings=self.shardings)

  def init(self) -> step_lib.TrainState:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._init(self.key)


def modality_of(params):
  """The same tree with 'video' or 'audio' at every leaf: which autoencoder a parameter belongs to."""
  def label(path, _):
    keys = [str(getattr(k, "key", k)) for k in path]
    owner = next((k for k in keys if k.endswith(("_encoder", "_decoder"))), None)
    if owner is None:
      raise ValueError(f"parameter {'/'.join(keys)}: not under a *_encoder or *_decoder module")
    return owner.split("_")[0]
  return jax.tree_util.tree_map_with_path(label, params)


def clip_by_modality_norm(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping of the video and the audio autoencoder's gradients, each by its own norm."""
  def update(updates, state, params=None):
    del params
    labels = modality_of(updates)
    leaves, tree = jax.tree.flatten(updates)
    names = jax.tree.leaves(labels)
    norms = {m: jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x, n in zip(leaves, names) if n == m)) for m in set(names)}
    scale = {m: jnp.minimum(1.0, max_norm / jnp.maximum(v, 1e-12)) for m, v in norms.items()}
    return jax.tree.unflatten(tree, [x * scale[n].astype(x.dtype) for x, n in zip(leaves, names)]), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  """`train`'s AdamW (warm-up + cosine) after clipping the video and the audio autoencoder's gradients
  separately (`clip_by_modality_norm`). Why: a joint norm is the audio's (its multi-resolution STFT loss
  has gradient norms of 50-90 against the video's ~1), which scaled the video's steps by a factor
  that changed from step to step."""
  return step_lib.make_optimizer(train_cfg, clip=clip_by_modality_norm(float(train_cfg.grad_clip)))


def base_key(config) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), 1)


def _summarize(window: list[dict]) -> dict[str, float]:
  return {k: float(np.mean([np.asarray(w[k]) for w in window])) for k in window[0] if k != "finite"}


def train(config, workdir: str, stop_at: int | None = None) -> step_lib.TrainState:
  """Trains (or resumes) the autoencoder of `config` in `workdir`; then `evaluate` -> RUN/eval.json.

  `stop_at` ends this call early (with a checkpoint) at that step; the schedule still runs to
  `config.train.num_steps`, so a later call continues exactly where this one stopped (and evaluates
  only when the run is complete)."""
  workdir = epath.Path(workdir)
  chief = jax.process_index() == 0
  if chief:
    workdir.mkdir(parents=True, exist_ok=True)
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
  model = build_model(config)
  data_dir = resolve_data_dir(config)
  check_data(config, data_dir)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.get_rules(config.mesh.rules)
  tx = make_optimizer(config.train)
  factory = StateFactory(config, model, tx, mesh, rules)
  if config.data.batch_size % jax.process_count():
    raise ValueError(f"config.data.batch_size={config.data.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  dataset = pipeline.make_dataset(
      data_dir, config.data.train_split, batch_size=config.data.batch_size // jax.process_count(),
      seed=config.data.shuffle_seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch=config.data.prefetch,
      worker_count=config.data.worker_count, normalize=False)
  data_iter = iter(dataset)
  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.ckpt.keep,
                               async_save=config.ckpt.async_save, config=config)
  resume = ckpt.latest_step()
  if resume is None:
    state = factory.init()
    print(f"initialised the autoencoder: {factory.num_params:,} parameters; mesh {dict(mesh.shape)}", flush=True)
  else:
    state = ckpt.restore(resume, factory.abstract, data_iter)
    print(f"resumed from step {resume} ({workdir / 'checkpoints'})", flush=True)
  if chief:
    (workdir / RUN_CONFIG).write_text(json.dumps(config_history.to_plain(config), indent=2))

  batch_shardings = {"video": sharding.batch_sharding(mesh, rules, 5), "audio": sharding.batch_sharding(mesh, rules, 3)}
  step_fn = jax.jit(
      functools.partial(train_step, model=model, loss_cfg=LossConfig.from_config(config.loss), tx=tx,
                        ema=float(config.train.ema_decay)),
      in_shardings=(factory.shardings, batch_shardings, sharding.replicated(mesh)),
      out_shardings=(factory.shardings, sharding.replicated(mesh)), donate_argnums=0)
  key = base_key(config)
  start, total = int(state.step), config.train.num_steps
  end = total if stop_at is None else min(stop_at, total)
  if start < end:
    logger = logger_lib.Logger(workdir if chief else None, total_steps=total, start_step=start)
    window, last, step = [], {}, start
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      while step < end:
        batch = sharding.global_batch(next(data_iter), mesh, rules)
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch, key)
        step += 1
        window.append(metrics)
        if step == start + 1:
          jax.block_until_ready(metrics)
          print(f"compiled and ran the first step in {time.perf_counter() - t0:.1f}s", flush=True)
          logger.reset_clock(step)
        at_ckpt = step % config.ckpt.every == 0 or step == end
        if step % config.train.log_every == 0 or at_ckpt:
          host = jax.device_get(window)
          for i, m in enumerate(host):
            if not np.asarray(m["finite"]) > 0:
              raise NonFiniteError(f"step {step - len(host) + 1 + i}: non-finite loss ({float(m['loss'])}) or "
                                   f"gradient norm ({float(m['grad_norm'])}); the update was skipped and "
                                   "training stopped. The last checkpoint is intact; lower config.train.lr.")
          last = _summarize(host)
          last["video_psnr"] = float(-10.0 * math.log10(max(last.pop("video_mse"), 1e-12)))
          logger.log(step, last)
          window = []
        if at_ckpt:
          ckpt.save(step, state, data_iter, force=step == end)
    logger.close()
    if chief and last:
      (workdir / "train_metrics.json").write_text(json.dumps(dict(last, step=step), indent=2))
  ckpt.close()
  if int(state.step) >= total:
    params = state.ema_params if config.eval.use_ema else state.params
    allocator.release_free_memory()  # the train step's cached arena: the evaluation's comes on top
    results = evaluate(config, model, params, data_dir, mesh, rules, step=int(state.step),
                       sheet_path=workdir / SHEET_FILE)
    if chief:
      (workdir / EVAL_FILE).write_text(json.dumps(results, indent=2))
      print(format_results(results), flush=True)
  return state


# ----------------------------------------------------------------------------------------------------
# evaluation


def _finite(values: np.ndarray) -> np.ndarray:
  v = np.asarray(values, np.float64)
  return v[np.isfinite(v)]


def _mean_se(values: np.ndarray) -> dict[str, float]:
  v = np.asarray(values, np.float64)
  if not len(v):
    return {"mean": float("nan"), "stderr": float("nan")}
  se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
  return {"mean": float(v.mean()), "stderr": se}


def reconstruct_fn(model, mesh, rules, batch_size: int):
  """jit((params, video [B, T, H, W, 3], audio [B, S]) -> decoded {'video', 'audio'}) over the mesh."""
  def run(params, video, audio):
    z = model.apply(params, video, audio, method=model.encode)
    return model.apply(params, z, method=model.decode)
  return jax.jit(run, in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh, rules, 5),
                                    sharding.batch_sharding(mesh, rules, 2)))


def evaluate(config, model, params, data_dir: str, mesh, rules, step: int, sheet_path=None) -> dict:
  """Reconstruction scores of the first `config.eval.num` clips of `config.data.eval_split`; with
  `sheet_path`, a PNG of the first `SHEET_CLIPS` of them, real above reconstructed."""
  split = config.data.eval_split
  ids, clips = pipeline.read_clips(data_dir, split, config.eval.num, ("video", "audio"))
  n, bs = len(ids), int(config.eval.batch_size)
  bs = -(-bs // jax.device_count()) * jax.device_count()
  fn = reconstruct_fn(model, mesh, rules, bs)
  i3d = reconstruction_i3d(config, clips["video"].shape[1])
  feats = {"real": [], "reconstructed": []}
  psnr, ssim, moving, static, lsd, snr = [], [], [], [], [], []
  t0 = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for lo in range(0, n, bs):
      idx = np.minimum(np.arange(lo, lo + bs), n - 1)  # the last batch padded with its last clip
      video, audio = clips["video"][idx].astype(np.float32), clips["audio"][idx, :, 0].astype(np.float32)
      out = jax.device_get(fn(params, video, audio))
      k = min(bs, n - lo)
      v, rv = video[:k], np.asarray(out["video"])[:k]
      a, ra = audio[:k], np.asarray(out["audio"])[:k]
      if lo == 0:
        shown = (v[:SHEET_CLIPS], rv[:SHEET_CLIPS])
      psnr.append(metrics_lib.psnr(rv, v).mean(axis=1))  # per clip: mean over frames
      ssim.append(metrics_lib.ssim(rv, v).mean(axis=1))
      moving.append(metrics_lib.moving_psnr(rv, v))
      static.append(metrics_lib.static_baseline_psnr(v))
      lsd.append(metrics_lib.log_spectral_distance(ra, a))
      noise = np.sum(np.square(ra - a), axis=-1)
      snr.append(10 * np.log10(np.sum(np.square(a), axis=-1) / np.maximum(noise, 1e-12)))
      if isinstance(i3d, tuple):
        for name, x in (("real", v), ("reconstructed", rv)):
          feats[name].append(i3d[0].features(_i3d_chunks(x, i3d[0].batch_size), total=k))
  cat = np.concatenate
  if jax.process_index() == 0 and sheet_path is not None:
    preview.reconstruction_sheet(sheet_path, *shown)
  results = {
      "step": step, "split": split, "num_clips": n, "data_dir": data_dir, "seconds": round(time.perf_counter() - t0, 2),
      "params": "ema" if config.eval.use_ema else "params",
      "video_psnr_db": dict(_mean_se(cat(psnr)), label="per-frame PSNR (dB), higher is better; mean over frames, then clips"),
      "video_ssim": dict(_mean_se(cat(ssim)), label="per-frame SSIM (11x11 Gaussian window, sigma 1.5), higher is better"),
      "video_moving_psnr_db": dict(_mean_se(_finite(cat(moving))), label=(
          f"PSNR (dB) over the moving pixels (> {metrics_lib.MOVING_THRESHOLD} from the clip's temporal median), "
          "clips with any")),
      "video_static_baseline_psnr_db": dict(_mean_se(cat(static)), label=(
          "per-frame PSNR (dB) of the clip's per-pixel temporal median: a reference that shows no motion")),
      "audio_lsd_db": dict(_mean_se(cat(lsd)), label="log-spectral distance (dB; n_fft 512, hop 128), lower is better"),
      "audio_snr_db": dict(_mean_se(cat(snr)), label="waveform SNR (dB), higher is better (phase-sensitive)"),
  }
  if isinstance(i3d, str):
    results["video_fvd_i3d"] = results["video_kvd_i3d"] = {"skipped": i3d}
  else:
    results.update(i3d_scores(cat(feats["real"]), cat(feats["reconstructed"]), i3d[1]))
  return results


def reconstruction_i3d(config, frames: int):
  """(I3D extractor, its provenance) for reconstruction FVD, or why there is none (a str)."""
  if not config.eval.get("i3d", False):  # runs written before the option have none: off
    return "disabled (config.eval.i3d=False)"
  from monl.eval import evaluate as eval_lib
  from monl.eval import i3d as i3d_lib
  if frames < i3d_lib.MIN_FRAMES:
    return f"clips of {frames} frames; I3D needs >= {i3d_lib.MIN_FRAMES}"
  extractor = eval_lib.make_i3d({"i3d_batch_size": config.eval.get("i3d_batch_size", 8),
                                 "i3d_resize": config.eval.get("i3d_resize", "tf1_bilinear")})
  return extractor, dict(getattr(extractor, "provenance", {}))


def _i3d_chunks(video: np.ndarray, batch_size: int):
  """Video [B, T, H, W, 3] in [0, 1] -> the extractor's input, [<= batch_size, T, H, W, 3] in [0, 255]."""
  x = np.clip(video * 255.0, 0.0, 255.0)
  return (x[i:i + batch_size] for i in range(0, len(x), batch_size))


def i3d_scores(real: np.ndarray, reconstructed: np.ndarray, provenance: dict) -> dict:
  """eval.json's FVD / KVD entries from I3D features of the real clips [N, D] and their reconstructions
  [N, D]. With N in the tens, FVD has a large positive small-sample bias: compare runs at the same N."""
  from monl.eval import evaluate as eval_lib
  from monl.eval import metrics as eval_metrics
  n = len(real)
  kvd, kvd_std = eval_metrics.kernel_distance(real, reconstructed, subset_size=n, num_subsets=100, seed=0)
  prov = dict(provenance, num_clips=n)
  h = n // 2
  halves = ({"value": eval_lib.frechet_distance_features(real[:h], real[h:2 * h]), "label": (
      f"FVD between the first and second {h} real clips: the floor that sampling alone gives at this size "
      "(at half the clips, so somewhat above the floor at all of them)")} if h >= 2
            else {"skipped": f"{n} clips: too few to split into two sets of >= 2"})
  return {
      "video_fvd_i3d_real_halves": halves,
      "video_fvd_i3d": {"value": eval_lib.frechet_distance_features(real, reconstructed), "provenance": prov,
                        "label": f"reconstruction FVD (I3D K400 logits, {n} real vs reconstructed clips), lower is better"},
      "video_kvd_i3d": {"value": kvd, "std": kvd_std, "provenance": prov,
                        "label": f"reconstruction KVD (poly-kernel MMD², {n} clips), lower is better"},
  }


def format_results(results: dict) -> str:
  r = results
  return (f"eval ({r['num_clips']} {r['split']} clips, step {r['step']}): video PSNR {r['video_psnr_db']['mean']:.2f} dB, "
          f"SSIM {r['video_ssim']['mean']:.4f}, moving pixels {r['video_moving_psnr_db']['mean']:.2f} dB "
          f"(static reference {r['video_static_baseline_psnr_db']['mean']:.2f} dB); audio LSD {r['audio_lsd_db']['mean']:.2f} dB, "
          f"SNR {r['audio_snr_db']['mean']:.2f} dB"
          + (f"; FVD {r['video_fvd_i3d']['value']:.1f}, KVD {r['video_kvd_i3d']['value']:.4f}"
             + (f" (real vs real halves: FVD {r['video_fvd_i3d_real_halves']['value']:.1f})"
                if "value" in r["video_fvd_i3d_real_halves"] else "")
             if "value" in r.get("video_fvd_i3d", {}) else ""))

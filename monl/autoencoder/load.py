"""A trained autoencoder run, restored for use: `load(RUN)` -> `Codec` with jitted `encode` / `decode`.

RUN is a `train_autoencoder` workdir: RUN/config.json (the config, over
`configs.autoencoder_common.base_config()`) and RUN/checkpoints (Orbax; the latest complete one is
restored, verified by its checksums). Encoding and decoding run on the config's mesh with the batch
sharded over its batch axes; batches are padded to a multiple of the device count and to
`batch_size`, except that fewer clips than `batch_size` form one smaller batch (one more compiled
program per such size).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import flax.linen as nn
import jax
import numpy as np
from etils import epath

from monl.parallel import mesh as mesh_lib
from monl.parallel import rules as rules_lib
from monl.parallel import sharding

# `encode`'s automatic batch size plans for at most this fraction of the free memory: the estimate leaves
# out the file being read, the records being written and XLA's own allocator slack
FIT_FRACTION = 0.5


@dataclasses.dataclass
class Codec:
  """Encoder + decoder of one run. `encode(video [B, T, H, W, 3] in [0, 1], audio [B, S])` ->
  {'video': [B, 1 + (T-1)/4, H/8, W/8, C], 'audio': [B, S/hop, C_a]} posterior means (numpy float32);
  `decode(latents)` -> {'video': [B, T, H, W, 3] in [0, 1], 'audio': [B, S] in (-1, 1)}."""
  run_dir: str
  step: int
  config: object
  model: object
  params: object
  mesh: object
  rules: object
  batch_size: int

  @property
  def hop(self) -> int:
    return self.model.cfg.audio.hop

  @property
  def temporal_downsample(self) -> int:
    return self.model.cfg.video.temporal_downsample

  @property
  def spatial_downsample(self) -> int:
    return self.model.cfg.video.spatial_downsample

  @functools.cached_property
  def _encode(self):
    m = self.model
    return jax.jit(lambda p, v, a: m.apply(p, v, a, method=m.encode),
                   in_shardings=(sharding.replicated(self.mesh), sharding.batch_sharding(self.mesh, self.rules, 5),
                                 sharding.batch_sharding(self.mesh, self.rules, 2)))

  @functools.cached_property
  def _decode(self):
    m = self.model
    return jax.jit(lambda p, z: m.apply(p, z, method=m.decode),
                   in_shardings=(sharding.replicated(self.mesh),
                                 {"video": sharding.batch_sharding(self.mesh, self.rules, 5),
                                  "audio": sharding.batch_sharding(self.mesh, self.rules, 3)}))

  def _batched(self, fn, arrays: dict[str, np.ndarray], shrink: bool = False) -> dict[str, np.ndarray]:
    """fn over `batch_size` clips at a time (the last batch padded); with `shrink`, fewer clips than
    `batch_size` form one smaller batch instead (another compiled program, but at the paper's 128x128
    a batch of 16 decoded clips does not fit in 24 GB of host memory, and sampling 1 clip decoded 16;
    `encode` goes file by file, and a file of 3 clips padded to a batch of 8 is 8/3 of the work)."""
    n = len(next(iter(arrays.values())))
    bs, out = self.batch_size, {}
    if shrink:
      d = jax.device_count()
      bs = min(bs, -(-n // d) * d)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      for lo in range(0, n, bs):
        idx = np.minimum(np.arange(lo, lo + bs), n - 1)  # pad with the last clip, dropped below
        res = jax.device_get(fn({k: v[idx] for k, v in arrays.items()}))
        for k, v in res.items():
          out.setdefault(k, []).append(np.asarray(v)[: min(bs, n - lo)])
    return {k: np.concatenate(v) for k, v in out.items()}

  def clip_bytes(self, frames: int, size: int, samples: int) -> float:
    """Memory one clip [frames, size, size, 3] + [samples] costs `encode`: XLA's memory plan of the
    encoder compiled at one clip per device (temporaries, outputs and inputs; not the parameters, which
    are in memory already), plus on a CPU, whose devices share the host's memory, the host's copies of
    the clip's frames (uint8 read, float32 conversion, the batch)."""
    d = jax.device_count()
    video = jax.ShapeDtypeStruct((d, frames, size, size, 3), np.float32)
    audio = jax.ShapeDtypeStruct((d, samples), np.float32)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      mem = self._encode.lower(self.params, video, audio).compile().memory_analysis()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(self.params)) / d  # at most: replicated or sharded
    per_clip = mem.temp_size_in_bytes + mem.output_size_in_bytes + max(mem.argument_size_in_bytes - param_bytes, 0)
    if jax.local_devices()[0].platform == "cpu":
      per_clip += frames * size * size * 3 * (1 + 4 + 4)
    return float(per_clip)

  def fitting_batch_size(self, frames: int, size: int, samples: int, *, most: int = 16,
                         fraction: float = FIT_FRACTION) -> tuple[int, str]:
    """The largest batch (a multiple of the device count, at most `most`) whose `encode` should fit in
    `fraction` of the memory free now (`available_bytes`), taking all of `clip_bytes` to grow with the
    batch (an overestimate), and how it was found (a sentence for the log)."""
    d = jax.device_count()
    per_clip = self.clip_bytes(frames, size, samples)
    free, where = available_bytes()
    shared = jax.local_devices()[0].platform == "cpu"  # CPU devices share the host's memory
    clips = int(fraction * free // max(per_clip, 1.0))  # CPU: on the host; else: on each device
    per_device = clips // d if shared else clips
    how = (f"~{per_clip / 2**30:.2f} GiB per clip by XLA's plan of the encoder, {fraction:.0%} of "
           f"{free / 2**30:.1f} GiB free {where}")
    if per_device < 1:
      how += "; even one clip per device may not fit"
    return max(1, min(max(1, most // d), per_device)) * d, how

  def encode(self, video: np.ndarray, audio: np.ndarray) -> dict[str, np.ndarray]:
    video = np.asarray(video)
    if video.dtype == np.uint8:
      video = video.astype(np.float32) / 255.0
    return self._batched(lambda b: self._encode(self.params, b["video"], b["audio"]),
                         {"video": video.astype(np.float32), "audio": np.asarray(audio, np.float32)}, shrink=True)

  def decode(self, latents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return self._batched(lambda b: self._decode(self.params, b),
                         {k: np.asarray(latents[k], np.float32) for k in ("video", "audio")}, shrink=True)


def available_bytes() -> tuple[float, str]:
  """Memory free for a new program now and where: the first local accelerator's `bytes_limit -
  bytes_in_use`, or on a CPU the host's MemAvailable (/proc/meminfo; sysconf elsewhere)."""
  dev = jax.local_devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0)), f"on {dev.device_kind}"
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    return float(info["MemAvailable"].split()[0]) * 1024, "in host memory (MemAvailable)"
  except (OSError, KeyError):
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "in host memory (free pages)"


def load_config(run_dir: str | epath.Path):
  """RUN/config.json over the autoencoder base config; RunConfigError if missing or not an autoencoder's."""
  from configs import autoencoder_common
  from monl import run_config
  config = run_config.load(run_dir, base=autoencoder_common.base_config())
  if config.get("kind") != "autoencoder":
    raise run_config.RunConfigError(f"{run_dir}: its config.json is not an autoencoder's (kind "
                                    f"{config.get('kind')!r}); pass a train_autoencoder run")
  return config


def load(run_dir: str | epath.Path, *, use_ema: bool | None = None, batch_size: int = 16,
         step: int | None = None) -> Codec:
  """Checkpoint `step` (default: the latest) of the autoencoder run at `run_dir`; FileNotFoundError if
  the run has no checkpoint, or not that step."""
  from monl.autoencoder import train as ae_train
  from monl.train import checkpoint as ckpt_lib
  config = load_config(run_dir)
  model = ae_train.build_model(config)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.get_rules(config.mesh.rules)
  factory = ae_train.StateFactory(config, model, ae_train.make_optimizer(config.train), mesh, rules)
  directory = epath.Path(run_dir) / "checkpoints"
  with ckpt_lib.Checkpointer(directory, keep=config.ckpt.keep, async_save=False, config=config) as ckpt:
    latest = ckpt.latest_step()
    if latest is None:
      raise FileNotFoundError(f"no checkpoint under {directory}: train it first (python -m monl.main "
                              f"train_autoencoder --config ... --workdir {run_dir})")
    if step is not None and int(step) not in ckpt.all_steps():
      raise FileNotFoundError(f"{directory} has no checkpoint step {step} (it has {sorted(ckpt.all_steps())}; "
                              f"config.ckpt.keep={config.ckpt.keep} may have deleted it)")
    step = latest if step is None else int(step)
    state = ckpt.restore(step, factory.abstract)
  ema = config.eval.use_ema if use_ema is None else use_ema
  bs = -(-batch_size // jax.device_count()) * jax.device_count()
  return Codec(run_dir=str(run_dir), step=int(step), config=config, model=model,
               params=state.ema_params if ema else state.params, mesh=mesh, rules=rules, batch_size=bs)

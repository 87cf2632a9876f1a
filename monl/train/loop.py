"""Training loop: sharded init or exact resume, the jitted step over the mesh, logging, checkpoints."""
from __future__ import annotations

import functools
import json
import time

import flax.linen as nn
import jax
import numpy as np
from etils import epath

from monl import layout as layout_lib
from monl.data import format as data_format
from monl.data import pipeline
from monl.models import avdit
from monl.parallel import mesh as mesh_lib
from monl.parallel import rules as rules_lib
from monl.parallel import sharding
from monl.train import checkpoint as ckpt_lib
from monl.train import logger as logger_lib
from monl.train import step as step_lib


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm became NaN or Inf."""


def build_model(config) -> avdit.AVDiT:
  lay = layout_lib.Layout.from_config(config.layout)
  return avdit.AVDiT(avdit.AVDiTConfig.from_config(config.model), lay)


def resolve_data_dir(config) -> str:
  """`config.data.dir`, or the built-in synthetic dataset (built on first use)."""
  from monl.data import synthetic  # only the built-in route needs the generator
  return str(synthetic.resolve_data_dir(config.data))


def check_data(config, data_dir: str, lay: layout_lib.Layout) -> data_format.DatasetSpec:
  """Loads the dataset spec and fails naming both shapes if it disagrees with `config.layout`."""
  spec = data_format.load_spec(data_dir)
  pipeline.check_layout(spec, {m.name: (m.shape, m.segments) for m in lay.modalities},
                        where=f"config.layout vs {data_dir}/dataset.json")
  return spec


def local_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(f"config.data.batch_size={global_batch} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch // jax.process_count()


class StateFactory:
  """Abstract-first sharded state: shapes and shardings without allocation, then init or restore."""

  def __init__(self, config, obj: step_lib.Objective, tx, mesh, rules):
    self.obj, self.tx, self.mesh, self.rules = obj, tx, mesh, rules
    self.key = jax.random.key(config.seed)
    init = functools.partial(step_lib.init_state, obj=obj, tx=tx)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      boxed = jax.eval_shape(init, self.key)
    self.shardings = sharding.logical_shardings(boxed, mesh, rules)
    self.abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                 nn.meta.unbox(boxed), self.shardings)
    self._init = jax.jit(lambda k: nn.meta.unbox(init(k)), out_shardings=self.shardings)

  def init(self) -> step_lib.TrainState:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self._init(self.key)


def train(config, workdir: str, stop_at: int | None = None) -> step_lib.TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  `stop_at` ends this run early (with a checkpoint) at that step; the schedule still runs to
  `config.train.num_steps`, so a later call continues exactly where this one stopped.
  """
  workdir = epath.Path(workdir)
  chief = jax.process_index() == 0
  if chief:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local of "
        f"{jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)

  model = build_model(config)
  lay = model.layout
  obj = step_lib.Objective.from_config(config, model)
  data_dir = resolve_data_dir(config)
  check_data(config, data_dir, lay)

  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.get_rules(config.mesh.rules)
  tx = step_lib.make_optimizer(config.train)
  factory = StateFactory(config, obj, tx, mesh, rules)

  dataset = pipeline.make_dataset(
      data_dir, config.data.train_split, batch_size=local_batch_size(config.data.batch_size),
      seed=config.data.shuffle_seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch=config.data.prefetch,
      worker_count=config.data.worker_count)
  data_iter = iter(dataset)

  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.ckpt.keep,
                               async_save=config.ckpt.async_save)
  latest = ckpt.latest_step()
  if latest is None:
    state = factory.init()
    print(f"initialised {avdit.count_params(model.cfg, lay):,} parameters", flush=True)
  else:
    state = ckpt.restore(latest, factory.abstract, data_iter)
    print(f"resumed from step {latest} ({workdir / 'checkpoints'})", flush=True)

  batch_shardings = {m.name: sharding.batch_sharding(mesh, rules, 1 + len(m.shape)) for m in lay.modalities}
  step_fn = jax.jit(
      functools.partial(step_lib.train_step, obj=obj, tx=tx, ema=config.train.ema_decay),
      in_shardings=(factory.shardings, batch_shardings, sharding.replicated(mesh)),
      out_shardings=(factory.shardings, sharding.replicated(mesh)),
      donate_argnums=0)
  base_key = jax.random.fold_in(jax.random.key(config.seed), 1)  # the params key is fold 0 (unused)

  start = int(state.step)
  total = config.train.num_steps
  end = total if stop_at is None else min(stop_at, total)
  logger = logger_lib.Logger(workdir if chief else None, total_steps=total, start_step=start)
  window, last = [], {}
  step = start
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    while step < end:
      batch = sharding.global_batch(next(data_iter), mesh, rules)
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch, base_key)
      step += 1
      window.append(metrics)
      if step == start + 1:
        jax.block_until_ready(metrics)
        print(f"compiled and ran the first step in {time.perf_counter() - t0:.1f}s", flush=True)
        logger.reset_clock(step)
      at_ckpt = step % config.ckpt.every == 0 or step == end
      if step % config.train.log_every == 0 or at_ckpt:
        host = jax.device_get(window)
        _check_finite(host, step - len(host) + 1)
        last = logger_lib.summarize(host, lay.names, obj.schedule.num_steps)
        logger.log(step, last)
        window = []
      if at_ckpt:
        ckpt.save(step, state, data_iter, force=step == end)
  ckpt.close()
  logger.close()
  if chief and last:
    (workdir / "train_metrics.json").write_text(json.dumps(dict(last, step=step), indent=2))
  return state


def _check_finite(window: list[dict], first_step: int) -> None:
  for i, m in enumerate(window):
    if not np.asarray(m["finite"]) > 0:
      raise NonFiniteError(
          f"step {first_step + i}: non-finite loss ({float(m['loss'])}) or gradient norm "
          f"({float(m['grad_norm'])}); the update was skipped and training stopped. The last "
          "checkpoint is intact; lower config.train.lr or check the data for extreme values.")

"""Training loop: sharded init or exact resume, the jitted step over the mesh, logging, checkpoints.

Preemption: SIGTERM sets a flag; at the next step boundary where all processes agree (every step in
one process, every `config.ckpt.preemption_check_every` steps across processes, via one allgather)
the loop saves a checkpoint, waits for it to be complete and raises `Preempted`; the CLI exits with
`PREEMPTED_EXIT_CODE`, so a scheduler can tell "stopped cleanly, resume me" from a failure.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time

import flax.linen as nn
import jax
import numpy as np
from etils import epath

from monl import layout as layout_lib
from monl import validate
from monl.data import format as data_format
from monl.data import infer_layout
from monl.data import pipeline
from monl.models import avdit
from monl.parallel import checks
from monl.parallel import mesh as mesh_lib
from monl.parallel import rules as rules_lib
from monl.parallel import sharding
from monl.train import checkpoint as ckpt_lib
from monl.train import config_history
from monl.train import logger as logger_lib
from monl.train import step as step_lib


# Exit status of `python -m monl.main train` after a SIGTERM-triggered save: "preempted, resume me".
PREEMPTED_EXIT_CODE = 42


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm became NaN or Inf."""


class Preempted(Exception):
  """Training stopped on SIGTERM after a complete checkpoint at `step`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"preempted (SIGTERM): checkpoint {step} written to {directory}; rerun the same "
                     f"command to resume")
    self.step = step


def build_model(config) -> avdit.AVDiT:
  """The model of `config` (its layout completed from the data where unset, see `with_data_layout`)."""
  lay = layout_lib.Layout.from_config(with_data_layout(config, quiet=True).layout)
  return avdit.AVDiT(avdit.AVDiTConfig.from_config(config.model), lay)


def resolve_data_dir(config) -> str:
  """`config.data.dir`, or the built-in synthetic dataset (built on first use).

  Multi-process: process 0 builds the built-in dataset while the others wait at a barrier; then they
  reuse it (shared filesystem) or, on hosts with their own disks, build the identical copy.
  """
  from monl.data import synthetic  # only the built-in route needs the generator
  if config.data.dir or jax.process_count() == 1:
    return str(synthetic.resolve_data_dir(config.data))
  from jax.experimental import multihost_utils
  if jax.process_index() == 0:
    synthetic.resolve_data_dir(config.data)
  multihost_utils.sync_global_devices("monl: built-in dataset ready")
  return str(synthetic.resolve_data_dir(config.data))


def with_data_layout(config, *, quiet: bool = False):
  """`config` with its layout completed from the dataset it reads (`monl.data.infer_layout`): names,
  shapes and segments from dataset.json, unset patches by the default rule. A config whose layout is
  fully set is returned as it is, without reading any data. Prints what was inferred (process 0)."""
  if infer_layout.is_complete(config.layout):
    return config
  if config.data.dir:
    data = infer_layout.data_modalities(data_format.load_spec(config.data.dir))
    where = f"{config.data.dir}/{data_format.SPEC_FILE}"
  else:  # the built-in dataset's shapes are known without building it (check_data verifies the copy)
    from monl.data import builtin
    data = builtin.builtin_modalities(config.data)
    where = f"the built-in dataset {config.data.get('builtin') or builtin.DEFAULT!r}"
  config, notes = infer_layout.complete(config, data, where=where)
  if notes and not quiet and jax.process_index() == 0:
    print("layout from the data: " + "; ".join(notes), flush=True)
  return config


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


def make_step_fn(config, obj: step_lib.Objective, tx, factory: StateFactory, mesh, rules):
  """The train step jitted with explicit in/out shardings and the state donated.

  Call it under `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`, so that the activation
  constraints reach the compiled program. (state, {name: [B, *shape]}, key) -> (state, metrics).
  """
  lay = obj.layout
  batch_shardings = {m.name: sharding.batch_sharding(mesh, rules, 1 + len(m.shape)) for m in lay.modalities}
  return jax.jit(
      functools.partial(step_lib.train_step, obj=obj, tx=tx, ema=config.train.ema_decay),
      in_shardings=(factory.shardings, batch_shardings, sharding.replicated(mesh)),
      out_shardings=(factory.shardings, sharding.replicated(mesh)),
      donate_argnums=0)


def base_key(config) -> jax.Array:
  """The root of the per-step keys (fold_in(base, step)); the params key is fold 0 (unused)."""
  return jax.random.fold_in(jax.random.key(config.seed), 1)


class _SigtermFlag:
  """Records SIGTERM instead of dying; installed only from the main thread, restored on exit."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    if not self.received:
      print("SIGTERM received: saving a checkpoint at the next step boundary", flush=True)
    self.received = True

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _agree_to_stop(flag: _SigtermFlag, step: int, every: int) -> bool:
  """Whether every process stops after `step`: any process saw SIGTERM (same answer everywhere)."""
  if jax.process_count() == 1:
    return flag.received
  if step % max(every, 1):
    return False  # all processes skip the collective at the same steps
  from jax.experimental import multihost_utils
  votes = multihost_utils.process_allgather(np.asarray(int(flag.received), np.int32))
  return bool(np.asarray(votes).any())


def train(config, workdir: str, stop_at: int | None = None,
          resume_from_step: int | None = None) -> step_lib.TrainState:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  `stop_at` ends this run early (with a checkpoint) at that step; the schedule still runs to
  `config.train.num_steps`, so a later call continues exactly where this one stopped.
  `resume_from_step` restores that checkpoint instead of the latest (e.g. when the latest is damaged);
  once it has restored and verified, the checkpoints after it move to WORKDIR/discarded_checkpoints/.

  WORKDIR/config.json (the latest config) and WORKDIR/configs/config_step<N>.json (one per (re)start at
  step N) are written once the checkpoint to resume from has been verified, and a notice lists every
  field that differs from the config that checkpoint was trained with.
  """
  validate.check_config(config)  # before any data is read or anything is compiled
  config = with_data_layout(config)
  if stop_at is not None:
    validate.check_number("stop_at", stop_at, low=1, what="step to stop at")
  if resume_from_step is not None:
    validate.check_number("--resume_from_step", resume_from_step, low=1, what="checkpoint step")
  workdir = epath.Path(workdir)
  if config.train.record_batches and "://" in os.fspath(workdir):
    raise validate.ConfigError(f"config.train.record_batches appends to WORKDIR/batches.p<i>.jsonl, which "
                               f"an object store ({workdir}) cannot do: use a local --workdir for it")
  chief = jax.process_index() == 0
  if chief:
    workdir.mkdir(parents=True, exist_ok=True)
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
  report = checks.check_replication(factory.abstract.params, factory.shardings.params,
                                    config.mesh.max_replicated_fraction, config.mesh.rules)
  print(f"mesh {dict(mesh.shape)}, rules {config.mesh.rules!r}: {report.fraction:.2%} of "
        f"{report.total_bytes / 2**20:.1f} MiB of parameters replicated", flush=True)

  dataset = pipeline.make_dataset(
      data_dir, config.data.train_split, batch_size=local_batch_size(config.data.batch_size),
      seed=config.data.shuffle_seed, shard_index=jax.process_index(), shard_count=jax.process_count(),
      num_threads=config.data.num_threads, prefetch=config.data.prefetch,
      worker_count=config.data.worker_count)
  data_iter = iter(dataset)

  ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.ckpt.keep,
                               async_save=config.ckpt.async_save, config=config)
  if resume_from_step is not None and resume_from_step not in ckpt.all_steps():
    raise ckpt_lib.CheckpointError(
        f"--resume_from_step {resume_from_step}: there is no complete checkpoint {resume_from_step} under "
        f"{ckpt.directory}; complete checkpoints there: {ckpt.all_steps()}")
  resume = ckpt.latest_step() if resume_from_step is None else resume_from_step
  if resume is None:
    state = factory.init()
    print(f"initialised {avdit.count_params(model.cfg, lay):,} parameters", flush=True)
  else:
    state = ckpt.restore(resume, factory.abstract, data_iter)  # verified: layout, shapes, checksums
    later = [s for s in ckpt.all_steps() if s > resume]
    if later:
      moved = ckpt.set_aside(later, workdir / "discarded_checkpoints")
      print(f"--resume_from_step {resume}: moved the later checkpoint(s) {later} to "
            f"{moved[0].parent} (kept, not deleted)", flush=True)
    print(f"resumed from step {resume} ({workdir / 'checkpoints'})", flush=True)
    _notice_config_changes(config, ckpt, resume, workdir)

  step_fn = make_step_fn(config, obj, tx, factory, mesh, rules)
  key = base_key(config)
  record = None
  if config.train.record_batches:  # debug: which examples each step saw, per process
    record = (workdir / f"batches.p{jax.process_index()}.jsonl").open("a")

  start = int(state.step)
  total = config.train.num_steps
  end = total if stop_at is None else min(stop_at, total)
  if start >= end:
    ckpt.close()
    limit = f"config.train.num_steps={total}" if end == total else f"stop_at={end}"
    print(f"nothing to train: checkpoint {start} has already reached {limit} (raise "
          f"config.train.num_steps to train further); {workdir / 'config.json'} is unchanged", flush=True)
    return state
  if chief:
    config_history.write(workdir, config, start)
  logger = logger_lib.Logger(workdir if chief else None, total_steps=total, start_step=start)
  window, last = [], {}
  step = start
  preempted = False
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), _SigtermFlag() as sigterm:
    while step < end:
      local = next(data_iter)
      if record is not None:
        record.write(json.dumps({"step": step, "ids": [str(x) for x in local["source_id"]]}) + "\n")
        record.flush()
      batch = sharding.global_batch(local, mesh, rules)
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch, key)
      step += 1
      window.append(metrics)
      if step == start + 1:
        jax.block_until_ready(metrics)
        print(f"compiled and ran the first step in {time.perf_counter() - t0:.1f}s", flush=True)
        logger.reset_clock(step)
      preempted = _agree_to_stop(sigterm, step, config.ckpt.preemption_check_every)
      at_ckpt = step % config.ckpt.every == 0 or step == end or preempted
      if step % config.train.log_every == 0 or at_ckpt:
        host = jax.device_get(window)
        _check_finite(host, step - len(host) + 1)
        last = logger_lib.summarize(host, lay.names, obj.schedule.num_steps)
        logger.log(step, last)
        window = []
      if at_ckpt:
        ckpt.save(step, state, data_iter, force=step == end or preempted)
      if preempted:
        break
  ckpt.close()  # waits for the last (async) save to be complete
  logger.close()
  if record is not None:
    record.close()
  if preempted:
    raise Preempted(step, str(workdir / "checkpoints"))
  if chief and last:
    (workdir / "train_metrics.json").write_text(json.dumps(dict(last, step=step), indent=2))
  return state


def _notice_config_changes(config, ckpt: ckpt_lib.Checkpointer, step: int, workdir: epath.Path) -> None:
  """Prints which config fields differ from those checkpoint `step` was trained with (if any)."""
  record_path = ckpt.record_path(step)
  before, source = None, None
  if record_path.exists():
    before = json.loads(record_path.read_text()).get("config")
    source = f"recorded in {record_path}"
  if before is None and (workdir / "config.json").exists():  # checkpoints written before monl records
    before, source = json.loads((workdir / "config.json").read_text()), f"{workdir / 'config.json'}"
  if before is None:
    print(f"NOTICE: checkpoint {step} records no config: changes since it was trained cannot be listed",
          flush=True)
    return
  changes = config_history.diff(before, config_history.to_plain(config))
  if changes:
    print(config_history.resume_notice(changes, step, source), flush=True)


def _check_finite(window: list[dict], first_step: int) -> None:
  for i, m in enumerate(window):
    if not np.asarray(m["finite"]) > 0:
      raise NonFiniteError(
          f"step {first_step + i}: non-finite loss ({float(m['loss'])}) or gradient norm "
          f"({float(m['grad_norm'])}); the update was skipped and training stopped. The last "
          "checkpoint is intact; lower config.train.lr or check the data for extreme values.")

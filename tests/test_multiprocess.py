"""Two processes over 127.0.0.1 (jax.distributed, gloo) via launch/local_multiprocess.py."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from cli_util import ROOT, env, read_batches, train_command
from conftest import tiny_config
from monl.data import pipeline
from monl.parallel import mesh as mesh_lib
from monl.parallel import rules as rules_lib
from monl.parallel import sharding
from monl.train import checkpoint as ckpt_lib
from monl.train import loop
from monl.train import step as step_lib

STEPS = 4


def _launch(n, command, timeout=450):
  cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", str(n),
         "--timeout_s", str(timeout - 50), "--"] + command
  proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  return proc


def _one_process_batches(data_dir, config, steps):
  """The global batches (source ids and arrays) of a one-process pipeline of the config's batch."""
  it = iter(pipeline.make_dataset(data_dir, "train", batch_size=config.data.batch_size,
                                  seed=config.data.shuffle_seed))
  return [next(it) for _ in range(steps)]


def _global_ids(work, processes):
  """step -> the global batch's source ids (process 0's rows, then process 1's, ...)."""
  seen = [read_batches(work / f"batches.p{i}.jsonl") for i in range(processes)]
  return {s: [sid for p in seen for sid in p[s]] for s in seen[0]}


def test_two_processes_match_one_and_resume_on_one(builtin_dataset, tmp_path):
  work = tmp_path / "mp"
  # dcn_data=2: the hybrid (multi-slice) mesh, with each process as one slice.
  overrides = {"train.num_steps": STEPS, "ckpt.every": STEPS, "train.log_every": 1,
               "train.record_batches": True, "mesh.dcn_data": 2}
  proc = _launch(2, train_command(builtin_dataset, str(work), **overrides))
  assert "[p0] process 0/2" in proc.stdout and "[p1] process 1/2" in proc.stdout
  assert "'data': 2" in proc.stdout  # the mesh spans both processes

  # The global batches are the one-process pipeline's: the data order does not depend on the count.
  config = tiny_config(builtin_dataset, **{"train.num_steps": STEPS})
  reference = _one_process_batches(builtin_dataset, config, STEPS + 2)
  ids = _global_ids(work, 2)
  assert [ids[s] for s in range(STEPS)] == [list(b["source_id"]) for b in reference[:STEPS]]

  # The same steps on one process and one device reach the same parameters.
  model = loop.build_model(config)
  obj = step_lib.Objective.from_config(config, model)
  tx = step_lib.make_optimizer(config.train)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.get_rules(config.mesh.rules)
  factory = loop.StateFactory(config, obj, tx, mesh, rules)
  step_fn = loop.make_step_fn(config, obj, tx, factory, mesh, rules)
  states = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = factory.init()
    for batch in reference:
      batch = {k: v for k, v in batch.items() if k != "source_id"}
      state, _ = step_fn(state, sharding.global_batch(batch, mesh, rules), loop.base_key(config))
      states.append(jax.device_get(state.params))

  def assert_params(step):
    ck = ckpt_lib.Checkpointer(work / "checkpoints", async_save=False)
    restored = ck.restore(step, factory.abstract)
    ck.close()
    # Two processes sum the gradients in another order; Adam's m / sqrt(v) turns that float noise into
    # ~1e-6 on weights whose gradients are near zero. A wrong batch or a lost gradient moves a weight
    # by about the learning rate (4e-4 or more per step here, in warm-up).
    for a, b in zip(jax.tree.leaves(states[step - 1]), jax.tree.leaves(jax.device_get(restored.params))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

  assert_params(STEPS)
  # Resumed on ONE process (a smaller slice): the data continues where the two processes left it.
  cmd = train_command(builtin_dataset, str(work), **dict(overrides, **{"train.num_steps": STEPS + 2,
                                                                       "ckpt.every": 2, "mesh.dcn_data": 1}))
  proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
  assert f"checkpoint {STEPS}: data position {{'next_index': {STEPS}}} saved by 2 process(es), continued on 1" \
      in proc.stdout, proc.stdout
  after = read_batches(work / "batches.p0.jsonl")
  assert [after[s] for s in (STEPS, STEPS + 1)] == [list(b["source_id"]) for b in reference[STEPS:]]
  assert_params(STEPS + 2)


def test_four_processes_see_the_one_process_batches(builtin_dataset, tmp_path):
  work = tmp_path / "mp4"
  steps = 2
  proc = _launch(4, train_command(builtin_dataset, str(work), **{
      "train.num_steps": steps, "ckpt.every": steps, "train.log_every": 1, "train.record_batches": True}))
  assert "[p3] process 3/4" in proc.stdout
  config = tiny_config(builtin_dataset)
  ids = _global_ids(work, 4)
  assert [ids[s] for s in range(steps)] == [list(b["source_id"]) for b in
                                           _one_process_batches(builtin_dataset, config, steps)]

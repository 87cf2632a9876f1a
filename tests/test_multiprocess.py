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


def test_two_processes_match_one(builtin_dataset, tmp_path):
  work = tmp_path / "mp"
  # dcn_data=2: the hybrid (multi-slice) mesh, with each process as one slice.
  overrides = {"train.num_steps": STEPS, "ckpt.every": STEPS, "train.log_every": 1,
               "train.record_batches": True, "mesh.dcn_data": 2}
  cmd = [sys.executable, os.path.join(ROOT, "launch", "local_multiprocess.py"), "-n", "2",
         "--timeout_s", "400", "--"] + train_command(builtin_dataset, str(work), **overrides)
  proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=450)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert "[p0] process 0/2" in proc.stdout and "[p1] process 1/2" in proc.stdout
  assert "'data': 2" in proc.stdout  # the mesh spans both processes

  # Data shards: disjoint per step, and each process saw its pipeline shard.
  seen = [read_batches(work / f"batches.p{i}.jsonl") for i in range(2)]
  for s in range(STEPS):
    assert not set(seen[0][s]) & set(seen[1][s]), s
  # Reference: one process, one device, the same global batches (process 0 rows, then process 1 rows).
  config = tiny_config(builtin_dataset, **{"train.num_steps": STEPS})
  its = [iter(pipeline.make_dataset(builtin_dataset, "train", batch_size=4, seed=config.data.shuffle_seed,
                                    shard_index=i, shard_count=2)) for i in range(2)]
  model = loop.build_model(config)
  obj = step_lib.Objective.from_config(config, model)
  tx = step_lib.make_optimizer(config.train)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.get_rules(config.mesh.rules)
  factory = loop.StateFactory(config, obj, tx, mesh, rules)
  step_fn = loop.make_step_fn(config, obj, tx, factory, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = factory.init()
    for s in range(STEPS):
      parts = [next(it) for it in its]
      assert [list(p["source_id"]) for p in parts] == [seen[0][s], seen[1][s]]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "source_id"}
      state, _ = step_fn(state, sharding.global_batch(batch, mesh, rules), loop.base_key(config))
  ck = ckpt_lib.Checkpointer(work / "checkpoints", async_save=False)
  restored = ck.restore(STEPS, factory.abstract)
  ck.close()
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(restored.params))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

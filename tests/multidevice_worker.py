"""Run in a subprocess with 8 fake CPU devices by test_parallel.py; writes its findings as JSON.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice_worker.py DATA_DIR OUT.json
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from conftest import tiny_config  # noqa: E402
from monl.data import pipeline  # noqa: E402
from monl.models import layers  # noqa: E402
from monl.parallel import checks, sharding  # noqa: E402
from monl.parallel import mesh as mesh_lib  # noqa: E402
from monl.parallel import rules as rules_lib  # noqa: E402
from monl.train import checkpoint as ckpt_lib  # noqa: E402
from monl.train import loop  # noqa: E402
from monl.train import step as step_lib  # noqa: E402

STEPS = 3
MESHES = {  # name: (rules, mesh sizes)
    "single": ("dp", dict(data=1)),
    "dp": ("dp", dict(data=8)),
    "fsdp": ("fsdp", dict(data=1, fsdp=8)),
    "fsdp_tp": ("fsdp_tp", dict(data=2, fsdp=2, tensor=2)),
}


def setup(config, rules_name, sizes, devices):
  config.mesh.rules = rules_name
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.mesh.sequence = (
      sizes.get("data", 1), sizes.get("fsdp", 1), sizes.get("tensor", 1), 1)
  model = loop.build_model(config)
  obj = step_lib.Objective.from_config(config, model)
  tx = step_lib.make_optimizer(config.train)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = rules_lib.get_rules(rules_name)
  factory = loop.StateFactory(config, obj, tx, mesh, rules)
  return obj, tx, mesh, rules, factory


def run(config, rules_name, sizes, devices, batches):
  """Trains on `batches`; one explicit compile serves the run, memory_analysis and the lowered text."""
  obj, tx, mesh, rules, factory = setup(config, rules_name, sizes, devices)
  step_fn = loop.make_step_fn(config, obj, tx, factory, mesh, rules)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = step_fn.lower(factory.abstract, abstract_batch(config, mesh, rules, obj.layout), key)
    compiled = lowered.compile()
    state = factory.init()
    for b in batches:
      state, m = compiled(state, sharding.global_batch(b, mesh, rules), loop.base_key(config))
      losses.append(float(m["loss"]))
  info = {"argument_bytes": compiled.memory_analysis().argument_size_in_bytes, "text": lowered.as_text(),
          "factory": factory}
  return state, losses, info


def abstract_batch(config, mesh, rules, lay):
  return {m.name: jax.ShapeDtypeStruct((config.data.batch_size, *m.shape), jnp.float32,
                                       sharding=sharding.batch_sharding(mesh, rules, 1 + len(m.shape)))
          for m in lay.modalities}


def main(data_dir: str, out_path: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  devices = jax.devices()
  out = {}
  it = iter(pipeline.make_dataset(data_dir, "train", batch_size=8, seed=0))
  batches = [next(it) for _ in range(STEPS)]

  # 1. Same loss and parameters on every mesh as on one device. The tiny config's products have fewer rows
  # than `cpu_matmul` needs on CPU; lowering the threshold runs them all through it, so that its
  # transposed weight gradients are checked under every mesh too (JAX's own product is what TPUs run).
  layers.CPU_MATMUL_MIN_ROWS = 1
  results, infos, states = {}, {}, {}
  for name, (rules_name, sizes) in MESHES.items():
    devs = devices[:1] if name == "single" else devices
    state, losses, infos[name] = run(tiny_config(data_dir), rules_name, sizes, devs, batches)
    states[name] = state
    results[name] = (jax.tree.leaves(jax.device_get(state.params)), losses)
  ref_params, ref_losses = results["single"]
  out["equivalence"] = {
      name: {"max_param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(p, ref_params)),
             "max_loss_diff": max(abs(a - b) for a, b in zip(l, ref_losses)), "losses": l}
      for name, (p, l) in results.items() if name != "single"}

  # 2. Per-device argument bytes of the compiled step: FSDP over 8 vs data-parallel over 8.
  out["argument_bytes"] = {k: infos[k]["argument_bytes"] for k in ("dp", "fsdp")}
  text = infos["fsdp"]["text"]
  out["constraints_in_lowered"] = text.count("sharding_constraint") + text.count("@Sharding")
  fac = infos["fsdp"]["factory"]
  out["replication_fsdp8"] = checks.replication_report(fac.abstract.params, fac.shardings.params).fraction

  # 3. The replication check fails, naming parameters, when fsdp rules have nothing to shard over.
  config = tiny_config(data_dir)
  _, _, _, _, factory = setup(config, "fsdp", dict(data=8), devices)
  try:
    checks.check_replication(factory.abstract.params, factory.shardings.params, 0.05, "fsdp")
    out["replication_error"] = None
  except ValueError as e:
    out["replication_error"] = str(e)

  # 4. DCN split in one process: a clear error (granules are processes on CPU).
  config = tiny_config(data_dir, **{"mesh.dcn_data": 2})
  try:
    mesh_lib.make_mesh(config.mesh, devices)
    out["dcn_error"] = None
  except ValueError as e:
    out["dcn_error"] = str(e)

  # 5. A checkpoint written on the fsdp mesh restores bit-identically onto fsdp_tp and one device.
  state = states["fsdp"]
  saved = jax.tree.leaves(jax.device_get(state.params))
  with tempfile.TemporaryDirectory() as tmp:
    ck = ckpt_lib.Checkpointer(tmp, async_save=False)
    ck.save(STEPS, state)
    ck.wait()
    same = {}
    for name, rules_name, sizes, devs in (("fsdp_tp", "fsdp_tp", dict(data=2, fsdp=2, tensor=2), devices),
                                          ("single", "dp", dict(data=1), devices[:1])):
      *_, f2 = setup(tiny_config(data_dir), rules_name, sizes, devs)
      restored = ck.restore(STEPS, f2.abstract)
      leaves = jax.tree.leaves(jax.device_get(restored.params))
      same[name] = all(np.array_equal(a, b) for a, b in zip(saved, leaves))
      shard_spec = jax.tree.leaves(restored.params)[0].sharding
      same[name + "_mesh"] = dict(shard_spec.mesh.shape)
    ck.close()
  out["restore_other_mesh"] = same
  with open(out_path, "w") as f:
    json.dump(out, f, indent=2)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])

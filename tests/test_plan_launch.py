"""`plan` on a small TPU topology (needs libtpu, from the `test` extra) and the launchers' dry runs."""
import json
import os
import subprocess
import sys

import pytest

from cli_util import ROOT, env

TPU_VM = os.path.join(ROOT, "launch", "tpu_vm.sh")


def test_plan_small_topology(tmp_path):
  pytest.importorskip("libtpu")
  cmd = [sys.executable, "-m", "monl.main", "plan", f"--config={ROOT}/configs/default.py",
         "--topology=v5e:2x2", "--json", "--config.model.width=32", "--config.model.depth=2",
         "--config.model.num_heads=2", "--config.data.batch_size=8"]
  # A persistent compilation cache as launch/env.sh sets one, with every compile eligible for it.
  cache_env = dict(env(), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  for _ in range(2):  # the second run would warn if the first had cached a TPU-only executable
    proc = subprocess.run(cmd, cwd=ROOT, env=cache_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "persistent compilation cache" not in proc.stderr, proc.stderr[-4000:]
  p = json.loads(proc.stdout)
  assert p["num_chips"] == 4 and p["chip"] == "TPU v5e" and p["mesh"]["data"] == 4
  train, sample = p["programs"]
  assert train["program"] == "train_step" and sample["program"] == "sampler_step"
  for g in (train, sample):
    assert g["fits"] and 0 < g["peak_gib"] < g["hbm_gib"] == 16
    assert g["flops_per_chip"] > 0 and g["model_flops_per_chip"] > 0
    assert g["est_step_s"] > 0 and 0 < g["mfu"] <= 1 and g["examples_per_s"] > 0
  from monl import plan
  table = plan.format_table(p)
  for label in ("HBM/chip: arguments", "temporaries", "outputs", "capacity", "FLOPs per step",
                "est. step time", "implied MFU", "examples/s", "FITS"):
    assert label in table


def test_topology_compiles_stay_out_of_the_persistent_cache(tmp_path):
  """Inside `outside_persistent_cache` nothing is written; after it, the cache works again."""
  script = """
import os, jax, jax.numpy as jnp
from monl import plan
cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
count = lambda: len(os.listdir(cache)) if os.path.isdir(cache) else 0
x = jnp.zeros(3)
jax.jit(lambda x: x + 1).lower(x).compile()
first = count()
with plan.outside_persistent_cache():
  jax.jit(lambda x: x * 2).lower(x).compile()
inside = count()
jax.jit(lambda x: x - 3).lower(x).compile()
print(first, inside, count())
"""
  cache_env = dict(env(), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=cache_env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  before, inside, after = map(int, proc.stdout.split())
  assert before >= 1 and inside == before and after == before + 1, proc.stdout


def test_plan_chip_table():
  from monl import plan
  assert plan.chip_of("v5e:16x16").hbm_bytes == 16 * 2**30
  assert plan.chip_of("v5p:4x4x4").peak_bf16_flops == 459e12
  with pytest.raises(ValueError, match="--topology"):
    plan.chip_of("v9:2x2")


def test_tpu_vm_script_dry_run():
  assert subprocess.run(["bash", "-n", TPU_VM]).returncode == 0
  e = dict(env(), PROJECT="proj", ZONE="us-west4-a", ACCELERATOR_TYPE="v5litepod-256", TPU_NAME="pod",
           WORKDIR="gs://bucket/run")
  out = {}
  for cmd in ("create", "install", "run", "logs", "delete"):
    proc = subprocess.run(["bash", TPU_VM, cmd, "--dry-run", "--", "--config.data.dir=gs://bucket/data"],
                          env=e, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out[cmd] = proc.stdout
  assert "queued-resources create pod-qr" in out["create"] and "--accelerator-type=v5litepod-256" in out["create"]
  assert "--worker=all" in out["install"] and "tpu,gcs" in out["install"].replace("\\", "")
  run = out["run"].replace("\\", "")
  assert "--worker=all" in run and "--config.dist.auto=True" in run and "--workdir=gs://bucket/run" in run
  assert "--config.data.dir=gs://bucket/data" in run
  assert "tail" in out["logs"] and "queued-resources delete pod-qr" in out["delete"]
  bad = subprocess.run(["bash", TPU_VM, "run", "--dry-run"], env=dict(e, WORKDIR="/local"),
                       capture_output=True, text=True)
  assert bad.returncode != 0 and "gs://" in bad.stderr

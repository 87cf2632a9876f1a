"""Compile time and peak host memory of the train step, one fresh subprocess per config.

    python benchmarks/compile_memory.py [--configs default,midsize,paper] [--run default,midsize]
        [--cache default] [--quick] [--out benchmarks/results/compile_memory.json]

Each child process builds the config's model, lowers and compiles `monl.train.step.train_step` (state
donated) from abstract inputs (`jax.ShapeDtypeStruct`; nothing is allocated, so the paper config's
~460M parameters and batch 256 compile for this CPU without their memory), and reports seconds for
trace+lower and for XLA compilation, and its peak resident memory (`ru_maxrss`). For the configs in
`--run` it then allocates the state and runs 2 steps, and reports the peak again. `--cache CONFIGS` also
measures the persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`, set by launch/env.sh):
a child with an empty cache dir, then a second child with the now-filled one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import common


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(name: str, run: bool, quick: bool, cache_dir: str | None) -> dict:
  import jax
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  t0 = time.perf_counter()
  import monl.train.step  # noqa: F401  (import time kept out of the compile figures)
  config = common.load_config(name, quick)
  s = common.Setup.__new__(common.Setup)
  from monl.train import loop
  from monl.train import step as step_lib
  s.config, s.model = config, loop.build_model(config)
  s.layout = s.model.layout
  s.obj = step_lib.Objective.from_config(config, s.model)
  s.tx = step_lib.make_optimizer(config.train)
  s.batch_size = config.data.batch_size
  s.key = jax.random.key(0)
  import jax.numpy as jnp
  batch = {m.name: jax.ShapeDtypeStruct((s.batch_size, *m.shape), jnp.float32) for m in s.layout.modalities}
  t_setup = time.perf_counter()
  abstract = s.abstract_state()
  lowered = s.step_fn().lower(abstract, batch, jax.ShapeDtypeStruct((), s.key.dtype))
  t_lower = time.perf_counter()
  compiled = lowered.compile()
  t_compile = time.perf_counter()
  mem = compiled.memory_analysis()
  out = {"config": name, "params": s.num_params(), "batch": s.batch_size, "dtype": config.model.dtype,
         "remat": config.model.remat_policy, "setup_s": t_setup - t0, "lower_s": t_lower - t_setup,
         "compile_s": t_compile - t_lower, "peak_rss_compile_mb": peak_rss_mb(),
         "xla_temp_mb": getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem else None,
         "xla_argument_mb": getattr(mem, "argument_size_in_bytes", 0) / 2**20 if mem else None,
         "gflop_per_step": common.compiled_flops(compiled) / 1e9}
  if run:
    import numpy as np
    rng = np.random.default_rng(0)
    real_batch = {k: jnp.asarray(rng.standard_normal(v.shape, np.float32)) for k, v in batch.items()}
    state = s.init_state()
    for _ in range(2):
      state, metrics = compiled(state, real_batch, s.key)
    jax.block_until_ready(metrics)
    out["peak_rss_run_mb"] = peak_rss_mb()
  return out


def spawn(name: str, run: bool, quick: bool, cache_dir: str | None, env=None) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", name]
  cmd += ["--run_child"] if run else []
  cmd += ["--quick"] if quick else []
  cmd += ["--cache_dir", cache_dir] if cache_dir else []
  env = dict(env or os.environ)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # rows without a cache compile from scratch
  t0 = time.perf_counter()
  p = subprocess.run(cmd, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - t0
  if p.returncode:
    raise RuntimeError(f"child for {name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
  r = json.loads(p.stdout.strip().splitlines()[-1])
  r["process_wall_s"] = wall
  return r


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--configs", default="default,midsize,paper")
  p.add_argument("--run", default="default,midsize", help="configs whose state is also allocated and stepped")
  p.add_argument("--cache", default="", help="configs for which to also time a cold and a warm persistent "
                 "compilation cache (comma-separated; 'all' = every config)")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--out", default="compile_memory")
  p.add_argument("--child", help=argparse.SUPPRESS)
  p.add_argument("--run_child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--cache_dir", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child, args.run_child, args.quick, args.cache_dir)))
    return
  if args.quick and args.configs == "default,midsize,paper":
    args.configs, args.run = "default", "default"
  run = set(args.run.split(",")) if args.run else set()
  info = common.machine_info()
  rows = []
  for name in args.configs.split(","):
    r = spawn(name, name in run, args.quick, None)
    r["cache"] = "none"
    rows.append(r)
    if args.cache in ("all", name) or name in args.cache.split(","):
      with tempfile.TemporaryDirectory(prefix="monl-jax-cache-") as d:
        for label in ("cold", "warm"):
          rc = spawn(name, False, args.quick, d)
          rc["cache"] = label
          rows.append(rc)
  info["load_avg_end"] = common.load_avg()
  path = common.write_json(args.out, {"machine": info, "results": rows, "quick": args.quick})
  common.print_table(
      "train-step compile time and peak host memory (one subprocess per row)", rows,
      ["config", "params", "batch", "dtype", "remat", "cache", "lower_s", "compile_s", "process_wall_s",
       "peak_rss_compile_mb", "peak_rss_run_mb", "xla_temp_mb"], info,
      [f"compile_s = XLA compilation only; lower_s = trace + lower; peak = ru_maxrss of the child. "
       f"load avg at end {info['load_avg_end']}; wrote {path}"])


if __name__ == "__main__":
  main()

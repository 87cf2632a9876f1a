"""Train-step throughput of monl's AVDiT: examples/s, tokens/s, XLA-counted FLOP/s vs the matmul rate.

    python benchmarks/train_step.py [--configs default,midsize] [--iters 5] [--warmup 2]
        [--set model.attention=dot_product ...] [--quick] [--out benchmarks/results/train_step.json]

For each config: the real `monl.train.step.train_step` (MoNL objective, AdamW, EMA; state donated, as
the trainer jits it) on one random batch of the config's batch size. FLOPs are XLA's count for the
step (`cost_analysis()['flops']`, taken with the layers unrolled because XLA counts a scanned
layer's while-loop body once: see `common.step_flops`); the matmul rate is a 2048² float32 matmul in JAX measured
in the same process (median of a run before and after the steps). Mid-size = configs/midsize.py
(12 layers, width 384, 6 heads, 512 tokens, batch 8).
"""
from __future__ import annotations

import time

import common


def parse_overrides(items):
  out = {}
  for item in items or ():
    k, _, v = item.partition("=")
    out[k] = v
  return out


def apply_overrides(config, overrides: dict):
  for k, v in overrides.items():
    node = config
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    old = node[leaf]
    node[leaf] = type(old)(v) if not isinstance(old, bool) else v.lower() in ("1", "true", "yes")
  return config


def bench_config(name: str, args, overrides) -> dict:
  import jax
  config = apply_overrides(common.load_config(name, args.quick), overrides)
  s = common.Setup(config)
  step = s.step_fn()
  state = s.init_state()
  t0 = time.perf_counter()
  compiled = step.lower(state, s.batch, s.key).compile()
  compile_s = time.perf_counter() - t0
  flops = common.step_flops(s)  # layers unrolled: see common.step_flops

  run = s.stepper(compiled, state)
  times = common.time_calls(run, warmup=args.warmup, iters=args.iters)
  jax.block_until_ready(run.state)
  t = common.median(times)
  return {"config": name, "params": s.num_params(), "batch": s.batch_size,
          "tokens": s.tokens_per_example, "step_s": t, "step_s_all": times,
          "examples_per_s": s.batch_size / t, "tokens_per_s": s.batch_size * s.tokens_per_example / t,
          "gflop_per_step": flops / 1e9, "gflop_per_s": flops / t / 1e9, "compile_s": compile_s,
          "model": dict(config.model)}


def main(argv=None):
  p = common.timing_parser(__doc__, iters=5, warmup=2, out="train_step",
                           quick_help="smoke run: tiny models, 1 iteration")
  p.add_argument("--configs", default="default,midsize")
  p.add_argument("--set", action="append", help="config override, e.g. model.attention=dot_product")
  args = p.parse_args(argv)
  if args.quick:
    args.iters, args.warmup = 1, 1
  overrides = parse_overrides(args.set)

  info = common.machine_info()
  mm = [common.matmul_rate(n=512 if args.quick else 2048, iters=3 if args.quick else 10)]
  rows = [bench_config(n, args, overrides) for n in args.configs.split(",")]
  mm.append(common.matmul_rate(n=512 if args.quick else 2048, iters=3 if args.quick else 10))
  rate = common.median(mm)
  for r in rows:
    r["matmul_gflop_per_s"] = rate
    r["fraction_of_matmul"] = r["gflop_per_s"] / rate
  info["load_avg_end"] = common.load_avg()
  path = common.write_json(args.out, {"machine": info, "overrides": overrides, "matmul_gflop_per_s": mm,
                                      "results": rows, "quick": args.quick})
  common.print_table(
      "train step (float32)", rows,
      ["config", "params", "batch", "tokens", "step_s", "examples_per_s", "tokens_per_s", "gflop_per_step",
       "gflop_per_s", "fraction_of_matmul"], info,
      [f"matmul 2048² float32: {rate:.1f} GFLOP/s (runs {', '.join(f'{m:.1f}' for m in mm)}); "
       f"load avg at end {info['load_avg_end']}; wrote {path}"])


if __name__ == "__main__":
  main()

"""monl's train step vs a PyTorch eager twin of the same model, interleaved in one process (issue 7).

    python benchmarks/train_vs_torch.py [--config midsize] [--iters 7] [--warmup 2] [--quick]
        [--set model.attention=dot_product ...] [--out benchmarks/results/train_vs_torch.json]
        [--allocators glibc,tbb[,glibc_settings,jemalloc,monl] | --separate ROUNDS] [--impl both|jax|torch]

Without --allocators: one run with this process's allocator as it is (a plain `python` on a fresh
machine: glibc defaults). With --allocators: one run per setting, one after the other, each in a fresh
process (monl.allocator; common.allocator_env): `glibc` = what a script gets on a fresh machine,
`glibc_settings` = glibc's tunables as monl sets them where tbb is absent, `tbb` = oneTBB's malloc from
the tbb wheel, `jemalloc` = launch/env.sh with libjemalloc2 installed, `monl` = whichever of these
`python -m monl.main train` restarts a large step with on this host. Both models run under the same
setting in each run. With --separate: ROUNDS x (monl alone under the allocator its CLI picks, torch alone
in a plain process), fresh processes alternated: what a user of each gets, with nothing shared between
the two frameworks (allocator, caches, threads). --impl jax or torch times one implementation alone.

JAX: `monl.train.step.train_step` jitted with the state donated (as the trainer does). Torch: the twin
of `benchmarks/torch_twin.py` (same architecture, shapes and parameter count, asserted), AdamW +
clipping + EMA. Both get the same random batch; steps alternate jax, torch, jax, torch, ... after
warm-up; medians. speedup = torch median / jax median (> 1: monl is faster). Also XLA's FLOP count of
the step per second as a fraction of the measured 2048² float32 matmul rate (JAX), and the same FLOP
count over torch's time for reference.
"""
from __future__ import annotations

import os
import resource

import common


def cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime, r.ru_stime


def main(argv=None):
  p = common.timing_parser(__doc__, iters=7, warmup=2, out="train_vs_torch",
                           quick_help="smoke run: tiny model, 1 iteration")
  p.add_argument("--config", default="midsize")
  p.add_argument("--set", action="append", help="monl config override, e.g. model.attention=dot_product")
  p.add_argument("--allocators", default="", help=f"comma-separated, of {', '.join(common.ALLOCATORS)}: "
                 "one fresh process per setting, side by side in one table")
  p.add_argument("--impl", choices=("both", "jax", "torch"), default="both",
                 help="time only one implementation, alone in this process")
  p.add_argument("--separate", type=int, default=0, metavar="ROUNDS",
                 help="ROUNDS x (monl alone as the CLI runs it, torch alone in a plain process), fresh processes")
  args = p.parse_args(argv)
  if args.allocators and args.separate:
    p.error("--allocators and --separate are two different comparisons: give one")
  if args.allocators:
    return compare_allocators(args)
  if args.separate:
    return compare_separate(args)
  if args.quick:
    args.iters, args.warmup = 1, 1

  import jax
  import numpy as np
  import torch
  import torch_twin
  from train_step import apply_overrides, parse_overrides
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)

  overrides = parse_overrides(args.set)
  config = apply_overrides(common.load_config(args.config, args.quick), overrides)
  twin, s = torch_twin.build(config)
  steps = {}
  if args.impl in ("both", "jax"):
    state = s.init_state()
    steps["jax"] = s.stepper(s.step_fn().lower(state, s.batch, s.key).compile(), state)
  if args.impl in ("both", "torch"):
    trainer = torch_twin.TorchTrainer(twin, s.obj.schedule, config.train, ema=config.train.ema_decay)
    np_batch = {k: np.array(v) for k, v in s.batch.items()}  # writable copies for torch.from_numpy
    steps["torch"] = lambda: trainer.step(np_batch)
  del twin
  flops = common.step_flops(s)  # layers unrolled: see common.step_flops

  cpu = {"jax": [0.0, 0.0], "torch": [0.0, 0.0]}
  calls = {"jax": 0, "torch": 0}

  def timed(name, fn):
    def run():  # CPU seconds of the timed calls only: the warm-up's first touch of memory is not a step's
      u0, s0 = cpu_seconds()
      out = jax.block_until_ready(fn())
      u1, s1 = cpu_seconds()
      calls[name] += 1
      if calls[name] > args.warmup:
        cpu[name][0] += u1 - u0
        cpu[name][1] += s1 - s0
      return out
    return run

  info = common.machine_info()
  mm = [common.matmul_rate(n=512 if args.quick else 2048, iters=3 if args.quick else 10)]
  times = common.interleave({name: timed(name, fn) for name, fn in steps.items()}, warmup=args.warmup,
                            iters=args.iters)
  mm.append(common.matmul_rate(n=512 if args.quick else 2048, iters=3 if args.quick else 10))
  rate = common.median(mm)
  rows = []
  for name in steps:
    t = common.median(times[name])
    rows.append({"impl": "monl (JAX)" if name == "jax" else "torch twin (eager)", "params": s.num_params(),
                 "batch": s.batch_size, "tokens": s.tokens_per_example, "step_s": t,
                 "examples_per_s": s.batch_size / t, "gflop_per_s_xla_count": flops / t / 1e9,
                 "fraction_of_matmul": flops / t / 1e9 / rate,
                 "user_cpu_s_per_step": cpu[name][0] / args.iters, "sys_cpu_s_per_step": cpu[name][1] / args.iters,
                 "times": times[name]})
  at_rate = flops / 1e9 / rate  # the step if every counted FLOP ran at the 2048^2 matmul rate
  if len(rows) == 1:  # one implementation alone (--impl; a --separate round)
    path = common.write_json(args.out, {"machine": info, "config": args.config, "overrides": overrides,
                                        "xla_gflop_per_step": flops / 1e9, "matmul_gflop_per_s": mm,
                                        "step_s_at_matmul_rate": at_rate, "results": rows, "quick": args.quick})
    common.print_table(f"train step, {rows[0]['impl']} alone ({args.config}, float32, {args.iters} runs)", rows,
                       ["impl", "step_s", "fraction_of_matmul", "user_cpu_s_per_step", "sys_cpu_s_per_step"], info,
                       [f"wrote {path}"])
    return
  speedup = rows[1]["step_s"] / rows[0]["step_s"]
  # The fraction of the matmul rate a step 1.3x faster than torch's would have to sustain (> 1 means no
  # fp32 schedule can).
  needed_13 = at_rate / (rows[1]["step_s"] / 1.3)
  info["load_avg_end"] = common.load_avg()
  path = common.write_json(args.out, {"machine": info, "config": args.config, "overrides": overrides,
                                      "xla_gflop_per_step": flops / 1e9, "matmul_gflop_per_s": mm,
                                      "speedup_jax_over_torch": speedup, "step_s_at_matmul_rate": at_rate,
                                      "fraction_needed_for_1_3x": needed_13, "results": rows, "quick": args.quick,
                                      "model": dict(config.model)})
  common.print_table(
      f"train step, monl vs PyTorch eager twin ({args.config}, float32, {args.iters} interleaved runs)", rows,
      ["impl", "params", "batch", "tokens", "step_s", "examples_per_s", "gflop_per_s_xla_count",
       "fraction_of_matmul", "user_cpu_s_per_step", "sys_cpu_s_per_step"], info,
      [f"monl speed / torch speed = {speedup:.2f}x (target >= 1.0, stretch 1.3); XLA FLOPs/step "
       f"{flops / 1e9:.1f} G; matmul {rate:.1f} GFLOP/s (runs {', '.join(f'{m:.1f}' for m in mm)}); "
       f"target fraction >= 0.6; at the matmul rate a step would take {at_rate:.2f} s, so 1.3x torch needs "
       f"{needed_13:.2f} of it; load avg at end {info['load_avg_end']}; wrote {path}"])


def child_args(args) -> list[str]:
  """This run's flags for the fresh processes of --separate and --allocators."""
  return ["--config", args.config, "--iters", str(args.iters), "--warmup", str(args.warmup), *["--quick"] * args.quick,
          *(a for kv in args.set or () for a in ("--set", kv))]


def compare_separate(args) -> None:
  """Rounds of two fresh processes, each timing one implementation alone: monl under the allocator its CLI
  restarts with (`monl`), torch in a plain process (`glibc`), as a user of either runs them."""
  child = child_args(args)
  out = f"{args.out.removesuffix('.json')}_separate"  # its own files: not the side-by-side run's
  rows = []
  for r in range(args.separate):
    (jax_run,) = common.run_per_allocator(os.path.abspath(__file__), [*child, "--impl", "jax"], ["monl"],
                                          f"{out}_round{r}")
    (torch_run,) = common.run_per_allocator(os.path.abspath(__file__), [*child, "--impl", "torch"], ["glibc"],
                                            f"{out}_round{r}")
    (j,), (t,) = jax_run["results"], torch_run["results"]
    rows.append({"round": r + 1, "monl_s": j["step_s"], "monl_allocator": jax_run["machine"]["allocator"],
                 "torch_s": t["step_s"], "monl_sys_s": j["sys_cpu_s_per_step"], "torch_sys_s": t["sys_cpu_s_per_step"],
                 "speedup": t["step_s"] / j["step_s"]})
  speedups = [r["speedup"] for r in rows]
  path = common.write_json(out, {"separate": rows, "median_speedup": common.median(speedups)})
  info = common.machine_info()
  info["allocator"] = "per column"
  common.print_table(
      f"train step, monl alone (as its CLI runs) vs torch alone (plain process), {args.config}, fresh "
      f"processes alternated", rows,
      ["round", "monl_s", "monl_allocator", "torch_s", "monl_sys_s", "torch_sys_s", "speedup"], info,
      [f"speedup = torch step / monl step of the same round; median {common.median(speedups):.2f}x over "
       f"{len(rows)} rounds (stretch 1.3); wrote {path}"])


def compare_allocators(args) -> None:
  """One run per allocator setting (fresh processes, sequential), then one table of all of them."""
  child = child_args(args)
  names = [n.strip() for n in args.allocators.split(",") if n.strip()]
  runs = common.run_per_allocator(os.path.abspath(__file__), child, names, args.out)
  rows = [dict(r, allocator=run["machine"]["allocator"], speedup=run["speedup_jax_over_torch"])
          for run in runs for r in run["results"]]
  base = {r["impl"]: r["step_s"] for r in rows[:2]}  # the first setting's step times
  first_torch = rows[1]["step_s"]  # e.g. a plain torch process when the first setting is glibc
  for r in rows:
    r["vs_first_allocator"] = base[r["impl"]] / r["step_s"]
    r["vs_first_torch"] = first_torch / r["step_s"]
  path = common.write_json(args.out, {"allocators": names, "runs": runs})
  info = runs[-1]["machine"]
  info["allocator"] = "per row"
  common.print_table(
      f"train step, monl vs PyTorch eager twin ({args.config}), per allocator setting "
      f"({'--quick' if args.quick else f'{args.iters} interleaved runs each'})", rows,
      ["allocator", "impl", "step_s", "user_cpu_s_per_step", "sys_cpu_s_per_step", "fraction_of_matmul",
       "vs_first_allocator", "speedup", "vs_first_torch"], info,
      ["speedup = torch step / monl step in the same run; vs_first_allocator = the first setting's step / "
       f"this one's, per impl; vs_first_torch = the first setting's torch step / this row's step (with "
       f"glibc first: against a plain torch process, which tbbmalloc slows); 1.3x the first torch needs "
       f"{runs[0]['fraction_needed_for_1_3x']:.2f} of the matmul rate; load avg at end of each run: "
       f"{[r['machine']['load_avg_end'] for r in runs]}; wrote {path}"])


if __name__ == "__main__":
  main()

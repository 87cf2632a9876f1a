"""Sampling speed: clips/s and seconds per denoising step at 50 steps, and one step vs one forward pass.

    python benchmarks/sampling.py [--configs default,midsize] [--steps 50] [--iters 3] [--warmup 1] [--task joint]
        [--quick] [--out benchmarks/results/sampling.json]

For each config, at its `sample.batch_size`: the whole sampler (`monl.sample.sampler.sample`, DDIM,
one `lax.scan` over the steps, MoNL conditioning of the task's given cells) jitted as the sampling CLI
does, vs one plain jitted forward pass (`model.apply`) of the same batch. Runs are interleaved
(sampler, forward, sampler, ...), medians reported. step/forward = (sampler seconds / steps) /
forward seconds; issue 7's target is ≤ 1.1.
"""
from __future__ import annotations


import common


def bench_config(name: str, args) -> dict:
  import jax
  import jax.numpy as jnp
  from monl.sample import sampler as sampler_lib
  from monl.sample import tasks as tasks_lib
  config = common.load_config(name, args.quick)
  s = common.Setup(config, batch_size=config.sample.batch_size)
  lay, sched = s.layout, s.obj.schedule
  params = s.random_params()
  tokens, t = s.random_tokens_and_levels()
  given = jnp.asarray(tasks_lib.task_mask(args.task, lay.names, lay.num_segments), bool)
  levels = sampler_lib.level_schedule(sched.num_steps, args.steps, lay.num_modalities, lay.num_segments)
  cfg = sampler_lib.SamplerConfig(sampler="ddim", eta=0.0)

  @jax.jit
  def sample(params, x0, given, key):
    denoise = lambda tok, tt, sc: s.model.apply(params, tok, tt, sc)
    return sampler_lib.sample(denoise, lay, sched, levels, x0, given, key, cfg)

  sample = sample.lower(params, tokens, given, s.key).compile()  # compiled ahead: no warm-up needed
  forward = jax.jit(s.model.apply).lower(params, tokens, t).compile()
  times = common.interleave({"sample": lambda: sample(params, tokens, given, s.key),
                             "forward": lambda: forward(params, tokens, t)},
                            warmup=args.warmup, iters=args.iters)
  t_sample, t_fwd = common.median(times["sample"]), common.median(times["forward"])
  per_step = t_sample / args.steps
  return {"config": name, "task": args.task, "batch": s.batch_size, "steps": args.steps,
          "sample_s": t_sample, "clips_per_s": s.batch_size / t_sample, "step_s": per_step,
          "forward_s": t_fwd, "step_over_forward": per_step / t_fwd, "times": times}


def main(argv=None):
  p = common.timing_parser(__doc__, iters=3, warmup=1, out="sampling",
                           quick_help="smoke run: tiny model, 2 steps, 1 iteration")
  p.add_argument("--configs", default="default,midsize")
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--task", default="joint", help="joint, or any named task of monl.sample.tasks")
  args = p.parse_args(argv)
  if args.quick:
    args.steps, args.iters = 2, 1
    if args.configs == "default,midsize":
      args.configs = "default"
  info = common.machine_info()
  rows = [bench_config(n, args) for n in args.configs.split(",")]
  info["load_avg_end"] = common.load_avg()
  path = common.write_json(args.out, {"machine": info, "results": rows, "quick": args.quick})
  common.print_table(
      f"sampling (DDIM, {args.steps} steps, task {args.task}, float32)", rows,
      ["config", "batch", "steps", "sample_s", "clips_per_s", "step_s", "forward_s", "step_over_forward"],
      info, [f"target: step_over_forward <= 1.1; load avg at end {info['load_avg_end']}; wrote {path}"])


if __name__ == "__main__":
  main()

"""Guidance on a self-conditioned model: each branch's own self-conditioning state vs the old shared one.

    python benchmarks/guidance_selfcond.py --workdir RUN [--tasks a2v,v2a,continue] [--guidance 0,1,2,4]
        [--num 64] [--steps 50] [--seed 0] [--out benchmarks/results/guidance_selfcond.json]

RUN must be trained with `config.model.self_cond_rate > 0`. For every guidance scale, a full
`monl.eval.evaluate` of the tasks (same first --num clips of the eval split, same seed) with the
sampler as it is ("own": each guidance branch carries its own self-conditioning state, so the cells
the unconditional branch drops never see the condition), and for every scale > 0 once more with the
behaviour before that fix ("shared": the unconditional half of the batched call is fed the
conditional branch's x0 estimate as its self-conditioning input, which holds the clean condition in
the given cells). The shared variant is reproduced by wrapping the model's noise predictor, not by
old code: with guidance the sampler's call is [cond | uncond] of 2B clips, and the wrapper replaces
the second half of the self-conditioning input by the first.

Scores: each task's primary metric (ground truth on a built-in dataset, lower is better), the
paired sign-flip test of own vs shared on the same clips, and results.png-style bars
(benchmarks/results/guidance_selfcond.png).
"""
from __future__ import annotations

import argparse
import os
import time

import common


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a run trained with config.model.self_cond_rate > 0")
  p.add_argument("--config", default=None, help="config file, used only when WORKDIR/config.json is missing")
  p.add_argument("--tasks", default="a2v,v2a,continue", help="tasks with given cells (guidance needs some)")
  p.add_argument("--guidance", default="0,1,2,4", help="comma-separated guidance scales")
  p.add_argument("--num", type=int, default=64, help="clips per task (the eval split's first NUM)")
  p.add_argument("--steps", type=int, default=50, help="DDIM steps")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="guidance_selfcond", help="JSON name under benchmarks/results/, or a .json path")
  args = p.parse_args(argv)
  try:
    args.guidance = [float(g) for g in args.guidance.split(",") if g.strip()]
  except ValueError:
    p.error(f"--guidance {args.guidance!r}: expected comma-separated numbers like 0,1,2,4")
  if args.num < 2:
    p.error("--num must be >= 2")
  return args


class SharedSelfCond:
  """The train objective with the pre-fix sampler behaviour: in a guided call (2B clips, [cond | uncond])
  the unconditional half's self-conditioning input is the conditional half's."""

  def __init__(self, obj):
    self._obj = obj

  def __getattr__(self, name):
    return getattr(self._obj, name)

  def eps(self, params, tokens, t, self_cond=None):
    import jax.numpy as jnp
    if self_cond is not None:
      half = t.shape[0] // 2
      self_cond = {m: jnp.concatenate([v[:half], v[:half]]) for m, v in self_cond.items()}
    return self._obj.eps(params, tokens, t, self_cond)


def plot(png: str, rows: list[dict], step: int) -> None:
  """Bars per (task, guidance): own vs shared."""
  import numpy as np

  from monl.eval import evaluate
  groups = [f"{r['task']} g={r['guidance']:g}" for r in rows]
  values = np.asarray([[r["own"], r.get("shared", np.nan)] for r in rows])
  evaluate.bar_chart(png, groups, ["own (fixed)", "shared (before)"], values,
                     f"self-conditioned model, step {step}: primary score vs guidance (lower is better)", "score")


def main(argv=None):
  args = parse_args(argv)
  import copy

  import numpy as np

  from monl import ablate, diagnose
  from monl.eval import evaluate
  from monl.sample import run as run_lib
  config = diagnose.run_config(args.workdir, args.config)
  rate = float(config.model.self_cond_rate)
  if rate <= 0:
    raise SystemExit(f"{args.workdir}: config.model.self_cond_rate is {rate}; this compares self-conditioning "
                     "variants, train with --config.model.self_cond_rate=0.9")
  t0 = time.perf_counter()
  own = run_lib.Generator(config, args.workdir)
  shared = copy.copy(own)
  shared.obj = SharedSelfCond(own.obj)  # `_compiled` caches per generator object: its own samplers
  results = {}
  for g in args.guidance:
    for name, gen in (("own", own), ("shared", shared)):
      if name == "shared" and g == 0:
        continue  # unguided: one branch, the variants are identical
      label = f"{name}@{g:g}"
      print(f"[guidance_selfcond] evaluating {label} ...", flush=True)
      results[label] = evaluate.evaluate(
          config, args.workdir, tasks=args.tasks, num=args.num, steps=args.steps, seed=args.seed,
          guidance=f"{g:g}", output=os.path.join(args.workdir, "guidance_selfcond", label.replace("@", "_")),
          i3d=False, generator=gen, quiet=True, solver="ddim")
  tasks = list(results[f"own@{args.guidance[0]:g}"]["tasks"])
  rows = []
  for task in tasks:
    metric = results[f"own@{args.guidance[0]:g}"]["tasks"][task]["primary"]
    for g in args.guidance:
      entry = lambda v: results[f"{v}@{g:g}"]["tasks"][task]["metrics"][metric]
      row = {"task": task, "metric": metric, "guidance": g, "own": entry("own")["value"]}
      if g > 0:
        a, b = np.asarray([entry("own")["per_clip"]]), np.asarray([entry("shared")["per_clip"]])
        test = ablate.paired_test(a, b)
        row.update(shared=entry("shared")["value"], own_minus_shared=test["mean_diff"], p=test["p"])
      rows.append(row)
  info = common.machine_info()
  path = common.write_json(args.out, {
      "machine": info, "workdir": args.workdir, "checkpoint_step": int(own.step), "self_cond_rate": rate,
      "tasks": tasks, "num": args.num, "steps": args.steps, "seed": args.seed, "rows": rows,
      "seconds": time.perf_counter() - t0})
  png = os.path.splitext(path)[0] + ".png"
  plot(png, rows, int(own.step))
  fmt = lambda v: "—" if v is None else f"{v:.4g}"
  common.print_table(
      f"primary score per task and guidance ({args.num} clips, {args.steps} DDIM steps, seed {args.seed}; "
      f"step {own.step} of {args.workdir}, self_cond_rate {rate})",
      [{"task": r["task"], "metric": r["metric"], "guidance": f"{r['guidance']:g}", "own": fmt(r["own"]),
        "shared": fmt(r.get("shared")), "own-shared": fmt(r.get("own_minus_shared")), "p": fmt(r.get("p"))}
       for r in rows],
      ["task", "metric", "guidance", "own", "shared", "own-shared", "p"], info,
      [f"own = each branch its own self-conditioning state (current); shared = the unconditional branch fed "
       f"the conditional one's (before the fix); p = paired sign-flip test; wrote {path}, {png}"])


if __name__ == "__main__":
  main()

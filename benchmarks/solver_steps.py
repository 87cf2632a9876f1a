"""Fewer sampling steps: DPM-Solver++ at 10/15/25/50 steps vs 250-step DDIM on a trained run, per task.

    python benchmarks/solver_steps.py --workdir RUN [--config FILE] [--tasks paper] [--num 64] [--seed 0]
        [--guidance ''] [--solver dpmpp_2m] [--spacing logsnr] [--steps 10,15,25,50] [--ddim_steps 250] [--iters 2]
        [--i3d] [--out benchmarks/results/solver_steps.json]

The run's own config (RUN/config.json, as `monl.diagnose` reads it; `--config` only when it is missing)
and one restored checkpoint (`monl.sample.run.Generator`, EMA parameters) serve every variant. Each
variant (DDIM at --ddim_steps with the paper's uniform spacing, then --solver at each of --steps with
--spacing's levels) is a full `monl.eval.evaluate` on the
same first --num clips of the eval split with the same seed and guidance (I3D off unless --i3d), written
to RUN/solver_steps/<solver>_<spacing>_<steps>/. Scores: each task's primary metric (on a built-in dataset the
ground-truth score the task is about, lower is better; else the mean latent FD).

A variant *matches* DDIM on a task when it is not significantly worse: its mean per-clip difference
from DDIM is <= 0, or the paired sign-flip test (`monl.ablate.paired_test`, same clips) gives p >= 0.05
(metrics without per-clip scores: within 5% of DDIM's value). `matches_at` = the fewest steps that
match. Timing: the compiled sampler on one batch of `config.sample.batch_size` clips (joint task, the
run's guidance), median of --iters calls after a warm-up; plus each evaluate's sampling seconds (which
include its first batch's compile). Issue 16's target: a match at <= 25 steps, i.e. >= 10x fewer
model calls than 250-step DDIM.
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import common

ALPHA = 0.05
NO_PER_CLIP_TOLERANCE = 0.05  # relative, for metrics without per-clip scores


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a trained run (checkpoints/, config.json)")
  p.add_argument("--config", default=None, help="config file, used only when WORKDIR/config.json is missing")
  p.add_argument("--tasks", default="paper", help="'all', 'paper' or comma-separated task names")
  p.add_argument("--num", type=int, default=64, help="clips per task (the eval split's first NUM)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--guidance", default="", help="'' = config.sample.guidance; one float or 'video=2,audio=1'")
  p.add_argument("--solver", default="dpmpp_2m", help="the multistep solver: dpmpp_2m | dpmpp_3m")
  p.add_argument("--spacing", default="logsnr", help="levels of the --solver's steps: logsnr | uniform | karras")
  p.add_argument("--steps", default="10,15,25,50", help="comma-separated step counts of --solver")
  p.add_argument("--ddim_steps", type=int, default=250, help="steps of the DDIM reference (the paper: 250)")
  p.add_argument("--iters", type=int, default=2, help="timed sampler calls per variant (after one warm-up)")
  p.add_argument("--i3d", action="store_true", help="also FVD/KVD (I3D on CPU: ~1.5 s per clip)")
  p.add_argument("--out", default="solver_steps", help="JSON name under benchmarks/results/, or a .json path")
  args = p.parse_args(argv)
  from monl.sample import sampler
  sampler.check_solver(args.solver, "--solver")
  sampler.check_spacing(args.spacing, "--spacing")
  if args.solver == "ddim":
    p.error("--solver must be a multistep solver (dpmpp_2m | dpmpp_3m); DDIM is the reference")
  try:
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
  except ValueError:
    p.error(f"--steps {args.steps!r}: expected comma-separated integers like 10,15,25,50")
  if not args.steps or min(args.steps) < 1 or args.ddim_steps < 1:
    p.error("--steps and --ddim_steps must be >= 1")
  if args.num < 2:
    p.error("--num must be >= 2 (evaluate needs two clips per task)")
  return args


def variant_label(solver: str, steps: int, spacing: str = "uniform") -> str:
  return f"{solver}@{steps}" if spacing == "uniform" else f"{solver}/{spacing}@{steps}"


def _sign(entry: dict[str, Any]) -> float:
  return -1.0 if entry.get("higher_is_better") else 1.0


def compare(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
  """Candidate vs reference metric entries (evaluate's `metrics[name]`) of one task: whether the candidate
  is not significantly worse. `worse_by` > 0 means worse (whatever the metric's direction)."""
  import numpy as np
  from monl import ablate
  sign = _sign(reference)
  ref_clips, cand_clips = reference.get("per_clip"), candidate.get("per_clip")
  if ref_clips is not None and cand_clips is not None and len(ref_clips) == len(cand_clips):
    a = sign * np.asarray(cand_clips, np.float64)[None]
    b = sign * np.asarray(ref_clips, np.float64)[None]
    test = ablate.paired_test(a, b)
    worse_by, p = test["mean_diff"], test["p"]
    return {"worse_by": worse_by, "p": p, "matches": bool(worse_by <= 0 or p >= ALPHA), "test": test["test"]}
  ref, cand = sign * reference["value"], sign * candidate["value"]
  worse_by = cand - ref
  return {"worse_by": worse_by, "p": None, "test": "relative",
          "matches": bool(worse_by <= NO_PER_CLIP_TOLERANCE * abs(ref))}


def summarize(reference: dict[str, Any], variants: Sequence[tuple[str, int, dict[str, Any]]]) -> list[dict]:
  """One row per task of the reference evaluation: its primary metric under every variant.

  Args:
    reference: evaluate's results of the DDIM reference.
    variants: (label (`variant_label`), steps, evaluate results) of the candidates, in increasing steps.
  Returns:
    rows {"task", "metric", "ddim": value, "<solver>@<steps>": value, "<...>_match": bool, "matches_at"}.
  """
  rows = []
  for task, t in reference["tasks"].items():
    metric = t["primary"]
    if metric is None:
      continue
    ref_entry = t["metrics"][metric]
    row: dict[str, Any] = {"task": task, "metric": metric, "ddim": ref_entry["value"]}
    matches_at = None
    for label, steps, res in variants:
      entry = res["tasks"].get(task, {}).get("metrics", {}).get(metric)
      if entry is None:
        row[label] = None
        continue
      cmp = compare(ref_entry, entry)
      row[label], row[f"{label}_match"], row[f"{label}_p"] = entry["value"], cmp["matches"], cmp["p"]
      if cmp["matches"] and matches_at is None:
        matches_at = steps
    row["matches_at"] = matches_at
    rows.append(row)
  return rows


def score_table(rows: Sequence[dict], ddim_steps: int, labels: Sequence[str]) -> list[dict]:
  """Rows for printing: values to 4 digits, '*' where a variant is significantly worse than DDIM."""
  out = []
  for r in rows:
    o = {"task": r["task"], "metric": r["metric"], f"ddim@{ddim_steps}": f"{r['ddim']:.4g}"}
    for lbl in labels:
      v = r.get(lbl)
      o[lbl] = "—" if v is None else f"{v:.4g}" + ("" if r.get(f"{lbl}_match") else "*")
    o["matches_at"] = "—" if r["matches_at"] is None else str(r["matches_at"])
    out.append(o)
  return out


def time_sampler(gen, solver: str, spacing: str, steps: int, guidance: str, iters: int) -> float:
  """Median seconds of one compiled sampler call on a batch of config.sample.batch_size (joint task)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from monl.sample import run as run_lib
  lay = gen.layout
  cfg = gen.sampler_config(run_lib.SampleRequest(solver=solver, spacing=spacing), gen.guidance_scales(guidance))
  window = gen.window(cfg, steps)
  bs = gen.config.sample.batch_size
  x0 = lay.patchify({m.name: jnp.zeros((bs,) + tuple(m.shape), jnp.float32) for m in lay.modalities})
  given = np.zeros((lay.num_modalities, lay.num_segments), bool)
  return common.median(common.time_calls(lambda: window(x0, given, jax.random.key(0)), warmup=1, iters=iters))


def main(argv=None):
  args = parse_args(argv)
  from monl import diagnose
  from monl.eval import evaluate
  from monl.sample import run as run_lib
  config = diagnose.run_config(args.workdir, args.config)
  t0 = time.perf_counter()
  gen = run_lib.Generator(config, args.workdir)
  plan = [("ddim", "uniform", args.ddim_steps)] + [(args.solver, args.spacing, s) for s in sorted(set(args.steps))]
  results, timing = {}, []
  for solver, spacing, steps in plan:
    label = variant_label(solver, steps, spacing)
    print(f"[solver_steps] evaluating {label} ...", flush=True)
    res = evaluate.evaluate(config, args.workdir, tasks=args.tasks, num=args.num, steps=steps, seed=args.seed,
                            guidance=args.guidance, output=os.path.join(args.workdir, "solver_steps",
                                                                        f"{solver}_{spacing}_{steps}"),
                            i3d=args.i3d, generator=gen, quiet=True, solver=solver, spacing=spacing)
    results[label] = res
    per_batch = time_sampler(gen, solver, spacing, steps, args.guidance, args.iters)
    timing.append({"variant": label, "steps": steps, "s_per_batch": per_batch,
                   "clips_per_s": config.sample.batch_size / per_batch,
                   "eval_sampling_s": sum(t.get("sampling_seconds", 0.0) for t in res["tasks"].values())})
  ref_label = variant_label("ddim", args.ddim_steps)
  for row in timing:
    row["speedup_vs_ddim"] = timing[0]["s_per_batch"] / row["s_per_batch"]
  labels = [variant_label(s, n, sp) for s, sp, n in plan[1:]]
  rows = summarize(results[ref_label], [(lbl, n, results[lbl]) for lbl, (_, _, n) in zip(labels, plan[1:])])
  info = common.machine_info()
  path = common.write_json(args.out, {
      "machine": info, "workdir": args.workdir, "checkpoint_step": int(gen.step), "tasks": args.tasks,
      "num": args.num, "seed": args.seed, "guidance": args.guidance or None, "solver": args.solver,
      "spacing": args.spacing, "ddim_steps": args.ddim_steps, "rows": rows, "timing": timing, "seconds": time.perf_counter() - t0,
      "results": {k: {t: {"primary": v["primary"], "metrics": {m: {"value": e["value"]} for m, e in v["metrics"].items()}}
                      for t, v in r["tasks"].items()} for k, r in results.items()}})
  common.print_table(
      f"timing: compiled sampler, batch {config.sample.batch_size} (step {gen.step} of {args.workdir})", timing,
      ["variant", "steps", "s_per_batch", "clips_per_s", "speedup_vs_ddim", "eval_sampling_s"], info)
  common.print_table(
      f"primary score per task ({args.num} clips, seed {args.seed}; lower is better unless the metric says "
      f"otherwise): {args.solver} vs DDIM@{args.ddim_steps}", score_table(rows, args.ddim_steps, labels),
      ["task", "metric", f"ddim@{args.ddim_steps}", *labels, "matches_at"], info,
      [f"* = significantly worse than DDIM@{args.ddim_steps} (paired sign-flip test, p < {ALPHA}); "
       f"matches_at = fewest steps not significantly worse; wrote {path}"])


if __name__ == "__main__":
  main()

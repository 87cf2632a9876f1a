"""Mixture-strategy ablation: train every strategy with the same budget and seeds, evaluate, tabulate.

  python -m monl.ablate --config configs/default.py --out /tmp/monl_ablation [--budget 1.0] \
      [--strategies monl,vanilla,pm,pt,ptm,pt_pm_ptm] [--tasks all] [--i3d]

Each strategy runs in OUT/<strategy>/ (checkpoints, tb, eval/results.json) with the config file's
settings except `mixture.weights` (the preset of `configs.common.STRATEGY_PRESETS`) and the budget:
`train.num_steps = round(600 * budget)`, eval on `round(64 * budget)` clips (8..256) of the eval
split with 25 DDIM steps. The default budget (1.0) takes ~25-45 min for the six strategies on a
2-core CPU (more when the cores are shared).

Resumable: a run whose final checkpoint and eval/results.json exist is skipped ("skip"); a run
with its final checkpoint but no results is only evaluated; an interrupted training resumes from its
latest checkpoint. The settings are stored in OUT/ablation_settings.json and a rerun with different
settings in the same OUT is refused (use another --out).

Table: one primary number per task (lower is better): on the built-in dataset the ground-truth
score the task is about (`monl.eval.evaluate.PRIMARY_GT`: av_agreement for joint/a2v/v2a and the
cross-modal continuations, trajectory_error for continue/continue_2s/inpaint/continue_video), else
the mean latent FD. Average columns: mean rank over tasks (1 = best; ties share the mean rank) and
the mean over tasks of value / (mean of that task's values over strategies) (1.0 = average).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

BASE_TRAIN_STEPS = 600
BASE_EVAL_NUM = 64
EVAL_STEPS = 25
DEFAULT_STRATEGIES = ("vanilla", "pm", "pt", "ptm", "pt_pm_ptm", "monl")


def load_config(spec: str):
  """'configs/default.py[:variant]' -> ConfigDict (as `--config` of monl.main does)."""
  path, _, arg = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location("_ablate_config", path)
  if mod_spec is None or mod_spec.loader is None:
    raise FileNotFoundError(f"--config {spec!r}: cannot load {path}")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if repo not in sys.path:  # config files import `configs.common`
    sys.path.insert(0, repo)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def budget_settings(budget: float, train_steps: int | None = None, num: int | None = None,
                    steps: int | None = None) -> dict[str, int]:
  return {"train_steps": int(train_steps or max(1, round(BASE_TRAIN_STEPS * budget))),
          "num": int(num or min(256, max(8, round(BASE_EVAL_NUM * budget)))),
          "eval_steps": int(steps or EVAL_STEPS)}


def strategy_config(config, strategy: str, train_steps: int):
  """The shared config with this strategy's mixture weights and the budget's step count."""
  from configs import common
  c = config.copy_and_resolve_references()
  with c.unlocked():
    common.apply_variant(c, f"strategy={strategy}")
    c.train.num_steps = train_steps
    c.train.warmup_steps = min(c.train.warmup_steps, max(1, train_steps // 6))
    c.ckpt.every = min(c.ckpt.every, max(1, train_steps // 3))
  return c


def latest_checkpoint(workdir) -> int | None:
  d = epath.Path(workdir) / "checkpoints"
  steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.exists() else []
  return max(steps) if steps else None


def _fmt_s(seconds: float) -> str:
  m, s = divmod(int(max(seconds, 0)), 60)
  return f"{m}m{s:02d}s"


def run_ablation(config, out: str, *, budget: float = 1.0, strategies: Sequence[str] = DEFAULT_STRATEGIES,
                 tasks: str = "all", i3d: bool = False, train_steps: int | None = None, num: int | None = None,
                 steps: int | None = None, seed: int = 0) -> dict[str, Any]:
  """Trains and evaluates every strategy (resumably) and writes ablation.{json,md,png} to `out`."""
  from monl.eval import evaluate as eval_lib
  from monl.train import loop
  out_dir = epath.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  b = budget_settings(budget, train_steps, num, steps)
  settings = dict(b, budget=budget, tasks=tasks, i3d=i3d, seed=seed, config_seed=int(config.seed))
  settings_file = out_dir / "ablation_settings.json"
  if settings_file.exists():
    old = json.loads(settings_file.read_text())
    if old != settings:
      raise ValueError(f"{out_dir} holds an ablation with other settings {old}; this one is {settings}. "
                       "Use another --out (or delete the old one).")
  settings_file.write_text(json.dumps(settings, indent=2))

  results, durations = {}, []
  t_all = time.perf_counter()
  for i, strategy in enumerate(strategies):
    workdir = out_dir / strategy
    res_file = workdir / "eval" / "results.json"
    c = strategy_config(config, strategy, b["train_steps"])
    done_steps = latest_checkpoint(workdir)
    head = f"[{i + 1}/{len(strategies)}] {strategy}"
    if done_steps == b["train_steps"] and res_file.exists():
      print(f"{head}: skip (checkpoint {done_steps} and {res_file} exist)", flush=True)
      results[strategy] = json.loads(res_file.read_text())
      continue
    left = len(strategies) - i
    eta = f", ETA {_fmt_s(np.mean(durations) * left)} for the {left} runs left" if durations else ""
    t0 = time.perf_counter()
    if done_steps != b["train_steps"]:
      print(f"{head}: training {b['train_steps']} steps (from {done_steps or 0}), weights "
            f"{tuple(c.mixture.weights)}{eta}", flush=True)
      loop.train(c, str(workdir))
    print(f"{head}: evaluating {tasks} on {b['num']} clips, {b['eval_steps']} steps", flush=True)
    results[strategy] = eval_lib.evaluate(c, str(workdir), tasks=tasks, num=b["num"], steps=b["eval_steps"],
                                          seed=seed, output=str(workdir / "eval"), i3d=i3d)
    durations.append(time.perf_counter() - t0)
    print(f"{head}: done in {_fmt_s(durations[-1])} (ablation so far {_fmt_s(time.perf_counter() - t_all)})",
          flush=True)

  table = ablation_table(results, settings)
  (out_dir / "ablation.json").write_text(json.dumps(table, indent=2))
  (out_dir / "ablation.md").write_text(ablation_markdown(table))
  ablation_chart(table, out_dir / "ablation.png")
  print(f"ablation written to {out_dir}/ablation.{{md,json,png}} ({_fmt_s(time.perf_counter() - t_all)})",
        flush=True)
  return table


def _ranks(values: np.ndarray) -> np.ndarray:
  """Ranks (1 = smallest) with ties sharing their mean rank; NaN -> NaN."""
  out = np.full(values.shape, np.nan)
  ok = np.flatnonzero(np.isfinite(values))
  order = ok[np.argsort(values[ok], kind="stable")]
  r = np.empty(len(order))
  r[np.arange(len(order))] = np.arange(1, len(order) + 1)
  vals = values[order]
  for v in np.unique(vals):
    same = vals == v
    r[same] = r[same].mean()
  out[order] = r
  return out


def ablation_table(results: dict[str, dict], settings: dict[str, Any]) -> dict[str, Any]:
  strategies = list(results)
  tasks: list[str] = []
  for r in results.values():
    tasks += [t for t in r["tasks"] if t not in tasks]
  primary = {}
  for t in tasks:
    for r in results.values():
      if t in r["tasks"] and r["tasks"][t]["primary"]:
        primary[t] = r["tasks"][t]["primary"]
        break
  vals = np.full((len(strategies), len(tasks)), np.nan)
  for i, s in enumerate(strategies):
    for j, t in enumerate(tasks):
      m = results[s]["tasks"].get(t, {}).get("metrics", {}).get(primary.get(t, ""))
      if m is not None:
        vals[i, j] = m["value"]
  ranks = np.stack([_ranks(vals[:, j]) for j in range(len(tasks))], axis=1) if tasks else vals
  with np.errstate(invalid="ignore", divide="ignore"):
    norm = vals / np.nanmean(vals, axis=0, keepdims=True)
  first = next(iter(results.values()), {})
  floor = {t: first.get("real_reference", {}).get(primary.get(t, ""), {}).get("value") for t in tasks}
  return {
      "settings": settings, "strategies": strategies, "tasks": tasks, "primary": primary,
      "real_floor": floor,
      "values": {s: {t: (None if np.isnan(vals[i, j]) else float(vals[i, j])) for j, t in enumerate(tasks)}
                 for i, s in enumerate(strategies)},
      "mean_rank": {s: float(np.nanmean(ranks[i])) for i, s in enumerate(strategies)},
      "mean_normalised": {s: float(np.nanmean(norm[i])) for i, s in enumerate(strategies)},
      "checkpoint_step": {s: results[s].get("checkpoint_step") for s in strategies},
      "note": ("lower is better; primary = ground-truth task score on the built-in dataset (else mean "
               "latent FD); mean_rank over tasks (1 = best); mean_normalised = mean over tasks of value / "
               "mean over strategies of that task"),
  }


def ablation_markdown(table: dict[str, Any]) -> str:
  s = table["settings"]
  tasks = table["tasks"]
  lines = [f"# Mixture-strategy ablation ({s['train_steps']} train steps per strategy, {s['num']} eval clips "
           f"per task, {s['eval_steps']} sampling steps, budget {s['budget']})", "",
           "Primary number per task (lower is better): " +
           ", ".join(f"{t}: `{table['primary'].get(t)}`" for t in tasks) + ".", "",
           "| strategy | " + " | ".join(tasks) + " | mean rank | mean normalised |",
           "|---|" + "---|" * (len(tasks) + 2)]
  best = {}
  for t in tasks:
    col = [(table["values"][st][t], st) for st in table["strategies"] if table["values"][st][t] is not None]
    best[t] = min(col)[1] if col else None
  best_rank = min(table["mean_rank"].values()) if table["mean_rank"] else None
  for st in table["strategies"]:
    cells = []
    for t in tasks:
      v = table["values"][st][t]
      txt = "—" if v is None else f"{v:.4g}"
      cells.append(f"**{txt}**" if best[t] == st else txt)
    r = table["mean_rank"][st]
    rtxt = f"{r:.2f}"
    cells += [f"**{rtxt}**" if r == best_rank else rtxt, f"{table['mean_normalised'][st]:.3f}"]
    lines.append(f"| {st} | " + " | ".join(cells) + " |")
  floor = table["real_floor"]
  lines.append("| *real clips (floor)* | " + " | ".join("—" if floor.get(t) is None else f"{floor[t]:.4g}"
                                                       for t in tasks) + " | | |")
  lines += ["", table["note"] + "."]
  return "\n".join(lines) + "\n"


def ablation_chart(table: dict[str, Any], path) -> None:
  from monl.eval.evaluate import bar_chart
  tasks, strategies = table["tasks"], table["strategies"]
  vals = np.array([[np.nan if table["values"][s][t] is None else table["values"][s][t] for s in strategies]
                   for t in tasks], dtype=np.float64).reshape(len(tasks), len(strategies))
  with np.errstate(invalid="ignore", divide="ignore"):
    vals = vals / np.nanmean(vals, axis=1, keepdims=True)
  bar_chart(path, tasks, strategies, vals, "mixture-strategy ablation: primary score / task mean "
            "over strategies (lower is better)", "rel.", reference=1.0)


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m monl.ablate", description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="config file, e.g. configs/default.py")
  p.add_argument("--out", required=True, help="output directory (one sub-directory per strategy)")
  p.add_argument("--budget", type=float, default=1.0, help="scales train steps (600) and eval clips (64)")
  p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
  p.add_argument("--tasks", default="all", help="'all', 'paper' or a comma-separated list")
  p.add_argument("--i3d", action="store_true", help="also FVD/KVD with I3D (slow on CPU)")
  p.add_argument("--train_steps", type=int, default=None, help="override the budget's train steps")
  p.add_argument("--num", type=int, default=None, help="override the budget's eval clips per task")
  p.add_argument("--steps", type=int, default=None, help=f"sampling steps (default {EVAL_STEPS})")
  p.add_argument("--seed", type=int, default=0, help="sampling seed")
  a = p.parse_args(argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from configs import common
  strategies = [s for s in a.strategies.split(",") if s]
  unknown = [s for s in strategies if s not in common.STRATEGY_PRESETS]
  if unknown:
    p.error(f"unknown strategies {unknown}; presets are {sorted(common.STRATEGY_PRESETS)}")
  table = run_ablation(load_config(a.config), a.out, budget=a.budget, strategies=strategies, tasks=a.tasks,
                       i3d=a.i3d, train_steps=a.train_steps, num=a.num, steps=a.steps, seed=a.seed)
  print(ablation_markdown(table))


if __name__ == "__main__":
  main()

"""Mixture-strategy ablation (paper Table 1): train every row over K seeds, evaluate, test, tabulate.

  python -m monl.ablate --config configs/default.py --out /tmp/monl_ablation [--budget 1.0] [--seeds 3] \
      [--rows vanilla,conditional,pm,pt,ptm,pt_pm_ptm,monl,vanilla_monl_mode] [--tasks all] \
      [--conditional_tasks paper] [--i3d]

Rows (`ROWS`, always tabulated in this order, the paper's); only the training mixture and the sampling
mode differ, everything else is the config file:
  vanilla      one level per clip (preset `vanilla`), evaluated with the **replacement** method
               (`sample.mode=replacement`: given cells re-noised to the current level each step), as in
               the paper: a model trained with one level per clip never saw clean cells next to noisy ones.
  conditional  one task-specific model per task (`mixture.condition_mask=<task>`: given cells at t = 0,
               the rest at one shared level from 1..T), each evaluated on its own task only, in MoNL mode.
               Tasks: `--conditional_tasks` (default `paper`, the paper's six) among `--tasks`; one training
               per task and seed. `joint` has no given cells, so its task-specific model *is* the vanilla
               model: the vanilla run of the same seed is reused (its joint results if the vanilla row
               ran, else its checkpoints are evaluated), never trained twice.
  pm, pt, ptm, pt_pm_ptm, monl   the `configs.common.STRATEGY_PRESETS` mixtures, MoNL-mode sampling.
  vanilla_monl_mode  extra row, not in the paper: the vanilla checkpoints evaluated in MoNL mode (given
               cells clean at t = 0); no training of its own. It is not part of the best-row choice or of
               the normalisation; its mean rank is where it would sit among the paper's rows.

Seeds: each trained model is trained `--seeds K` times with `config.seed = config.data.shuffle_seed = k`
(k = 0..K-1: parameter init, noise and data order); every run is evaluated on the same clips (the first
`num` of the eval split) with the same sampling seed `--seed`. Budget: `train.num_steps = round(2000 *
budget)`, eval on `round(64 * budget)` clips (8..256) with 25 DDIM steps.

Layout: OUT/<row>/seed<k>/ (checkpoints, tb, eval/results.json); the conditional row has one run per task
in OUT/conditional/seed<k>/<task>/; vanilla_monl_mode only OUT/vanilla_monl_mode/seed<k>/eval/.
Resumable per (row, seed[, task]): a run whose final checkpoint and results.json exist is skipped ("skip");
with the final checkpoint only it is only evaluated; an interrupted training resumes from its latest
checkpoint. The settings are stored in OUT/ablation_settings.json and a rerun with other settings in the
same OUT is refused; `--rows` and `--seeds` may change (a larger K reuses the finished seeds).

Table: one primary number per task (lower is better): on a built-in dataset the ground-truth score the
task is about (`monl.eval.evaluate.primary_metric`), else the mean latent FD. Each cell is the mean over the
K seeds ± its standard error (over seeds when K >= 2; with K = 1 the per-clip standard error of the one
run). **Bold** = best of the paper's rows; `*` = significantly worse than that best (p < 0.05, two-sided,
not corrected for the many comparisons). Average columns, from the seed means: mean rank over tasks
(1 = best; ties share the mean rank) and mean over tasks of value / (mean of that task's values over
the paper's rows) (1.0 = average).

Significance (`paired_test`), for every pair of rows and every task, paired by (seed index, clip):
  K >= 3: paired t-test on the K per-seed mean differences (K - 1 degrees of freedom). The seed is the
          unit: the clips scored by one trained model share that model's luck, so treating the K * C
          (seed, clip) pairs as independent would understate the run-to-run variance that a claim "row A
          beats row B" has to survive, and give too small p-values.
  K < 3:  paired sign-flip permutation test on the K * C per-(seed, clip) differences (statistic |mean|;
          exact when K * C <= 16, else `NUM_FLIPS` random sign vectors with a fixed seed). With one or two
          seeds a t-test over seeds has at most one degree of freedom, so only the clip-level test has
          power; it says whether the difference holds for these trained models on these clips, not across
          training seeds. Without per-clip scores (other datasets) it runs on the K run means and cannot
          reach p < 0.05.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from monl import host

BASE_TRAIN_STEPS = 2000  # ~70-80 s per model of configs/default.py on 2 CPU cores
BASE_EVAL_NUM = 64
EVAL_STEPS = 25
ALPHA = 0.05  # significance level of the `*` marks
NUM_FLIPS = 10000  # random sign vectors of the permutation test when exact enumeration is too large
PROTOCOL = "rows-seeds-v2"  # OUT layout OUT/<row>/seed<k>/; older OUTs (OUT/<strategy>/) are refused


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table: how its models are trained and sampled."""
  label: str  # as in the paper's Table 1
  preset: str  # `configs.common.STRATEGY_PRESETS` key of the training mixture
  mode: str  # sampling mode at evaluation: monl | replacement
  conditional: bool = False  # one task-specific model per task (mixture.condition_mask)
  eval_of: str | None = None  # evaluates that row's checkpoints instead of training its own
  extra: bool = False  # not one of the paper's rows: no best / normalisation role


ROWS = {
    "vanilla": Row("Vanilla", "vanilla", "replacement"),
    "conditional": Row("Conditional", "vanilla", "monl", conditional=True),
    "pm": Row("Pm", "pm", "monl"),
    "pt": Row("Pt", "pt", "monl"),
    "ptm": Row("Ptm", "ptm", "monl"),
    "pt_pm_ptm": Row("Pt/Pm/Ptm", "pt_pm_ptm", "monl"),
    "monl": Row("MoNL", "monl", "monl"),
    "vanilla_monl_mode": Row("vanilla (monl mode)", "vanilla", "monl", eval_of="vanilla", extra=True),
}
DEFAULT_ROWS = tuple(ROWS)


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


def row_config(config, row: str, train_steps: int, *, seed: int = 0, condition_mask: str = ""):
  """`strategy_config` of the row's preset with training seed `seed` (params, noise and data order),
  the row's sampling mode and, for the conditional row, the task mask trained on."""
  r = ROWS[row]
  c = strategy_config(config, r.preset, train_steps)
  with c.unlocked():
    c.seed = int(seed)
    c.data.shuffle_seed = int(seed)
    c.sample.mode = r.mode
    c.mixture.condition_mask = condition_mask
  return c


def latest_checkpoint(workdir) -> int | None:
  d = epath.Path(workdir) / "checkpoints"
  steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()] if d.exists() else []
  return max(steps) if steps else None


def _fmt_s(seconds: float) -> str:
  m, s = divmod(int(max(seconds, 0)), 60)
  return f"{m}m{s:02d}s"


@dataclasses.dataclass
class Run:
  """One evaluation (and the training it needs) of the ablation."""
  row: str
  seed: int
  tasks: list[str]
  train_dir: epath.Path
  eval_dir: epath.Path
  train_config: Any
  eval_config: Any
  reuse_vanilla: bool = False  # conditional joint: take the vanilla row's joint results if present
  name: str = ""


def plan_runs(config, out_dir: epath.Path, rows: Sequence[str], seeds: int, tasks: list[str],
              conditional_tasks: list[str], train_steps: int) -> list[Run]:
  """Every run, seed-major (all rows of seed 0 first), rows in `ROWS` order."""
  from monl.eval.evaluate import _task_dir
  runs = []
  for k in range(seeds):
    sd = f"seed{k}"
    van_dir = out_dir / "vanilla" / sd
    van_cfg = row_config(config, "vanilla", train_steps, seed=k)
    for row in rows:
      r = ROWS[row]
      if r.conditional:
        for task in conditional_tasks:
          if task == "joint":  # nothing given: the task-specific model is the vanilla model
            runs.append(Run(row, k, [task], van_dir, out_dir / row / sd / "joint" / "eval", van_cfg,
                            row_config(config, row, train_steps, seed=k), reuse_vanilla=True,
                            name=f"{row} seed{k} joint (= vanilla)"))
            continue
          c = row_config(config, row, train_steps, seed=k, condition_mask=task)
          d = out_dir / row / sd / _task_dir(task)
          runs.append(Run(row, k, [task], d, d / "eval", c, c, name=f"{row} seed{k} {task}"))
      elif r.eval_of:
        src = r.eval_of
        runs.append(Run(row, k, list(tasks), out_dir / src / sd, out_dir / row / sd / "eval",
                        row_config(config, src, train_steps, seed=k), row_config(config, row, train_steps, seed=k),
                        name=f"{row} seed{k}"))
      else:
        c = row_config(config, row, train_steps, seed=k)
        d = out_dir / row / sd
        runs.append(Run(row, k, list(tasks), d, d / "eval", c, c, name=f"{row} seed{k}"))
  return runs


def _same_base_config(config, out_dir: epath.Path):
  """Records the shared config as OUT/config.json; a rerun whose config differs (outside the mesh and
  dist groups, which only place the same computation) is refused naming the fields, since its rows
  would mix two recipes. Returns `config`."""
  from monl import run_config
  from monl.train import config_history
  plain = config_history.to_plain(config)
  if run_config.path(out_dir).exists():
    old = config_history.to_plain(run_config.load(out_dir))
    changes = [(k, a, b) for k, a, b in config_history.diff(old, plain)
               if k.split(".")[0] not in ("mesh", "dist") and not (a is None and b is None)]
    if changes:
      raise ValueError(f"{out_dir} holds an ablation of another config ({run_config.path(out_dir)}):\n"
                       + config_history.format_diff(changes, before="ablation", now="now")
                       + "\nOmit --config to continue it with its own, or use another --out.")
  run_config.path(out_dir).write_text(config.to_json_best_effort(indent=2))
  return config


def run_ablation(config, out: str, *, budget: float = 1.0, rows: Sequence[str] = DEFAULT_ROWS, seeds: int = 1,
                 tasks: str = "all", conditional_tasks: str = "paper", i3d: bool = False,
                 train_steps: int | None = None, num: int | None = None, steps: int | None = None,
                 seed: int = 0) -> dict[str, Any]:
  """Trains and evaluates every (row, seed) (resumably) and writes ablation.{json,md,png} to `out`.

  `seed` is the sampling seed (the same for every run); training seeds are 0..seeds-1."""
  from monl import layout as layout_lib
  from monl.eval import evaluate as eval_lib
  from monl.train import loop
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    raise ValueError(f"unknown rows {unknown}; rows are {list(ROWS)}")
  if seeds < 1:
    raise ValueError(f"seeds={seeds}: need at least 1")
  rows = [r for r in ROWS if r in rows]
  out_dir = epath.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  b = budget_settings(budget, train_steps, num, steps)
  settings = dict(b, budget=budget, tasks=tasks, i3d=i3d, seed=seed, protocol=PROTOCOL)
  settings_file = out_dir / "ablation_settings.json"
  if settings_file.exists():
    old = json.loads(settings_file.read_text())
    if old != settings:
      raise ValueError(f"{out_dir} holds an ablation with other settings {old}; this one is {settings}. "
                       "Use another --out (or delete the old one).")
  settings_file.write_text(json.dumps(settings, indent=2))
  config = _same_base_config(loop.with_data_layout(config), out_dir)

  names = list(layout_lib.Layout.from_config(config.layout).names)
  task_list = eval_lib.parse_tasks(tasks, names)
  cond_want = eval_lib.parse_tasks(conditional_tasks, names)
  cond_list = [t for t in task_list if t in cond_want]
  plan = plan_runs(config, out_dir, rows, seeds, task_list, cond_list, b["train_steps"])

  merged: dict[str, list[dict]] = {r: [{"tasks": {}, "checkpoint_step": None} for _ in range(seeds)] for r in rows}
  durations = []
  t_all = time.perf_counter()
  for i, run in enumerate(plan):
    head = f"[{i + 1}/{len(plan)}] {run.name}"
    res_file = run.eval_dir / "results.json"
    van = merged.get("vanilla", [None] * seeds)[run.seed]
    if run.reuse_vanilla and van is not None and all(t in van["tasks"] for t in run.tasks):
      print(f"{head}: reuse the vanilla row's results of seed {run.seed}", flush=True)
      res = {"tasks": {t: van["tasks"][t] for t in run.tasks}, "checkpoint_step": van["checkpoint_step"],
             "real_reference": van.get("real_reference", {}), "chance_reference": van.get("chance_reference", {})}
    else:
      done_steps = latest_checkpoint(run.train_dir)
      if done_steps == b["train_steps"] and res_file.exists():
        print(f"{head}: skip (checkpoint {done_steps} and {res_file} exist)", flush=True)
        res = json.loads(res_file.read_text())
      else:
        left = len(plan) - i
        eta = f", ETA {_fmt_s(np.mean(durations) * left)} for the {left} runs left" if durations else ""
        t0 = time.perf_counter()
        if done_steps != b["train_steps"]:
          c = run.train_config
          mask = c.mixture.condition_mask
          what = f"mask {mask!r}" if mask else f"weights {tuple(c.mixture.weights)}"
          print(f"{head}: training {b['train_steps']} steps (from {done_steps or 0}), {what}, seed {c.seed}"
                f"{eta}", flush=True)
          loop.train(c, str(run.train_dir))
        print(f"{head}: evaluating {','.join(run.tasks)} on {b['num']} clips, {b['eval_steps']} steps, "
              f"{run.eval_config.sample.mode} mode", flush=True)
        res = eval_lib.evaluate(run.eval_config, str(run.train_dir), tasks=run.tasks, num=b["num"],
                                steps=b["eval_steps"], seed=seed, output=str(run.eval_dir), i3d=i3d)
        durations.append(time.perf_counter() - t0)
        print(f"{head}: done in {_fmt_s(durations[-1])} (ablation so far {_fmt_s(time.perf_counter() - t_all)})",
              flush=True)
    m = merged[run.row][run.seed]
    m["tasks"].update(res["tasks"])
    m.setdefault("real_reference", res.get("real_reference", {}))
    m.setdefault("chance_reference", res.get("chance_reference", {}))
    m["checkpoint_step"] = res.get("checkpoint_step") if m["checkpoint_step"] is None else min(
        m["checkpoint_step"], res.get("checkpoint_step"))

  table = ablation_table(merged, dict(settings, seeds=seeds, rows=rows, conditional_tasks=cond_list))
  (out_dir / "ablation.json").write_text(json.dumps(table, indent=2))
  (out_dir / "ablation.md").write_text(ablation_markdown(table))
  ablation_chart(table, out_dir / "ablation.png")
  print(f"ablation written to {out_dir}/ablation.{{md,json,png}} ({_fmt_s(time.perf_counter() - t_all)})",
        flush=True)
  return table


# ----------------------------------------------------------------------------------------------------
# statistics


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


def sign_flip_pvalue(d: np.ndarray, num_flips: int = NUM_FLIPS, seed: int = 0) -> float:
  """Two-sided paired sign-flip permutation p-value of mean(d) = 0 for differences d [n].

  Exact over all 2^n sign vectors when n <= 16, else Monte Carlo with `num_flips` vectors
  (p = (1 + hits) / (1 + num_flips))."""
  d = np.asarray(d, np.float64).ravel()
  n = len(d)
  if n == 0:
    raise ValueError("sign_flip_pvalue: no differences")
  obs = abs(d.mean())
  tol = 1e-12 * max(np.abs(d).max(), 1e-300)  # ties of the statistic count as hits
  if n <= 16:
    signs = (((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1).astype(np.float64)
    return float(np.mean(np.abs(signs @ d) / n >= obs - tol))
  signs = _random_signs(n, num_flips, seed)
  hits = sum(int(np.sum(np.abs(signs[lo:lo + 2000].astype(np.float64) @ d) / n >= obs - tol))
             for lo in range(0, num_flips, 2000))
  return float((1 + hits) / (1 + num_flips))


@functools.lru_cache(maxsize=8)
def _random_signs(n: int, num_flips: int, seed: int) -> np.ndarray:
  """int8 [num_flips, n] random signs, drawn once and shared by every test of n differences (each is
  still a valid Monte Carlo permutation test; sharing keeps the table's hundreds of tests fast)."""
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 2, size=(num_flips, n), dtype=np.int8) * 2 - 1).astype(np.int8)


def paired_test(a: np.ndarray, b: np.ndarray, num_flips: int = NUM_FLIPS, seed: int = 0) -> dict[str, Any]:
  """Paired two-sided test of rows A and B on the same (seed, clip) pairs.

  Args:
    a, b: [K, C] per-clip scores of the two rows (seed k, clip c); C = 1 when only run means exist.
  Returns:
    {"p", "test" ("t_seeds": paired t-test on the K per-seed means, K >= 3; "sign_flip": sign-flip
    permutation test on the K * C differences, K < 3), "mean_diff" (mean of a - b), "seeds", "clips"}.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"paired_test: need two [K seeds, C clips] arrays of one shape, got {a.shape} and {b.shape}")
  k, c = a.shape
  d = a - b
  out = {"mean_diff": float(d.mean()), "seeds": int(k), "clips": int(c)}
  if k >= 3:
    from scipy import stats
    per_seed = d.mean(axis=1)
    if np.ptp(per_seed) == 0:  # no spread: t is 0/0 (identical rows) or infinite
      p = 1.0 if per_seed[0] == 0 else 0.0
    else:
      p = float(stats.ttest_1samp(per_seed, 0.0).pvalue)
    return dict(out, p=p, test="t_seeds")
  return dict(out, p=sign_flip_pvalue(d, num_flips, seed), test="sign_flip")


TEST_NAMES = {"t_seeds": "paired t-test on per-seed means",
              "sign_flip": "paired sign-flip permutation test over (seed, clip) pairs"}


def _scores(runs: list[dict], task: str, metric: str | None):
  """(per-seed values [K] or None, per-clip scores [K, C] or None, per-clip stderr of seed 0 or None)."""
  entries = [r["tasks"].get(task, {}).get("metrics", {}).get(metric or "") for r in runs]
  if not entries or any(e is None for e in entries):
    return None, None, None
  values = np.array([e["value"] for e in entries], np.float64)
  clips = None
  if all("per_clip" in e for e in entries) and len({len(e["per_clip"]) for e in entries}) == 1:
    clips = np.array([e["per_clip"] for e in entries], np.float64)
  return values, clips, entries[0].get("stderr")


def ablation_table(results: dict[str, list[dict]], settings: dict[str, Any]) -> dict[str, Any]:
  """results[row][k] = the merged results.json of seed k ({"tasks": {task: ...}, ...}) -> the table."""
  rows = list(results)
  main = [r for r in rows if not ROWS.get(r, Row(r, "", "")).extra] or rows
  tasks: list[str] = []
  for runs in results.values():
    for r in runs:
      tasks += [t for t in r["tasks"] if t not in tasks]
  primary = {}
  for t in tasks:
    for runs in results.values():
      p = next((r["tasks"][t]["primary"] for r in runs if t in r["tasks"] and r["tasks"][t]["primary"]), None)
      if p:
        primary[t] = p
        break
  n_r, n_t = len(rows), len(tasks)
  mean, se = np.full((n_r, n_t), np.nan), np.full((n_r, n_t), np.nan)
  per_seed: dict[str, dict[str, list | None]] = {r: {} for r in rows}
  clips: dict[tuple[str, str], np.ndarray] = {}
  for i, r in enumerate(rows):
    for j, t in enumerate(tasks):
      values, pc, clip_se = _scores(results[r], t, primary.get(t))
      per_seed[r][t] = None if values is None else values.tolist()
      if values is None:
        continue
      mean[i, j] = values.mean()
      k = len(values)
      se[i, j] = values.std(ddof=1) / np.sqrt(k) if k > 1 else (np.nan if clip_se is None else clip_se)
      clips[r, t] = pc if pc is not None else values[:, None]
  mi = [rows.index(r) for r in main]
  best = {}
  for j, t in enumerate(tasks):
    col = [(mean[i, j], rows[i]) for i in mi if np.isfinite(mean[i, j])]
    best[t] = min(col)[1] if col else None

  pvalues: dict[str, dict[str, dict[str, float | None]]] = {t: {r: {} for r in rows} for t in tasks}
  tests: dict[str, str | None] = {}
  for t in tasks:
    used = set()
    for ra, rb in itertools.combinations(rows, 2):
      p = None
      if (ra, t) in clips and (rb, t) in clips:
        ca, cb = clips[ra, t], clips[rb, t]
        if ca.shape != cb.shape:  # one row has per-clip scores, the other not: compare run means
          ca, cb = ca.mean(1, keepdims=True), cb.mean(1, keepdims=True)
        res = paired_test(ca, cb)
        p = res["p"]
        used.add(res["test"])
      pvalues[t][ra][rb] = pvalues[t][rb][ra] = p
    tests[t] = ", ".join(TEST_NAMES[u] for u in sorted(used)) or None
  worse = {r: {t: bool(best[t] is not None and r != best[t] and pvalues[t][r].get(best[t]) is not None
                       and pvalues[t][r][best[t]] < ALPHA and mean[rows.index(r), j] > mean[rows.index(best[t]), j])
               for j, t in enumerate(tasks)} for r in rows}

  ranks = np.full((n_r, n_t), np.nan)
  for j in range(n_t):
    ranks[mi, j] = _ranks(mean[mi, j])
    for i in set(range(n_r)) - set(mi):  # an extra row: its rank among the paper's rows
      idx = mi + [i]
      ranks[i, j] = _ranks(mean[idx, j])[-1]
  sub = mean[mi]
  ok = np.isfinite(sub)
  with np.errstate(invalid="ignore", divide="ignore"):
    denom = np.where(ok, sub, 0.0).sum(0) / ok.sum(0)  # mean over the paper's rows; NaN where none
    norm, norm_se = mean / denom, se / denom

  def cell(x):
    return None if not np.isfinite(x) else float(x)

  def row_mean(x):
    return cell(np.mean(x[np.isfinite(x)])) if np.isfinite(x).any() else None

  def reference(key):  # the primary score of each task on the first run's real (or chance) clips
    first = next((r for runs in results.values() for r in runs if r.get(key)), {})
    return {t: first.get(key, {}).get(primary.get(t, ""), {}).get("value") for t in tasks}

  return {
      "settings": settings, "rows": rows, "strategies": rows, "extra_rows": [r for r in rows if r not in main],
      "labels": {r: ROWS[r].label if r in ROWS else r for r in rows},
      "modes": {r: ROWS[r].mode if r in ROWS else None for r in rows},
      "tasks": tasks, "primary": primary, "real_floor": reference("real_reference"),
      "chance": reference("chance_reference"),
      "values": {r: {t: cell(mean[i, j]) for j, t in enumerate(tasks)} for i, r in enumerate(rows)},
      "stderr": {r: {t: cell(se[i, j]) for j, t in enumerate(tasks)} for i, r in enumerate(rows)},
      "stderr_over": "seeds" if settings.get("seeds", 1) > 1 else "clips (one seed)",
      "per_seed": per_seed,
      "normalised": {r: {t: cell(norm[i, j]) for j, t in enumerate(tasks)} for i, r in enumerate(rows)},
      "normalised_stderr": {r: {t: cell(norm_se[i, j]) for j, t in enumerate(tasks)} for i, r in enumerate(rows)},
      "best": best, "significantly_worse": worse, "alpha": ALPHA, "pvalues": pvalues, "tests": tests,
      "mean_rank": {r: row_mean(ranks[i]) for i, r in enumerate(rows)},
      "mean_normalised": {r: row_mean(norm[i]) for i, r in enumerate(rows)},
      "checkpoint_step": {r: [x.get("checkpoint_step") for x in results[r]] for r in rows},
      "note": ("lower is better; primary = ground-truth task score on the built-in dataset (else mean "
               "latent FD); values = mean over training seeds, stderr = its standard error; pvalues[task][a][b] "
               "= two-sided paired test of rows a and b (tests[task]); mean_rank over tasks (1 = best) and "
               "mean_normalised (mean over tasks of value / mean over the paper's rows of that task) from the "
               "seed means"),
  }


# ----------------------------------------------------------------------------------------------------
# reports


def _num(v: float | None) -> str:
  return "—" if v is None else f"{v:.4g}"


def ablation_markdown(table: dict[str, Any]) -> str:
  s = table["settings"]
  tasks, rows, k = table["tasks"], table["rows"], s.get("seeds", 1)
  lines = [f"# Mixture-strategy ablation ({k} seed{'s' if k != 1 else ''} x {s['train_steps']} train steps per "
           f"model, {s['num']} eval clips per task, {s['eval_steps']} sampling steps, budget {s['budget']})", "",
           "Primary number per task (lower is better): " +
           ", ".join(f"{t}: `{table['primary'].get(t)}`" for t in tasks) + ".", "",
           (f"Cells: mean over {k} training seeds ± its standard error. " if k > 1 else
            "Cells: one training seed, mean over clips ± its per-clip standard error (use --seeds >= 3). ") +
           "**Bold** = best of the paper's rows; `*` = significantly worse than it "
           f"(p < {table['alpha']}, two-sided, uncorrected; every pair's p-value is in ablation.json `pvalues`).",
           "", "| row | " + " | ".join(tasks) + " | mean rank | mean normalised |",
           "|---|" + "---|" * (len(tasks) + 2)]
  main = [r for r in rows if r not in table["extra_rows"]]
  ranks = [table["mean_rank"][r] for r in main if table["mean_rank"][r] is not None]
  best_rank = min(ranks) if ranks else None
  for r in rows:
    cells = []
    for t in tasks:
      v, e = table["values"][r][t], table["stderr"][r][t]
      txt = "—" if v is None else (_num(v) if e is None else f"{_num(v)} ± {e:.2g}")
      if v is not None and table["best"][t] == r:
        txt = f"**{txt}**"
      cells.append(txt + (" *" if table["significantly_worse"][r][t] else ""))
    mr, mn = table["mean_rank"][r], table["mean_normalised"][r]
    rtxt = "—" if mr is None else f"{mr:.2f}"
    cells += [f"**{rtxt}**" if mr is not None and mr == best_rank and r in main else rtxt,
              "—" if mn is None else f"{mn:.3f}"]
    lines.append(f"| {table['labels'][r]} | " + " | ".join(cells) + " |")
  for key, label in (("real_floor", "real clips (floor)"), ("chance", "cells of unrelated clips (chance)")):
    ref = table.get(key, {})
    if any(v is not None for v in ref.values()) or key == "real_floor":
      lines.append(f"| *{label}* | " + " | ".join(_num(ref.get(t)) for t in tasks) + " | | |")
  notes = []
  if "vanilla" in rows:
    notes.append("Vanilla is sampled with the replacement method (given cells re-noised to the current level).")
  if "conditional" in rows:
    notes.append("Conditional: one task-specific model per task (given cells trained at t = 0), evaluated on "
                 "its task only; its joint model is the vanilla model.")
  if table["extra_rows"]:
    notes.append(", ".join(table["labels"][r] for r in table["extra_rows"]) +
                 ": extra row(s), not in the paper; not bold and not in the normalisation; mean rank = where it "
                 "would sit among the paper's rows.")
  used = sorted({x for x in table["tests"].values() if x})
  if used:
    notes.append("Test: " + "; ".join(used) + ".")
  lines += [""] + notes + ["", table["note"] + "."]
  return "\n".join(lines) + "\n"


def ablation_chart(table: dict[str, Any], path) -> None:
  """Per task: bars = each row's mean normalised score, error bars = its standard error."""
  tasks, rows = table["tasks"], table["rows"]
  grid = lambda key: np.array([[np.nan if table[key][r][t] is None else table[key][r][t] for r in rows]
                               for t in tasks], dtype=np.float64).reshape(len(tasks), len(rows))
  k = table["settings"].get("seeds", 1)
  from monl.eval.evaluate import bar_chart
  bar_chart(path, tasks, [table["labels"][r] for r in rows], grid("normalised"),
            f"mixture-strategy ablation, {k} seed(s): primary score / task mean over the paper's rows, "
            "± SE (lower is better)", "rel.", reference=1.0, errors=grid("normalised_stderr"))


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog="python -m monl.ablate", description=__doc__.split("\n")[0])
  p.add_argument("--config", default=None, help="config file, e.g. configs/default.py (default: OUT/config.json "
                 "of the ablation being continued)")
  p.add_argument("--out", required=True, help="output directory (OUT/<row>/seed<k>/)")
  p.add_argument("--budget", type=float, default=1.0, help="scales train steps (2000) and eval clips (64)")
  p.add_argument("--seeds", type=int, default=1, help="training seeds per model, 0..K-1 (use >= 3)")
  p.add_argument("--rows", "--strategies", dest="rows", default=",".join(DEFAULT_ROWS),
                 help=f"comma-separated rows of {list(ROWS)}")
  p.add_argument("--tasks", default="all", help="'all', 'paper' or a comma-separated list")
  p.add_argument("--conditional_tasks", default="paper",
                 help="tasks of the conditional row (one model each), among --tasks: 'paper', 'all' or a list")
  p.add_argument("--i3d", action="store_true", help="also FVD/KVD with I3D (slow on CPU)")
  p.add_argument("--train_steps", type=int, default=None, help="override the budget's train steps")
  p.add_argument("--num", type=int, default=None, help="override the budget's eval clips per task")
  p.add_argument("--steps", type=int, default=None, help=f"sampling steps (default {EVAL_STEPS})")
  p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every run)")
  a = p.parse_args(argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  rows = [r for r in a.rows.split(",") if r]
  unknown = [r for r in rows if r not in ROWS]
  if unknown:
    p.error(f"--rows: unknown rows {unknown}; rows are {list(ROWS)}")
  if a.seeds < 1:
    p.error(f"--seeds={a.seeds}: need at least 1")
  if argv is None:  # `python -m monl.ablate`: restart with oneTBB's malloc where installed, as `monl.main
    from monl import allocator  # train` does (monl.allocator)
    allocator.maybe_reexec()
  from monl import run_config
  if a.config is None and not run_config.path(a.out).exists():
    p.error(f"--config is required: {a.out} holds no ablation yet ({run_config.path(a.out)} is missing)")
  config = load_config(a.config) if a.config else run_config.load(a.out)
  table = run_ablation(config, a.out, budget=a.budget, rows=rows, seeds=a.seeds, tasks=a.tasks,
                       conditional_tasks=a.conditional_tasks, i3d=a.i3d, train_steps=a.train_steps, num=a.num,
                       steps=a.steps, seed=a.seed)
  print(ablation_markdown(table))


if __name__ == "__main__":
  host.apply_cpu_platform_default()
  main()

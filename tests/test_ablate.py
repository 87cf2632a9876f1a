"""The ablation runner: trains and evaluates each (row, seed), writes the table with mean ± SE and
paired significance tests, skips finished runs."""
import json

import numpy as np
import pytest

from conftest import tiny_config
from monl import ablate


def _mtimes(path):
  return {str(p): p.stat().st_mtime_ns for p in sorted((path).rglob("*")) if p.is_file()}


def _json(path):
  return json.loads(path.read_text())


def test_ablation_seeds_modes_then_skips_finished_runs(builtin_dataset, tmp_path, capsys):
  config = tiny_config(builtin_dataset, **{"sample.batch_size": 4, "eval.i3d": False})
  kw = dict(rows=("monl", "vanilla_monl_mode", "vanilla"), seeds=2, tasks="a2v,continue", train_steps=2, num=4,
            steps=2)
  table = ablate.run_ablation(config, str(tmp_path), **kw)
  first = capsys.readouterr().out
  assert "[1/6] vanilla seed0: training 2 steps" in first and "[2/6] monl seed0: training" in first
  assert "[4/6] vanilla seed1: training" in first and "[5/6] monl seed1: training" in first
  assert "vanilla_monl_mode seed0: evaluating" in first and "vanilla_monl_mode seed0: training" not in first
  assert table["rows"] == ["vanilla", "monl", "vanilla_monl_mode"]  # the paper's order, extra row last
  assert table["extra_rows"] == ["vanilla_monl_mode"] and table["tasks"] == ["a2v", "continue"]
  assert table["primary"] == {"a2v": "av_agreement", "continue": "trajectory_error"}
  for f in ("ablation.md", "ablation.json", "ablation.png"):
    assert (tmp_path / f).stat().st_size > 0

  # two seeds = two trainings per row with config.seed (and the data order) 0 and 1
  for row, weights in (("monl", (1, 1, 1, 1)), ("vanilla", (1, 0, 0, 0))):
    for k in (0, 1):
      cfg = _json(tmp_path / row / f"seed{k}" / "config.json")
      assert cfg["seed"] == k and cfg["data"]["shuffle_seed"] == k
      assert tuple(cfg["mixture"]["weights"]) == weights
  assert not (tmp_path / "vanilla_monl_mode" / "seed0" / "checkpoints").exists()  # no training of its own

  # vanilla is sampled with the replacement method, its extra row and the other rows in MoNL mode
  mode = lambda row, k: _json(tmp_path / row / f"seed{k}" / "eval" / "samples" / "a2v" / "manifest.json")["mode"]
  assert [mode("vanilla", k) for k in (0, 1)] == ["replacement"] * 2
  assert mode("vanilla_monl_mode", 0) == mode("monl", 1) == "monl"
  assert table["modes"] == {"vanilla": "replacement", "monl": "monl", "vanilla_monl_mode": "monl"}

  # per-clip scores in results.json; the table's cells are seed means ± their standard error
  res = _json(tmp_path / "monl" / "seed1" / "eval" / "results.json")
  entry = res["tasks"]["continue"]["metrics"]["trajectory_error"]
  assert len(entry["per_clip"]) == 4 and np.isclose(np.mean(entry["per_clip"]), entry["value"])
  for row in table["rows"]:
    for t in table["tasks"]:
      seeds = table["per_seed"][row][t]
      assert len(seeds) == 2 and np.isclose(table["values"][row][t], np.mean(seeds))
      assert np.isclose(table["stderr"][row][t], np.std(seeds, ddof=1) / np.sqrt(2))
      assert all(0 <= table["pvalues"][t][row][o] <= 1 and table["pvalues"][t][row][o] == table["pvalues"][t][o][row]
                 for o in table["rows"] if o != row)
  assert set(table["tests"].values()) == {ablate.TEST_NAMES["sign_flip"]}  # K < 3: (seed, clip) pairs
  assert set(table["mean_rank"].values()) <= {1.0, 1.5, 2.0, 2.5, 3.0}
  md = (tmp_path / "ablation.md").read_text()
  assert "2 seeds" in md and " ± " in md and "| vanilla (monl mode) |" in md and "| Vanilla |" in md
  # the real clips' floor and chance (cells of unrelated clips) bracket the rows, per task's primary score
  assert "| *real clips (floor)* |" in md and "| *cells of unrelated clips (chance)* |" in md
  assert all(table["chance"][t] > table["real_floor"][t] for t in table["tasks"])
  before = {r: _mtimes(tmp_path / r) for r in ("vanilla", "monl", "vanilla_monl_mode")}

  table2 = ablate.run_ablation(config, str(tmp_path), **kw)
  second = capsys.readouterr().out
  assert second.count(": skip") == 6 and "training" not in second and "evaluating" not in second
  assert {r: _mtimes(tmp_path / r) for r in ("vanilla", "monl", "vanilla_monl_mode")} == before
  assert table2["values"] == table["values"] and table2["pvalues"] == table["pvalues"]
  with pytest.raises(ValueError, match="other settings"):
    ablate.run_ablation(config, str(tmp_path), **dict(kw, train_steps=3))


def test_conditional_row_one_model_per_task_joint_is_vanilla(builtin_dataset, tmp_path, capsys):
  config = tiny_config(builtin_dataset, **{"sample.batch_size": 4, "eval.i3d": False})
  table = ablate.run_ablation(config, str(tmp_path), rows=("conditional", "vanilla"), tasks="joint,a2v",
                              train_steps=2, num=4, steps=2)
  out = capsys.readouterr().out
  assert "conditional seed0 a2v: training 2 steps (from 0), mask 'a2v'" in out
  assert "conditional seed0 joint (= vanilla): reuse" in out
  cond = tmp_path / "conditional" / "seed0"
  cfg = _json(cond / "a2v" / "config.json")
  assert cfg["mixture"]["condition_mask"] == "a2v" and cfg["seed"] == 0
  assert not (cond / "joint").exists()  # no duplicate of the vanilla model
  assert list(_json(cond / "a2v" / "eval" / "results.json")["tasks"]) == ["a2v"]  # its own task only
  assert _json(cond / "a2v" / "eval" / "samples" / "a2v" / "manifest.json")["mode"] == "monl"
  assert table["rows"] == ["vanilla", "conditional"]
  assert table["values"]["conditional"]["joint"] == table["values"]["vanilla"]["joint"]
  assert table["pvalues"]["joint"]["vanilla"]["conditional"] == 1.0  # identical scores
  res = _json(cond / "a2v" / "eval" / "results.json")["tasks"]["a2v"]["metrics"]["av_agreement"]
  assert table["stderr_over"] == "clips (one seed)" and table["stderr"]["conditional"]["a2v"] == res["stderr"]


def test_paired_test_separates_a_clear_difference_but_not_identical_rows():
  rng = np.random.default_rng(0)
  for k, test in ((2, "sign_flip"), (4, "t_seeds")):
    base = rng.uniform(0.1, 0.3, (k, 32))  # [seeds, clips], clip difficulty varies a lot
    better = base - 0.05 + rng.normal(0, 0.01, base.shape)  # every clip ~0.05 lower
    r = ablate.paired_test(better, base)
    assert r["test"] == test and r["p"] < 0.05 and r["mean_diff"] < 0, r
    assert ablate.paired_test(base, better)["p"] == r["p"]  # two-sided
    same = ablate.paired_test(base, base.copy())
    assert same["test"] == test and same["p"] > 0.05, same
    noise = ablate.paired_test(base + rng.normal(0, 0.01, base.shape), base)
    assert noise["p"] > 0.05, noise
  # exact enumeration for small n: 4 differences of one sign -> 2 of the 16 sign vectors are as extreme
  assert ablate.sign_flip_pvalue(np.array([1.0, 2.0, 1.5, 0.5])) == 2 / 16
  with pytest.raises(ValueError, match="K seeds, C clips"):
    ablate.paired_test(np.zeros((2, 3)), np.zeros((2, 4)))


def _fake_results(per_clip):
  """[K, C] per-clip av_agreement -> the merged per-seed results the table reads."""
  return [{"tasks": {"a2v": {"primary": "av_agreement",
                             "metrics": {"av_agreement": {"value": float(np.mean(c)), "per_clip": list(map(float, c)),
                                                          "stderr": 0.0}}}},
           "checkpoint_step": 2, "real_reference": {}} for c in per_clip]


def test_table_marks_best_and_significantly_worse(tmp_path):
  rng = np.random.default_rng(1)
  base = rng.uniform(0.1, 0.3, (3, 16))
  results = {"vanilla": _fake_results(base + 0.05 + rng.normal(0, 0.005, base.shape)),
             "pm": _fake_results(base + np.array([[0.006], [-0.004], [0.001]])),  # worse on average, not reliably
             "monl": _fake_results(base)}
  table = ablate.ablation_table(results, {"seeds": 3, "train_steps": 2, "num": 16, "eval_steps": 2, "budget": 1})
  assert table["best"] == {"a2v": "monl"} and table["tests"]["a2v"] == ablate.TEST_NAMES["t_seeds"]
  assert table["significantly_worse"] == {"vanilla": {"a2v": True}, "pm": {"a2v": False}, "monl": {"a2v": False}}
  assert table["pvalues"]["a2v"]["vanilla"]["monl"] < 0.05 < table["pvalues"]["a2v"]["pm"]["monl"]
  assert table["mean_rank"]["vanilla"] == 3.0
  seed_means = {r: np.mean([x["tasks"]["a2v"]["metrics"]["av_agreement"]["value"] for x in v])
                for r, v in results.items()}
  denom = np.mean(list(seed_means.values()))
  for r in results:
    assert np.isclose(table["mean_normalised"][r], seed_means[r] / denom)
  md = ablate.ablation_markdown(table)
  line = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
  assert "**" in line["MoNL"] and " *" in line["Vanilla"] and " *" not in line["Pm"] and "**" not in line["Pm"]
  ablate.ablation_chart(table, tmp_path / "a.png")
  assert (tmp_path / "a.png").stat().st_size > 0


def test_ranks_share_ties_and_skip_nan():
  np.testing.assert_array_equal(ablate._ranks(np.array([3.0, 1.0, 1.0, np.nan, 2.0])),
                                [4.0, 1.5, 1.5, np.nan, 3.0])


def test_budget_scales_steps_and_clips():
  assert ablate.budget_settings(1.0) == {"train_steps": 2000, "num": 64, "eval_steps": 25}
  assert ablate.budget_settings(0.5)["train_steps"] == 1000
  assert ablate.budget_settings(0.01)["num"] == 8

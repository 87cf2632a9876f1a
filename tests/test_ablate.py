"""The ablation runner: trains and evaluates each strategy, writes the table, skips finished runs."""
import json

import numpy as np
import pytest

from conftest import tiny_config
from monl import ablate


def _mtimes(path):
  return {str(p): p.stat().st_mtime_ns for p in sorted((path).rglob("*")) if p.is_file()}


def test_ablation_runs_then_skips_finished_runs(builtin_dataset, tmp_path, capsys):
  config = tiny_config(builtin_dataset, **{"sample.batch_size": 4, "eval.i3d": False})
  kw = dict(strategies=("vanilla", "monl"), tasks="a2v,continue", train_steps=2, num=4, steps=2)
  table = ablate.run_ablation(config, str(tmp_path), **kw)
  first = capsys.readouterr().out
  assert "[1/2] vanilla: training 2 steps" in first and "[2/2] monl: training" in first
  assert table["strategies"] == ["vanilla", "monl"] and table["tasks"] == ["a2v", "continue"]
  assert table["primary"] == {"a2v": "av_agreement", "continue": "trajectory_error"}
  assert set(table["mean_rank"].values()) <= {1.0, 1.5, 2.0}
  for f in ("ablation.md", "ablation.json", "ablation.png"):
    assert (tmp_path / f).stat().st_size > 0
  cfg = json.loads((tmp_path / "monl" / "config.json").read_text())
  assert tuple(cfg["mixture"]["weights"]) == (1.0, 1.0, 1.0, 1.0)
  assert tuple(json.loads((tmp_path / "vanilla" / "config.json").read_text())["mixture"]["weights"]) == (1, 0, 0, 0)
  before = {s: _mtimes(tmp_path / s / "checkpoints") for s in ("vanilla", "monl")}

  table2 = ablate.run_ablation(config, str(tmp_path), **kw)
  second = capsys.readouterr().out
  assert "vanilla: skip" in second and "monl: skip" in second and "training" not in second
  assert {s: _mtimes(tmp_path / s / "checkpoints") for s in ("vanilla", "monl")} == before
  assert table2["values"] == table["values"]
  with pytest.raises(ValueError, match="other settings"):
    ablate.run_ablation(config, str(tmp_path), **dict(kw, train_steps=3))


def test_ranks_share_ties_and_skip_nan():
  np.testing.assert_array_equal(ablate._ranks(np.array([3.0, 1.0, 1.0, np.nan, 2.0])),
                                [4.0, 1.5, 1.5, np.nan, 3.0])


def test_budget_scales_steps_and_clips():
  assert ablate.budget_settings(1.0) == {"train_steps": 600, "num": 64, "eval_steps": 25}
  assert ablate.budget_settings(0.5)["train_steps"] == 300
  assert ablate.budget_settings(0.01)["num"] == 8

"""Checkpoints that never lose work: SIGTERM saves and exits 42; kill -9 resumes from the last complete
checkpoint; both end bit-identical to an uninterrupted run, having seen the same batches."""
import signal

import jax
import numpy as np
import pytest

from cli_util import env, interrupt, read_batches, train_command
from conftest import tiny_config
from monl.train import loop

TOTAL = 24
OVERRIDES = {"train.num_steps": TOTAL, "ckpt.every": 2, "train.log_every": 1, "train.record_batches": True}


@pytest.fixture(scope="module")
def straight(builtin_dataset, tmp_path_factory):
  work = tmp_path_factory.mktemp("straight")
  state = loop.train(tiny_config(builtin_dataset, **OVERRIDES), str(work))
  return jax.tree.leaves(jax.device_get(state.params)), read_batches(work / "batches.p0.jsonl")


def _interrupt(data_dir, work, sig, after_step: int) -> tuple[int, str]:
  """Starts training, sends `sig` once step `after_step` is logged; returns (exit status, output)."""
  return interrupt(train_command(data_dir, str(work), **OVERRIDES), env(), sig, after_step)


def _resume_and_compare(config, work, straight):
  state = loop.train(config, str(work))
  assert int(state.step) == TOTAL
  ref_params, ref_batches = straight
  for a, b in zip(ref_params, jax.tree.leaves(jax.device_get(state.params))):
    np.testing.assert_array_equal(a, b)
  assert read_batches(work / "batches.p0.jsonl") == ref_batches


def test_sigterm_saves_and_exits_with_preempted_code(builtin_dataset, tmp_path, straight):
  code, out = _interrupt(builtin_dataset, tmp_path, signal.SIGTERM, after_step=3)
  assert code == loop.PREEMPTED_EXIT_CODE, out
  assert "SIGTERM received" in out and "preempted" in out
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  stopped = int(out.split("checkpoint ")[-1].split()[0])
  assert saved and saved[-1] == stopped and 3 <= stopped < TOTAL, (saved, out)
  _resume_and_compare(tiny_config(builtin_dataset, **OVERRIDES), tmp_path, straight)


def test_kill_9_resumes_from_last_complete_checkpoint(builtin_dataset, tmp_path, straight):
  code, out = _interrupt(builtin_dataset, tmp_path, signal.SIGKILL, after_step=5)
  assert code == -signal.SIGKILL, out
  _resume_and_compare(tiny_config(builtin_dataset, **OVERRIDES), tmp_path, straight)

"""Helpers for tests that run `python -m monl.main train` as a subprocess with the tiny test config."""
import os
import sys

from conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The same shrink as conftest.tiny_config, as command-line overrides of configs/default.py.
TINY_FLAGS = {"data.batch_size": 8, "model.width": 32, "model.depth": 2, "model.num_heads": 2,
              "model.freq_embed_dim": 32, "model.head_hidden": 64, "train.num_steps": 20,
              "train.warmup_steps": 5, "train.log_every": 10, "ckpt.every": 10, "ckpt.async_save": False}


def train_command(data_dir: str, workdir: str, **overrides) -> list[str]:
  flags = dict(TINY_FLAGS, **{"data.dir": data_dir}, **overrides)
  return [sys.executable, "-m", "monl.main", "train", f"--config={ROOT}/configs/default.py",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def env() -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags())


def read_batches(path) -> dict[int, list[str]]:
  """step -> source ids from a record_batches file; a step replayed after a resume overrides."""
  import json
  out = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        out[r["step"]] = r["ids"]
  return out


def interrupt(command: list[str], env: dict, sig, after_step: int, timeout: float = 300) -> tuple[int, str]:
  """Runs a train `command`, sends `sig` once step `after_step` is logged; returns (exit status, output)."""
  import subprocess
  import time
  proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines, deadline = [], time.monotonic() + timeout
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step") and int(line.split()[1].split("/")[0]) >= after_step:
      proc.send_signal(sig)
      break
    assert time.monotonic() < deadline, "".join(lines)
  lines += proc.stdout.readlines()
  return proc.wait(timeout=120), "".join(lines)

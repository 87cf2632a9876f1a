"""Console progress (steps/s, ETA) and TensorBoard scalars from windows of per-step metrics."""
from __future__ import annotations

import time

import numpy as np
from etils import epath

from monl import mixture


def _fmt_duration(seconds: float) -> str:
  if not np.isfinite(seconds):  # no rate yet (e.g. log_every=1 right after the clock reset)
    return "?"
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def summarize(window: list[dict], modality_names, num_steps: int) -> dict[str, float]:
  """Averages a window of host-side per-step metrics into named scalars."""
  stack = {k: np.stack([np.asarray(w[k]) for w in window]) for k in window[0]}
  out = {"loss": float(stack["loss"].mean()), "grad_norm": float(stack["grad_norm"].mean())}
  mod_sq, mod_n = stack["modality_sq"].sum(0), stack["modality_count"].sum(0)
  for i, name in enumerate(modality_names):
    if mod_n[i] > 0:
      out[f"loss_{name}"] = float(mod_sq[i] / mod_n[i])
  b_sq, b_n = stack["bucket_sq"].sum(0), stack["bucket_count"].sum(0)
  k = len(b_sq)
  for i in range(k):
    if b_n[i] > 0:
      lo, hi = i * num_steps // k + 1, (i + 1) * num_steps // k
      out[f"loss_t{lo:04d}-{hi:04d}"] = float(b_sq[i] / b_n[i])
  strat = stack["strategy_count"].sum(0)
  for i, name in enumerate(mixture.STRATEGIES):
    out[f"strategy_frac_{name}"] = float(strat[i] / max(strat.sum(), 1))
  return out


class Logger:
  """Prints one progress line per window and writes every scalar to TensorBoard (chief only)."""

  def __init__(self, workdir: epath.Path | None, *, total_steps: int, start_step: int):
    self.total_steps = total_steps
    self.last_step = start_step
    self.last_time = time.perf_counter()
    self.writer = None
    if workdir is not None:
      from tensorboardX import SummaryWriter  # imported lazily: only the chief writes
      self.writer = SummaryWriter(str(epath.Path(workdir) / "tb"))

  def reset_clock(self, step: int) -> None:
    """Restarts the rate measurement (e.g. after compilation)."""
    self.last_step, self.last_time = step, time.perf_counter()

  def log(self, step: int, scalars: dict[str, float]) -> None:
    now = time.perf_counter()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time = step, now
    eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
    per_mod = " ".join(f"{k[5:]} {v:.4f}" for k, v in scalars.items()
                       if k.startswith("loss_") and not k.startswith("loss_t"))
    print(f"step {step:>7d}/{self.total_steps} | loss {scalars['loss']:.4f} ({per_mod}) | "
          f"grad {scalars['grad_norm']:.3f} | {rate:.2f} steps/s | ETA {_fmt_duration(eta)}", flush=True)
    if self.writer is not None:
      for k, v in dict(scalars, steps_per_sec=rate).items():
        self.writer.add_scalar(k, v, step)
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()

"""Shared helpers of the benchmarks: machine info, matmul rate, timing, model setup, JSON, tables.

Every benchmark script: `python benchmarks/<name>.py [--quick]` from the repository root. It prints a
short table LAST and writes `benchmarks/results/<name>.json` (`--out` to change). `--quick` shrinks
everything to a smoke run (tests/test_benchmarks.py) whose numbers mean nothing.

Timings are medians over repeated runs after warm-up. On a shared machine look at the load average
that every table prints: numbers taken with a 1-minute load above ~0.5 beyond the benchmark itself are
not worth quoting. Comparisons (A vs B) are interleaved A, B, A, B, ... in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `configs` and `monl` importable when run as `python benchmarks/x.py`
  sys.path.insert(0, ROOT)
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a TPU plugin in the environment must not be probed
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"

CONFIG_FILES = {"default": "configs/default.py", "midsize": "configs/midsize.py",
                "paper": "configs/avdit_paper.py"}


# ----------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_avg() -> tuple[float, float, float]:
  try:
    return tuple(round(v, 2) for v in os.getloadavg())
  except OSError:
    return (float("nan"),) * 3


def machine_info() -> dict:
  import jax
  preload = os.environ.get("LD_PRELOAD", "")
  return {
      "cpu": cpu_model(), "cores": os.cpu_count(), "load_avg": load_avg(),
      "platform": platform.platform(), "python": platform.python_version(),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "allocator": "jemalloc" if "jemalloc" in preload else "default (glibc)",
      "LD_PRELOAD": preload, "MALLOC_CONF": os.environ.get("MALLOC_CONF", ""),
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
  }


def machine_line(info: dict | None = None) -> str:
  info = info or machine_info()
  la = info["load_avg"]
  return (f"{info['cpu']}, {info['cores']} cores, {info['backend']}, jax {info['jax']}, "
          f"allocator {info['allocator']}, load avg {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


# ----------------------------------------------------------------------------------------- timing
def timing_parser(doc: str, *, iters: int, warmup: int, out: str, quick_help: str) -> argparse.ArgumentParser:
  """The flags every timing benchmark shares: --iters, --warmup, --quick (a smoke run), --out (JSON name)."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--iters", type=int, default=iters)
  p.add_argument("--warmup", type=int, default=warmup)
  p.add_argument("--quick", action="store_true", help=quick_help)
  p.add_argument("--out", default=out)
  return p


def time_calls(fn: Callable[[], object], *, warmup: int = 2, iters: int = 5) -> list[float]:
  """Wall seconds of `iters` calls of fn (each blocked until ready) after `warmup` untimed calls."""
  import jax
  for _ in range(warmup):
    jax.block_until_ready(fn())
  out = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def interleave(fns: dict[str, Callable[[], object]], *, warmup: int = 2, iters: int = 5,
               block: Callable[[object], object] | None = None) -> dict[str, list[float]]:
  """Times several callables A, B, A, B, ... (after warm-up of each) so that load drifts hit all alike."""
  import jax
  block = block or jax.block_until_ready
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  times = {k: [] for k in fns}
  for _ in range(iters):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      block(fn())
      times[k].append(time.perf_counter() - t0)
  return times


def median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def matmul_rate(n: int = 2048, iters: int = 10) -> float:
  """Measured float32 n x n matmul rate of JAX on the default device, GFLOP/s (median)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  t = median(time_calls(lambda: f(a, b), warmup=2, iters=iters))
  return 2 * n ** 3 / t / 1e9


def compiled_flops(compiled) -> float:
  """XLA's FLOP count of a compiled executable (cost_analysis may be a dict or a list of dicts)."""
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  return float(ca.get("flops", 0.0)) if ca else 0.0


def step_flops(setup: "Setup") -> float:
  """XLA's FLOP count of one train step with the layers unrolled.

  XLA's cost analysis counts the body of a while loop once, so a step with `nn.scan` over the layers
  reports about 1/depth of the work. This lowers the same step with `scan_layers=False` (same math)
  and reads `Lowered.cost_analysis()` (XLA's HLO cost analysis, before optimisation; no compile).
  """
  import copy
  import jax
  config = copy.deepcopy(setup.config)
  config.model.scan_layers = False
  s = Setup(config, batch_size=setup.batch_size)
  lowered = s.step_fn().lower(s.abstract_state(), s.abstract_batch(), jax.ShapeDtypeStruct((), s.key.dtype))
  ca = lowered.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  return float(ca.get("flops", 0.0))


# ----------------------------------------------------------------------------------------- model
def load_config(name: str, quick: bool = False):
  """`default`, `midsize` or `paper` (or a path to a config file); `quick` shrinks it to a smoke size."""
  import importlib.util
  path = os.path.join(ROOT, CONFIG_FILES.get(name, name))
  spec = importlib.util.spec_from_file_location(f"_bench_cfg_{os.path.basename(path)[:-3]}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  if quick:
    c.model.width, c.model.depth, c.model.num_heads, c.model.freq_embed_dim = 32, 2, 2, 32
    c.data.batch_size = 2
  return c


class Setup:
  """The real monl objects for a config: model, objective, optimizer, state, a random batch."""

  def __init__(self, config, batch_size: int | None = None, seed: int = 0):
    import jax
    import numpy as np
    from monl.train import loop
    from monl.train import step as step_lib
    self.config = config
    self.model = loop.build_model(config)
    self.layout = self.model.layout
    self.obj = step_lib.Objective.from_config(config, self.model)
    self.tx = step_lib.make_optimizer(config.train)
    self.batch_size = batch_size or config.data.batch_size
    rng = np.random.default_rng(seed)
    self.batch = {m.name: jax.numpy.asarray(rng.standard_normal((self.batch_size, *m.shape), np.float32))
                  for m in self.layout.modalities}
    self.key = jax.random.key(seed)

  @property
  def tokens_per_example(self) -> int:
    return self.layout.num_tokens

  def num_params(self) -> int:
    from monl.models import avdit
    return avdit.count_params(self.model.cfg, self.layout)

  def init_state(self):
    import functools
    import jax
    from monl.train import step as step_lib
    init = functools.partial(step_lib.init_state, obj=self.obj, tx=self.tx)
    return jax.jit(lambda k: step_lib.unbox(init(k)))(self.key)

  def abstract_state(self):
    import functools
    import jax
    from monl.train import step as step_lib
    init = functools.partial(step_lib.init_state, obj=self.obj, tx=self.tx)
    return jax.eval_shape(lambda k: step_lib.unbox(init(k)), self.key)

  def abstract_batch(self):
    import jax
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self.batch.items()}

  def step_fn(self, donate: bool = True):
    """monl's train step, jitted as the trainer does (state donated)."""
    import functools
    import jax
    from monl.train import step as step_lib
    f = functools.partial(step_lib.train_step, obj=self.obj, tx=self.tx, ema=self.config.train.ema_decay)
    return jax.jit(f, donate_argnums=0 if donate else ())

  def random_tokens_and_levels(self, batch_size: int | None = None, seed: int = 0):
    import jax.numpy as jnp
    import numpy as np
    b = batch_size or self.batch_size
    rng = np.random.default_rng(seed)
    tokens = {m.name: jnp.asarray(rng.standard_normal((b, m.num_tokens, m.patch_dim), np.float32))
              for m in self.layout.modalities}
    t = jnp.asarray(rng.integers(1, 1000, (b, self.layout.num_modalities, self.layout.num_segments)),
                    jnp.int32)
    return tokens, t


# ----------------------------------------------------------------------------------------- output
def write_json(name_or_path: str, data: dict) -> str:
  path = name_or_path if name_or_path.endswith(".json") else os.path.join(RESULTS, f"{name_or_path}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(data, f, indent=2, default=str)
    f.write("\n")
  return path


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)
  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


def print_table(title: str, rows: Sequence[dict], columns: Sequence[str], info: dict | None = None,
                notes: Sequence[str] = ()) -> None:
  """Prints the table LAST (flushes first, so that logs and warnings come before it)."""
  sys.stderr.flush()
  print(f"\n== {title} ==")
  print(machine_line(info))
  print(format_table(rows, columns))
  for n in notes:
    print(n)
  sys.stdout.flush()

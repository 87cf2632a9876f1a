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
import math
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
def cpu_model(cpuinfo: str | None = None) -> str:
  """The CPU's model name with its family / model numbers and widest vector ISA, e.g. "AMD EPYC (family 25
  model 1, AVX2)": virtual machines often report a bare "AMD EPYC" for different generations, and the
  ISA decides the C++ kernels' vector width (PERF_LOG section 18)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    except OSError:
      return platform.processor() or platform.machine()
  fields = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())  # the first processor's
  name = fields.get("model name") or platform.processor() or platform.machine()
  flags = set((fields.get("flags") or fields.get("Features") or "").split())
  isa = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                                        ("sse4_2", "SSE4.2"), ("asimd", "NEON")) if flag in flags), None)
  details = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
  details += [isa] if isa else []
  return f"{name} ({', '.join(details)})" if details else name


def load_avg() -> tuple[float, float, float]:
  try:
    return tuple(round(v, 2) for v in os.getloadavg())
  except OSError:
    return (float("nan"),) * 3


def machine_info() -> dict:
  import jax

  from monl import allocator
  preload = os.environ.get("LD_PRELOAD", "")
  return {
      "cpu": cpu_model(), "cores": os.cpu_count(), "load_avg": load_avg(),
      "platform": platform.platform(), "python": platform.python_version(),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "allocator": allocator.describe(),
      "LD_PRELOAD": preload, "MALLOC_CONF": os.environ.get("MALLOC_CONF", ""),
      **{k: os.environ[k] for k in (*allocator.GLIBC_ENV, *allocator.TBB_ENV) if k in os.environ},
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
  }


def machine_line(info: dict | None = None) -> str:
  info = info or machine_info()
  la = info["load_avg"]
  return (f"{info['cpu']}, {info['cores']} cores, {info['backend']}, jax {info['jax']}, "
          f"allocator {info['allocator']}, load avg {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


# ----------------------------------------------------------------------------------------- allocators
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true"
# a fresh machine's script, glibc's tunables without tbb, oneTBB's malloc (the tbb wheel), launch/env.sh with
# libjemalloc2, and `monl` = whichever of these `python -m monl.main train` restarts a large step with here
ALLOCATORS = ("glibc", "glibc_settings", "tbb", "jemalloc", "monl")


def allocator_env(name: str) -> dict:
  """This process's environment with only the named allocator setting (ALLOCATORS; monl.allocator)."""
  from monl import allocator, host
  env = {k: v for k, v in os.environ.items()
         if k not in (*allocator.GLIBC_ENV, *allocator.TBB_ENV, "LD_PRELOAD", "MALLOC_CONF")}
  env[allocator.OPT_OUT] = "0"  # a child that runs monl's CLI must not add the settings again
  if name == "monl":
    chosen = allocator.choose(env | {allocator.OPT_OUT: "1"}, libc=platform.libc_ver()[0],
                              accelerators=host.accelerator_nodes(), tbb=allocator.tbbmalloc_preload(),
                              step_bytes=float("inf"))
    env.update({} if isinstance(chosen, str) else chosen[0])
  elif name == "glibc_settings":
    env.update(allocator.GLIBC_ENV)
  elif name == "tbb":
    preload = allocator.tbbmalloc_preload()
    if preload is None:
      raise SystemExit("--allocators tbb: the tbb wheel's libtbbmalloc is not installed (pip install tbb)")
    env.update(LD_PRELOAD=preload, **allocator.TBB_ENV)
  elif name == "jemalloc":
    if not os.path.exists(JEMALLOC):
      raise SystemExit(f"--allocators jemalloc: {JEMALLOC} not found (apt-get install libjemalloc2)")
    env.update(LD_PRELOAD=JEMALLOC, MALLOC_CONF=JEMALLOC_CONF)
  elif name != "glibc":
    raise SystemExit(f"unknown allocator {name!r}; one of {', '.join(ALLOCATORS)}")
  return env


def run_per_allocator(script: str, argv: Sequence[str], names: Sequence[str], out: str) -> list[dict]:
  """Runs `python script *argv --out <out>_<name>` once per allocator, one after the other (each setting
  must be in the environment at process start); returns the JSON each run wrote, in order."""
  import subprocess
  results = []
  for name in names:
    path = os.path.join(RESULTS, f"{out.removesuffix('.json')}_{name}.json")  # out may be a path
    print(f"--- allocator {name}: {os.path.basename(script)} {' '.join(argv)}", flush=True)
    subprocess.run([sys.executable, script, *argv, "--out", path], env=allocator_env(name), check=True)
    with open(path) as f:
      results.append(json.load(f))
  return results


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
  reports about 1/depth of the work, and it counts nothing for a custom call (the fused CPU attention
  kernel, the splash kernel, the weight-gradient kernel). This lowers the same step with
  `scan_layers=False`, attention "xla" and JAX's own products (`layers.CPU_MATMUL_MIN_ROWS` out of
  reach; all the same math) and reads `Lowered.cost_analysis()` (XLA's HLO cost analysis, before
  optimisation; no compile).
  """
  import copy
  import jax
  from monl.models import layers
  config = copy.deepcopy(setup.config)
  config.model.scan_layers = False
  config.model.attention = "xla"
  s = Setup(config, batch_size=setup.batch_size)
  min_rows, layers.CPU_MATMUL_MIN_ROWS = layers.CPU_MATMUL_MIN_ROWS, math.inf
  try:
    lowered = s.step_fn().lower(s.abstract_state(), s.abstract_batch(), jax.ShapeDtypeStruct((), s.key.dtype))
  finally:
    layers.CPU_MATMUL_MIN_ROWS = min_rows
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

  def random_params(self):
    """Model parameters, randomly perturbed so that no adaLN gate is zero (every block does real work)."""
    import flax.linen as nn
    import jax
    params = nn.meta.unbox(jax.jit(lambda k: self.model.init(k, *self.random_tokens_and_levels(1)))(self.key))
    return jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.key(3), x.shape, x.dtype), params)

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

  def stepper(self, compiled, state=None) -> "Stepper":
    """Runs `compiled` (this setup's step, lowered and compiled) on the random batch, carrying the
    donated state from call to call (default: a fresh `init_state()`)."""
    return Stepper(compiled, self.init_state() if state is None else state, self.batch, self.key)

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


class Stepper:
  """One call = one train step; returns its loss. `.state` is the state after the last call."""

  def __init__(self, compiled, state, batch, key):
    self.compiled, self.state, self.batch, self.key = compiled, state, batch, key

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch, self.key)
    return metrics["loss"]


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


# ----------------------------------------------------------------------------------------- plots
def line_plots(path: str, panels: Sequence[tuple[str, str, dict, bool]]) -> None:
  """Side-by-side log-log line plots with Pillow (no plotting dependency).

  Args:
    panels: (title, x label, {series name: (xs, ys)}, trend) per panel; None values are skipped;
      trend: also draw, dashed, the line proportional to x through each series' first point.
  """
  import math

  from PIL import Image, ImageDraw, ImageFont
  colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
  font = ImageFont.load_default()
  pw, ph, left, top, bottom = 330, 260, 58, 34, 70
  img = Image.new("RGB", (len(panels) * (pw + left + 20) + 10, top + ph + bottom), "white")
  d = ImageDraw.Draw(img)
  for pi, (title, xlabel, series, trend) in enumerate(panels):
    ox = 10 + pi * (pw + left + 20) + left
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if y is not None and y > 0 and x > 0]
    if not pts:
      continue
    lx = [math.log10(x) for x, _ in pts]
    ly = [math.log10(y) for _, y in pts]
    x0, x1 = min(lx), max(lx) + 1e-9
    y0, y1 = math.floor(min(ly)), math.ceil(max(ly) + 1e-9)
    y1 = max(y1, y0 + 1)
    px = lambda v: ox + pw * (math.log10(v) - x0) / (x1 - x0)
    py = lambda v: top + ph - ph * (math.log10(v) - y0) / (y1 - y0)
    d.rectangle([ox, top, ox + pw, top + ph], outline="black")
    d.text((ox, 10), title, fill="black", font=font)
    for e in range(y0, y1 + 1):  # decades on y
      yy = py(10.0 ** e)
      d.line([(ox - 4, yy), (ox, yy)], fill="black")
      d.line([(ox, yy), (ox + pw, yy)], fill=(225, 225, 225))
      d.text((ox - 50, yy - 6), f"{10.0 ** e:g}", fill="black", font=font)
    for x in sorted({x for x, _ in pts}):  # every measured x on the x axis
      xx = px(x)
      d.line([(xx, top + ph), (xx, top + ph + 4)], fill="black")
      d.text((xx - 10, top + ph + 6), f"{x:g}", fill="black", font=font)
    d.text((ox + pw // 2 - 20, top + ph + 20), xlabel, fill="black", font=font)
    for si, (name, (xs, ys)) in enumerate(series.items()):
      c = colours[si % len(colours)]
      line = [(px(x), py(y)) for x, y in zip(xs, ys) if y is not None and y > 0]
      if len(line) > 1:
        d.line(line, fill=c, width=2)
      for (a, b) in line:
        d.ellipse([a - 3, b - 3, a + 3, b + 3], fill=c)
      if trend and line:
        first = next((x, y) for x, y in zip(xs, ys) if y is not None and y > 0)
        lo_y = 10.0 ** y0
        xs_t = [x for x in xs if first[1] * x / first[0] >= lo_y]
        seg = [(px(x), py(first[1] * x / first[0])) for x in xs_t if first[1] * x / first[0] <= 10.0 ** y1]
        for (a1, b1), (a2, b2) in zip(seg, seg[1:]):  # dashed
          for k in range(0, 10, 2):
            d.line([(a1 + (a2 - a1) * k / 10, b1 + (b2 - b1) * k / 10),
                    (a1 + (a2 - a1) * (k + 1) / 10, b1 + (b2 - b1) * (k + 1) / 10)], fill=c)
      d.rectangle([ox + 8, top + 8 + si * 14, ox + 16, top + 16 + si * 14], fill=c)
      d.text((ox + 20, top + 6 + si * 14), name, fill="black", font=font)
  img.save(path)

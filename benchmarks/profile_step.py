"""Where a train step's time goes, per XLA op: a `jax.profiler` trace grouped by kind, op name and shape.

    python benchmarks/profile_step.py [--config midsize] [--threads 1] [--iters 2] [--top 30]
        [--set model.attention=xla ...] [--quick] [--out benchmarks/results/profile_step.json]

Runs the real train step (as train_step.py does), traces `--iters` steps and maps every traced thunk to
its instruction in the compiled step's HLO. A row adds up the instructions that share a kind (a YNNPACK
fusion with its dot, an FFI call, an XLA fusion with the ops inside it, ...), an op name (the block
index dropped, so that the blocks' copies add up) and a result shape.

`--threads 1` (the default) pins the process to one core before JAX starts. With several threads the
trace misleads: XLA runs Eigen dots and parallel loop fusions asynchronously, so their thunks end
before their work does, and independent thunks overlap (benchmarks/PERF_LOG.md sections 12-13). On one
thread the rows add up to the step. `--threads 0` keeps every core; for a wall-clock split on several
cores use `perf record -e cpu-clock`.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import common
from train_step import apply_overrides, parse_overrides

# A result shape is one array type, or a tuple of them "(f32[..]{..}, f32[..]{..})" (the attention kernel's
# forward call returns its output and log-sum-exp).
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\([^()]*\)|\S+) ([\w\-]+)\(")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
_SKIP_OPS = {"parameter", "constant", "bitcast", "broadcast", "get-tuple-element", "tuple"}


def hlo_index(hlo: str) -> tuple[dict[str, str], dict[str, list[str]]]:
  """Compiled HLO text -> (instruction name -> its line, computation name -> its lines)."""
  lines, bodies, current = {}, {}, None
  for line in hlo.splitlines():
    if not line.startswith(" "):
      m = _COMPUTATION.match(line)
      current = m.group(1) if m else None
      if current:
        bodies[current] = []
      continue
    if current:
      bodies[current].append(line)
    m = _INSTRUCTION.match(line)
    if m:
      lines[m.group(1)] = line
  return lines, bodies


def describe(line: str, bodies: dict[str, list[str]]) -> dict:
  """One HLO instruction line -> kind, op name (block index dropped), result shape, ops inside."""
  m = _INSTRUCTION.match(line)
  shape, opcode = m.group(2), m.group(3)
  op = re.search(r'op_name="([^"]*)"', line)
  op = re.sub(r"block_\d+", "block_N", op.group(1)) if op else ""
  op = re.sub(r"^jit\([^)]*\)/", "", op)
  kind, inner = opcode, []
  called = re.search(r"calls=%([\w.\-]+)", line)
  if called and called.group(1) in bodies:
    body = bodies[called.group(1)]
    inner = sorted({i.group(3) for i in map(_INSTRUCTION.match, body) if i} - _SKIP_OPS)
    name = m.group(1)
    kind = "ynn fusion" if name.startswith("ynn_fusion") else "xla fusion"
    if "dot" in inner:
      kind += " (dot)"
  elif opcode == "custom-call" or m.group(1).startswith("ffi_call"):
    kind = "ffi call"
  return {"kind": kind, "op": op, "shape": shape, "ops": ",".join(inner)}


def trace_events(directory: str) -> list[dict]:
  files = glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {directory}: jax.profiler wrote no trace")
  with gzip.open(files[0]) as f:
    trace = json.load(f)
  return trace["traceEvents"] if isinstance(trace, dict) else trace


def profile(name: str, args, overrides) -> dict:
  import jax
  config = apply_overrides(common.load_config(name, args.quick), overrides)
  s = common.Setup(config)
  compiled = s.step_fn().lower(s.init_state(), s.batch, s.key).compile()
  state = s.init_state()
  for _ in range(args.warmup):
    state, metrics = compiled(state, s.batch, s.key)
    jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(args.iters):
        state, metrics = compiled(state, s.batch, s.key)
        jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / args.iters
    events = trace_events(d)
  lines, bodies = hlo_index(compiled.as_text())
  groups = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    if e.get("ph") == "X" and e.get("name") in lines:
      g = groups[tuple(describe(lines[e["name"]], bodies).values())]
      g[0] += e.get("dur", 0) / 1e3 / args.iters  # microseconds -> ms per step
      g[1] += 1
  traced = sum(ms for ms, _ in groups.values())
  rows = [{"ms_per_step": ms, "share": ms / traced, "count": count // args.iters, "kind": kind, "op": op,
           "shape": shape, "ops": ops} for (kind, op, shape, ops), (ms, count) in groups.items()]
  rows.sort(key=lambda r: -r["ms_per_step"])
  by_kind = collections.Counter()
  for r in rows:
    by_kind[r["kind"]] += r["ms_per_step"]
  return {"config": name, "step_s_traced": step_s, "traced_ms_per_step": traced, "rows": rows,
          "by_kind": dict(by_kind.most_common())}


def main(argv=None):
  p = common.timing_parser(__doc__, iters=2, warmup=2, out="profile_step",
                           quick_help="smoke run: a tiny model, 1 step")
  p.add_argument("--config", default="midsize")
  p.add_argument("--threads", type=int, default=1, help="cores to pin the process to (0: all)")
  p.add_argument("--top", type=int, default=30, help="rows to print")
  p.add_argument("--set", action="append", help="config override, e.g. model.attention=xla")
  args = p.parse_args(argv)
  if args.quick:
    args.iters, args.warmup = 1, 1
  if args.threads:  # before JAX starts: XLA sizes its thread pools from the process's affinity
    if "jax" in sys.modules:
      raise RuntimeError("--threads must take effect before JAX is imported; run this script directly")
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  info = common.machine_info()
  result = profile(args.config, args, parse_overrides(args.set))
  path = common.write_json(args.out, {"machine": info, "threads": args.threads, **result, "quick": args.quick})
  kinds = "; ".join(f"{k} {ms:,.0f} ms" for k, ms in result["by_kind"].items())
  common.print_table(
      f"train step by XLA op ({args.config}, {args.threads or 'all'} thread(s), ms per step)",
      [dict(r, op=r["op"][-60:], ops=r["ops"][:50]) for r in result["rows"][:args.top]],
      ["ms_per_step", "share", "count", "kind", "shape", "op", "ops"], info,
      [f"traced {result['traced_ms_per_step']:,.0f} ms of a {result['step_s_traced'] * 1e3:,.0f} ms step "
       f"(wall, under the profiler); by kind: {kinds}; wrote {path}"])


if __name__ == "__main__":
  main()

"""Which variant of the code trains faster: train-step variants in one process, their steps interleaved.

    python benchmarks/ab_step.py --variant base: --variant jax_dw:monl.models.layers.CPU_MATMUL_MIN_ROWS=1e18
        [--config midsize] [--batch N] [--iters 10] [--warmup 2] [--set model.attention=xla ...] [--quick]
        [--out benchmarks/results/ab_step.json]

A variant is `NAME:module.ATTR=VALUE[,module.ATTR=VALUE...]`: the attributes are set while its step is
traced and compiled, then restored; `NAME:` is the code as it is. The values are Python literals (else
strings). Then one step of each variant runs in turn for `--iters` rounds. On a 2-core host, runs in
separate processes differ by ±4 %; interleaved, drift hits every variant alike (benchmarks/PERF_LOG.md
sections 13-14 used this). Prints each variant's median and range, its median against the first
variant's, and in how many rounds it was faster than the first.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import sys

import common
from train_step import apply_overrides, parse_overrides


def parse_variant(text: str) -> tuple[str, list[tuple[str, str, object]]]:
  """'name:pkg.mod.ATTR=1,pkg.mod.OTHER=x' -> ('name', [('pkg.mod', 'ATTR', 1), ('pkg.mod', 'OTHER', 'x')])."""
  name, sep, rest = text.partition(":")
  if not sep or not name:
    raise ValueError(f"--variant {text!r}: expected NAME:module.ATTR=VALUE,... (or NAME: for the code as is)")
  sets = []
  for item in filter(None, rest.split(",")):
    target, eq, value = item.partition("=")
    module, dot, attr = target.rpartition(".")
    if not eq or not dot:
      raise ValueError(f"--variant {text!r}: {item!r} is not module.ATTR=VALUE")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # a plain string
    sets.append((module, attr, value))
  return name, sets


@contextlib.contextmanager
def patched(sets):
  """Sets module attributes for the duration (each must exist: a typo is an error, not a no-op)."""
  saved = []
  try:
    for module, attr, value in sets:
      mod = importlib.import_module(module)
      if not hasattr(mod, attr):
        raise AttributeError(f"--variant: module {module} has no attribute {attr!r}")
      saved.append((mod, attr, getattr(mod, attr)))
      setattr(mod, attr, value)
    yield
  finally:
    for mod, attr, old in reversed(saved):
      setattr(mod, attr, old)


def compile_variant(config, batch: int | None, sets):
  """The variant's compiled step and a runner that carries its own (donated) state."""
  s = common.Setup(config, batch_size=batch)
  with patched(sets):
    compiled = s.step_fn().lower(s.init_state(), s.batch, s.key).compile()
  return s, s.stepper(compiled)


def main(argv=None):
  p = common.timing_parser(__doc__, iters=10, warmup=2, out="ab_step",
                           quick_help="smoke run: a tiny model, 2 rounds")
  p.add_argument("--variant", action="append", required=True, help="NAME:module.ATTR=VALUE,... (repeatable)")
  p.add_argument("--config", default="midsize")
  p.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
  p.add_argument("--set", action="append", help="config override for every variant, e.g. model.attention=xla")
  args = p.parse_args(argv)
  if args.quick:
    args.iters, args.warmup = 2, 1
  variants = dict(parse_variant(v) for v in args.variant)
  if len(variants) != len(args.variant):
    p.error("--variant names must differ")
  config = apply_overrides(common.load_config(args.config, args.quick), parse_overrides(args.set))
  info = common.machine_info()
  runs = {}
  for name, sets in variants.items():
    s, runs[name] = compile_variant(config, args.batch, sets)
    print(f"compiled {name}", file=sys.stderr, flush=True)
  times = common.interleave(runs, warmup=args.warmup, iters=args.iters)
  first = next(iter(times))
  rows = [{"variant": name, "median_s": common.median(ts), "min_s": min(ts), "max_s": max(ts),
           "vs_first": common.median(ts) / common.median(times[first]),
           "rounds_faster": f"{sum(a < b for a, b in zip(ts, times[first]))}/{len(ts)}",
           "sets": ", ".join(f"{m}.{a}={v!r}" for m, a, v in variants[name]) or "(as is)"}
          for name, ts in times.items()]
  path = common.write_json(args.out, {"machine": info, "config": args.config, "batch": s.batch_size,
                                      "rows": rows, "times": times, "quick": args.quick})
  common.print_table(f"train step variants ({args.config}, batch {s.batch_size}, {args.iters} interleaved rounds)",
                     rows, ["variant", "median_s", "min_s", "max_s", "vs_first", "rounds_faster", "sets"], info,
                     [f"vs_first: median over the first variant's; rounds_faster: rounds in which it beat the "
                      f"first; wrote {path}"])


if __name__ == "__main__":
  main()

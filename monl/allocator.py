"""glibc malloc settings that make XLA:CPU steps fast, applied at process start (benchmarks/PERF_LOG.md §7-8).

XLA:CPU allocates each execution's temp arena (3.8 GB for the mid-size train step) on a worker thread.
With glibc's defaults that thread's arena cannot hold a block over 64 MiB, so the arena is mmap'ed and
munmap'ed on every step and the kernel page-faults and zero-fills gigabytes per step: more system CPU
than the step's own work. One arena (`MALLOC_ARENA_MAX=1`), no mmap for large blocks and no trimming keep
the freed arena in the heap for the next step. glibc reads these only at start-up (the same settings made
by `mallopt` after start do not get there), so `python -m monl.main train` re-executes itself with them
once it knows the step's size, before any JAX backend starts; `MONL_FAST_CPU=0` turns this off.

Only for a train step large enough to gain (`MIN_ACTIVATION_BYTES`): the single arena costs small steps
time (the default config trained at 15.5 instead of 22 steps/s with the settings, the mid-size one 1.22x
faster: PERF_LOG §8), and only on a CPU-only Linux/glibc host with no other allocator preloaded (jemalloc through launch/env.sh, or
the user's own LD_PRELOAD) and none of the variables already set (the user's choice wins). Hosts with a
TPU or GPU are left alone: their steps do not run on XLA:CPU, and one arena with no trimming would only
grow the host's resident memory and serialise its data-loading threads.
"""
from __future__ import annotations

import glob
import os
import platform
import sys
from collections.abc import Mapping, Sequence

# glibc's tunables as environment variables (mallopt(3)): one arena, never mmap a block (it comes from the
# heap and stays there when freed), never trim the top of the heap (SIZE_MAX: -1 is not accepted here).
GLIBC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
             "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)}
OPT_OUT = "MONL_FAST_CPU"
# A train step whose activations (activation_bytes) pass this gets the settings: measured on two
# configs, 14 MiB (default: 30% slower with them) and 2.6 GiB (mid-size: 1.22x faster); the cut between
# them is a judgement, not a measured crossover.
MIN_ACTIVATION_BYTES = 512 * 2**20
# device nodes of TPU VMs (/dev/accel*, /dev/vfio/N on v5e and later) and NVIDIA GPUs
ACCELERATOR_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")


def accelerator_nodes() -> list[str]:
  return sorted(p for pattern in ACCELERATOR_NODES for p in glob.glob(pattern))


def activation_bytes(*, batch: int, tokens: int, width: int, heads: int, depth: int, value_bytes: int) -> float:
  """Activations a transformer's train step keeps for the backward pass, bytes: per layer
  tokens * batch * width * (34 + 5 * heads * tokens / width) at 2 bytes a value (Korthikanti et al. 2022,
  "Reducing Activation Recomputation in Large Transformer Models", eq. 1), scaled to value_bytes."""
  return value_bytes / 2 * depth * tokens * batch * width * (34 + 5 * heads * tokens / width)


def train_activation_bytes(config) -> float:
  """activation_bytes of a monl config whose layout is complete (monl.train.loop.with_data_layout)."""
  from monl import layout as layout_lib
  lay = layout_lib.Layout.from_config(config.layout)
  m = config.model
  return activation_bytes(batch=config.data.batch_size, tokens=lay.num_tokens, width=m.width,
                          heads=m.num_heads, depth=m.depth, value_bytes=2 if m.dtype == "bfloat16" else 4)


def skip_reason(environ: Mapping[str, str], *, libc: str, accelerators: Sequence[str],
                step_bytes: float = float("inf")) -> str | None:
  """Why the settings should not be applied to this process (None: apply them).

  environ: the process environment; libc: `platform.libc_ver()[0]` ('glibc' on most Linux);
  accelerators: TPU/GPU device nodes found on the host; step_bytes: the train step's activations
  (train_activation_bytes).
  """
  if environ.get(OPT_OUT, "1") == "0":
    return f"{OPT_OUT}=0"
  already = sorted(k for k in GLIBC_ENV if k in environ)
  if already:
    return f"{', '.join(already)} already set"
  if environ.get("LD_PRELOAD"):
    return f"LD_PRELOAD={environ['LD_PRELOAD']} (another allocator is preloaded)"
  if libc != "glibc":
    return f"libc is {libc or 'not glibc'}"
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and platforms.split(",")[0] != "cpu":
    return f"JAX_PLATFORMS={platforms}"
  if not platforms and accelerators:
    return f"accelerator on this host ({accelerators[0]})"
  if step_bytes < MIN_ACTIVATION_BYTES:
    return (f"a small step (~{step_bytes / 2**20:.0f} MiB of activations < {MIN_ACTIVATION_BYTES / 2**20:.0f} "
            "MiB), which one arena would slow down")
  return None


def maybe_reexec(step_bytes: float, argv: Sequence[str] | None = None) -> None:
  """Re-executes this process (same interpreter, interpreter flags and arguments; same pid) with
  GLIBC_ENV added when `skip_reason` finds nothing against it; otherwise returns. Call it before any
  JAX backend or jax.distributed is initialised and before much is allocated: the work done before
  it is lost (it is redone after the restart)."""
  reason = skip_reason(os.environ, libc=platform.libc_ver()[0], accelerators=accelerator_nodes(),
                       step_bytes=step_bytes)
  if reason is not None:
    return
  argv = list(sys.orig_argv if argv is None else argv)
  env = {**os.environ, **GLIBC_ENV}
  print("[monl] restarting with " + " ".join(f"{k}={v}" for k, v in GLIBC_ENV.items())
        + f" (a large step, ~{step_bytes / 2**30:.1f} GiB of activations: faster on XLA:CPU with glibc malloc; "
        f"{OPT_OUT}=0 turns this off)", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def describe(environ: Mapping[str, str] | None = None) -> str:
  """The allocator setting of a process, for logs and benchmark tables."""
  environ = os.environ if environ is None else environ
  preload = environ.get("LD_PRELOAD", "")
  if "jemalloc" in preload:
    return "jemalloc"
  if preload:
    return f"preloaded {os.path.basename(preload.split(':')[0])}"
  if all(environ.get(k) == v for k, v in GLIBC_ENV.items()):
    return "glibc + monl settings"
  if any(k in environ for k in GLIBC_ENV):
    return "glibc + " + " ".join(f"{k}={environ[k]}" for k in GLIBC_ENV if k in environ)
  return "glibc default"

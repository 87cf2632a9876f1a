"""glibc malloc settings that make XLA:CPU steps fast, applied at process start (benchmarks/PERF_LOG.md §7-8).

XLA:CPU allocates each execution's temp arena (3.8 GB for the mid-size train step) on a worker thread.
With glibc's defaults that thread's arena cannot hold a block over 64 MiB, so the arena is mmap'ed and
munmap'ed on every step and the kernel page-faults and zero-fills gigabytes per step: more system CPU
than the step's own work. One arena (`MALLOC_ARENA_MAX=1`), no mmap for large blocks and no trimming keep
the freed arena in the heap for the next step. glibc reads these only at start-up (the same settings made
by `mallopt` after start do not get there), so `python -m monl.main` re-executes itself with them before
anything is imported; `MONL_FAST_CPU=0` turns this off.

Only on a CPU-only Linux/glibc host with no other allocator preloaded (jemalloc through launch/env.sh, or
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
# device nodes of TPU VMs (/dev/accel*, /dev/vfio/N on v5e and later) and NVIDIA GPUs
ACCELERATOR_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*")


def accelerator_nodes() -> list[str]:
  return sorted(p for pattern in ACCELERATOR_NODES for p in glob.glob(pattern))


def skip_reason(environ: Mapping[str, str], *, libc: str, accelerators: Sequence[str]) -> str | None:
  """Why the settings should not be applied to this process (None: apply them).

  environ: the process environment; libc: `platform.libc_ver()[0]` ('glibc' on most Linux);
  accelerators: TPU/GPU device nodes found on the host.
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
  return None


def maybe_reexec(argv: Sequence[str] | None = None) -> None:
  """Re-executes this process (same interpreter, interpreter flags and arguments; same pid) with
  GLIBC_ENV added when `skip_reason` finds nothing against it; otherwise returns. Call it first thing,
  before JAX (or anything that allocates much) is imported: the work done before it is lost."""
  reason = skip_reason(os.environ, libc=platform.libc_ver()[0], accelerators=accelerator_nodes())
  if reason is not None:
    return
  argv = list(sys.orig_argv if argv is None else argv)
  env = {**os.environ, **GLIBC_ENV}
  print("[monl] restarting with " + " ".join(f"{k}={v}" for k, v in GLIBC_ENV.items())
        + f" (faster XLA:CPU steps with glibc malloc; {OPT_OUT}=0 turns this off)", file=sys.stderr, flush=True)
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

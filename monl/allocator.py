"""A faster malloc for XLA:CPU train steps, applied at process start (benchmarks/PERF_LOG.md §7, 8, 10).

XLA:CPU allocates each execution's temp arena (3.8 GB for the mid-size train step) on a worker thread.
With glibc's defaults that thread's arena cannot hold a block over 64 MiB, so the arena is mmap'ed and
munmap'ed on every step and the kernel page-faults and zero-fills gigabytes per step: more system CPU
than the step's own work. An allocator can only be swapped at start-up (LD_PRELOAD; glibc also reads its
tunables only then), so `python -m monl.main train` and `train_autoencoder` re-execute themselves once,
before any JAX backend starts, with one of:

1. oneTBB's scalable malloc from the `tbb` wheel (a dependency on x86-64 Linux), preloaded with freed
   blocks over `TBB_HUGE_BYTES` kept for reuse: the arena is mapped once. Measured as fast as jemalloc on
   the mid-size step and no slower than glibc on the default config's 30 ms step, so it applies to
   every step size (PERF_LOG §10).
2. Without it (other platforms, or the wheel removed): glibc's own tunables, one arena
   (`MALLOC_ARENA_MAX=1`), no mmap for large blocks and no trimming, only for a train step large enough
   to gain (`MIN_ACTIVATION_BYTES`): the single arena serialises small allocations of XLA's and Grain's
   threads, and the default config trained at 15.5 instead of 22 steps/s with them (PERF_LOG §8).

Neither on a host with a TPU or GPU (its steps do not run on XLA:CPU), nor when another allocator is
preloaded (jemalloc through launch/env.sh, or the user's own LD_PRELOAD) or any of the variables is set
(the user's choice wins), nor with `MONL_FAST_CPU=0`.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping, Sequence

from monl import host

# glibc's tunables as environment variables (mallopt(3)): one arena, never mmap a block (it comes from the
# heap and stays there when freed), never trim the top of the heap (SIZE_MAX: -1 is not accepted here).
GLIBC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
             "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)}
# oneTBB's malloc: the proxy replaces malloc/free/posix_memalign/... when preloaded and needs the
# allocator itself beside it (the wheel installs both into <prefix>/lib, off the loader's search path).
TBB_LIBS = ("libtbbmalloc.so.2", "libtbbmalloc_proxy.so.2")
# Freed blocks of at least this size are "huge" to tbbmalloc and stay cached instead of being returned to
# the OS at its regular cleanups; without it the mid-size step took 5.4 s instead of 4.2 (PERF_LOG §10).
TBB_HUGE_BYTES = 64 * 2**20
TBB_ENV = {"TBB_MALLOC_SET_HUGE_SIZE_THRESHOLD": str(TBB_HUGE_BYTES)}
OPT_OUT = "MONL_FAST_CPU"
# Without tbbmalloc, a train step whose activations (activation_bytes) pass this gets the glibc settings:
# measured on two configs, 14 MiB (default: 30% slower with them) and 2.6 GiB (mid-size: 1.22x faster);
# the cut between them is a judgement, not a measured crossover.
MIN_ACTIVATION_BYTES = 512 * 2**20


def tbbmalloc_preload() -> str | None:
  """The LD_PRELOAD value for oneTBB's malloc as installed by the `tbb` wheel (absolute paths, allocator
  first), or None when the wheel or one of its two libraries is not installed."""
  try:
    dist = importlib.metadata.distribution("tbb")
  except importlib.metadata.PackageNotFoundError:
    return None
  found = {f.name: os.path.abspath(dist.locate_file(f)) for f in dist.files or () if f.name in TBB_LIBS}
  if any(not os.path.isfile(found.get(name, "")) for name in TBB_LIBS):
    return None
  return ":".join(found[name] for name in TBB_LIBS)


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


def choose(environ: Mapping[str, str], *, libc: str, accelerators: Sequence[str], tbb: str | None,
           step_bytes: float | None = None) -> tuple[dict[str, str], str] | str:
  """The environment to restart this process with and why, or (a str) why it should not restart.

  environ: the process environment; libc: `platform.libc_ver()[0]` ('glibc' on most Linux);
  accelerators: TPU/GPU device nodes found on the host; tbb: `tbbmalloc_preload()`; step_bytes: the
  train step's activations (train_activation_bytes), None when not estimated (then only tbbmalloc).
  """
  if environ.get(OPT_OUT, "1") == "0":
    return f"{OPT_OUT}=0"
  already = sorted(k for k in (*GLIBC_ENV, *TBB_ENV) if k in environ)
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
  if tbb:
    return {"LD_PRELOAD": tbb, **TBB_ENV}, "oneTBB's malloc from the tbb wheel: faster on XLA:CPU"
  if step_bytes is None:
    return "no tbb wheel, and the step's size is not estimated for the glibc settings"
  if step_bytes < MIN_ACTIVATION_BYTES:
    return (f"no tbb wheel, and a small step (~{step_bytes / 2**20:.0f} MiB of activations < "
            f"{MIN_ACTIVATION_BYTES / 2**20:.0f} MiB), which glibc's single arena would slow down")
  return dict(GLIBC_ENV), (f"glibc malloc settings (no tbb wheel; a large step, ~{step_bytes / 2**30:.1f} GiB "
                           "of activations): faster on XLA:CPU")


def maybe_reexec(step_bytes: float | None = None, argv: Sequence[str] | None = None) -> None:
  """Re-executes this process (same interpreter, interpreter flags and arguments; same pid) with the
  allocator `choose` picks, or returns when it picks none. Call it before any JAX backend or
  jax.distributed is initialised and before much is allocated: the work done before it is lost (it is
  redone after the restart)."""
  chosen = choose(os.environ, libc=platform.libc_ver()[0], accelerators=host.accelerator_nodes(),
                  tbb=tbbmalloc_preload(), step_bytes=step_bytes)
  if isinstance(chosen, str):
    return
  update, why = chosen
  argv = list(sys.orig_argv if argv is None else argv)
  print("[monl] restarting with " + " ".join(f"{k}={v}" for k, v in update.items())
        + f" ({why}; {OPT_OUT}=0 turns this off)", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, **update})


def release_free_memory() -> bool:
  """Returns the memory tbbmalloc keeps cached (freed huge blocks, TBB_ENV) to the OS, when it is the
  preloaded allocator; True if it was. Call it between programs of different sizes, e.g. the train step
  and an evaluation after it: each keeps its own arena cached otherwise, and the two need not fit together
  (the paper autoencoder's evaluation after training was killed at 24 GB without it)."""
  path = next((p for p in os.environ.get("LD_PRELOAD", "").split(":") if p.endswith(TBB_LIBS[0])), None)
  if path is None:
    return False
  import ctypes
  TBBMALLOC_CLEAN_ALL_BUFFERS = 0  # oneTBB's scalable_allocator.h, ScalableAllocationCmd
  return ctypes.CDLL(path).scalable_allocation_command(TBBMALLOC_CLEAN_ALL_BUFFERS, None) == 0


def describe(environ: Mapping[str, str] | None = None) -> str:
  """The allocator setting of a process, for logs and benchmark tables."""
  environ = os.environ if environ is None else environ
  preload = environ.get("LD_PRELOAD", "")
  if "jemalloc" in preload:
    return "jemalloc"
  if "tbbmalloc" in preload:
    return "tbbmalloc" + (" (huge blocks kept)" if all(environ.get(k) == v for k, v in TBB_ENV.items()) else "")
  if preload:
    return f"preloaded {os.path.basename(preload.split(':')[0])}"
  if all(environ.get(k) == v for k, v in GLIBC_ENV.items()):
    return "glibc + monl settings"
  if any(k in environ for k in GLIBC_ENV):
    return "glibc + " + " ".join(f"{k}={environ[k]}" for k in GLIBC_ENV if k in environ)
  return "glibc default"

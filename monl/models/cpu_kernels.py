"""monl's C++ kernels for XLA:CPU, built on first use and registered with XLA's FFI.

The library holds the fused attention (`attention_cpu.cc`, called by `attention_kernel`) and the dense
layers' weight gradient (`matmul_cpu.cc`, `transposed_product`, called by `layers.cpu_matmul`), with
their shared vector and thread-pool helpers (`cpu_kernels.h`). `build()` compiles them with the host's
C++ compiler (`$CXX`, else g++ / c++ / clang++) for this CPU (-march=native; `$MONL_KERNEL_MARCH` names
another target, e.g. x86-64-v3, which the tests use to run the kernels at every vector width the host
can) into `$MONL_KERNEL_CACHE` (default ~/.cache/monl/kernels), keyed by the sources, flags, compiler,
jaxlib and CPU, so a second process (or a second host sharing the home directory) never reuses a wrong
binary.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

_HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = tuple(os.path.join(_HERE, name) for name in ("cpu_kernels.h", "attention_cpu.cc", "matmul_cpu.cc"))
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
TARGETS = {  # FFI target name -> the library's handler symbol
    "monl_attention_fwd": "MonlAttentionFwd", "monl_attention_fwd_bias": "MonlAttentionFwdBias",
    "monl_attention_bwd": "MonlAttentionBwd", "monl_attention_bwd_bias": "MonlAttentionBwdBias",
    "monl_transposed_product": "MonlTransposedProduct",
}


class KernelUnavailable(RuntimeError):
  """The kernels cannot be built on this host (no C++ compiler, or it failed); the message says why."""


def _compiler() -> str:
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  raise KernelUnavailable("no C++ compiler found ($CXX, g++, c++, clang++): the CPU kernels (fused "
                          "attention, weight gradients) need one (e.g. `apt-get install g++`); "
                          "config.model.attention='xla' runs without it")


def flags(march: str | None = None) -> tuple[str, ...]:
  """The compiler's flags: FLAGS and the target (`march`, else $MONL_KERNEL_MARCH, else native)."""
  return (*FLAGS, f"-march={march or os.environ.get('MONL_KERNEL_MARCH') or 'native'}")


def compile_command(output: str, march: str | None = None, compiler: str | None = None) -> list[str]:
  """The command that compiles the library to `output` (for `march`, as `flags` reads it) with `compiler`
  (default: the host's, `_compiler()`; the tests pass a cross compiler)."""
  return [compiler or _compiler(), *flags(march), "-I", jax.ffi.include_dir(),
          *(p for p in SOURCES if p.endswith(".cc")), "-o", output]


def _cpu_id() -> str:
  """What -march=native compiles for: the CPU model and its feature flags."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [l for l in f.read().splitlines() if l.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(lines)))
  except OSError:
    return platform.processor() or platform.machine()


def library_path() -> str:
  """Where the built library for this host lives (built or not)."""
  cxx = _compiler()
  src = b""
  for path in SOURCES:
    with open(path, "rb") as f:
      src += f.read() + b"\0"
  key = hashlib.sha256(b"\0".join([src, " ".join(flags()).encode(), cxx.encode(), jax.ffi.include_dir().encode(),
                                   jax.__version__.encode(), _cpu_id().encode()])).hexdigest()[:16]
  cache = os.environ.get("MONL_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "monl",
                                                              "kernels")
  return os.path.join(cache, f"cpu_kernels_{key}.so")


@functools.lru_cache(maxsize=None)
def build() -> str:
  """Compiles the library (once per host and source; cached on disk) and registers its FFI targets.

  Returns the library's path; raises KernelUnavailable naming the compiler's error.
  """
  path = library_path()
  if not os.path.exists(path):
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    except OSError as e:
      raise KernelUnavailable(f"cannot write the CPU kernels' cache {os.path.dirname(path)} ({e}); "
                              "set MONL_KERNEL_CACHE to a writable directory") from e
    os.close(fd)
    cmd = compile_command(tmp)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      os.unlink(tmp)
      raise KernelUnavailable(f"building the CPU kernels failed ({' '.join(cmd)}):\n"
                              f"{proc.stderr[-4000:]}")
    os.replace(tmp, path)  # atomic: a concurrent process sees no file or a whole one
  try:
    lib = ctypes.CDLL(path)
  except OSError as e:
    raise KernelUnavailable(f"loading the CPU kernels {path} failed ({e}); delete it to rebuild") from e
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return path


def available() -> str | None:
  """None when the library is built and its targets registered, else why not."""
  try:
    build()
  except KernelUnavailable as e:
    return str(e)
  return None


def vector_shape() -> tuple[int, int]:
  """(floats per vector, rows per register tile) of the built library: (16, 8) on AVX-512, (8, 4) on AVX2,
  (4, 4) on SSE, (4, 8) on NEON."""
  lib = ctypes.CDLL(build())
  return lib.MonlVectorWidth(), lib.MonlTileRows()


def transposed_product(a: jax.Array, b: jax.Array) -> jax.Array:
  """a^T b for a [N, I], b [N, O] -> [I, O] float32, without transposing either (`matmul_cpu.cc`)."""
  if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
    raise ValueError(f"transposed_product: expected a [N, I] and b [N, O], got {a.shape} and {b.shape}")
  build()  # registers the targets (once per process; raises KernelUnavailable if it cannot)
  return jax.ffi.ffi_call("monl_transposed_product", jax.ShapeDtypeStruct((a.shape[1], b.shape[1]), jnp.float32),
                          vmap_method="sequential")(a.astype(jnp.float32), b.astype(jnp.float32))

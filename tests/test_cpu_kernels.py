"""monl's C++ kernels for XLA:CPU (monl/models/cpu_kernels.py): the build cache, the errors when they
cannot be built, the weight-gradient product (matmul_cpu.cc) against numpy and through `cpu_matmul`, every
x86-64 vector width, and both kernels against float64 references outside XLA (tests/kernel_check.cc), on
this host and, where a cross compiler and qemu are installed, on AArch64."""
import os
import platform
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monl.models import cpu_kernels, layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_is_cached_by_source_and_where_monl_kernel_cache_says(tmp_path, monkeypatch):
  path = cpu_kernels.build()
  assert os.path.isfile(path) and path == cpu_kernels.library_path()
  for i, source in enumerate(cpu_kernels.SOURCES):  # an edited source is never served the old binary
    edited = tmp_path / os.path.basename(source)
    edited.write_text(open(source).read() + "// edited\n")
    with monkeypatch.context() as m:
      m.setattr(cpu_kernels, "SOURCES", cpu_kernels.SOURCES[:i] + (str(edited),) + cpu_kernels.SOURCES[i + 1:])
      assert cpu_kernels.library_path() != path, source
  monkeypatch.setenv("MONL_KERNEL_CACHE", str(tmp_path / "cache"))
  assert os.path.dirname(cpu_kernels.library_path()) == str(tmp_path / "cache")


def test_without_a_compiler_the_error_says_what_to_do(monkeypatch):
  monkeypatch.setenv("CXX", "")
  monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: None)
  with pytest.raises(cpu_kernels.KernelUnavailable, match=r"no C\+\+ compiler.*attention='xla'"):
    cpu_kernels.library_path()


def test_an_unwritable_cache_names_the_directory(tmp_path, monkeypatch):
  blocked = tmp_path / "file"
  blocked.write_text("")
  monkeypatch.setenv("MONL_KERNEL_CACHE", str(blocked / "kernels"))  # under a file: cannot be created
  with pytest.raises(cpu_kernels.KernelUnavailable, match=r"cannot write .*file/kernels.*MONL_KERNEL_CACHE"):
    cpu_kernels.build.__wrapped__()


# N: empty, below and not a multiple of the 256-row chunks, and several chunks per thread; I, O: below,
# not a multiple of, and a multiple of the register tile (8 x 32 on AVX-512, 4 x 16 on AVX2, 4 x 8 on
# SSE), and I over the 512-column block.
@pytest.mark.parametrize("n,n_in,n_out", [(0, 8, 32), (5, 3, 7), (300, 37, 45), (1100, 600, 64), (2048, 16, 96)])
def test_transposed_product_matches_numpy(n, n_in, n_out):
  rng = np.random.default_rng(n + n_in)
  a = rng.standard_normal((n, n_in)).astype(np.float32)
  b = rng.standard_normal((n, n_out)).astype(np.float32)
  got = np.asarray(jax.jit(cpu_kernels.transposed_product)(a, b))
  want = a.astype(np.float64).T @ b
  assert got.shape == (n_in, n_out) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * max(n, 1) ** 0.5 * 4)
  with pytest.raises(ValueError, match=r"expected a \[N, I\] and b \[N, O\], got \(3, 2\) and \(4, 2\)"):
    cpu_kernels.transposed_product(jnp.zeros((3, 2)), jnp.zeros((4, 2)))


def test_cpu_matmul_takes_its_weight_gradient_from_the_kernel():
  """The kernel computes dW when dy is at least as wide as x, XLA's transposed product otherwise or when
  the kernel is unavailable (and then no dot is left to Eigen either)."""
  x, w = jnp.ones((600, 24)), jnp.ones((24, 40))

  def hlo(x=x, w=w):  # traced anew each time
    return jax.jit(jax.grad(lambda w: jnp.sum(layers.cpu_matmul(x, w) ** 2))).lower(w).compile().as_text()

  assert "monl_transposed_product" in hlo()
  assert "monl_transposed_product" not in hlo(jnp.ones((600, 40)), jnp.ones((40, 24)))
  layers._cpu_kernels_unavailable.cache_clear()
  try:
    with pytest.MonkeyPatch.context() as m:
      m.setattr(cpu_kernels, "available", lambda: "no compiler (test)")
      fallback = hlo()
  finally:
    layers._cpu_kernels_unavailable.cache_clear()
  assert "monl_transposed_product" not in fallback and " dot(" not in fallback.split("\nENTRY")[1]


# x86-64 levels and the CPU flags each needs: the kernels' vectors are 4 floats (SSE) at v2, 8 (AVX2, 16
# registers: 4-row tiles) at v3 and 16 (AVX-512, 32 registers: 8-row tiles) at v4.
X86_LEVELS = {"x86-64-v2": {"sse4_2", "popcnt"}, "x86-64-v3": {"avx2", "fma", "bmi2", "movbe"},
              "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}}


def _cpu_flags() -> set[str]:
  with open("/proc/cpuinfo") as f:
    return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
                    reason="x86-64 on Linux")
def test_kernels_use_the_hosts_vector_width():
  """16-float vectors split into two on AVX2, their register tiles spilled, and the kernels ran 5x slower
  than XLA (benchmarks/PERF_LOG.md section 18): the library's vectors are the CPU's own."""
  flags = _cpu_flags()
  want = (16, 8) if "avx512f" in flags else (8, 4) if "avx" in flags else (4, 4)
  assert cpu_kernels.vector_shape() == want


@pytest.mark.skipif(platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"),
                    reason="x86-64 levels on Linux")
@pytest.mark.parametrize("march", sorted(X86_LEVELS))
def test_kernels_at_every_x86_vector_width(march, tmp_path):
  """A host runs the kernels at its own vector width only (the other tests, -march=native). Every level
  compiles here; the levels below the highest this CPU runs also pass the numerical tests (attention
  against the einsums, the weight-gradient product against numpy) with the library rebuilt for them
  ($MONL_KERNEL_MARCH, in a subprocess)."""
  runs = [level for level, needs in sorted(X86_LEVELS.items()) if needs <= _cpu_flags()]
  if march not in runs[:-1]:
    proc = subprocess.run(cpu_kernels.compile_command(str(tmp_path / "kernels.so"), march), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return
  env = dict(os.environ, MONL_KERNEL_MARCH=march, MONL_KERNEL_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         "tests/test_cpu_kernels.py::test_transposed_product_matches_numpy",
                         "tests/test_attention_kernel.py::test_kernel_matches_the_einsums_and_their_gradients"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert " passed" in proc.stdout and len(os.listdir(tmp_path / "cache")) == 1, proc.stdout[-2000:]


def _kernel_check(compiler: str, march: str, tmp_path, run=()):
  """Builds tests/kernel_check.cc (the kernels against float64 references, outside XLA) with `compiler`
  for `march` and runs it (through `run`, an emulator, when given) -> its output."""
  exe = str(tmp_path / f"kernel_check_{march}")
  program = [f for f in cpu_kernels.FLAGS if f not in ("-shared", "-fPIC")]  # an executable, not the library
  build = subprocess.run([compiler, *program, f"-march={march}", "-static" if run else "-pthread",
                          "-I", jax.ffi.include_dir(), os.path.join(ROOT, "tests", "kernel_check.cc"), "-o", exe],
                         capture_output=True, text=True)
  assert build.returncode == 0, build.stderr[-4000:]
  proc = subprocess.run([*run, exe], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.endswith("all ok\n"), proc.stdout[-4000:] + proc.stderr[-2000:]
  return proc.stdout


def test_kernel_check_passes_on_this_host(tmp_path):
  """The standalone check the AArch64 test runs under an emulator, run natively: it builds, its float64
  references agree with the kernels, and it sees the library's vector shape."""
  march = cpu_kernels.flags()[-1].removeprefix("-march=")  # native, or $MONL_KERNEL_MARCH as the library's
  out = _kernel_check(cpu_kernels._compiler(), march, tmp_path)
  width, rows = cpu_kernels.vector_shape()
  assert out.startswith(f"vectors of {width} floats, register tiles of {rows} rows\n"), out[:200]


AARCH64_TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64")


@pytest.mark.skipif(not all(map(shutil.which, AARCH64_TOOLS)),
                    reason="needs a cross compiler and an emulator: apt-get install g++-aarch64-linux-gnu qemu-user")
def test_kernels_on_aarch64_under_qemu(tmp_path):
  """The NEON path (4-float vectors, 8-row tiles, the "+w" register constraint): the library compiles for
  AArch64, and the kernels pass the float64 check under qemu."""
  cross = shutil.which(AARCH64_TOOLS[0])
  library = subprocess.run(cpu_kernels.compile_command(str(tmp_path / "k.so"), "armv8-a", cross),
                           capture_output=True, text=True)
  assert library.returncode == 0, library.stderr[-4000:]
  out = _kernel_check(cross, "armv8-a", tmp_path, run=(shutil.which(AARCH64_TOOLS[1]),))
  assert out.startswith("vectors of 4 floats, register tiles of 8 rows\n"), out[:200]

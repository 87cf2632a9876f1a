"""monl's C++ kernels for XLA:CPU (monl/models/cpu_kernels.py): the build cache, the errors when they
cannot be built, and the weight-gradient product (matmul_cpu.cc) against numpy and through `cpu_matmul`."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monl.models import cpu_kernels, layers


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
# not a multiple of, and a multiple of the 8 x 32 register tile, and I over the 512-column block.
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

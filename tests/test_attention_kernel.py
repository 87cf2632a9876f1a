"""The fused CPU attention kernel (monl/models/attention_cpu.cc through XLA's FFI): values and gradients
against JAX's einsums for awkward shapes, with and without the logit bias, other dtypes, per-shard
execution under a mesh, and the errors when it cannot be used (the build: test_cpu_kernels.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monl.models import attention_kernel, layers
from test_attention_splash import run_sharded


def kernel(q, k, v, bias=None):
  """The kernel on heads-major arrays (no mesh here: no shard_map)."""
  return layers.dot_attention(q, k, v, "cpu_kernel", bias)


def _grads(fn, q, k, v, bias, g):
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  return jax.jit(jax.value_and_grad(lambda q, k, v, b: jnp.sum(fn(q, k, v, b) * g), argnums=argnums))(q, k, v, bias)


# L: below one vector, not a multiple of the row blocks (4 or 8 rows) / vectors (4, 8 or 16 floats) / 32-row
# backward blocks, and a multiple of all; K: below one vector and a multiple of none, a multiple of 4 only,
# of 4 and 8 but not 16, and of all (test_cpu_kernels.py reruns this at every x86 vector width).
@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (1, 2, 37, 20), (2, 2, 64, 16), (1, 1, 130, 40)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("keep_probs", [True, False])
def test_kernel_matches_the_einsums_and_their_gradients(shape, with_bias, keep_probs, monkeypatch):
  monkeypatch.setattr(attention_kernel, "KEEP_PROBS_MAX_BYTES", 1 << 40 if keep_probs else 0)
  ks = jax.random.split(jax.random.key(sum(shape)), 5)
  q, k, v, g = (2.0 * jax.random.normal(key, shape) for key in ks[:4])
  bias = jax.random.normal(ks[4], (shape[1], shape[2], shape[2])) if with_bias else None
  out = jax.jit(kernel)(q, k, v, bias)
  # Both are float32 with logits up to ~15: at L = 130 the einsums and the kernel are 4-5e-6 from a float64
  # run, the kernel built without FMA (x86-64-v2, products rounded twice) 6.5e-6.
  np.testing.assert_allclose(out, layers.einsum_attention(q, k, v, bias), atol=1e-5, rtol=1e-5)
  (loss, got), (ref_loss, want) = _grads(kernel, q, k, v, bias, g), \
      _grads(layers.einsum_attention, q, k, v, bias, g)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert len(got) == (4 if with_bias else 3)
  for name, a, b in zip("qkvb", got, want):
    assert float(jnp.abs(b).max()) > 1e-2, name  # a real gradient, not zeros compared with zeros
    # float32 against float32 with logits up to ~15: both are ~1e-5 from a float64 run here (the kernel
    # 1.7e-5, the einsums 8e-6, cpu_attention 1.1e-5)
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("time_bias", [False, True])
def test_model_with_the_kernel_matches_the_model_with_xla(time_bias):
  """The Attention module's packed path (one q/k/v product, no head transposes) is the same function of
  the same parameters as its heads-major path: outputs and every parameter's gradient."""
  from test_model import _inputs, _randomize, _setup
  model_xla, lay = _setup(attention="xla", time_bias=time_bias)
  model_kernel, _ = _setup(attention="auto", time_bias=time_bias)
  tokens, t = _inputs(lay)
  variables = _randomize(model_xla.init(jax.random.key(0), tokens, t))
  assert jax.tree.structure(variables) == jax.tree.structure(model_kernel.init(jax.random.key(0), tokens, t))

  def loss_and_grads(model):
    loss = lambda v: sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(model.apply(v, tokens, t)))
    return jax.jit(jax.value_and_grad(loss))(variables)

  hlo = jax.jit(lambda v: model_kernel.apply(v, tokens, t)).lower(variables).as_text()
  assert "monl_attention_fwd" in hlo
  (loss, got), (ref_loss, want) = loss_and_grads(model_kernel), loss_and_grads(model_xla)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_kernel_keeps_probabilities_only_within_its_budget_and_keeps_other_dtypes(monkeypatch):
  q = jax.random.normal(jax.random.key(0), (2, 2, 48, 16))
  size = 2 * 2 * 48 * 48 * 4  # bytes of the [B, H, L, L] probabilities
  for budget, kept in ((size, True), (size - 1, False)):
    monkeypatch.setattr(attention_kernel, "KEEP_PROBS_MAX_BYTES", budget)
    grad = jax.grad(lambda q: jnp.sum(kernel(q, q, q, None) ** 2))  # a new function: traced afresh
    hlo = jax.jit(grad).lower(q).compile().as_text()
    # over budget the backward recomputes P from the log-sum-exp: no [B, H, L, L] array in the step
    assert ("f32[2,2,48,48]" in hlo) == kept, budget
  # not differentiated (sampling), the forward keeps nothing
  assert "f32[2,2,48,48]" not in jax.jit(lambda q: kernel(q, q, q, None)).lower(q).compile().as_text()
  low = q.astype(jnp.bfloat16)
  out = kernel(low, low, low, None)
  assert out.dtype == jnp.bfloat16
  assert jax.grad(lambda x: jnp.sum(kernel(x, x, x, None).astype(jnp.float32)))(
      low).dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=r"bias must be \[H, L, L\] = \(2, 48, 48\), got \(2, 48, 47\)"):
    kernel(q, q, q, jnp.zeros((2, 48, 47)))


def test_cpu_kernel_off_cpu_is_a_config_error(monkeypatch):
  monkeypatch.setattr(layers, "target_platform", lambda: "gpu")
  q = jnp.zeros((1, 1, 8, 8))
  with pytest.raises(ValueError, match=r"config\.model\.attention='cpu_kernel' runs on CPU only; compiling for gpu"):
    layers.dot_attention(q, q, q, "cpu_kernel")
  assert layers.dot_attention(q, q, q, "auto").shape == q.shape  # "auto" runs "xla" there


def test_kernel_runs_per_shard_under_a_mesh():
  run_sharded("cpu_kernel", length=40, head_dim=16, with_bias=True)

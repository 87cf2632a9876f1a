"""The Pallas splash-attention path: padding/masking in the Pallas interpreter on CPU against the "xla"
path (values and gradients), per-shard execution under a mesh, config checks, and (with libtpu) that the
train step compiled for a TPU topology contains the kernel."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import avdit_paper, default
from conftest import xla_flags
from monl.models import avdit, layers

HERE = os.path.dirname(os.path.abspath(__file__))


def _loss_and_grads(impl, q, k, v, w):
  """sum(attention(q, k, v) * w) and its gradient with respect to q, k, v."""
  fn = lambda q, k, v: (layers.dot_attention(q, k, v, impl) * w).sum()
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(q, k, v)


def test_padded_splash_in_interpreter_matches_xla():
  # L = 300 is no multiple of the 128-token blocks: padded to 384 (3 x 3 blocks), padding masked off.
  q, k, v, w = jax.random.normal(jax.random.key(0), (4, 2, 2, 300, 32))
  assert layers.target_platform() == "cpu"  # so "splash" runs the kernel in the Pallas interpreter
  ref_loss, ref_grads = _loss_and_grads("xla", q, k, v, w)
  loss, grads = _loss_and_grads("splash", q, k, v, w)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    assert np.isfinite(np.asarray(g)).all()  # padded query rows must not leak NaNs into gradients
    np.testing.assert_allclose(g, r, atol=2e-5)


def test_splash_kernel_padding_is_needed():
  """Without its own segment the zero padding would take softmax weight: the masked path is not a no-op."""
  q, k, v = jax.random.normal(jax.random.key(1), (3, 1, 1, 130, 32))
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, 126), (0, 0)))
  unmasked = layers.splash_attention(pad(q), pad(k), pad(v), interpret=True)[:, :, :130]
  masked = layers.splash_attention(q, k, v, interpret=True)
  np.testing.assert_allclose(masked, layers.dot_attention(q, k, v, "xla"), atol=1e-5)
  assert np.abs(np.asarray(unmasked - masked)).max() > 1e-2


_SHARDED = r"""
import flax.linen as nn, jax, numpy as np
from jax.sharding import AxisType
from monl.models import layers
from monl.parallel import rules as R
IMPL, L, K, WITH_BIAS = {impl!r}, {length}, {head_dim}, {with_bias}
q, k, v, w = jax.random.normal(jax.random.key(0), (4, 4, 4, L, K))
bias = jax.random.normal(jax.random.key(1), (4, L, L)) if WITH_BIAS else None
def run(impl):
  fn = lambda q, k, v, b: (layers.dot_attention(q, k, v, impl, b) * w).sum()
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3) if WITH_BIAS else (0, 1, 2)))(q, k, v, bias)
ref = run("xla")
# fsdp_tp: batch over fsdp, heads (and the bias's) over tensor, and length on `sequence`, which the kernel
# must gather.
for rules, sizes in (("fsdp_tp", (1, 2, 2, 2)), ("dp", (8, 1, 1, 1))):
  mesh = jax.make_mesh(sizes, R.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
  with jax.set_mesh(mesh), nn.logical_axis_rules(R.get_rules(rules)):
    got = run(IMPL)
    assert "manual_computation" in jax.jit(lambda q: layers.dot_attention(q, q, q, IMPL, bias)).lower(q).as_text()
  np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
  for g, r in zip(got[1], ref[1]):  # a bias gradient is summed over the batch shards
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=1e-5)
print("OK")
"""


def run_sharded(impl: str, length: int, head_dim: int, with_bias: bool) -> None:
  """`impl` against "xla" (values, gradients) under fsdp_tp and dp meshes of 8 fake CPU devices, in a
  subprocess (this one has 1): its shard_map must not double or drop gradients."""
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu",
             PYTHONPATH=os.path.dirname(HERE))
  script = _SHARDED.format(impl=impl, length=length, head_dim=head_dim, with_bias=with_bias)
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]


def test_splash_runs_per_shard_under_a_mesh():
  run_sharded("splash", length=200, head_dim=32, with_bias=False)


def test_auto_is_the_cpu_kernel_on_cpu():
  q = jax.random.normal(jax.random.key(2), (1, 2, 40, 16))
  np.testing.assert_array_equal(layers.dot_attention(q, q, q, "auto"), layers.dot_attention(q, q, q, "cpu_kernel"))
  np.testing.assert_allclose(layers.dot_attention(q, q, q, "auto"), layers.dot_attention(q, q, q, "xla"), atol=1e-5)
  hlo = jax.jit(lambda x: layers.dot_attention(x, x, x, "auto")).lower(q).as_text()
  assert "monl_attention_fwd" in hlo and "splash" not in hlo


def test_unknown_attention_is_a_config_error():
  c = default.get_config()
  c.model.attention = "flash"
  with pytest.raises(ValueError, match=r"config\.model\.attention='flash'.*splash"):
    avdit.AVDiTConfig.from_config(c.model)
  with pytest.raises(ValueError, match=r"config\.model\.attention"):
    layers.dot_attention(*jnp.zeros((3, 1, 1, 8, 8)), "flash")


def test_paper_like_train_step_compiles_with_the_kernel_for_tpu():
  """The paper layout (L = 426 tokens, head dim 64) shrunk in width/depth/batch, on v5e:2x2."""
  pytest.importorskip("libtpu")
  from monl import plan
  from monl.parallel import mesh as mesh_lib
  from monl.parallel import rules as rules_lib
  from monl.parallel import sharding
  from monl.train import loop
  from monl.train import step as step_lib
  c = avdit_paper.get_config()
  c.model.width, c.model.depth, c.model.num_heads = 128, 2, 2
  c.data.batch_size, c.mesh.fsdp, c.mesh.tensor = 4, 2, 1
  assert c.model.attention == "auto"  # resolves to splash: the mesh's devices are TPUs
  mesh = mesh_lib.make_mesh(c.mesh, plan.topology_devices("v5e:2x2"))
  rules = rules_lib.get_rules(c.mesh.rules)
  model = loop.build_model(c)
  assert model.layout.num_tokens % layers.SPLASH_LANES  # exercises the padding
  obj = step_lib.Objective.from_config(c, model)
  tx = step_lib.make_optimizer(c.train)
  factory = loop.StateFactory(c, obj, tx, mesh, rules)
  batch = {m.name: jax.ShapeDtypeStruct((4, *m.shape), jnp.float32,
                                        sharding=sharding.batch_sharding(mesh, rules, 1 + len(m.shape)))
           for m in model.layout.modalities}
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), plan.outside_persistent_cache():
    compiled = loop.make_step_fn(c, obj, tx, factory, mesh, rules).lower(factory.abstract, batch, key).compile()
  assert "tpu_custom_call" in compiled.as_text()

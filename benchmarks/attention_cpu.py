"""Attention forward + backward on XLA:CPU: monl's attention, variants of it, and torch's SDPA.

    python benchmarks/attention_cpu.py [--quick] [--batch 8 --heads 6 --length 512 --head_dim 64]

The defaults are one block of configs/midsize.py's train step (the issue-16 comparison). Every variant
is differentiated with jax.grad of sum(out * g) and jitted; the table gives the median time, the
GFLOP/s of the 6 attention matmuls (2 forward, 4 backward) and the largest gradient difference from
"xla": the einsums differentiated by JAX (`monl.models.layers.einsum_attention`), what monl ran on CPU
before `layers.cpu_attention`, which config.model.attention "xla" runs on CPU now; "cpu_kernel" is the
fused C++ kernel (`monl.models.attention_kernel`) that "auto", the default, runs on CPU (its backward
recomputes QK^T: 7 products, counted as 6 in the GFLOP/s column like the others), timed on the packed
projection [B, L, 3, H, K] the model hands it and, with transposes, on [B, H, L, K]. Timings interleave
the variants; torch (if installed, `pip install -e .[bench]`) runs after them, on torch's intra-op
threads = the machine's cores. Also timed: the two forward matmuls alone,
since QK^T (contraction over the head dim, a [L, L] output) runs at a fraction of PV's rate.
"""
from __future__ import annotations

import importlib.util
import math
import sys

import common  # noqa: F401  (sets JAX_PLATFORMS, sys.path)
import numpy as np


def variants(scale: float):
  import jax
  import jax.numpy as jnp

  from monl.models import layers

  def xla(q, k, v):  # layers.einsum_attention without bias: the einsums, differentiated by JAX
    s = jnp.einsum("bhqk,bhsk->bhqs", q * scale, k)
    return jnp.einsum("bhqs,bhsk->bhqk", jax.nn.softmax(s, axis=-1), v)

  def normalise_after_pv(q, k, v):  # softmax's division moved after PV (L x K divisions, not L x L)
    s = jnp.einsum("bhqk,bhsk->bhqs", q * scale, k)
    e = jnp.exp(s - jax.lax.stop_gradient(s.max(-1, keepdims=True)))
    return jnp.einsum("bhqs,bhsk->bhqk", e, v) / e.sum(-1, keepdims=True)

  def query_blocks(q, k, v, block=128):  # query blocks one after another (lax.map): smaller logits live
    b, h, length, d = q.shape
    qb = jnp.moveaxis(q.reshape(b, h, length // block, block, d), 2, 0)
    out = jax.lax.map(lambda qi: xla(qi, k, v), qb)
    return jnp.moveaxis(out, 0, 2).reshape(q.shape)

  @jax.custom_vjp
  def saved_probs(q, k, v):  # the backward from the saved probabilities, written out
    return _fwd(q, k, v)[0]

  def _fwd(q, k, v):
    p = jax.nn.softmax(jnp.einsum("bhqk,bhsk->bhqs", q * scale, k), axis=-1)
    return jnp.einsum("bhqs,bhsk->bhqk", p, v), (q, k, v, p)

  def _bwd(res, do):
    q, k, v, p = res
    dp = jnp.einsum("bhqk,bhsk->bhqs", do, v)
    ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * scale
    return (jnp.einsum("bhqs,bhsk->bhqk", ds, k), jnp.einsum("bhqs,bhqk->bhsk", ds, q),
            jnp.einsum("bhqs,bhqk->bhsk", p, do))

  saved_probs.defvjp(_fwd, _bwd)
  return {"xla": xla, "cpu_attention (monl's 'xla' on CPU)": lambda q, k, v: layers.cpu_attention(q, k, v, None),
          "cpu_kernel, heads-major API": lambda q, k, v: layers.dot_attention(q, k, v, "cpu_kernel"),
          "normalise after PV": normalise_after_pv, "query blocks of 128 (lax.map)": query_blocks,
          "custom_vjp from saved probs": saved_probs}


def main(argv=None) -> int:
  p = common.timing_parser(__doc__, iters=20, warmup=3, out="attention_cpu", quick_help="tiny shapes, 2 iterations")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--length", type=int, default=512)
  p.add_argument("--head_dim", type=int, default=64)
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.heads, args.length, args.head_dim, args.iters, args.warmup = 1, 2, 128, 16, 2, 1
  import jax
  import jax.numpy as jnp
  shape = (args.batch, args.heads, args.length, args.head_dim)
  rng = np.random.default_rng(0)
  # device arrays: a numpy input would be copied in on every call
  q, k, v, g = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(4))
  scale = 1.0 / math.sqrt(args.head_dim)
  matmul_flops = 2.0 * math.prod(shape) * args.length  # one [L, K] x [K, L] product per (batch, head)
  steps, grads = {}, {}
  for name, fn in variants(scale).items():
    step = jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) * g), argnums=(0, 1, 2)))
    grads[name] = [np.asarray(x) for x in step(q, k, v)]
    steps[name] = lambda step=step: step(q, k, v)
  # what the model runs: the kernel on the packed projection, gradient with respect to it
  from monl.models import attention_kernel
  qkv = jnp.stack([jnp.swapaxes(x, 1, 2) for x in (q, k, v)], axis=2)
  g_packed = jnp.swapaxes(g, 1, 2)
  packed = jax.jit(jax.grad(lambda x: jnp.sum(attention_kernel.packed_attention(x, None) * g_packed)))
  grads["cpu_kernel, packed [B, L, 3, H, K] (monl's 'auto' on CPU)"] = [
      np.asarray(jnp.swapaxes(d, 1, 2)) for d in jnp.unstack(packed(qkv), axis=2)]
  steps["cpu_kernel, packed [B, L, 3, H, K] (monl's 'auto' on CPU)"] = lambda: packed(qkv)
  qk = jax.jit(lambda q, k: jnp.einsum("bhqk,bhsk->bhqs", q, k))
  s = np.asarray(qk(q, k))
  pv = jax.jit(lambda p, v: jnp.einsum("bhqs,bhsk->bhqk", p, v))
  steps["forward QK^T alone"] = lambda: qk(q, k)
  steps["forward PV alone"] = lambda: pv(s, v)
  times = common.interleave(steps, warmup=args.warmup, iters=args.iters)
  rows = []
  for name, ts in times.items():
    ms = common.median(ts) * 1e3
    flops = matmul_flops * (6 if name in grads else 1)
    err = max(float(np.abs(a - b).max()) for a, b in zip(grads[name], grads["xla"])) if name in grads else ""
    rows.append({"variant": name, "ms": ms, "matmul GFLOP/s": flops / ms / 1e6, "max |grad - xla|": err})
  if importlib.util.find_spec("torch") is not None:
    import torch
    tq, tk, tv = (torch.tensor(np.asarray(x), requires_grad=True) for x in (q, k, v))
    tg = torch.tensor(np.asarray(g))

    def torch_step():
      for t in (tq, tk, tv):
        t.grad = None
      (torch.nn.functional.scaled_dot_product_attention(tq, tk, tv) * tg).sum().backward()
      return tq.grad
    ts = common.interleave({"torch": torch_step}, warmup=args.warmup, iters=args.iters, block=lambda x: x)["torch"]
    ms = common.median(ts) * 1e3
    err = max(float(np.abs(t.grad.numpy() - r).max()) for t, r in zip((tq, tk, tv), grads["xla"]))
    rows.append({"variant": f"torch {torch.__version__} SDPA", "ms": ms, "matmul GFLOP/s": 6 * matmul_flops / ms / 1e6,
                 "max |grad - xla|": err})
  info = common.machine_info()
  common.write_json(args.out, {"machine": info, "shape": shape, "rows": rows})
  common.print_table(f"attention fwd+bwd, [B, H, L, K] = {list(shape)}, float32", rows,
                     ["variant", "ms", "matmul GFLOP/s", "max |grad - xla|"], info,
                     notes=[f"matmul rate of this machine: {common.matmul_rate():.0f} GFLOP/s (2048^3)"])
  return 0


if __name__ == "__main__":
  sys.exit(main())

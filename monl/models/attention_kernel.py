"""The fused CPU attention kernel (`attention_cpu.cc`): built on first use, registered with XLA's FFI.

`packed_attention(qkv, bias)` is softmax(q k^T / sqrt(K) + bias) v on the packed projection
[B, L, 3, H, K], with a custom VJP whose forward and backward are one custom call each
(`layers.dot_attention(..., "cpu_kernel")` calls it on heads-major arrays). The forward keeps the
probabilities [B, H, L, L] for the backward while they fit in `KEEP_PROBS_MAX_BYTES`; beyond that the
backward recomputes them from the saved log-sum-exp (as FlashAttention does), so no [B, H, L, L] array
exists in the compiled step and attention's memory stays linear in L. The kernel is part of the C++
library that `cpu_kernels.build()` compiles on first use.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from monl.models import cpu_kernels

# Probabilities of at most this many bytes per call (per shard under a mesh) are kept from the forward:
# the backward then skips q k^T and its exp, a fifth of its products and its costliest pass. Mid-size
# (B 8, H 6, L 512): 48 MiB per layer, 576 MiB more for 12 layers, a 2 % faster train step
# (benchmarks/PERF_LOG.md §15). Beyond it memory would grow as L², so they are recomputed.
KEEP_PROBS_MAX_BYTES = 64 << 20


def _call(target: str, results, *args, scale: float):
  cpu_kernels.build()  # registers the targets (once per process; raises KernelUnavailable if it cannot)
  return jax.ffi.ffi_call(f"monl_attention_{target}", results, vmap_method="sequential")(
      *args, scale=np.float32(scale))


@jax.custom_vjp
def packed_attention(qkv: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(K) + bias) v per head: qkv [B, L, 3, H, K] (q, k, v as one projection writes
  them), bias [H, L, L] or None -> [B, L, H, K].

  This layout needs no head transposes around the call: the projection in is one [B L, D] x [D, 3 H K]
  product, the projection out one [B L, H K] x [H K, D] product. Computed in float32 (other dtypes are
  cast). Builds the kernel on first use (`cpu_kernels.build()`).
  """
  # Not differentiated (sampling, evaluation): nothing to keep for a backward.
  return _forward(qkv, bias, keep_probs=False)[0].astype(qkv.dtype)


def _f32(x):
  return None if x is None else x.astype(jnp.float32)


def _check(qkv, bias):
  if qkv.ndim != 5 or qkv.shape[2] != 3:
    raise ValueError(f"packed_attention: qkv must be [B, L, 3, H, K], got {qkv.shape}")
  _, length, _, heads, _ = qkv.shape
  if bias is not None and bias.shape != (heads, length, length):
    raise ValueError(f"packed_attention: bias must be [H, L, L] = {(heads, length, length)}, got {bias.shape}")


def _forward(qkv, bias, keep_probs: bool):
  """-> float32 out [B, L, H, K], lse [B, H, L], probs [B, H, L, L] if keep_probs else [0]."""
  _check(qkv, bias)
  b, length, _, heads, kd = qkv.shape
  results = (jax.ShapeDtypeStruct((b, length, heads, kd), jnp.float32),
             jax.ShapeDtypeStruct((b, heads, length), jnp.float32),
             jax.ShapeDtypeStruct((b, heads, length, length) if keep_probs else (0,), jnp.float32))
  args = (_f32(qkv),) if bias is None else (_f32(qkv), _f32(bias))
  return _call("fwd" if bias is None else "fwd_bias", results, *args, scale=1.0 / math.sqrt(kd))


def _fwd(qkv, bias):
  _check(qkv, bias)
  b, length, _, heads, _ = qkv.shape
  out, lse, probs = _forward(qkv, bias, keep_probs=b * heads * length * length * 4 <= KEEP_PROBS_MAX_BYTES)
  return out.astype(qkv.dtype), (qkv, bias, out, lse, probs)


def _bwd(res, d_out):
  qkv, bias, out, lse, probs = res
  scale = 1.0 / math.sqrt(qkv.shape[-1])
  grad = jax.ShapeDtypeStruct(qkv.shape, jnp.float32)
  if bias is None:
    (d_qkv,) = _call("bwd", (grad,), _f32(qkv), out, lse, probs, _f32(d_out), scale=scale)
    return d_qkv.astype(qkv.dtype), None
  d_qkv, d_bias = _call("bwd_bias", (grad, jax.ShapeDtypeStruct(bias.shape, jnp.float32)), _f32(qkv), out, lse,
                        probs, _f32(d_out), _f32(bias), scale=scale)
  return d_qkv.astype(qkv.dtype), d_bias.astype(bias.dtype)


packed_attention.defvjp(_fwd, _bwd)

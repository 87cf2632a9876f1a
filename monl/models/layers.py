"""Building blocks of AVDiT: logically-partitioned dense layers, embeddings, attention, per-cell adaLN.

Logical axis names (mapped to mesh axes by the rule tables in `monl.parallel.rules`):
  parameters:  embed, mlp, heads, kv, qkv, patch, freq, cells, modalities, mod (adaLN chunks), layers,
               head_mlp (the hidden units of an mlp output head, in its second kernel)
  activations: batch, length, act_embed, act_heads, act_kv, act_mlp, cells_act
"""
from __future__ import annotations

import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Activation axis names, written once.
BLE = ("batch", "length", "act_embed")
BHLK = ("batch", "act_heads", "length", "act_kv")
BLHK = ("batch", "length", "act_heads", "act_kv")
BL3HK = ("batch", "length", None, "act_heads", "act_kv")  # q, k, v packed (the fused CPU kernel's input)
BLM = ("batch", "length", "act_mlp")
BCE = ("batch", "cells_act", "act_embed")


def target_platform() -> str:
  """The platform being compiled for: the context mesh's devices (`jax.set_mesh`; in `plan` these are
  an ahead-of-time TPU topology on a CPU host), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device.platform if device is not None else jax.default_backend()


def dense(features: int, axes: tuple[str, str], *, dtype, param_dtype, zero_init: bool = False,
          name: str | None = None) -> nn.Dense:
  """nn.Dense whose kernel and bias carry logical axis names (its product: `dense_dot_general`)."""
  kernel_init = nn.initializers.zeros if zero_init else nn.initializers.xavier_uniform()
  return nn.Dense(
      features, dtype=dtype, param_dtype=param_dtype, name=name, dot_general=dense_dot_general,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def _transposed(x: jax.Array) -> jax.Array:
  """x [..., M, N] -> [..., N, M], materialised: the barrier keeps XLA from folding the transpose back
  into the consuming dot's dimension numbers (which would send that dot to the slower Eigen path)."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


# Rows (tokens) from which `cpu_matmul` pays for its two transposes: its cost is ~N I O flops saved against
# N O + I O floats moved, so it pays for large N only (default config, N <= 384: no gain; mid-size, N =
# 1024 ... 8192: 4-9 % of the step; PERF_LOG section 14).
CPU_MATMUL_MIN_ROWS = 1024


@jax.custom_vjp
def cpu_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [N, I] @ w [I, O] -> [N, O], with a weight gradient that does not go to Eigen.

  JAX writes dW = x^T dy as a dot contracting both operands' first axis. XLA:CPU lays that out as
  x^T (dy^T)^T and leaves it to Eigen, at 60-75 % of YNNPACK's rate. Here, when O >= I, dW is the C++
  kernel `cpu_kernels.transposed_product(x, dy)`, which packs rows of x and dy as it reads them (no
  transpose pass). Otherwise, or where that kernel cannot be built, or when the step is partitioned over
  several devices (XLA's SPMD partitioner cannot split a custom call), dW^T = dy^T x is a plain
  [O, N] x [N, I] product that XLA:CPU gives to YNNPACK, on an explicitly transposed dy (a gradient XLA
  materialises anyway; x, the layer-normed input, would be recomputed inside the transpose), and the
  small [O, I] result is transposed back.
  """
  return x @ w


def _cpu_matmul_fwd(x, w):
  return x @ w, (x, w)


def _cpu_matmul_bwd(res, dy):
  x, w = res
  # The kernel's own product runs at ~85 % of YNNPACK's rate, so it pays where it saves a large transpose:
  # dy at least as wide as x (PERF_LOG section 17).
  if (w.shape[1] >= w.shape[0] and jax.sharding.get_abstract_mesh().size <= 1
      and _cpu_kernels_unavailable() is None):
    from monl.models import cpu_kernels
    dw = cpu_kernels.transposed_product(x, dy)
  else:
    # Both barriers are needed: without the outer one XLA folds the result's transpose into the dot and
    # the weight gradients go back to Eigen (71 dots outside YNNPACK in the mid-size step instead of 4).
    dw = jnp.swapaxes(jax.lax.optimization_barrier(_transposed(dy) @ x), 0, 1)
  return dy @ w.T, dw.astype(w.dtype)


cpu_matmul.defvjp(_cpu_matmul_fwd, _cpu_matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for nn.Dense: on CPU, a [..., I] x [I, O] product over at least
  `CPU_MATMUL_MIN_ROWS` rows is `cpu_matmul`."""
  (lc, rc), (lb, rb) = dimension_numbers
  rows = math.prod(lhs.shape[:-1])
  plain = (target_platform() != "cpu" or lb or rb or rhs.ndim != 2 or tuple(lc) != (lhs.ndim - 1,)
           or tuple(rc) != (0,) or precision is not None or preferred_element_type is not None
           or rows < CPU_MATMUL_MIN_ROWS)
  if plain:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return cpu_matmul(lhs.reshape(rows, lhs.shape[-1]), rhs).reshape(*lhs.shape[:-1], rhs.shape[1])


def project(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., I] @ w [I, O] -> [..., O] (`dense_dot_general`)."""
  return dense_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def sinusoidal(positions: np.ndarray, dim: int, max_period: float = 10000.0) -> np.ndarray:
  """[...] positions -> [..., dim] sin/cos features (numpy, float64; dim even)."""
  half = dim // 2
  freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)
  args = positions[..., None].astype(np.float64) * freqs
  return np.concatenate([np.sin(args), np.cos(args)], axis=-1)


def grid_position_embedding(grid: tuple[int, ...], dim: int) -> np.ndarray:
  """Fixed sin/cos embedding of an N-d token grid (time-major), [prod(grid), dim] float32.

  Each grid axis gets an equal, even share of the width; leftover channels are zero.
  """
  per_axis = 2 * (dim // (2 * len(grid)))
  coords = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, len(grid))
  parts = [sinusoidal(coords[:, a], per_axis) for a in range(len(grid))]
  emb = np.concatenate(parts, axis=-1)
  return np.pad(emb, ((0, 0), (0, dim - emb.shape[-1]))).astype(np.float32)


def aligned_position_embedding(grid: tuple[int, ...], times: np.ndarray, dim: int, time_dim: int,
                               time_scale: float) -> np.ndarray:
  """Like `grid_position_embedding`, but the time axis is coded from `times` (segment units, shared
  by all modalities) in the first `time_dim` channels, so that tokens of different modalities at the
  same moment share their temporal code. Remaining grid axes split the rest. [prod(grid), dim]."""
  coords = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, len(grid))
  parts = [sinusoidal(np.asarray(times)[coords[:, 0]] * time_scale, time_dim)]
  if len(grid) > 1:
    per_axis = 2 * ((dim - time_dim) // (2 * (len(grid) - 1)))
    parts += [sinusoidal(coords[:, a], per_axis) for a in range(1, len(grid))]
  emb = np.concatenate(parts, axis=-1)
  return np.pad(emb, ((0, 0), (0, dim - emb.shape[-1]))).astype(np.float32)


def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Integer levels [...] -> [..., dim] float32 sin/cos features (as in DiT)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def cell_runs(cell_of_token: np.ndarray) -> list[tuple[int, int]]:
  """Static [L] cell index per token -> [(cell, run length), ...] over maximal runs of equal cells."""
  cell_of_token = np.asarray(cell_of_token)
  starts = np.flatnonzero(np.diff(cell_of_token, prepend=-1))
  lengths = np.diff(np.append(starts, len(cell_of_token)))
  return [(int(cell_of_token[s]), int(n)) for s, n in zip(starts, lengths)]


def cell_groups(cell_of_token: np.ndarray) -> list[tuple[int, int, int]]:
  """Static [L] cell index per token -> [(first cell, cells, run length), ...]: maximal stretches of
  runs that have the same length and consecutive cells (a modality's segments, in the usual layout)."""
  groups = []
  for c, n in cell_runs(cell_of_token):
    if groups and groups[-1][2] == n and groups[-1][0] + groups[-1][1] == c:
      groups[-1] = (groups[-1][0], groups[-1][1] + 1, n)
    else:
      groups.append((c, 1, n))
  return groups


def to_tokens(per_cell: jax.Array, cell_of_token: np.ndarray) -> jax.Array:
  """[B, C, D] per-cell values -> [B, L, D], each token getting its cell's row.

  Written as a concatenation of broadcasts over the (few, static) runs of tokens that share a cell,
  not as a gather: XLA fuses the broadcasts into their consumers, and the backward pass is a sum over
  each run instead of a scatter-add (a few % of a CPU train step, benchmarks/PERF_LOG.md §6). Runs of
  equal length and consecutive cells (`cell_groups`) are one [B, k, n, D] broadcast, so that the
  backward is one reduction per group rather than one per cell (PERF_LOG §15).
  """
  b, _, d = per_cell.shape
  parts = [jnp.broadcast_to(per_cell[:, c:c + k, None], (b, k, n, d)).reshape(b, k * n, d)
           for c, k, n in cell_groups(cell_of_token)]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, cell_of_token: np.ndarray) -> jax.Array:
  """x * (1 + scale) + shift with per-cell shift/scale [B, C, D] broadcast to tokens of x [B, L, D]."""
  return x * (1 + to_tokens(scale, cell_of_token)) + to_tokens(shift, cell_of_token)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Parameter-free LayerNorm over the last axis, in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def time_offset_buckets(times: np.ndarray, modality: np.ndarray, unit: float, radius: int) -> np.ndarray:
  """Static [L, L] bucket of every (query, key) token pair for a learned relative-time attention bias.

  The bucket is the pair's time offset (query time − key time, in `unit`s, rounded and clipped to
  ±radius) and whether the two tokens are of the same modality: `kind * (2 * radius + 1) + offset +
  radius` with kind 0 = same modality, 1 = across modalities; 2 * (2 * radius + 1) buckets in all.
  `times` [L] are in segment units shared by all modalities (`Layout.token_times`), so a video token
  and the audio tokens of the same moment share offset 0 whatever their frame rates.
  """
  offset = np.rint((times[:, None] - times[None, :]) / unit).astype(np.int64)
  offset = np.clip(offset, -radius, radius) + radius
  kind = (modality[:, None] != modality[None, :]).astype(np.int64)
  return (kind * (2 * radius + 1) + offset).astype(np.int32)


ATTENTION_IMPLEMENTATIONS = ("xla", "dot_product", "splash", "cpu_kernel", "auto")
SPLASH_LANES = 128  # splash blocks are multiples of the TPU's 128 lanes: L is padded up to one


def _splash_kernel(num_heads: int, length: int, interpret: bool):
  """A splash-attention MHA kernel for full (non-causal) attention over `length` (a multiple of 128)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  block = next(b for b in (512, 256, SPLASH_LANES) if length % b == 0)  # larger tiles run faster
  # k and v sequence-minor: with a head dim below the 128 lanes (64 in the paper config) a head-minor
  # layout pads them, and the saved projections feeding them, 2x in HBM. Measured on the paper layout
  # compiled for v5e (`plan`): temporaries 75 -> 60 MiB per layer at 16 clips per chip ("xla": 57).
  seq_minor = splash.QKVLayout.SEQ_MINOR
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, use_fused_bwd_kernel=True,
                            k_layout=seq_minor, v_layout=seq_minor)
  mask = splash.MultiHeadMask([splash.FullMask((length, length))] * num_heads)
  return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False) -> jax.Array:
  """Pallas TPU splash attention on whole (unsharded) arrays: q, k, v [B, H, L, K] -> [B, H, L, K].

  Any L works: tokens are zero-padded to a multiple of 128 and the padding is put in its own segment
  (segment id 1), so real queries never see padded keys, and padded queries see only padded keys
  (finite rows: no NaN; their outputs are sliced off, so they get no gradient). `interpret` runs the
  kernel in the Pallas interpreter (any backend; slow, for tests).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  _, h, length, kd = q.shape
  padded = -(-length // SPLASH_LANES) * SPLASH_LANES
  segments = None
  if padded != length:
    seg = jnp.asarray(np.arange(padded) >= length, jnp.int32)
    segments = splash.SegmentIds(q=seg, kv=seg)
    q, k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, padded - length), (0, 0))) for x in (q, k, v))
  q = q * jnp.asarray(1.0 / math.sqrt(kd), q.dtype)  # the kernel does not scale the logits
  kernel = _splash_kernel(h, padded, interpret)
  out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(q, k, v, segments)  # the kernel is per example
  return out[:, :, :length]


def _kernel_shards(batch: int, heads: int):
  """(batch entry, heads entry) of a kernel's shard_map specs under the context mesh, or None without one.

  A kernel (Pallas, or an FFI custom call) is one that GSPMD cannot partition, so it runs under
  `jax.shard_map`: batch and heads split as the logical rules (`nn.logical_axis_rules`) place `batch` and
  `act_heads`; every shard holds all L tokens (the kernel needs every key), so a `length`-sharded input is
  gathered. A dimension the mesh axes do not divide (e.g. a small sampling batch) is left whole.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  axes = nn.logical_to_mesh_axes(BHLK)
  dims = []
  for size, entry in zip((batch, heads), tuple(axes)[:2]):
    names = (entry,) if isinstance(entry, str) else tuple(entry) if isinstance(entry, tuple) else ()
    dims.append(entry if names and size % math.prod(mesh.shape[n] for n in names) == 0 else None)
  return tuple(dims)


def _shard_mapped(fn, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Runs `fn` ([B, H, L, K] x3 -> [B, H, L, K]) per shard of the context mesh (`_kernel_shards`)."""
  dims = _kernel_shards(q.shape[0], q.shape[1])
  if dims is None:
    return fn(q, k, v)
  spec = jax.sharding.PartitionSpec(*dims, None, None)
  return jax.shard_map(fn, mesh=jax.sharding.get_abstract_mesh(), in_specs=(spec,) * 3, out_specs=spec,
                       check_vma=False)(q, k, v)


def packed_cpu_attention(qkv: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """The fused CPU kernel on the packed projection, per shard of the context mesh (`_kernel_shards`).

  qkv [B, L, 3, H, K], bias [H, L, L] or None -> [B, L, H, K] (`attention_kernel.packed_attention`).
  """
  from monl.models import attention_kernel
  fn = attention_kernel.packed_attention
  dims = _kernel_shards(qkv.shape[0], qkv.shape[3])
  if dims is None:
    return fn(qkv, bias)
  P = jax.sharding.PartitionSpec
  args, in_specs = (qkv,), (P(dims[0], None, None, dims[1], None),)
  if bias is not None:
    args, in_specs = args + (bias,), in_specs + (P(dims[1], None, None),)
  return jax.shard_map(fn, mesh=jax.sharding.get_abstract_mesh(), in_specs=in_specs,
                       out_specs=P(dims[0], None, dims[1], None), check_vma=False)(*args)


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(K) + bias) v as einsums, differentiated by JAX.

  q, k, v: [B, H, L, K]; bias: [H, L, L] or None -> [B, H, L, K]. What "xla" runs off CPU.
  """
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bhqk,bhsk->bhqs", q * jnp.asarray(scale, q.dtype), k).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)[None]
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqs,bhsk->bhqk", probs, v)


@jax.custom_vjp
def cpu_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None) -> jax.Array:
  """`einsum_attention` with a hand-written backward whose products are all [b, M, K] x [b, K, N].

  XLA:CPU runs a dot through YNNPACK only when its left operand contracts its last axis and neither
  operand is column-major (xla/backends/cpu/ynn_support.cc); other dots fall back to Eigen. JAX's
  backward of the einsums leaves two per block there (dP = dO V^T, dQ = dS K), and XLA folds a
  transpose written in front of a dot into the dot's dimension numbers. Here every product gets its
  operands in the canonical form, the small [L, K] transposes materialised (`_transposed`), and dK, dV
  are computed transposed (dK^T = Q^T dS, dV^T = dO^T P) so that no [L, L] matrix is ever transposed.
  Mid-size train step 4.58 -> 4.39 s and XLA temps 3.8 -> 2.7 GB (benchmarks/PERF_LOG.md §11).
  """
  return _cpu_attention_fwd(q, k, v, bias)[0]


def _cpu_attention_fwd(q, k, v, bias):
  qs = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  logits = jnp.matmul(qs, _transposed(k)).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)[None]
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.matmul(probs, v)
  return out, (qs, k, v, probs, out, bias)


def _cpu_attention_bwd(res, d_out):
  qs, k, v, probs, out, bias = res
  d_probs = jnp.matmul(d_out, _transposed(v)).astype(jnp.float32)
  # Softmax backward: dS = P (dP - rowsum(dP P)), and rowsum(dP P) = rowsum(dO O).
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_logits = probs.astype(jnp.float32) * (d_probs - row)
  d_bias = None if bias is None else jnp.sum(d_logits, axis=0).astype(bias.dtype)
  d_logits = d_logits.astype(qs.dtype)
  d_q = jnp.matmul(d_logits, k) * jnp.asarray(1.0 / math.sqrt(qs.shape[-1]), qs.dtype)
  d_k = jnp.swapaxes(jax.lax.optimization_barrier(jnp.matmul(_transposed(qs), d_logits)), -1, -2)
  d_v = jnp.swapaxes(jax.lax.optimization_barrier(jnp.matmul(_transposed(d_out), probs)), -1, -2)
  return d_q, d_k, d_v, d_bias


cpu_attention.defvjp(_cpu_attention_fwd, _cpu_attention_bwd)


@functools.lru_cache(maxsize=None)
def _cpu_kernels_unavailable() -> str | None:
  """None when the C++ CPU kernels build; else why not, logged once (then attention "auto" runs "xla" and
  `cpu_matmul`'s weight gradients take XLA's products)."""
  from monl.models import cpu_kernels
  why = cpu_kernels.available()
  if why is not None:
    logging.warning("the C++ CPU kernels are unavailable, so config.model.attention='auto' runs 'xla' on CPU "
                    "and dense weight gradients use XLA's products: %s", why)
  return why


def resolve_attention(implementation: str, with_bias: bool) -> str:
  """What `implementation` (config.model.attention) runs when compiling for this platform.

  "auto": "splash" for TPU without a bias, "cpu_kernel" for CPU where it builds (else "xla", with a
  warning saying why), else "xla". "cpu_kernel" off CPU, or when it cannot be built, is an error.
  """
  platform = target_platform()
  if implementation == "auto":
    if platform == "tpu" and not with_bias:
      return "splash"
    if platform == "cpu" and _cpu_kernels_unavailable() is None:
      return "cpu_kernel"
    return "xla"
  if implementation == "cpu_kernel":
    if platform != "cpu":
      raise ValueError(f"config.model.attention='cpu_kernel' runs on CPU only; compiling for {platform}: "
                       "use 'auto' or 'xla'")
    from monl.models import cpu_kernels
    try:
      cpu_kernels.build()
    except cpu_kernels.KernelUnavailable as e:
      raise ValueError(f"config.model.attention='cpu_kernel': {e}") from e
  return implementation


def dot_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str,
                  bias: jax.Array | None = None) -> jax.Array:
  """Full self-attention on heads-major arrays q, k, v: [B, H, L, K] -> [B, H, L, K].

  `bias` [H, L, L] is added to the logits (not by "splash": the splash kernel takes none).

  "xla": explicit products -> float32 softmax -> product (`einsum_attention`; on CPU `cpu_attention`,
    the same math with every product in the form XLA:CPU hands to YNNPACK);
  "dot_product": jax.nn.dot_product_attention (cuDNN/TPU paths where the backend has them);
  "splash": the Pallas TPU splash-attention kernel, per shard of the context mesh (interpreted, slowly,
    when not compiling for TPU);
  "cpu_kernel": the fused C++ kernel for XLA:CPU (`attention_kernel`; built on first use, per shard of
    the context mesh);
  "auto": "splash" when compiling for TPU (without a bias), "cpu_kernel" for CPU when it builds (else
    "xla", with a warning saying why), else "xla".
  """
  platform = target_platform()
  implementation = resolve_attention(implementation, bias is not None)
  if implementation == "cpu_kernel":  # (the Attention module calls it on its packed projection directly)
    qkv = jnp.stack([jnp.swapaxes(x, 1, 2) for x in (q, k, v)], axis=2)
    return jnp.swapaxes(packed_cpu_attention(qkv, bias), 1, 2)
  if implementation == "xla":
    return (cpu_attention if platform == "cpu" else einsum_attention)(q, k, v, bias)
  if implementation == "dot_product":
    out = jax.nn.dot_product_attention(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2),
                                       bias=None if bias is None else bias[None].astype(q.dtype))
    return out.swapaxes(1, 2)
  if bias is not None:
    raise ValueError("config.model.time_bias needs config.model.attention 'xla', 'dot_product', 'cpu_kernel' "
                     f"or 'auto' (the splash kernel takes no logit bias), got {implementation!r}")
  if implementation == "splash":
    interpret = platform != "tpu"
    if interpret:  # traced once per compiled program, so this warns once per program, not per step
      logging.warning("config.model.attention='splash' off TPU runs the Pallas kernel in its interpreter "
                      "(very slow; for tests). Use 'auto' or 'xla' to train on %s.", platform)
    return _shard_mapped(lambda *a: splash_attention(*a, interpret=interpret), q, k, v)
  raise ValueError(f"config.model.attention={implementation!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")


class Attention(nn.Module):
  """Multi-head self-attention with logically-partitioned q/k/v projections.

  With `bias_buckets` ([L, L] static ints, `time_offset_buckets`), every head learns one logit bias
  per bucket, initialised to `bias_prior` (or zeros): a relative-time prior shared by all positions,
  within and across modalities.
  """
  num_heads: int
  implementation: str
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  bias_buckets: np.ndarray | None = None
  bias_prior: np.ndarray | None = None  # [num buckets] initial bias of every head (None: zeros)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    d = x.shape[-1]
    hd = d // self.num_heads
    init = nn.initializers.xavier_uniform(in_axis=1, out_axis=(2, 3), batch_axis=(0,))
    w_qkv = self.param("qkv", nn.with_logical_partitioning(init, ("qkv", "embed", "heads", "kv")),
                       (3, d, self.num_heads, hd), self.param_dtype)
    w_out = self.param("out", nn.with_logical_partitioning(
        nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2), ("heads", "kv", "embed")),
                       (self.num_heads, hd, d), self.param_dtype)
    b_out = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                       (d,), self.param_dtype)
    bias = None
    if self.bias_buckets is not None:
      prior = self.bias_prior
      init = nn.initializers.zeros if prior is None else (
          lambda key, shape, dtype: jnp.broadcast_to(jnp.asarray(prior, dtype), shape))
      table = self.param("time_bias", nn.with_logical_partitioning(init, ("heads", "buckets")),
                         (self.num_heads, int(self.bias_buckets.max()) + 1), self.param_dtype)
      bias = table[:, self.bias_buckets]  # [H, L, L]: a gather with a static index
    if resolve_attention(self.implementation, bias is not None) == "cpu_kernel":
      # The kernel reads q, k, v where one [B L, D] x [D, 3 H K] product writes them and writes its output
      # as the out projection reads it: no head transposes (mid-size step: PERF_LOG section 12).
      b, l, _ = x.shape
      w = jnp.moveaxis(w_qkv.astype(self.dtype), 1, 0).reshape(d, -1)  # [D, 3 H K]
      qkv = nn.with_logical_constraint(project(x, w).reshape(b, l, 3, self.num_heads, hd), BL3HK)
      out = nn.with_logical_constraint(packed_cpu_attention(qkv, bias), BLHK)
      y = project(out.reshape(b, l, d), w_out.astype(self.dtype).reshape(d, d)) + b_out.astype(self.dtype)
      return nn.with_logical_constraint(y, BLE)
    # Three projections rather than one "bld,tdhk->tbhlk": their gradients then feed the input and
    # weight gradients without first being stacked and transposed as one [3, B, H, L, K] array.
    q, k, v = (nn.with_logical_constraint(
        jnp.einsum("bld,dhk->bhlk", x, w_qkv[i].astype(self.dtype)), BHLK) for i in range(3))
    out = dot_attention(q, k, v, self.implementation, bias)
    out = nn.with_logical_constraint(out, BHLK)
    y = jnp.einsum("bhlk,hkd->bld", out, w_out.astype(self.dtype)) + b_out.astype(self.dtype)
    return nn.with_logical_constraint(y, BLE)


class Mlp(nn.Module):
  hidden: int
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, L, D] -> [B, L, D]."""
    h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
    h = nn.with_logical_constraint(jax.nn.gelu(h, approximate=True), BLM)
    y = dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(h)
    return nn.with_logical_constraint(y, BLE)

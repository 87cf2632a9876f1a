"""Shardings from logical axis names, and global batches from per-process data."""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def logical_shardings(abstract_boxed, mesh: Mesh, rules) -> object:
  """NamedShardings for a tree of (possibly nn.Partitioned-boxed) shapes; unboxed leaves replicate."""
  specs = nn.get_partition_spec(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Sharding of a [B, ...] batch: B over the mesh axes the `batch` logical name maps to."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
  """Per-process numpy batch {name: [B_local, ...]} -> global jax.Arrays sharded along the batch.

  Each process passes only its own rows; the global batch is their concatenation in process order.
  Non-numeric entries (e.g. source ids) are left on the host and dropped here.
  """
  out = {}
  for name, value in local.items():
    if not np.issubdtype(np.asarray(value).dtype, np.number):
      continue
    out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, rules, value.ndim), value)
  return out

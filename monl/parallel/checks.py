"""Start-up checks on the sharded state: fail early when a rule set silently replicates parameters."""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import NamedSharding

# Rule sets whose purpose is to shard parameters; `dp` replicates them by design.
SHARDING_RULE_SETS = ("fsdp", "fsdp_tp")


@dataclasses.dataclass(frozen=True)
class ReplicatedParam:
  path: str
  shape: tuple[int, ...]
  bytes: int


@dataclasses.dataclass(frozen=True)
class ReplicationReport:
  total_bytes: int
  replicated_bytes: int
  largest: tuple[ReplicatedParam, ...]  # the largest replicated parameters, biggest first

  @property
  def fraction(self) -> float:
    return self.replicated_bytes / max(self.total_bytes, 1)


def _is_replicated(sharding) -> bool:
  """True when every device holds the whole array (no mesh axis of size > 1 splits it)."""
  if isinstance(sharding, NamedSharding):
    sizes = dict(sharding.mesh.shape)
    for entry in sharding.spec:
      names = entry if isinstance(entry, tuple) else (entry,)
      if math.prod(sizes[n] for n in names if n is not None) > 1:
        return False
    return True
  return sharding.is_fully_replicated


def replication_report(abstract_params, shardings, top: int = 5) -> ReplicationReport:
  """Bytes of `abstract_params` (ShapeDtypeStructs / arrays) whose `shardings` replicate them."""
  leaves = jax.tree_util.tree_leaves_with_path(abstract_params)
  shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(leaves) != len(shard_leaves):
    raise ValueError(f"replication_report: {len(leaves)} parameters but {len(shard_leaves)} shardings")
  total, repl, found = 0, 0, []
  for (path, leaf), sh in zip(leaves, shard_leaves):
    n = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    total += n
    if _is_replicated(sh):
      repl += n
      found.append(ReplicatedParam(jax.tree_util.keystr(path), tuple(leaf.shape), n))
  found.sort(key=lambda p: -p.bytes)
  return ReplicationReport(total, repl, tuple(found[:top]))


def check_replication(abstract_params, shardings, max_fraction: float, rules_name: str) -> ReplicationReport:
  """Fails if a parameter-sharding rule set leaves more than `max_fraction` of parameter bytes replicated.

  Skipped (report returned) for the `dp` rule set and for one-device meshes, where replication is the
  point or unavoidable.
  """
  report = replication_report(abstract_params, shardings)
  first = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  num_devices = len(first[0].device_set) if first else 1
  if rules_name not in SHARDING_RULE_SETS or num_devices == 1:
    return report
  if report.fraction > max_fraction:
    names = "; ".join(f"{p.path} {list(p.shape)} {p.bytes / 2**20:.2f} MiB" for p in report.largest)
    mesh = getattr(first[0], "mesh", None)
    raise ValueError(
        f"config.mesh.rules={rules_name!r} on mesh {dict(mesh.shape) if mesh is not None else '?'} "
        f"replicates {report.fraction:.1%} of parameter bytes ({report.replicated_bytes / 2**20:.1f} of "
        f"{report.total_bytes / 2**20:.1f} MiB), more than config.mesh.max_replicated_fraction="
        f"{max_fraction}. Largest replicated: {names}. Give the parameter-sharding axes (fsdp, tensor) "
        f"size > 1, or add rules for these logical axes in monl/parallel/rules.py.")
  return report

"""Device mesh from `config.mesh`: axes (data, fsdp, tensor, sequence), -1 = fill, Auto axis types."""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from monl.parallel.rules import MESH_AXES


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves the per-axis sizes (one may be -1) so that they multiply to `num_devices`."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive, at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                       f"divisible by the fixed axes' product {known}")
    sizes[fill[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"{num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh over `devices` (default: all) with Auto axis types (Flax logical constraints need Auto)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  if devices == jax.devices():
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))

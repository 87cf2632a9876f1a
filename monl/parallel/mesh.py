"""Device mesh from `config.mesh`: axes (data, fsdp, tensor, sequence), -1 = fill, Auto axis types.

Multi-slice (DCN): `config.mesh.dcn_data` / `dcn_fsdp` > 1 split the `data` / `fsdp` axes across slices
(or, where devices carry no slice index, e.g. CPU processes, across processes). The per-axis sizes
`data`, `fsdp`, `tensor`, `sequence` are then per slice (ICI), and each mesh axis has size ICI x DCN:
only the cheap data-parallel (and FSDP) collectives cross the slow data-centre network.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
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


def dcn_shape(mesh_cfg) -> tuple[int, ...]:
  """Per-axis number of slices: (dcn_data, dcn_fsdp, 1, 1)."""
  dcn = (int(mesh_cfg.get("dcn_data", 1)), int(mesh_cfg.get("dcn_fsdp", 1)), 1, 1)
  if any(d < 1 for d in dcn):
    raise ValueError(f"config.mesh.dcn_data={dcn[0]}, dcn_fsdp={dcn[1]}: must be >= 1")
  return dcn


def _device_array(shape: Sequence[int], devices: list) -> np.ndarray:
  """A physically sensible arrangement on TPUs (ICI rings); plain order elsewhere."""
  if devices[0].platform == "tpu":
    try:
      return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (ValueError, NotImplementedError, AssertionError):
      pass  # topologies mesh_utils has no layout for: fall back to device order
  return np.asarray(devices).reshape(shape)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A mesh over `devices` (default: all) with Auto axis types (Flax logical constraints need Auto)."""
  devices = jax.devices() if devices is None else list(devices)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  dcn = dcn_shape(mesh_cfg)
  num_slices = math.prod(dcn)
  if num_slices == 1:
    shape = mesh_shape(mesh_cfg, len(devices))
    if devices == jax.devices():
      return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
    return Mesh(_device_array(shape, devices), MESH_AXES, axis_types=axis_types)

  if len(devices) % num_slices:
    raise ValueError(f"config.mesh.dcn_data={dcn[0]} x dcn_fsdp={dcn[1]} = {num_slices} slices do not "
                     f"divide the {len(devices)} devices")
  ici = mesh_shape(mesh_cfg, len(devices) // num_slices)
  # TPU devices know their slice; elsewhere (CPU/GPU, one slice index) each process is one granule.
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  processes = len({d.process_index for d in devices})
  if slices != num_slices and processes != num_slices:
    raise ValueError(f"config.mesh.dcn_data={dcn[0]} x dcn_fsdp={dcn[1]} = {num_slices} slices, but the "
                     f"devices form {slices} slices in {processes} processes")
  by_process = slices != num_slices
  arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process,
                                             allow_split_physical_axes=True)
  return Mesh(arr, MESH_AXES, axis_types=axis_types)

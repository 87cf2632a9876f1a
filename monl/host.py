"""What the host has, read from its device nodes before any JAX backend starts, and the platform default
that follows from it for the command line.

With libtpu installed (the `test` and `tpu` extras bring it, to compile for TPU topologies on a CPU host:
`plan`, tests/test_plan_launch.py) and JAX_PLATFORMS unset, JAX tries the TPU backend first on every
start. On a host without a TPU, libtpu then prints errors ("Failed to find host bounds for accelerator
type", "E0000 ... INVALID_ARGUMENT: ... unexpected worker hostname") before JAX falls back to the CPU.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import MutableMapping, Sequence

# device nodes of TPU VMs (/dev/accel*, /dev/vfio/N on v5e and later), NVIDIA GPUs and AMD GPUs (ROCm)
ACCELERATOR_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")


def accelerator_nodes() -> list[str]:
  return sorted(p for pattern in ACCELERATOR_NODES for p in glob.glob(pattern))


def cpu_platform_default(environ: MutableMapping[str, str], *, accelerators: Sequence[str],
                         libtpu: bool) -> bool:
  """Sets environ["JAX_PLATFORMS"] = "cpu" where JAX would only probe a TPU that is not there: libtpu
  installed, no accelerator device node, JAX_PLATFORMS unset (a value the user set wins). True if set.
  A GPU or TPU host keeps JAX's own choice; compiling for a TPU topology does not need the TPU backend."""
  if "JAX_PLATFORMS" in environ or accelerators or not libtpu:
    return False
  environ["JAX_PLATFORMS"] = "cpu"
  return True


def apply_cpu_platform_default() -> bool:
  """`cpu_platform_default` for this process. Call it before any JAX backend starts (importing jax is
  fine: the jax_platforms option is updated too)."""
  if not cpu_platform_default(os.environ, accelerators=accelerator_nodes(),
                              libtpu=importlib.util.find_spec("libtpu") is not None):
    return False
  import jax
  jax.config.update("jax_platforms", "cpu")
  return True

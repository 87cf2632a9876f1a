"""Multi-host start-up: `jax.distributed.initialize` only when configured, always with a timeout.

Sources, first match wins:
  1. `config.dist.coordinator` (+ num_processes, process_id, bind_address): explicit.
  2. Environment `MONL_COORDINATOR`, `MONL_NUM_PROCESSES`, `MONL_PROCESS_ID` (and optionally
     `MONL_BIND_ADDRESS`): what `launch/local_multiprocess.py` sets for each process.
  3. `config.dist.auto=True`: JAX's own cluster detection (TPU pod metadata, SLURM, ...), as
     `launch/tpu_vm.sh run` passes on every TPU VM worker.
Otherwise nothing happens and the run is single-process.
"""
from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "MONL_COORDINATOR"
ENV_NUM_PROCESSES = "MONL_NUM_PROCESSES"
ENV_PROCESS_ID = "MONL_PROCESS_ID"
ENV_BIND_ADDRESS = "MONL_BIND_ADDRESS"


def _settings(config) -> dict | None:
  """The keyword arguments for jax.distributed.initialize, or None when not configured."""
  dist = config.dist
  timeout = int(dist.timeout_s)
  if dist.coordinator:
    if int(dist.num_processes) < 1 or int(dist.process_id) < 0:
      raise ValueError(f"config.dist.coordinator={dist.coordinator!r} needs config.dist.num_processes >= 1 "
                       f"and config.dist.process_id >= 0 (got {dist.num_processes}, {dist.process_id})")
    return dict(coordinator_address=dist.coordinator, num_processes=int(dist.num_processes),
                process_id=int(dist.process_id), coordinator_bind_address=dist.bind_address or None,
                initialization_timeout=timeout)
  env = os.environ
  if env.get(ENV_COORDINATOR):
    missing = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not env.get(k)]
    if missing:
      raise ValueError(f"{ENV_COORDINATOR}={env[ENV_COORDINATOR]!r} is set but {missing} are not")
    return dict(coordinator_address=env[ENV_COORDINATOR], num_processes=int(env[ENV_NUM_PROCESSES]),
                process_id=int(env[ENV_PROCESS_ID]),
                coordinator_bind_address=env.get(ENV_BIND_ADDRESS) or dist.bind_address or None,
                initialization_timeout=timeout)
  if dist.auto:
    return dict(initialization_timeout=timeout)
  return None


def maybe_initialize(config) -> bool:
  """Initialises multi-host JAX if configured (see the module docstring); True if it did.

  Must run before anything touches a JAX backend (jax.devices(), arrays, jit).
  """
  kwargs = _settings(config)
  if kwargs is None:
    return False
  jax.distributed.initialize(**kwargs)
  print(f"jax.distributed: process {jax.process_index()}/{jax.process_count()} connected "
        f"({jax.local_device_count()} local devices)", flush=True)
  return True

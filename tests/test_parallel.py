"""Sharding on 8 fake CPU devices (in a subprocess, since this process already has 1 device), mesh and
distributed configuration, and the replication check."""
import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_config, xla_flags

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def eight_devices(builtin_dataset, tmp_path_factory):
  out = tmp_path_factory.mktemp("mdev") / "out.json"
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(HERE, "multidevice_worker.py"), builtin_dataset, str(out)],
                        env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return json.loads(out.read_text())


@pytest.mark.parametrize("name", ["dp", "fsdp", "fsdp_tp"])
def test_meshes_match_single_device(eight_devices, name):
  r = eight_devices["equivalence"][name]
  assert r["max_loss_diff"] < 1e-5, r
  assert r["max_param_diff"] < 1e-5, r


def test_fsdp_argument_memory_is_about_an_eighth(eight_devices):
  mem = eight_devices["argument_bytes"]
  assert mem["fsdp"] / mem["dp"] < 0.25, mem


def test_activation_constraints_reach_the_lowered_program(eight_devices):
  assert eight_devices["constraints_in_lowered"] > 5


def test_replication_check(eight_devices):
  assert eight_devices["replication_fsdp8"] < 0.05
  err = eight_devices["replication_error"]
  assert err is not None and "config.mesh.max_replicated_fraction" in err
  assert "['params']['block" in err and "MiB" in err  # names the largest replicated parameters


def test_restore_onto_other_meshes_is_identical(eight_devices):
  r = eight_devices["restore_other_mesh"]
  assert r["fsdp_tp"] and r["single"], r
  assert r["fsdp_tp_mesh"]["tensor"] == 2 and r["single_mesh"]["data"] == 1


def test_dcn_split_needs_as_many_slices(eight_devices):
  assert "config.mesh.dcn_data=2" in eight_devices["dcn_error"] and "1 processes" in eight_devices["dcn_error"]


def test_mesh_shape_fill_and_errors():
  from monl.parallel import mesh as mesh_lib
  c = tiny_config("")
  c.mesh.data, c.mesh.fsdp = -1, 4
  assert mesh_lib.mesh_shape(c.mesh, 8) == (2, 4, 1, 1)
  c.mesh.tensor = 3
  with pytest.raises(ValueError, match="not divisible"):
    mesh_lib.mesh_shape(c.mesh, 8)


def test_distributed_only_when_configured(monkeypatch):
  from monl.parallel import distributed
  c = tiny_config("")
  for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(k, raising=False)
  assert distributed._settings(c) is None
  assert distributed.maybe_initialize(c) is False
  monkeypatch.setenv(distributed.ENV_COORDINATOR, "127.0.0.1:1234")
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
  s = distributed._settings(c)
  assert s["coordinator_address"] == "127.0.0.1:1234" and s["process_id"] == 1 and s["num_processes"] == 2
  assert s["initialization_timeout"] == c.dist.timeout_s
  c.dist.coordinator = "10.0.0.1:9999"
  with pytest.raises(ValueError, match="config.dist.num_processes"):
    distributed._settings(c)
  c.dist.coordinator, c.dist.auto = "", True
  monkeypatch.delenv(distributed.ENV_COORDINATOR)
  assert distributed._settings(c) == {"initialization_timeout": c.dist.timeout_s}

"""monl.host: the CPU platform default of the command line on a host without an accelerator."""
import importlib.util
import subprocess
import sys

import pytest

from monl import host
from tests import cli_util


@pytest.mark.parametrize("environ, accelerators, libtpu, expected", [
    ({}, [], True, "cpu"),                                 # libtpu, no TPU: JAX would only probe it
    ({}, [], False, None),                                 # nothing to probe: JAX's own choice
    ({}, ["/dev/accel0"], True, None),                     # a TPU VM
    ({}, ["/dev/nvidia0"], True, None),                    # a GPU host with the test extra
    ({"JAX_PLATFORMS": "tpu"}, [], True, "tpu"),           # the user's setting wins
    ({"JAX_PLATFORMS": ""}, [], True, ""),                 # ... even an empty one
])
def test_cpu_platform_default(environ, accelerators, libtpu, expected):
  environ = dict(environ)
  changed = host.cpu_platform_default(environ, accelerators=accelerators, libtpu=libtpu)
  assert environ.get("JAX_PLATFORMS") == expected
  assert changed == (expected == "cpu" and not accelerators and libtpu)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (the `test` extra "
                    "installs it): nothing would probe a TPU")
@pytest.mark.skipif(bool(host.accelerator_nodes()), reason="this host has an accelerator")
def test_cli_starts_without_libtpu_errors():
  """`python -m monl.main` with JAX_PLATFORMS unset, on this CPU-only host with libtpu installed: the CPU
  backend, and none of libtpu's start-up errors. Without the default the same start prints them."""
  env = {k: v for k, v in cli_util.env().items() if k != "JAX_PLATFORMS"}
  probe = "import jax; print(jax.default_backend())"
  plain = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cli_util.ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
  assert "TPU" in plain.stderr, "JAX no longer probes libtpu here: the default may be unneeded"
  fixed = subprocess.run([sys.executable, "-c", "from monl import host; host.apply_cpu_platform_default(); "
                          + probe], env=env, cwd=cli_util.ROOT, capture_output=True, text=True, timeout=120,
                         check=True)
  assert fixed.stdout.split() == ["cpu"]
  assert "TPU" not in fixed.stderr and "E0000" not in fixed.stderr, fixed.stderr
  out = subprocess.run([sys.executable, "-m", "monl.main", "params", f"--config={cli_util.ROOT}/configs/default.py"],
                       env=env, cwd=cli_util.ROOT, capture_output=True, text=True, timeout=120, check=True)
  assert "TPU" not in out.stderr and "E0000" not in out.stderr, out.stderr

"""monl.allocator: when the CLI restarts itself with glibc's malloc settings, and that it does."""
import json
import subprocess
import sys

import pytest

from monl import allocator
from tests import cli_util

CPU_HOST = dict(libc="glibc", accelerators=[])


@pytest.mark.parametrize("environ, host, expected", [
    ({}, CPU_HOST, None),
    ({"JAX_PLATFORMS": "cpu"}, dict(libc="glibc", accelerators=["/dev/accel0"]), None),
    ({"MONL_FAST_CPU": "0"}, CPU_HOST, "MONL_FAST_CPU=0"),
    ({"MALLOC_ARENA_MAX": "4"}, CPU_HOST, "MALLOC_ARENA_MAX already set"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, CPU_HOST, "another allocator is preloaded"),
    ({}, dict(libc="", accelerators=[]), "not glibc"),
    ({"JAX_PLATFORMS": "tpu"}, CPU_HOST, "JAX_PLATFORMS=tpu"),
    ({}, dict(libc="glibc", accelerators=["/dev/nvidia0"]), "accelerator on this host (/dev/nvidia0)"),
    ({}, dict(CPU_HOST, step_bytes=100 * 2**20), "a small step (~100 MiB of activations < 512 MiB)"),
])
def test_skip_reason(environ, host, expected):
  reason = allocator.skip_reason(environ, **host)
  if expected is None:
    assert reason is None
  else:
    assert reason is not None and expected in reason


def test_describe():
  assert allocator.describe({}) == "glibc default"
  assert allocator.describe(dict(allocator.GLIBC_ENV)) == "glibc + monl settings"
  assert allocator.describe({"LD_PRELOAD": "/x/libjemalloc.so.2"}) == "jemalloc"
  assert allocator.describe({"MALLOC_ARENA_MAX": "2"}) == "glibc + MALLOC_ARENA_MAX=2"


def _clean_env(**extra) -> dict:
  env = {k: v for k, v in cli_util.env().items()
         if k not in allocator.GLIBC_ENV and k not in ("LD_PRELOAD", allocator.OPT_OUT)}
  return dict(env, **extra)


PROBE = ("from monl import allocator; allocator.maybe_reexec(float('inf')); import json, os; "
         "print(json.dumps({'pid': os.getpid(), 'env': {k: os.environ.get(k) for k in allocator.GLIBC_ENV}}))")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings apply on Linux only")
def test_reexec_sets_the_variables_once_in_the_same_process():
  pre = ("import os, sys; print(os.getpid(), file=sys.stderr); ")  # the pid before the re-exec
  out = subprocess.run([sys.executable, "-c", pre + PROBE], cwd=cli_util.ROOT, env=_clean_env(),
                       capture_output=True, text=True, timeout=60, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["env"] == allocator.GLIBC_ENV
  pids = [line for line in out.stderr.splitlines() if line.isdigit()]
  assert pids == [str(result["pid"])] * 2  # printed before and after the exec: one process, restarted once
  assert out.stderr.count("[monl] restarting with MALLOC_ARENA_MAX=1") == 1


def test_opt_out_keeps_the_environment():
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=cli_util.ROOT, env=_clean_env(MONL_FAST_CPU="0"),
                       capture_output=True, text=True, timeout=60, check=True)
  assert json.loads(out.stdout)["env"] == {k: None for k in allocator.GLIBC_ENV}
  assert "restarting" not in out.stderr


def _config(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, f"{cli_util.ROOT}/configs/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from monl.train import loop
  return loop.with_data_layout(module.get_config(), quiet=True)


def test_activation_estimate_separates_the_measured_configs():
  """The default config (slower with one arena) stays below the cut, the mid-size one (faster) above."""
  assert allocator.train_activation_bytes(_config("default")) < allocator.MIN_ACTIVATION_BYTES
  assert allocator.train_activation_bytes(_config("midsize")) > allocator.MIN_ACTIVATION_BYTES
  # the formula: 34 values per token and width, 5 per head and token pair, 2 bytes each at value_bytes=2
  assert allocator.activation_bytes(batch=1, tokens=10, width=8, heads=2, depth=1, value_bytes=2) == 10 * 8 * (34 + 5 * 2 * 10 / 8)


def test_cli_params_on_the_default_config_completes_the_layout_from_the_data():
  """`params` on a config whose layout is left to the data (configs/default.py); only train restarts."""
  out = subprocess.run([sys.executable, "-m", "monl.main", "params", f"--config={cli_util.ROOT}/configs/default.py"],
                       cwd=cli_util.ROOT, env=_clean_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  assert report["parameters"] > 0 and set(report["tokens_per_modality"]) == {"video", "audio"}
  assert "[monl] restarting" not in out.stderr


def test_cli_train_on_data_of_another_shape_says_which_field_and_exits_2(builtin_dataset, tmp_path):
  """configs/midsize.py (a benchmark config) on built-in-shaped data: a one-line error, not a traceback;
  the restart for its large step happens first and changes nothing of that."""
  out = subprocess.run([sys.executable, "-m", "monl.main", "train", f"--config={cli_util.ROOT}/configs/midsize.py",
                        f"--workdir={tmp_path}/run", f"--config.data.dir={builtin_dataset}"], cwd=cli_util.ROOT, env=_clean_env(), capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert "in the config (layout.video.shape)" in out.stderr.splitlines()[-1], out.stderr[-3000:]

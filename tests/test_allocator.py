"""monl.allocator: when the CLI restarts itself with a faster malloc (tbbmalloc or glibc's settings), and that it does."""
import json
import os
import platform
import subprocess
import sys

import pytest

from monl import allocator, host
from tests import cli_util

TBB = "/p/lib/libtbbmalloc.so.2:/p/lib/libtbbmalloc_proxy.so.2"
CPU_HOST = dict(libc="glibc", accelerators=[], tbb=TBB)
NO_TBB = dict(CPU_HOST, tbb=None)
WITH_TBB = {"LD_PRELOAD": TBB, **allocator.TBB_ENV}


@pytest.mark.parametrize("environ, host, expected", [
    ({}, CPU_HOST, WITH_TBB),
    ({}, dict(CPU_HOST, step_bytes=100 * 2**20), WITH_TBB),  # tbbmalloc: every step size
    ({"JAX_PLATFORMS": "cpu"}, dict(CPU_HOST, accelerators=["/dev/accel0"]), WITH_TBB),
    ({}, dict(NO_TBB, step_bytes=float("inf")), allocator.GLIBC_ENV),
    ({}, dict(NO_TBB, step_bytes=100 * 2**20), "a small step (~100 MiB of activations < 512 MiB)"),
    ({}, NO_TBB, "the step's size is not estimated"),
    ({"MONL_FAST_CPU": "0"}, CPU_HOST, "MONL_FAST_CPU=0"),
    ({"MALLOC_ARENA_MAX": "4"}, CPU_HOST, "MALLOC_ARENA_MAX already set"),
    ({"TBB_MALLOC_SET_HUGE_SIZE_THRESHOLD": "0"}, CPU_HOST, "TBB_MALLOC_SET_HUGE_SIZE_THRESHOLD already set"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, CPU_HOST, "another allocator is preloaded"),
    ({}, dict(CPU_HOST, libc=""), "not glibc"),
    ({"JAX_PLATFORMS": "tpu"}, CPU_HOST, "JAX_PLATFORMS=tpu"),
    ({}, dict(CPU_HOST, accelerators=["/dev/nvidia0"]), "accelerator on this host (/dev/nvidia0)"),
])
def test_choose(environ, host, expected):
  chosen = allocator.choose(environ, **host)
  if isinstance(expected, str):
    assert isinstance(chosen, str) and expected in chosen
  else:
    assert not isinstance(chosen, str) and chosen[0] == expected


def test_describe():
  assert allocator.describe({}) == "glibc default"
  assert allocator.describe(dict(allocator.GLIBC_ENV)) == "glibc + monl settings"
  assert allocator.describe({"LD_PRELOAD": "/x/libjemalloc.so.2"}) == "jemalloc"
  assert allocator.describe(WITH_TBB) == "tbbmalloc (huge blocks kept)"
  assert allocator.describe({"MALLOC_ARENA_MAX": "2"}) == "glibc + MALLOC_ARENA_MAX=2"


LINUX_X86 = sys.platform.startswith("linux") and platform.machine() == "x86_64"


@pytest.mark.skipif(not LINUX_X86, reason="the tbb wheel (a dependency there) exists for x86-64 Linux only")
def test_the_tbb_wheel_provides_both_libraries():
  preload = allocator.tbbmalloc_preload()
  assert preload is not None, "setup.py installs tbb on x86-64 Linux; its libtbbmalloc*.so.2 were not found"
  assert [os.path.basename(p) for p in preload.split(":")] == list(allocator.TBB_LIBS)


def _clean_env(**extra) -> dict:
  env = {k: v for k, v in cli_util.env().items()
         if k not in (*allocator.GLIBC_ENV, *allocator.TBB_ENV, "LD_PRELOAD", allocator.OPT_OUT)}
  return dict(env, **extra)


VARS = (*allocator.GLIBC_ENV, *allocator.TBB_ENV, "LD_PRELOAD")
# restarts (for a step of unbounded size), then reports its environment and the malloc libraries it runs
PROBE = ("from monl import allocator; allocator.maybe_reexec(float('inf')); import json, os; "
         "maps = open('/proc/self/maps').read(); "
         "print(json.dumps({'pid': os.getpid(), 'env': {k: os.environ.get(k) for k in %r}, "
         "'tbbmalloc_mapped': 'libtbbmalloc_proxy' in maps}))" % (VARS,))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocators apply on Linux only")
def test_reexec_restarts_once_in_the_same_process_with_the_chosen_allocator():
  pre = ("import os, sys; print(os.getpid(), file=sys.stderr); ")  # the pid before the re-exec
  env = _clean_env()
  out = subprocess.run([sys.executable, "-c", pre + PROBE], cwd=cli_util.ROOT, env=env,
                       capture_output=True, text=True, timeout=60, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  chosen = allocator.choose(env, libc=platform.libc_ver()[0], accelerators=host.accelerator_nodes(),
                            tbb=allocator.tbbmalloc_preload(), step_bytes=float("inf"))
  assert not isinstance(chosen, str), chosen  # a CPU-only Linux host: one of the two applies
  assert result["env"] == {k: chosen[0].get(k) for k in VARS}
  assert result["tbbmalloc_mapped"] == ("LD_PRELOAD" in chosen[0])  # the preload took effect
  pids = [line for line in out.stderr.splitlines() if line.isdigit()]
  assert pids == [str(result["pid"])] * 2  # printed before and after the exec: one process, restarted once
  assert out.stderr.count("[monl] restarting with ") == 1


def test_opt_out_keeps_the_environment():
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=cli_util.ROOT, env=_clean_env(MONL_FAST_CPU="0"),
                       capture_output=True, text=True, timeout=60, check=True)
  result = json.loads(out.stdout)
  assert result["env"] == {k: None for k in VARS} and not result["tbbmalloc_mapped"]
  assert "restarting" not in out.stderr


def _config(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, f"{cli_util.ROOT}/configs/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from monl.train import loop
  return loop.with_data_layout(module.get_config(), quiet=True)


def test_activation_estimate_separates_the_measured_configs():
  """Without tbbmalloc: the default config (slower with one arena) stays below the glibc settings' cut,
  the mid-size one (faster) above."""
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


RELEASE = ("import numpy as np; from monl import allocator; "
           "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096; "
           "a = np.ones(2**27); del a; held = rss(); released = allocator.release_free_memory(); "
           "print(released, held - rss())")


@pytest.mark.skipif(not LINUX_X86, reason="the tbb wheel exists for x86-64 Linux only")
def test_release_returns_tbbmallocs_cached_huge_blocks():
  """A freed 1 GiB array stays resident under tbbmalloc with huge blocks kept, until the release."""
  env = _clean_env(LD_PRELOAD=allocator.tbbmalloc_preload(), **allocator.TBB_ENV)
  out = subprocess.run([sys.executable, "-c", RELEASE], env=env, capture_output=True, text=True, timeout=60, check=True)
  released, returned = out.stdout.split()
  assert released == "True" and int(returned) > 2**29, out.stdout
  out = subprocess.run([sys.executable, "-c", RELEASE], env=_clean_env(), capture_output=True, text=True,
                       timeout=60, check=True)
  assert out.stdout.split()[0] == "False"  # glibc: nothing to do

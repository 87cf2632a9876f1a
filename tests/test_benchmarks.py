"""Smoke test of the benchmark scripts: each imports and parses its flags.

Their end-to-end `--quick` runs compile train steps and samplers (minutes on 2 cores), so they are
run by hand (`python benchmarks/train_step.py --quick`), not in the suite.
"""
import importlib.util
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["train_step", "sampling", "compile_memory", "train_vs_torch", "torch_twin", "reference_dit"]


def test_scripts_import_and_parse():
  """Every script imports and parses --help (one subprocess; the torch twin only with torch)."""
  names = [n for n in SCRIPTS if n != "torch_twin" or importlib.util.find_spec("torch") is not None]
  code = ("import sys; sys.path.insert(0, 'benchmarks'); import importlib\n"
          f"for n in {names!r}:\n"
          "  m = importlib.import_module(n)\n"
          "  try:\n    m.main(['--help'])\n  except SystemExit as e:\n    assert e.code == 0, n\n")
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert p.returncode == 0, p.stderr[-3000:]
  assert p.stdout.count("usage:") == len(names)

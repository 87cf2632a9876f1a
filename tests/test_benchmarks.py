"""Smoke test of the benchmark scripts: each imports and parses its flags.

Their end-to-end `--quick` runs compile train steps and samplers (minutes on 2 cores), so they are
run by hand (`python benchmarks/train_step.py --quick`), not in the suite.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["train_step", "sampling", "compile_memory", "train_vs_torch", "torch_twin", "reference_dit",
           "solver_steps", "guidance_selfcond", "scaling", "attention_cpu", "profile_step", "ab_step"]


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


def _solver_steps():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import solver_steps
  finally:
    sys.path.pop(0)
  return solver_steps


def test_solver_steps_flags():
  ss = _solver_steps()
  args = ss.parse_args(["--workdir", "RUN", "--steps", "25,10", "--solver", "dpmpp_3m"])
  assert (args.workdir, args.steps, args.solver, args.ddim_steps, args.tasks) == ("RUN", [25, 10], "dpmpp_3m", 250, "paper")
  for bad in (["--solver", "dpm2"], ["--solver", "ddim"], ["--steps", "ten"], ["--steps", "0"], ["--num", "1"]):
    with pytest.raises((SystemExit, ValueError)):
      ss.parse_args(["--workdir", "RUN", *bad])


def test_solver_steps_summary_finds_the_fewest_matching_steps():
  """Per-clip paired comparison: 10 steps clearly worse on every clip, 25 equal to DDIM, 50 better."""
  ss = _solver_steps()
  rng = np.random.default_rng(0)
  base = rng.uniform(0.1, 0.2, 40)

  def res(per_clip, fd):
    return {"tasks": {
        "a2v": {"primary": "av_agreement", "metrics": {
            "av_agreement": {"value": float(np.mean(per_clip)), "per_clip": list(per_clip)}}},
        "other": {"primary": "latent_fd_mean", "metrics": {"latent_fd_mean": {"value": fd}}}}}

  ref = res(base, 1.0)
  variants = [("dpmpp_2m@10", 10, res(base + 0.05, 1.2)),
              ("dpmpp_2m@25", 25, res(base + 1e-3 * (-1.0) ** np.arange(40), 1.03)),
              ("dpmpp_2m@50", 50, res(base - 0.01, 0.9))]
  rows = {r["task"]: r for r in ss.summarize(ref, variants)}
  a2v = rows["a2v"]
  assert not a2v["dpmpp_2m@10_match"] and a2v["dpmpp_2m@10_p"] < 0.05
  assert a2v["dpmpp_2m@25_match"] and a2v["dpmpp_2m@50_match"] and a2v["matches_at"] == 25
  other = rows["other"]  # no per-clip scores: within 5% of DDIM
  assert not other["dpmpp_2m@10_match"] and other["dpmpp_2m@25_match"] and other["matches_at"] == 25
  table = ss.score_table(list(rows.values()), 250, ["dpmpp_2m@10", "dpmpp_2m@25", "dpmpp_2m@50"])
  assert table[0]["dpmpp_2m@10"].endswith("*") and not table[0]["dpmpp_2m@25"].endswith("*")
  # a higher-is-better metric: a lower score is the worse one
  hib = {"value": 0.5, "per_clip": [0.5] * 20, "higher_is_better": True}
  assert not ss.compare(hib, {"value": 0.3, "per_clip": [0.3] * 20})["matches"]
  assert ss.compare(hib, {"value": 0.6, "per_clip": [0.6] * 20})["matches"]


def test_guidance_selfcond_shared_variant_feeds_the_conditional_state_to_both_branches():
  """The 'before the fix' variant: in a guided call [cond | uncond] the unconditional half's
  self-conditioning input becomes the conditional half's; unguided calls pass through."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import guidance_selfcond
  finally:
    sys.path.pop(0)

  class Echo:
    schedule = "kept"

    def eps(self, params, tokens, t, self_cond=None):
      return self_cond

  wrapped = guidance_selfcond.SharedSelfCond(Echo())
  sc = {"video": np.arange(4.0).reshape(4, 1, 1)}
  out = wrapped.eps(None, None, np.zeros((4, 2, 3)), sc)
  assert np.asarray(out["video"]).ravel().tolist() == [0.0, 1.0, 0.0, 1.0]
  assert wrapped.eps(None, None, np.zeros((4, 2, 3)), None) is None
  assert wrapped.schedule == "kept"


def test_profile_step_indexes_tuple_shaped_calls():
  """The kernel's forward call returns (out, lse): its line must be indexed, or its time goes missing."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import profile_step
  finally:
    sys.path.pop(0)
  hlo = ("ENTRY %main.1 (p: f32[8,512,3,6,64]) -> f32[8,512,6,64] {\n"
         "  %p = f32[8,512,3,6,64]{4,3,2,1,0} parameter(0)\n"
         "  %ffi_call.60 = (f32[8,512,6,64]{3,2,1,0}, f32[8,6,512]{2,1,0}) custom-call(%p), "
         'custom_call_target="monl_attention_fwd", metadata={op_name="jit(step)/jvp(AVDiT)/block_4/attn/ffi_call"}\n'
         "  ROOT %gte = f32[8,512,6,64]{3,2,1,0} get-tuple-element(%ffi_call.60), index=0\n}\n")
  lines, bodies = profile_step.hlo_index(hlo)
  assert set(lines) == {"p", "ffi_call.60", "gte"}
  assert profile_step.describe(lines["ffi_call.60"], bodies) == {
      "kind": "ffi call", "op": "jvp(AVDiT)/block_N/attn/ffi_call",
      "shape": "(f32[8,512,6,64]{3,2,1,0}, f32[8,6,512]{2,1,0})", "ops": ""}


def test_ab_step_variants_parse_and_patch_only_existing_attributes():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import ab_step
  finally:
    sys.path.pop(0)
  assert ab_step.parse_variant("base:") == ("base", [])
  assert ab_step.parse_variant("v:monl.models.layers.CPU_MATMUL_MIN_ROWS=1e18,monl.models.layers.X=xla") == (
      "v", [("monl.models.layers", "CPU_MATMUL_MIN_ROWS", 1e18), ("monl.models.layers", "X", "xla")])
  for bad in ("base", ":a.b=1", "v:a.b", "v:nodot=1"):
    with pytest.raises(ValueError, match="--variant"):
      ab_step.parse_variant(bad)
  from monl.models import layers
  before = layers.CPU_MATMUL_MIN_ROWS
  with ab_step.patched([("monl.models.layers", "CPU_MATMUL_MIN_ROWS", 7)]):
    assert layers.CPU_MATMUL_MIN_ROWS == 7
  assert layers.CPU_MATMUL_MIN_ROWS == before
  with pytest.raises(AttributeError, match="CPU_MATMUL_MIN_ROW"):
    with ab_step.patched([("monl.models.layers", "CPU_MATMUL_MIN_ROWS", 7), ("monl.models.layers", "CPU_MATMUL_MIN_ROW", 1)]):
      pass
  assert layers.CPU_MATMUL_MIN_ROWS == before  # restored after the failed patch too


def test_step_flops_counts_the_products_the_cpu_kernels_compute():
  """With every dense product through `cpu_matmul` (whose weight gradients are a custom call that XLA's
  cost analysis does not count), the step's FLOP count is the same as with JAX's own products."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import common
  finally:
    sys.path.pop(0)
  from monl.models import layers
  setup = common.Setup(common.load_config("default", quick=True))
  plain = common.step_flops(setup)
  before = layers.CPU_MATMUL_MIN_ROWS
  try:
    layers.CPU_MATMUL_MIN_ROWS = 1
    assert common.step_flops(setup) == plain > 0
    assert layers.CPU_MATMUL_MIN_ROWS == 1  # restored to what it was
  finally:
    layers.CPU_MATMUL_MIN_ROWS = before


def test_cpu_model_names_the_generation_and_vector_isa():
  """Two hosts that both call themselves "AMD EPYC" (Zen 3 with AVX2, Zen 4 with AVX-512) must not look
  alike in a benchmark's header: the ISA sets the C++ kernels' vector width."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    import common
  finally:
    sys.path.pop(0)
  zen3 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
  zen4 = zen3.replace("model\t\t: 1", "model\t\t: 17").replace("fma", "fma avx512f avx512bw")
  assert common.cpu_model(zen3) == "AMD EPYC (family 25 model 1, AVX2)"
  assert common.cpu_model(zen4) == "AMD EPYC (family 25 model 17, AVX-512)"
  arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm\nCPU implementer\t: 0x41\n"
  assert common.cpu_model(arm).endswith("(NEON)")

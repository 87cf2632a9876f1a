"""TPU plans without a TPU: compile the real train step (and one sampler step) for a TPU topology on this
CPU host and report per-chip memory, FLOPs, XLA's step-time estimate and whether it fits.

  python -m monl.main plan --config configs/avdit_paper.py --topology v5e:16x16 [--json]

Needs libtpu (`pip install -e .[tpu]`): `jax.experimental.topologies` describes the pod's chips and XLA
compiles for them ahead of time from abstract inputs (ShapeDtypeStructs carrying NamedShardings), so
nothing is allocated. Numbers are XLA's: `memory_analysis()` per chip, `cost_analysis()` FLOPs and
`optimal_seconds` from the TPU cost model (an estimate, not a measurement; communication is modelled).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int  # HBM per chip
  peak_bf16_flops: float  # dense bf16 FLOP/s per chip
  hbm_bytes_per_s: float  # HBM bandwidth per chip (for the roofline fallback)


# Public per-chip figures (Google Cloud TPU docs, "TPU v4", "TPU v5e", "TPU v5p", "TPU v6e (Trillium)"
# pages, system-architecture tables, checked 2025): HBM capacity, peak bf16 compute, HBM bandwidth.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1228e9),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9),
}
FIT_MARGIN = 0.9  # FITS when the estimated per-chip peak is below this fraction of HBM


def chip_of(topology: str) -> Chip:
  """'v5e:16x16' -> the v5e row of CHIPS."""
  family = topology.split(":", 1)[0].lower().replace("litepod", "e")
  if family not in CHIPS:
    raise ValueError(f"--topology={topology!r}: chip {family!r} unknown; expected one of {sorted(CHIPS)} "
                     f"(e.g. v5e:16x16, v5p:4x4x4)")
  return CHIPS[family]


def topology_devices(topology: str) -> list:
  """The abstract TPU devices of `topology` (needs libtpu; no TPU needed)."""
  from jax.experimental import topologies
  # libtpu takes a machine-wide lock on load; a compile-only client does not need it exclusively.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # libtpu missing or an unknown topology name: say which and how to fix it
    raise RuntimeError(f"--topology={topology!r}: could not describe it ({type(e).__name__}: {e}). "
                       f"Install libtpu with `pip install -e .[tpu]`; topology names look like "
                       f"v5e:16x16, v4:2x2x2, v5p:4x4x4, v6e:4x4") from e
  return list(desc.devices)


@contextlib.contextmanager
def outside_persistent_cache():
  """Compiles for `topology_devices` stay out of JAX's persistent compilation cache
  (JAX_COMPILATION_CACHE_DIR): an executable compiled for abstract TPU chips cannot be read back by a
  process without a TPU client (JAX warns and recompiles on every later run), so an entry only costs disk.
  JAX decides once per process whether the cache is in use, hence the resets on entry and exit."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per program
    cost = cost[0] if cost else {}
  return dict(cost or {})


def peak_bytes(mem) -> int:
  """Planned peak of a compiled program per device from its `memory_analysis()`: arguments + outputs
  - aliased (donated outputs reuse their arguments' buffers) + temporaries + generated code."""
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes + getattr(mem, "generated_code_size_in_bytes", 0))


def _program_report(name: str, compiled, compile_s: float, chip: Chip, num_chips: int,
                    examples: int, cost: dict[str, float], model_flops: float) -> dict[str, Any]:
  mem = compiled.memory_analysis()
  args, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
  temp, alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
  peak = peak_bytes(mem)
  flops = float(cost.get("flops", float("nan")))  # per chip: the module is the per-device SPMD program
  bytes_accessed = float(cost.get("bytes accessed", float("nan")))
  seconds = float(cost.get("optimal_seconds", float("nan")))
  source = "xla"
  if seconds > 0 and model_flops / (seconds * chip.peak_bf16_flops) > 1:
    seconds = float("nan")  # faster than the chip's peak: the estimate missed work (e.g. a scanned loop)
  if not (seconds > 0 and np.isfinite(seconds)):
    # XLA's TPU cost model gives up (returns < 0) on some whole programs, e.g. our train step in
    # jax 0.10.2; fall back to a roofline from XLA's FLOP and byte counts (no communication, so a
    # lower bound on the step time and an upper bound on MFU).
    seconds = max(flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s)
    source = "roofline"
  ok = seconds > 0 and np.isfinite(seconds)
  return {
      "program": name,
      "argument_gib": args / GiB, "output_gib": out / GiB, "alias_gib": alias / GiB,
      "temp_gib": temp / GiB, "peak_gib": peak / GiB, "hbm_gib": chip.hbm_bytes / GiB,
      "hbm_fraction": peak / chip.hbm_bytes,
      "fits": bool(peak < FIT_MARGIN * chip.hbm_bytes),
      "flops_per_chip": flops, "flops_total": flops * num_chips,
      "bytes_accessed_per_chip": bytes_accessed,
      "est_step_s": seconds if ok else None,
      "est_step_source": source,
      "model_flops_per_chip": model_flops,
      "mfu": model_flops / (seconds * chip.peak_bf16_flops) if ok else None,
      "examples_per_s": examples / seconds if ok else None,
      "examples_per_step": examples,
      "compile_s": compile_s,
  }


def model_flops_per_example(config, lay, passes: float) -> float:
  """Analytic matmul FLOPs of `passes` forward-pass equivalents for one example (no remat recompute).

  Per layer and token: QKV + output projections 4 d^2 and the MLP 2 r d^2 (2 FLOPs per multiply-add),
  attention scores and values 4 L d; per cell the adaLN projection 6 d^2; plus patch embeddings/heads.
  """
  d, depth, r = config.model.width, config.model.depth, config.model.mlp_ratio
  L, c = lay.num_tokens, lay.num_cells
  in_mult = 2 if config.model.self_cond_rate > 0 else 1
  per_layer = 2 * L * (4 + 2 * r) * d * d + 4 * L * L * d + 2 * c * 6 * d * d
  io = sum(2 * m.num_tokens * m.patch_dim * d * (in_mult + 1) for m in lay.modalities)
  return passes * (depth * per_layer + io)


def _depth_corrected_cost(build, depth: int, cost: dict[str, float]) -> dict[str, float]:
  """XLA counts a scanned loop's body once: rebuild unrolled at depth 1 and 2, extrapolate linearly."""
  c1, c2 = (_cost(build(k)) for k in (1, 2))
  out = dict(cost)
  # optimal_seconds, too, covers the loop body once; extrapolate it only when both variants have one.
  out["optimal_seconds"] = -1.0
  for key in ("flops", "bytes accessed", "optimal_seconds"):
    if key == "optimal_seconds" and not (c1.get(key, -1) > 0 and c2.get(key, -1) > 0):
      continue
    if key in c1 and key in c2:
      out[key] = c1[key] + (depth - 1) * (c2[key] - c1[key])
  return out


def plan(config, topology: str, *, sampler_step: bool = True) -> dict[str, Any]:
  """Compiles the train step (and a 1-step sampler call) of `config` for `topology`; returns the plan."""
  from monl.parallel import checks
  from monl.parallel import mesh as mesh_lib
  from monl.parallel import rules as rules_lib
  from monl.parallel import sharding
  from monl.sample import sampler as sampler_lib
  from monl.train import loop
  from monl.train import step as step_lib

  chip = chip_of(topology)
  devices = topology_devices(topology)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = rules_lib.get_rules(config.mesh.rules)
  model = loop.build_model(config)
  lay = model.layout
  obj = step_lib.Objective.from_config(config, model)
  tx = step_lib.make_optimizer(config.train)
  factory = loop.StateFactory(config, obj, tx, mesh, rules)
  report = checks.check_replication(factory.abstract.params, factory.shardings.params,
                                    config.mesh.max_replicated_fraction, config.mesh.rules)
  global_b = int(config.data.batch_size)
  n_batch_shards = int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
  if global_b % n_batch_shards:
    raise ValueError(f"config.data.batch_size={global_b} is not divisible by the data x fsdp = "
                     f"{n_batch_shards} batch shards of mesh {dict(mesh.shape)}")
  replicated = sharding.replicated(mesh)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)
  batch = {m.name: jax.ShapeDtypeStruct((global_b, *m.shape), jnp.float32,
                                        sharding=sharding.batch_sharding(mesh, rules, 1 + len(m.shape)))
           for m in lay.modalities}
  tokens = {m.name: jax.ShapeDtypeStruct((global_b, m.num_tokens, m.patch_dim), jnp.float32,
                                         sharding=sharding.batch_sharding(mesh, rules, 3))
            for m in lay.modalities}

  def compile_program(cfg, which: str):
    """The compiled train step or 1-step sampler call of `cfg` on `mesh`."""
    mdl = loop.build_model(cfg)
    ob = step_lib.Objective.from_config(cfg, mdl)
    fac = loop.StateFactory(cfg, ob, tx, mesh, rules) if cfg is not config else factory
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), outside_persistent_cache():
      if which == "train_step":
        return loop.make_step_fn(cfg, ob, tx, fac, mesh, rules).lower(fac.abstract, batch, key).compile()
      levels = sampler_lib.level_schedule(ob.schedule.num_steps, 1, lay.num_modalities, lay.num_segments)
      scfg = sampler_lib.SamplerConfig(sampler=cfg.sample.sampler, eta=cfg.sample.eta,
                                       self_condition=mdl.cfg.self_condition)

      def one_step(params, x0, k):
        denoise = functools.partial(mdl.apply, params)
        given = np.zeros((lay.num_modalities, lay.num_segments), bool)  # joint generation
        return sampler_lib.sample(denoise, lay, ob.schedule, levels, x0, given, k, scfg)

      fn = jax.jit(one_step, in_shardings=(fac.shardings.params, {m: t.sharding for m, t in tokens.items()},
                                           replicated))
      return fn.lower(fac.abstract.params, tokens, key).compile()

  def unrolled(depth: int):
    cfg = config.copy_and_resolve_references()
    cfg.model.depth, cfg.model.scan_layers = depth, False
    return cfg

  sc = float(config.model.self_cond_rate)
  passes = {"train_step": 3.0 + sc,  # forward + backward (2x), plus the expected self-cond forward
            "sampler_step": 1.0}
  programs = []
  for which in ("train_step", "sampler_step") if sampler_step else ("train_step",):
    t0 = time.perf_counter()
    compiled = compile_program(config, which)
    compile_s = time.perf_counter() - t0
    cost = _cost(compiled)
    if config.model.scan_layers and config.model.depth > 2:
      cost = _depth_corrected_cost(lambda k: compile_program(unrolled(k), which), config.model.depth, cost)
    examples_per_chip = global_b / len(devices)
    programs.append(_program_report(which, compiled, compile_s, chip, len(devices), global_b, cost,
                                    model_flops_per_example(config, lay, passes[which]) * examples_per_chip))
  return {
      "topology": topology, "chip": chip.name, "num_chips": len(devices),
      "peak_bf16_tflops_per_chip": chip.peak_bf16_flops / 1e12,
      "mesh": {k: int(v) for k, v in mesh.shape.items()}, "rules": config.mesh.rules,
      "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(factory.abstract.params))),
      "replicated_param_fraction": report.fraction,
      "global_batch": global_b, "dtype": config.model.dtype, "remat": config.model.remat_policy,
      "fit_margin": FIT_MARGIN,
      "programs": programs,
  }


def format_table(p: dict[str, Any]) -> str:
  """A human-readable table of `plan(...)`."""
  def num(v, fmt):
    return "n/a" if v is None else format(v, fmt)

  lines = [
      f"plan: {p['topology']} = {p['num_chips']} x {p['chip']} "
      f"({p['programs'][0]['hbm_gib']:.0f} GiB HBM, {p['peak_bf16_tflops_per_chip']:.0f} TFLOP/s bf16 each)",
      f"mesh {p['mesh']}, rules {p['rules']!r}, {p['parameters'] / 1e6:.1f}M parameters "
      f"({p['replicated_param_fraction']:.2%} of bytes replicated), global batch {p['global_batch']}, "
      f"{p['dtype']}, remat {p['remat']}",
  ]
  rows = [
      ("HBM/chip: arguments (GiB)", "argument_gib", ".2f"),
      ("HBM/chip: temporaries (GiB)", "temp_gib", ".2f"),
      ("HBM/chip: outputs (GiB)", "output_gib", ".2f"),
      ("HBM/chip: aliased (donated) (GiB)", "alias_gib", ".2f"),
      ("HBM/chip: est. peak (GiB)", "peak_gib", ".2f"),
      ("HBM/chip: capacity (GiB)", "hbm_gib", ".1f"),
      ("HBM/chip: used fraction", "hbm_fraction", ".1%"),
      ("FLOPs per step, per chip (XLA)", "flops_per_chip", ".3e"),
      ("model FLOPs per step, per chip", "model_flops_per_chip", ".3e"),
      ("FLOPs per step, whole pod", "flops_total", ".3e"),
      ("est. step time (s)", "est_step_s", ".4f"),
      ("  step time from", "est_step_source", "s"),
      ("implied MFU vs bf16 peak", "mfu", ".1%"),
      ("examples/s, whole pod", "examples_per_s", ",.0f"),
      ("compile time on this host (s)", "compile_s", ".1f"),
  ]
  progs = p["programs"]
  w0 = max(len(r[0]) for r in rows) + 2
  lines.append("".ljust(w0) + "".join(g["program"].rjust(16) for g in progs))
  for label, key, fmt in rows:
    lines.append(label.ljust(w0) + "".join(num(g[key], fmt).rjust(16) for g in progs))
  lines.append("verdict".ljust(w0) + "".join(
      ("FITS" if g["fits"] else "DOES NOT FIT").rjust(16) for g in progs))
  lines.append(f"(FITS = est. peak < {p['fit_margin']:.0%} of HBM. XLA FLOPs include rematerialisation "
               f"and the self-conditioning pass; for scanned layers they are extrapolated from unrolled "
               f"depth-1 and depth-2 compiles. Model FLOPs are analytic (no remat). Step time: 'xla' = "
               f"the TPU cost model's optimal_seconds; 'roofline' = max(XLA FLOPs / peak, bytes accessed "
               f"/ HBM bandwidth) where XLA gives none, ignoring communication: a lower bound. MFU = "
               f"model FLOPs / (step time x peak). None of this is a measurement.)")
  return "\n".join(lines)


def to_json(p: dict[str, Any]) -> str:
  return json.dumps(p, indent=2)

"""How cost grows: train step time and peak memory vs token count, sampling time vs clip length.

    python benchmarks/scaling.py [--frames 2,4,8,16,32,64] [--segments 4,8,16,32] [--iters 3]
        [--topology v5e:2x2] [--no_plan] [--quick] [--out benchmarks/results/scaling.json]

Token sweep: one model (width 256, depth 4, 4 heads, batch 4, float32, layers unrolled as the CPU
configs) over a layout of video [T, 32, 32, 3] in (1, 4, 4) patches (64 tokens per frame) and audio
[4T, 16] in 4-frame patches (T tokens), 2 segments, T = --frames: 130 ... 4160 tokens. For each:
the jitted train step's median time on this CPU (after warm-up), XLA's planned bytes
(`monl.plan.peak_bytes`) and the process's peak RSS (ru_maxrss,
monotone, so the sweep runs from small to large), and the analytic fraction of a block's forward
FLOPs that is attention's quadratic part. With libtpu (`pip install -e .[tpu]`) and not
--no_plan, the same train step compiled by `monl.plan` for --topology (bfloat16, as one would run
it there): XLA's estimated step time and per-chip peak. Sampling sweep: the default config (4
segments, random parameters) sampling clips of --segments segments with sliding windows
(`--long_segments`; overlap `config.sample.continue_segments`), 10 DDIM steps, batch 4: seconds vs
segments, and the TPU estimate (windows x steps x the planned 1-step sampler time).

Writes benchmarks/results/scaling.json and scaling.png (log-log; dashed = the linear trend through
the first point, so the quadratic takeover shows as the curve leaving it).
"""
from __future__ import annotations

import resource
import time

import common

WIDTH, DEPTH, HEADS, BATCH = 256, 4, 4, 4
SAMPLE_STEPS, SAMPLE_BATCH = 10, 4


def token_config(frames: int, quick: bool = False):
  """The sweep's config at T = `frames` video frames (64 * T + T tokens)."""
  c = common.load_config("midsize", quick)
  c.layout.video.shape, c.layout.video.patch = (frames, 32, 32, 3), (1, 4, 4)
  c.layout.video.segments = (frames // 2, frames // 2)
  c.layout.audio.shape, c.layout.audio.patch = (4 * frames, 16), (4,)
  c.layout.audio.segments = (2 * frames, 2 * frames)
  if not quick:
    c.model.width, c.model.depth, c.model.num_heads = WIDTH, DEPTH, HEADS
  c.data.batch_size = c.sample.batch_size = BATCH  # divisible by the 4 chips of v5e:2x2
  c.mesh.data = -1
  return c


def attention_flops_fraction(tokens: int, width: int, mlp_ratio: int) -> float:
  """Forward FLOPs of attention's two L x L products over all FLOPs of a block (analytic):
  per token, QKV + output projections 8 D^2, MLP 4 r D^2, scores and values 4 L D."""
  quad = 4.0 * tokens * width
  return quad / (quad + 8.0 * width ** 2 + 4.0 * mlp_ratio * width ** 2)


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def train_point(frames: int, args) -> dict:
  config = token_config(frames, args.quick)
  s = common.Setup(config)
  state = s.init_state()
  compiled = s.step_fn().lower(state, s.batch, s.key).compile()
  from monl import plan
  mem = compiled.memory_analysis()
  planned = plan.peak_bytes(mem) / 2**30
  t = common.median(common.time_calls(s.stepper(compiled, state), warmup=args.warmup, iters=args.iters))
  return {"frames": frames, "tokens": s.tokens_per_example, "batch": s.batch_size, "step_s": t,
          "tokens_per_s": s.batch_size * s.tokens_per_example / t, "xla_planned_gib": planned,
          "xla_temp_gib": mem.temp_size_in_bytes / 2**30, "peak_rss_gib": peak_rss_gib(),
          "attention_flops_fraction": attention_flops_fraction(
              s.tokens_per_example, config.model.width, config.model.mlp_ratio)}


def plan_point(frames: int, args, sampler_step: bool = False, config=None) -> dict:
  from monl import plan
  config = config or token_config(frames, args.quick)
  config.model.dtype = "bfloat16"
  config.model.attention = "xla"  # "auto" would be splash there, and XLA's cost model gives a Pallas kernel no time
  p = plan.plan(config, args.topology, sampler_step=sampler_step)
  return {prog["program"]: {"est_s": prog["est_step_s"], "source": prog["est_step_source"],
                            "peak_gib": prog["peak_gib"]} for prog in p["programs"]}


def sampling_points(args) -> list[dict]:
  import jax
  import numpy as np
  from monl.sample import long as long_lib
  from monl.sample import sampler as sampler_lib
  from monl.sample import tasks as tasks_lib
  config = common.load_config("default", args.quick)
  s = common.Setup(config, batch_size=SAMPLE_BATCH)
  lay, sched = s.layout, s.obj.schedule
  params = s.random_params()
  steps = 2 if args.quick else SAMPLE_STEPS
  levels = sampler_lib.level_schedule(sched.num_steps, steps, lay.num_modalities, lay.num_segments)
  cfg = sampler_lib.SamplerConfig(sampler="ddim", eta=0.0)

  @jax.jit
  def window(x0, given, key):
    denoise = lambda tok, tt, sc: s.model.apply(params, tok, tt, sc)
    return sampler_lib.sample(denoise, lay, sched, levels, x0, given, key, cfg)

  tokens, _ = s.random_tokens_and_levels()
  given = np.asarray(tasks_lib.task_mask("continue", lay.names, lay.num_segments), bool)
  overlap = int(config.sample.continue_segments)
  rows = []
  for total in args.segments:
    run = lambda: long_lib.sample_long(window, lay, tokens, given, jax.random.key(0), total_segments=total,
                                       overlap=overlap)
    t = common.median(common.time_calls(run, warmup=1, iters=args.iters))
    windows = 1 + -(-(total - lay.num_segments) // (lay.num_segments - overlap))
    rows.append({"segments": total, "windows": windows, "seconds": t, "s_per_window": t / windows,
                 "batch": SAMPLE_BATCH, "steps": steps})
  if args.plan:
    c = config.copy_and_resolve_references()
    c.data.batch_size = SAMPLE_BATCH
    est = plan_point(0, args, sampler_step=True, config=c)["sampler_step"]["est_s"]
    for r in rows:
      r["tpu_est_s"] = None if est is None else est * steps * r["windows"]
  return rows


def main(argv=None):
  p = common.timing_parser(__doc__, iters=3, warmup=2, out="scaling", quick_help="smoke run: tiny model")
  p.add_argument("--frames", default="2,4,8,16,32,64", help="video frames T of the token sweep (65 T tokens)")
  p.add_argument("--segments", default="4,8,16,32", help="clip lengths (segments) of the sampling sweep")
  p.add_argument("--topology", default="v5e:2x2", help="TPU topology of the plan estimate")
  p.add_argument("--no_plan", dest="plan", action="store_false", help="skip the TPU estimate (needs libtpu)")
  args = p.parse_args(argv)
  args.frames = sorted(int(x) for x in args.frames.split(","))
  args.segments = sorted(int(x) for x in args.segments.split(","))
  if args.quick:
    args.iters, args.warmup, args.frames, args.segments = 1, 1, args.frames[:2], args.segments[:2]
  if any(f % 2 for f in args.frames):
    p.error(f"--frames {args.frames}: every T must be even (2 segments)")
  info = common.machine_info()
  t0 = time.perf_counter()
  train = []
  for f in args.frames:  # small to large: ru_maxrss is the running maximum
    train.append(train_point(f, args))
    print(f"[scaling] {train[-1]['tokens']} tokens: {train[-1]['step_s']:.3f} s/step", flush=True)
  if args.plan:  # after the CPU points: loading libtpu and compiling for it would count in their RSS
    for row in train:
      row.update({f"tpu_{k}": v for k, v in plan_point(row["frames"], args)["train_step"].items()})
  sampling = sampling_points(args)
  info["load_avg_end"] = common.load_avg()
  path = common.write_json(args.out, {"machine": info, "topology": args.topology if args.plan else None,
                                      "model": {"width": WIDTH, "depth": DEPTH, "heads": HEADS},
                                      "train": train, "sampling": sampling, "quick": args.quick,
                                      "seconds": time.perf_counter() - t0})
  png = path[:-5] + ".png"
  plot(png, train, sampling, args.topology if args.plan else None)
  cols = ["tokens", "batch", "step_s", "tokens_per_s", "attention_flops_fraction", "xla_planned_gib",
          "peak_rss_gib"] + (["tpu_est_s", "tpu_peak_gib"] if args.plan else [])
  common.print_table(f"train step vs tokens (width {WIDTH}, depth {DEPTH}, float32 on CPU)", train, cols, info)
  common.print_table(
      "sampling vs clip length (default config, sliding windows)", sampling,
      ["segments", "windows", "seconds", "s_per_window"] + (["tpu_est_s"] if args.plan else []), info,
      [f"wrote {path}, {png}"])


def plot(path: str, train: list[dict], sampling: list[dict], topology: str | None) -> None:
  """scaling.png: train step time and peak memory vs tokens (dashed: proportional to tokens through
  the first point), sampling time vs segments (dotted series: windows x the first window's time)."""
  x = [r["tokens"] for r in train]
  segs = [r["segments"] for r in sampling]
  step = {"CPU measured": (x, [r["step_s"] for r in train])}
  mem = {"CPU peak RSS": (x, [r["peak_rss_gib"] for r in train]),
         "CPU XLA planned": (x, [r["xla_planned_gib"] for r in train])}
  samp = {"CPU measured": (segs, [r["seconds"] for r in sampling]),
          "CPU windows x 1st": (segs, [r["windows"] * sampling[0]["s_per_window"] for r in sampling])}
  if topology:
    step[f"{topology} estimate"] = (x, [r.get("tpu_est_s") for r in train])
    mem[f"{topology} per chip"] = (x, [r.get("tpu_peak_gib") for r in train])
    samp[f"{topology} estimate"] = (segs, [r.get("tpu_est_s") for r in sampling])
  common.line_plots(path, [("train step (s) vs tokens", "tokens", step, True),
                           ("peak memory (GiB) vs tokens", "tokens", mem, True),
                           ("sampling (s) vs segments", "segments", samp, False)])


if __name__ == "__main__":
  main()

"""monl command line: a thin layer over the library.

  python -m monl.main train  --config configs/default.py --workdir /tmp/monl [--config.train.lr=3e-4]
      [--resume_from_step N]   # resume from checkpoint N (e.g. the latest is damaged) instead of the latest
  python -m monl.main params --config configs/avdit_paper.py
  python -m monl.main data   --input DIR [--config FILE]      # a dataset's spec, splits and the model's layout
  python -m monl.main data   --config configs/default.py      # the same for the configured (built-in) dataset
  python -m monl.main data   --verify DIR                     # read every record of every shard, list bad ones
  python -m monl.main check  --workdir RUN                    # verify a run: config, checkpoints, its data
  python -m monl.main train_autoencoder --config configs/autoencoder_tiny.py --workdir RUN
      # the audio-video autoencoder (monl.autoencoder): resumes like train, writes RUN/eval.json
  python -m monl.main sample --config configs/default.py --workdir /tmp/monl --task a2v \
      [--input DIR --split test --num 16 --steps 50 --guidance 1.5 --seed 0] --output DIR
  python -m monl.main plan   --config configs/avdit_paper.py --topology v5e:16x16 [--json]
  python -m monl.main evaluate --config configs/default.py --workdir /tmp/monl --tasks all --num 256 \
      --steps 50 [--seed 0 --guidance 1.5 --output DIR]   # results.json/.md/.png (monl.eval.evaluate)
  sample / evaluate: --solver dpmpp_2m --steps 25   # DPM-Solver++ instead of DDIM (config.sample.solver),
      on logsnr-spaced levels (--spacing, config.sample.spacing; auto: uniform for ddim)

train (resuming), sample and evaluate take WORKDIR/config.json as the config when --config is omitted
(`--config.*` flags still apply on top); a config that changes what the checkpoints depend on (layout,
model, schedule) is refused, naming the fields (monl.run_config).

train exits with status 42 (monl.train.loop.PREEMPTED_EXIT_CODE) after a SIGTERM-triggered checkpoint.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from monl import host

COMMANDS = ("train", "params", "data", "sample", "plan", "evaluate", "check", "train_autoencoder")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:strategy=pm].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
# train
flags.DEFINE_integer("resume_from_step", None, "train: resume from this checkpoint step instead of the "
                     "latest (the later checkpoints move to WORKDIR/discarded_checkpoints/). Use it once: "
                     "a rerun with it would again discard the checkpoints written since.")
# sample
flags.DEFINE_string("task", "all", "Named task (joint, a2v, v2a, continue, continue_2s, inpaint, "
                    "continue_<m>[_with_<o>]), a mask like 'video:1-2,audio:all', or 'all'.")
flags.DEFINE_string("input", "", "Dataset dir or .npz dir to condition on ('' = the training dataset).")
flags.DEFINE_string("split", "test", "Split of --input when it is a dataset.")
flags.DEFINE_integer("num", 16, "Clips per task.")
flags.DEFINE_integer("steps", None, "Sampling steps (default config.sample.steps).")
flags.DEFINE_string("guidance", "", "Guidance scale s: one float, or per modality 'video=2,audio=1'.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("sampler", None, "ddim | ddpm (default config.sample.sampler).")
flags.DEFINE_string("solver", None, "sample/evaluate: ddim | dpmpp_2m | dpmpp_3m (DPM-Solver++, e.g. "
                    "--steps 25; default config.sample.solver).")
flags.DEFINE_string("spacing", None, "sample/evaluate: auto | uniform | logsnr | karras, how the --steps levels "
                    "are spread (auto: uniform for ddim, logsnr for dpmpp_*; default config.sample.spacing).")
flags.DEFINE_string("mode", None, "monl | replacement (default config.sample.mode).")
flags.DEFINE_float("eta", None, "DDIM eta (default config.sample.eta).")
flags.DEFINE_integer("pyramid", 0, "Pyramid schedule: steps of delay between consecutive segments.")
flags.DEFINE_integer("long_segments", 0, "Generate this many segments by sliding-window continuation.")
flags.DEFINE_integer("previews", 4, "Clips per task written as GIF/WAV and MP4 (built-in dataset).")
flags.DEFINE_string("output", None, "Output directory for sample (default WORKDIR/samples).")
# evaluate (also uses --num, --steps, --seed, --guidance, --output)
flags.DEFINE_string("tasks", None, "evaluate: 'all', 'paper' or comma-separated tasks (default config.eval.tasks).")
# data
flags.DEFINE_string("verify", "", "data: read and decode every record of every shard of this dataset "
                    "directory and list the bad ones (exit status 1 if any).")
# plan
flags.DEFINE_string("topology", "v5e:16x16", "TPU topology to plan for, e.g. v5e:16x16, v5p:4x4x4.")
flags.DEFINE_bool("json", False, "plan: print JSON instead of a table.")


def _cmd_train(config) -> int:
  from monl.parallel import distributed
  distributed.maybe_initialize(config)  # before anything touches a JAX backend
  from monl.train import loop
  if not FLAGS.workdir:
    raise app.UsageError("train needs --workdir")
  try:
    loop.train(config, FLAGS.workdir, resume_from_step=FLAGS.resume_from_step)
  except loop.Preempted as e:
    print(e, flush=True)
    return loop.PREEMPTED_EXIT_CODE
  return 0


def _cmd_train_autoencoder(config) -> int:
  from monl.autoencoder import train as ae_train
  if not FLAGS.workdir:
    raise app.UsageError("train_autoencoder needs --workdir")
  if config.get("kind") != "autoencoder":
    print("monl train_autoencoder: --config is not an autoencoder config (configs/autoencoder_*.py)",
          file=sys.stderr, flush=True)
    return 2
  from monl import allocator
  allocator.maybe_reexec()  # oneTBB's malloc where installed (monl.allocator); glibc's settings need a size
  ae_train.train(config, FLAGS.workdir)
  return 0


def _without_jemalloc_preload() -> None:
  """libtpu's TPU compiler segfaults when jemalloc is preloaded (launch/env.sh preloads it for faster
  CPU training): re-run this same command without it, saying so, before libtpu is loaded."""
  import os
  preload = os.environ.get("LD_PRELOAD", "")
  if "jemalloc" not in preload:
    return
  kept = ":".join(p for p in preload.split(":") if p and "jemalloc" not in p)
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
  if kept:
    env["LD_PRELOAD"] = kept
  print(f"[monl] plan: re-running without LD_PRELOAD={preload} (libtpu crashes with jemalloc preloaded)",
        file=sys.stderr, flush=True)
  os.execve(sys.executable, [sys.executable, "-m", "monl.main", *sys.argv[1:]], env)


def _cmd_plan(config) -> None:
  from monl import plan
  _without_jemalloc_preload()
  p = plan.plan(config, FLAGS.topology)
  print(plan.to_json(p) if FLAGS.json else plan.format_table(p))


def _check_solver(command: str, config) -> None:
  """An unknown --solver / config.sample.solver, or one that does not fit the sampler and eta: say which
  and exit 2 before a checkpoint is restored."""
  from monl.sample import sampler
  c = config.sample
  try:
    if FLAGS.solver is not None:
      sampler.check_solver(FLAGS.solver, "--solver")
    if FLAGS.spacing is not None:
      sampler.check_spacing(FLAGS.spacing, "--spacing", auto=True)
    solver, spacing = sampler.solver_and_spacing(c, FLAGS.solver, FLAGS.spacing)
    flagged = command == "sample"  # evaluate samples with config.sample.sampler / eta
    sampler.SamplerConfig(sampler=(flagged and FLAGS.sampler) or c.sampler,
                          eta=c.eta if not flagged or FLAGS.eta is None else FLAGS.eta, solver=solver,
                          spacing=spacing)
  except ValueError as e:
    print(f"monl {command}: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def _cmd_sample(config) -> None:
  from monl.sample import run
  if not FLAGS.workdir:
    raise app.UsageError("sample needs --workdir (the training run to sample from)")
  _check_solver("sample", config)
  req = run.SampleRequest(task=FLAGS.task, input=FLAGS.input, split=FLAGS.split, num=FLAGS.num,
                          steps=FLAGS.steps, guidance=FLAGS.guidance, seed=FLAGS.seed,
                          sampler=FLAGS.sampler, solver=FLAGS.solver, spacing=FLAGS.spacing, mode=FLAGS.mode, eta=FLAGS.eta,
                          pyramid_delay=FLAGS.pyramid, long_segments=FLAGS.long_segments,
                          previews=FLAGS.previews)
  output = FLAGS.output or f"{FLAGS.workdir}/samples"
  run.run(config, FLAGS.workdir, req, output)
  print(f"samples written to {output}/<task>/ (npz, manifest.json, previews)")


def _cmd_params(config) -> None:
  from monl import layout as layout_lib
  from monl.models import avdit
  from monl.train import loop
  config = loop.with_data_layout(config, quiet=True)  # a layout left to the data: from dataset.json
  lay = layout_lib.Layout.from_config(config.layout)
  n = avdit.count_params(avdit.AVDiTConfig.from_config(config.model), lay)
  print(json.dumps({"parameters": n, "tokens": lay.num_tokens, "cells": lay.num_cells,
                    "tokens_per_modality": {m.name: m.num_tokens for m in lay.modalities}}, indent=2))


def _cmd_verify() -> int:
  from monl.data import format as data_format
  from monl.data import shards
  try:
    read, bad = shards.verify(FLAGS.verify)
  except data_format.DatasetError as e:  # no readable dataset.json: nothing to verify against
    print(f"monl data --verify: {e}", file=sys.stderr, flush=True)
    return 2
  for where, reason in bad:
    print(f"BAD {where}: {reason}")
  print(f"{FLAGS.verify}: read {read} records; " + (f"{len(bad)} problem(s)" if bad else "all good"))
  return 1 if bad else 0


def _cmd_check() -> int:
  from monl import check
  print(f"checking {FLAGS.workdir}")
  problems = check.check(FLAGS.workdir)
  for p in problems:
    print(f"PROBLEM {p}")
  print(f"{FLAGS.workdir}: " + (f"{len(problems)} problem(s)" if problems else "all good"))
  return 1 if problems else 0


def _cmd_data(config) -> None:
  from monl import layout as layout_lib
  from monl.data import format as data_format
  from monl.data import infer_layout
  from monl.train import loop
  if FLAGS.input:
    with config.unlocked():
      config.data.dir = FLAGS.input
  data_dir = loop.resolve_data_dir(config)  # builds the built-in dataset on first use
  spec = data_format.load_spec(data_dir)
  print(f"dataset: {data_dir}")
  print(json.dumps(data_format.spec_to_json(spec), indent=2))
  print("splits: " + ", ".join(f"{name} {s.num_examples} clips in {s.num_shards} shard(s)"
                               for name, s in spec.splits.items()))
  resolved, notes = infer_layout.complete(config, infer_layout.data_modalities(spec),
                                          where=f"{data_dir}/{data_format.SPEC_FILE}")
  lay = layout_lib.Layout.from_config(resolved.layout)
  loop.check_data(resolved, data_dir, lay)
  source = f"--config {config_flags.get_config_filename(FLAGS['config'])}" if FLAGS.config else "the base config"
  print(f"layout the model would use ({source}):")
  print(infer_layout.describe(lay))
  for note in notes:
    print(f"  from the data / the default rule: {note}")


def _cmd_evaluate(config) -> None:
  from monl.eval import evaluate
  if not FLAGS.workdir:
    raise app.UsageError("evaluate needs --workdir (the training run to evaluate)")
  _check_solver("evaluate", config)
  evaluate.evaluate(config, FLAGS.workdir, tasks=FLAGS.tasks or config.eval.tasks,
                    num=FLAGS.num if FLAGS["num"].present else config.eval.num,
                    steps=config.sample.steps if FLAGS.steps is None else FLAGS.steps, seed=FLAGS.seed,
                    guidance=FLAGS.guidance, solver=FLAGS.solver, spacing=FLAGS.spacing,
                    output=FLAGS.output or f"{FLAGS.workdir}/eval")


def _check_numbers(command: str, config) -> None:
  """Every numeric config field and flag this command uses, in range, before anything is compiled."""
  from monl import validate
  validate.check_config(config)
  if command in ("sample", "evaluate"):
    validate.check_number("--num", FLAGS.num, low=2 if command == "evaluate" else 1, what="clips per task")
    if FLAGS.steps is not None:
      validate.check_number("--steps", FLAGS.steps, low=1, high=config.schedule.num_steps,
                            what="sampling steps, at most config.schedule.num_steps; omit for config.sample.steps")
  if command == "sample":
    validate.check_number("--previews", FLAGS.previews, low=0, what="clips per task written as GIF/WAV/MP4")
    validate.check_number("--pyramid", FLAGS.pyramid, low=0, what="steps of delay between segments")
    validate.check_number("--long_segments", FLAGS.long_segments, low=0, what="segments of a long clip, 0 = off")
    if FLAGS.eta is not None:
      validate.check_number("--eta", FLAGS.eta, low=0, kind="float", what="DDIM eta")
  if command == "train" and FLAGS.resume_from_step is not None:
    validate.check_number("--resume_from_step", FLAGS.resume_from_step, low=1, what="checkpoint step")


RUN_COMMANDS = ("train", "sample", "evaluate")  # commands whose --workdir may supply the config


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of --name / --name=value in a raw argv (the last one wins, as absl does)."""
  value = None
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
  return value


def with_run_config(argv: list[str]) -> list[str]:
  """argv with `--config monl/run_config.py:WORKDIR` added when a run command omits --config and
  WORKDIR/config.json exists, so that `--config.*` flags apply on top of the run's own config."""
  from monl import run_config
  command = next((a for a in argv[1:] if not a.startswith("-")), None)
  if command not in RUN_COMMANDS or _flag_value(argv, "config") is not None:
    return argv
  workdir = _flag_value(argv, "workdir")
  if not workdir or not run_config.path(workdir).exists():
    return argv
  return [argv[0], f"--config={run_config.__file__}:{workdir}", *argv[1:]]


def _check_run(command: str, config):
  """Completes the layout from the data (a contradiction raises LayoutError) and, for a run command on
  a run with checkpoints, refuses a config that changes what they depend on
  (monl.run_config.check_compatible). Quiet and touching no JAX backend: `train` must still be able to
  initialise jax.distributed, and completes (and reports) the layout itself. Returns the config with
  its layout completed."""
  from monl import run_config
  from monl.train import loop
  if command in ("train", "sample", "evaluate", "params", "plan"):
    config = loop.with_data_layout(config, quiet=True)
  if command in RUN_COMMANDS and FLAGS.workdir:
    run_config.check_compatible(config, FLAGS.workdir, command)
  return config


def main(argv) -> int | None:
  if not FLAGS["verbosity"].present:  # Orbax and Grain log every save at INFO; keep the console readable
    logging.set_verbosity(logging.WARNING)
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m monl.main {{{'|'.join(COMMANDS)}}} --config FILE [flags]")
  command, config = argv[1], FLAGS.config
  if command == "data" and FLAGS.verify:
    return _cmd_verify()
  if command == "train_autoencoder":
    if config is None:
      raise app.UsageError("train_autoencoder needs --config (e.g. configs/autoencoder_tiny.py)")
    return _cmd_train_autoencoder(config)
  if command == "check":
    if not FLAGS.workdir:
      raise app.UsageError("check needs --workdir RUN")
    return _cmd_check()
  if config is None:
    if command == "data" and FLAGS.input:
      from configs import common
      config = common.base_config()
    elif command in RUN_COMMANDS and FLAGS.workdir:
      raise app.UsageError(f"--config is required: {FLAGS.workdir} has no config.json (not a monl run yet)")
    else:
      raise app.UsageError("--config is required" + (" (or --input DIR)" if command == "data" else ""))
  from monl import layout as layout_lib
  from monl import run_config, validate
  from monl.data import format as data_format
  try:
    _check_numbers(command, config)
    completed = _check_run(command, config)
  except (validate.ConfigError, run_config.RunConfigError, layout_lib.LayoutError, data_format.DatasetError) as e:
    # a bad number, a layout that contradicts the data, a change the checkpoints cannot take: say
    # which and exit 2 before anything is built
    print(f"monl {command}: {e}", file=sys.stderr, flush=True)
    return 2
  if command == "train":  # on a CPU host: restart with a faster malloc (monl.allocator)
    from monl import allocator
    allocator.maybe_reexec(allocator.train_activation_bytes(completed))
  try:
    return {"train": _cmd_train, "params": _cmd_params, "data": _cmd_data,
            "sample": _cmd_sample, "plan": _cmd_plan, "evaluate": _cmd_evaluate}[command](config)
  except (layout_lib.LayoutError, data_format.DatasetError) as e:  # e.g. a config whose layout the data contradicts
    print(f"monl {command}: {e}", file=sys.stderr, flush=True)
    return 2


if __name__ == "__main__":
  host.apply_cpu_platform_default()  # no TPU probe (and libtpu's errors) on a CPU-only host
  sys.exit(app.run(main, argv=with_run_config(sys.argv)))

"""monl command line: a thin layer over the library.

  python -m monl.main train  --config configs/default.py --workdir /tmp/monl [--config.train.lr=3e-4]
  python -m monl.main params --config configs/avdit_paper.py
  python -m monl.main data   --config configs/default.py      # build/describe the configured dataset
  python -m monl.main sample --config configs/default.py --workdir /tmp/monl --task a2v \
      [--input DIR --split test --num 16 --steps 50 --guidance 1.5 --seed 0] --output DIR
  python -m monl.main plan   --config configs/avdit_paper.py --topology v5e:16x16 [--json]
  python -m monl.main evaluate --config configs/default.py --workdir /tmp/monl --tasks all --num 256 \
      --steps 50 [--seed 0 --guidance 1.5 --output DIR]   # results.json/.md/.png (monl.eval.evaluate)

train exits with status 42 (monl.train.loop.PREEMPTED_EXIT_CODE) after a SIGTERM-triggered checkpoint.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "params", "data", "sample", "plan", "evaluate")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:strategy=pm].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
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
flags.DEFINE_string("mode", None, "monl | replacement (default config.sample.mode).")
flags.DEFINE_float("eta", None, "DDIM eta (default config.sample.eta).")
flags.DEFINE_integer("pyramid", 0, "Pyramid schedule: steps of delay between consecutive segments.")
flags.DEFINE_integer("long_segments", 0, "Generate this many segments by sliding-window continuation.")
flags.DEFINE_integer("previews", 4, "Clips per task written as GIF/WAV (built-in dataset).")
flags.DEFINE_string("output", None, "Output directory for sample (default WORKDIR/samples).")
# evaluate (also uses --num, --steps, --seed, --guidance, --output)
flags.DEFINE_string("tasks", None, "evaluate: 'all', 'paper' or comma-separated tasks (default config.eval.tasks).")
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
    loop.train(config, FLAGS.workdir)
  except loop.Preempted as e:
    print(e, flush=True)
    return loop.PREEMPTED_EXIT_CODE
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


def _cmd_sample(config) -> None:
  from monl.sample import run
  if not FLAGS.workdir:
    raise app.UsageError("sample needs --workdir (the training run to sample from)")
  req = run.SampleRequest(task=FLAGS.task, input=FLAGS.input, split=FLAGS.split, num=FLAGS.num,
                          steps=FLAGS.steps, guidance=FLAGS.guidance, seed=FLAGS.seed,
                          sampler=FLAGS.sampler, mode=FLAGS.mode, eta=FLAGS.eta,
                          pyramid_delay=FLAGS.pyramid, long_segments=FLAGS.long_segments,
                          previews=FLAGS.previews)
  output = FLAGS.output or f"{FLAGS.workdir}/samples"
  run.run(config, FLAGS.workdir, req, output)
  print(f"samples written to {output}/<task>/ (npz, manifest.json, previews)")


def _cmd_params(config) -> None:
  from monl import layout as layout_lib
  from monl.models import avdit
  lay = layout_lib.Layout.from_config(config.layout)
  n = avdit.count_params(avdit.AVDiTConfig.from_config(config.model), lay)
  print(json.dumps({"parameters": n, "tokens": lay.num_tokens, "cells": lay.num_cells,
                    "tokens_per_modality": {m.name: m.num_tokens for m in lay.modalities}}, indent=2))


def _cmd_data(config) -> None:
  from monl.data import format as data_format
  from monl.train import loop
  data_dir = loop.resolve_data_dir(config)
  spec = data_format.load_spec(data_dir)
  print(f"dataset: {data_dir}")
  print(json.dumps(data_format.spec_to_json(spec), indent=2))


def _cmd_evaluate(config) -> None:
  from monl.eval import evaluate
  if not FLAGS.workdir:
    raise app.UsageError("evaluate needs --workdir (the training run to evaluate)")
  evaluate.evaluate(config, FLAGS.workdir, tasks=FLAGS.tasks or config.eval.tasks,
                    num=FLAGS.num if FLAGS["num"].present else config.eval.num,
                    steps=FLAGS.steps or config.sample.steps, seed=FLAGS.seed, guidance=FLAGS.guidance,
                    output=FLAGS.output or f"{FLAGS.workdir}/eval")


def main(argv) -> int | None:
  if not FLAGS["verbosity"].present:  # Orbax and Grain log every save at INFO; keep the console readable
    logging.set_verbosity(logging.WARNING)
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m monl.main {{{'|'.join(COMMANDS)}}} --config FILE [flags]")
  if FLAGS.config is None:
    raise app.UsageError("--config is required")
  return {"train": _cmd_train, "params": _cmd_params, "data": _cmd_data,
          "sample": _cmd_sample, "plan": _cmd_plan, "evaluate": _cmd_evaluate}[argv[1]](FLAGS.config)


if __name__ == "__main__":
  sys.exit(app.run(main))

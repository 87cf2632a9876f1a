"""monl command line: a thin layer over the library.

  python -m monl.main train  --config configs/default.py --workdir /tmp/monl [--config.train.lr=3e-4]
  python -m monl.main params --config configs/avdit_paper.py
  python -m monl.main data   --config configs/default.py      # build/describe the configured dataset
"""
from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

COMMANDS = ("train", "params", "data")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/default.py[:strategy=pm].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")


def _cmd_train(config) -> None:
  from monl.train import loop
  if not FLAGS.workdir:
    raise app.UsageError("train needs --workdir")
  loop.train(config, FLAGS.workdir)


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
  print(json.dumps(spec.to_json() if hasattr(spec, "to_json") else str(spec), indent=2))


def main(argv) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m monl.main {{{'|'.join(COMMANDS)}}} --config FILE [flags]")
  if FLAGS.config is None:
    raise app.UsageError("--config is required")
  {"train": _cmd_train, "params": _cmd_params, "data": _cmd_data}[argv[1]](FLAGS.config)


if __name__ == "__main__":
  sys.exit(app.run(main))

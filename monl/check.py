"""`python -m monl.main check --workdir RUN`: verifies a run directory without changing it.

Checks, in order, and lists every problem (exit status 1 when there is one):
  1. RUN/config.json is a config (the run's own, layout completed: `monl.run_config`);
  2. the config history (RUN/configs/config_step<N>.json, one per (re)start) parses and never changes
     what the checkpoints depend on (layout, model, schedule);
  3. every checkpoint is complete, was trained with that layout and model (its monl record), holds
     its data-iterator position, and every array's content checksum matches (a full restore);
  4. the dataset the config reads has a valid dataset.json that agrees with the layout, every shard
     opens, and each shard's first and last records decode (`data --verify DIR` reads them all).
"""
from __future__ import annotations

import json

from etils import epath

from monl import run_config
from monl.train import config_history


def _history(workdir: epath.Path, config) -> list[str]:
  problems = []
  now = config_history.to_plain(config)
  for path in sorted((workdir / "configs").glob("config_step*.json")):
    try:
      old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      problems.append(f"{path}: not valid JSON ({e})")
      continue
    changes = run_config.checkpoint_changes(old, now)
    if changes:
      problems.append(f"{path}: a (re)start with other checkpoint-defining fields than "
                      f"{run_config.path(workdir)}:\n" + config_history.format_diff(changes, before="then", now="now"))
  return problems


def _checkpoints(workdir: epath.Path, config, model, say) -> list[str]:
  from monl.parallel import mesh as mesh_lib
  from monl.parallel import rules as rules_lib
  from monl.train import checkpoint as ckpt_lib
  from monl.train import loop
  from monl.train import step as step_lib
  directory = workdir / "checkpoints"
  leftovers = sorted(p.name for p in directory.glob("*.orbax-checkpoint-tmp*")) if directory.exists() else []
  if leftovers:
    say(f"  note: unfinished saves {leftovers} (a run killed mid-save; never restored, harmless)")
  obj = step_lib.Objective.from_config(config, model)
  factory = loop.StateFactory(config, obj, step_lib.make_optimizer(config.train),
                              mesh_lib.make_mesh(config.mesh), rules_lib.get_rules(config.mesh.rules))
  problems = []
  with ckpt_lib.Checkpointer(directory, async_save=False, config=config) as ckpt:
    steps = ckpt.all_steps()
    if not steps:
      problems.append(f"{directory}: no complete checkpoint")
    for step in steps:
      try:
        ckpt.verify(step, factory.abstract)
        say(f"  checkpoint {step}: complete, layout and shapes match, checksums verified")
      except ckpt_lib.CheckpointError as e:
        problems.append(f"checkpoint {step}: {e}")
  return problems


def _dataset(config, lay, say) -> list[str]:
  from monl.data import format as data_format
  from monl.data import shards
  from monl.train import loop
  try:
    data_dir = config.data.dir or str(loop.resolve_data_dir(config))
    spec = loop.check_data(config, data_dir, lay)
  except data_format.DatasetError as e:
    return [f"dataset: {e}"]
  problems = []
  for split in spec.splits:
    try:
      source = shards.ShardedSource(data_format.shard_paths(data_dir, split, spec))
      ends = sorted({0, len(source) - 1}) if len(source) else []
      for i in ends:
        data_format.decode_record(source[i], spec, where=source.name(i))
    except data_format.DatasetError as e:
      problems.append(f"dataset split {split!r}: {e}")
      continue
    say(f"  dataset {data_dir} split {split!r}: {len(source)} records, shards open, ends decode")
  return problems


def check(workdir: str, say=print) -> list[str]:
  """Every problem found in run directory `workdir` (empty: all is well); progress goes to `say`."""
  workdir_path = epath.Path(workdir)
  try:
    config = run_config.load(workdir_path)
  except run_config.RunConfigError as e:
    return [str(e)]
  from monl.train import loop
  from monl import layout as layout_lib
  from monl.data import format as data_format
  say(f"  {run_config.path(workdir_path)}: a config")
  try:
    config = loop.with_data_layout(config, quiet=True)
  except (layout_lib.LayoutError, data_format.DatasetError) as e:
    return [f"{run_config.path(workdir_path)}: its layout cannot be completed: {e}"]
  model = loop.build_model(config)
  problems = _history(workdir_path, config)
  problems += _checkpoints(workdir_path, config, model, say)
  problems += _dataset(config, model.layout, say)
  return problems

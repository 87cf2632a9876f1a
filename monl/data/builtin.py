"""The built-in procedural datasets: which exist, and the build/reuse machinery they share.

`config.data.builtin` names one of `DATASETS` (a config without the field means `DEFAULT`, the
bouncing ball). Each dataset module has `GENERATOR_NAME`, `GENERATOR_VERSION`, `generate_clip(rng)`,
`VIDEO_SEGMENTS` / `AUDIO_SEGMENTS`, `generator_params(...)` and `ensure_builtin_dataset(...)`; a
dataset directory's `produced_by.generator.name` says which module made it (`module_for_spec`).

The shared pieces here (`clip_rng`, `write_npz_clips`, `generator_params`, `ensure_dataset`) are what
every generator does the same way: seeded per-clip generators, npz clips in a temporary directory,
`monl.data.prepare`, and reuse of an existing dataset only when its recorded generator parameters are
equal.
"""
from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
from etils import epath
from tqdm import tqdm

from monl.data import format as fmt
from monl.data import prepare

# config.data.builtin -> the module that generates it
DATASETS = {"bouncing_ball": "monl.data.synthetic", "symbols": "monl.data.symbols"}
DEFAULT = "bouncing_ball"


def module(name: str) -> ModuleType:
  """The generator module of built-in dataset `name` (a key of `DATASETS`)."""
  if name not in DATASETS:
    raise ValueError(f"config.data.builtin={name!r}: known built-in datasets are {sorted(DATASETS)}")
  return importlib.import_module(DATASETS[name])


def module_for_generator(generator_name: str) -> ModuleType | None:
  """The built-in module whose GENERATOR_NAME is `generator_name`, or None."""
  for name in DATASETS:
    mod = module(name)
    if mod.GENERATOR_NAME == generator_name:
      return mod
  return None


def module_for_spec(spec: fmt.DatasetSpec) -> ModuleType | None:
  """The built-in module that produced the dataset of `spec` (`produced_by.generator.name`), or None."""
  gen = spec.produced_by.get("generator")
  if not isinstance(gen, Mapping) or not isinstance(gen.get("name"), str):
    return None
  return module_for_generator(gen["name"])


def clip_rng(seed: int, split_index: int, index: int) -> np.random.Generator:
  """The generator of clip `index` of split number `split_index`: independent of the split sizes."""
  return np.random.default_rng([seed, split_index, index])


def write_npz_clips(out_dir: fmt.PathLike, generate_clip: Callable[[np.random.Generator], Mapping[str, Any]],
                    num_train: int, num_test: int, seed: int, progress: bool = False) -> epath.Path:
  """Writes `out_dir/{train,test}/clip_XXXXXX.npz` (keys `video`, `audio`), the input of `prepare`."""
  out = epath.Path(out_dir)
  for split_index, (split, n) in enumerate((("train", num_train), ("test", num_test))):
    (out / split).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc=f"generate {split}", unit="clip", disable=not progress):
      clip = generate_clip(clip_rng(seed, split_index, i))
      with (out / split / f"clip_{i:06d}.npz").open("wb") as f:
        np.savez(f, video=clip["video"], audio=clip["audio"])
  return out


def generator_params(name: str, version: int, num_train: int, num_test: int, seed: int,
                     num_shards: int) -> dict[str, Any]:
  """What `produced_by.generator` records; an existing dataset is reused only if it is equal."""
  return {"name": name, "version": version, "num_train": int(num_train), "num_test": int(num_test),
          "seed": int(seed), "num_shards": int(num_shards)}


def ensure_dataset(dataset_dir: fmt.PathLike, want: Mapping[str, Any],
                   generate_clip: Callable[[np.random.Generator], Mapping[str, Any]], *,
                   segments: Mapping[str, Sequence[int]], seconds_per_segment: Sequence[float],
                   source: str, progress: bool = False) -> epath.Path:
  """Returns `dataset_dir` (user-expanded) holding the dataset `want` describes, building it if needed.

  `want` is `generator_params(...)`; `source` (a module name) goes into the temporary directory's name
  and `produced_by.input_dir`. Reuses a complete dataset whose `produced_by.generator` equals `want`;
  rebuilds one produced by the same generator (`want["name"]`) with other parameters or version;
  refuses (DatasetError) to touch a directory that holds anything else."""
  out = epath.Path(dataset_dir).expanduser()
  want = dict(want)
  name = want["name"]
  overwrite = False
  if (out / fmt.SPEC_FILE).exists():
    spec = fmt.load_spec(out)
    got = spec.produced_by.get("generator")
    if got == want:
      for split in spec.splits:
        fmt.shard_paths(out, split, spec)  # a deleted shard is an error, not a silent rebuild
      return out
    if not isinstance(got, Mapping) or got.get("name") != name:
      raise fmt.DatasetError(f"{out}: holds a dataset not produced by {name} (produced_by "
                             f"{dict(spec.produced_by)}); refusing to overwrite it: choose another "
                             f"data.builtin_dir")
    print(f"{out}: built-in dataset has generator {got}, wanted {want}: rebuilding", file=sys.stderr)
    overwrite = True
  elif out.exists() and any(out.iterdir()):
    raise fmt.DatasetError(f"{out}: exists, is not empty and has no {fmt.SPEC_FILE}; refusing to "
                           f"build the built-in dataset there")
  with tempfile.TemporaryDirectory(prefix=f"monl-{source.rsplit('.', 1)[-1]}-") as tmp:
    write_npz_clips(tmp, generate_clip, want["num_train"], want["num_test"], want["seed"], progress=progress)
    try:
      prepare.prepare(
          tmp, out, modalities=("video", "audio"), segments=dict(segments),
          seconds_per_segment=tuple(seconds_per_segment), num_shards=want["num_shards"],
          stats_split="train", stats_max_examples=1000, overwrite=overwrite,
          produced_by={"generator": want, "input_dir": f"(temporary npz clips from {source})"},
          progress=progress)
    except fmt.DatasetError:
      # Another process may have finished the same build first (prepare refuses to overwrite).
      if (out / fmt.SPEC_FILE).exists() and fmt.load_spec(out).produced_by.get("generator") == want:
        return out
      raise
  return out


def builtin_modalities(data_config: Any) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """{name: (shape, segments)} of the built-in dataset `data.builtin`, known without building it."""
  mod = module(getattr(data_config, "builtin", DEFAULT) or DEFAULT)
  return {"video": (tuple(mod.VIDEO_SHAPE), tuple(mod.VIDEO_SEGMENTS)),
          "audio": (tuple(mod.AUDIO_SHAPE), tuple(mod.AUDIO_SEGMENTS))}


def resolve_data_dir(data_config: Any) -> epath.Path:
  """`config.data` → the dataset directory: `data.dir`, or the built-in dataset `data.builtin`
  (default `DEFAULT`) under `data.builtin_dir` when `data.dir` is '', sized by `data.synthetic`."""
  if data_config.dir:
    return epath.Path(data_config.dir)
  mod = module(getattr(data_config, "builtin", DEFAULT) or DEFAULT)
  syn = data_config.synthetic
  return mod.ensure_builtin_dataset(data_config.builtin_dir, num_train=syn.num_train, num_test=syn.num_test,
                                    seed=syn.seed, num_shards=syn.num_shards)

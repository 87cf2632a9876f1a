"""Start-up checks of numeric config fields and command-line flags, before any data is read or compiled.

Each problem names the field (`config.ckpt.every`) or flag (`--num`), its value and the allowed range,
instead of a `ZeroDivisionError` or `negative dimensions` from deep inside a run. All problems of a
config are reported together.
"""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
  """A config field or command-line flag is outside its allowed range."""


# (field, kind, low, high, low inclusive, high inclusive, what it is); None = unbounded on that side.
# kind: "int" (a whole number, bools refused) or "float" (any finite real number).
_RULES: tuple[tuple[str, str, Any, Any, bool, bool, str], ...] = (
    ("data.batch_size", "int", 1, None, True, True, "global batch"),
    ("data.num_threads", "int", 0, None, True, True, "Grain read threads"),
    ("data.prefetch", "int", 0, None, True, True, "Grain prefetch buffer"),
    ("data.worker_count", "int", 0, None, True, True, "Grain worker processes"),
    ("data.synthetic.num_train", "int", 1, None, True, True, "built-in training clips"),
    ("data.synthetic.num_test", "int", 0, None, True, True, "built-in test clips"),
    ("data.synthetic.num_shards", "int", 1, None, True, True, "built-in shards"),
    ("model.width", "int", 1, None, True, True, "model width"),
    ("model.depth", "int", 1, None, True, True, "transformer blocks"),
    ("model.num_heads", "int", 1, None, True, True, "attention heads"),
    ("model.mlp_ratio", "float", 0, None, False, True, "MLP width / model width"),
    ("model.freq_embed_dim", "int", 2, None, True, True, "timestep features"),
    ("model.self_cond_rate", "float", 0, 1, True, True, "self-conditioning probability"),
    ("model.x0_loss_cap", "float", 0, None, False, True, "x0 loss weight cap"),
    ("model.x0_skip", "float", 0, None, True, True, "x0 skip sigma_data (0 = plain x0)"),
    ("model.head_hidden", "int", 0, None, True, True, "mlp head's hidden width (0 = the token size)"),
    ("schedule.num_steps", "int", 1, None, True, True, "diffusion steps T"),
    ("schedule.beta_start", "float", 0, 1, False, False, "linear schedule start"),
    ("schedule.beta_end", "float", 0, 1, False, False, "linear schedule end"),
    ("mixture.clean_prob", "float", 0, 1, True, False, "probability of a clean cell"),
    ("train.num_steps", "int", 1, None, True, True, "training steps"),
    ("train.lr", "float", 0, None, False, True, "peak learning rate"),
    ("train.warmup_steps", "int", 0, None, True, True, "warm-up steps"),
    ("train.end_lr_fraction", "float", 0, 1, True, True, "final learning rate / peak"),
    ("train.weight_decay", "float", 0, None, True, True, "AdamW weight decay"),
    ("train.b1", "float", 0, 1, True, False, "Adam beta1"),
    ("train.b2", "float", 0, 1, True, False, "Adam beta2"),
    ("train.grad_clip", "float", 0, None, False, True, "gradient clipping norm"),
    ("train.ema_decay", "float", 0, 1, True, True, "EMA decay"),
    ("train.log_every", "int", 1, None, True, True, "steps between log lines"),
    ("train.num_level_buckets", "int", 1, None, True, True, "noise-level metric buckets"),
    ("ckpt.every", "int", 1, None, True, True, "steps between checkpoints"),
    ("ckpt.keep", "int", 1, None, True, True, "checkpoints kept"),
    ("ckpt.preemption_check_every", "int", 1, None, True, True, "steps between SIGTERM agreements"),
    ("mesh.fsdp", "int", 1, None, True, True, "fsdp axis size"),
    ("mesh.tensor", "int", 1, None, True, True, "tensor axis size"),
    ("mesh.sequence", "int", 1, None, True, True, "sequence axis size"),
    ("mesh.dcn_data", "int", 1, None, True, True, "slices of the data axis"),
    ("mesh.dcn_fsdp", "int", 1, None, True, True, "slices of the fsdp axis"),
    ("mesh.max_replicated_fraction", "float", 0, 1, True, True, "replicated parameter fraction"),
    ("dist.timeout_s", "float", 0, None, False, True, "distributed start-up timeout"),
    ("dist.num_processes", "int", 0, None, True, True, "processes (0 = from the environment)"),
    ("dist.process_id", "int", -1, None, True, True, "process index (-1 = from the environment)"),
    ("sample.steps", "int", 1, None, True, True, "sampling steps"),
    ("sample.eta", "float", 0, None, True, True, "DDIM eta"),
    ("sample.guidance", "float", None, None, True, True, "guidance scale"),
    ("sample.batch_size", "int", 1, None, True, True, "sampling batch"),
    ("sample.continue_segments", "int", 1, None, True, True, "given segments of `continue`"),
    ("eval.num", "int", 2, None, True, True, "clips per task"),
    ("eval.i3d_max_clips", "int", 0, None, True, True, "clips per task through I3D"),
    ("eval.i3d_batch_size", "int", 1, None, True, True, "I3D batch"),
    ("eval.video_scale", "float", 0, None, False, True, "video scale for I3D"),
    ("eval.kvd_subsets", "int", 1, None, True, True, "KVD subsets"),
    ("eval.previews", "int", 0, None, True, True, "previews per task"),
)


def _range_text(low, high, low_inc: bool, high_inc: bool) -> str:
  if low is not None and high is not None:
    return f"in {'[' if low_inc else '('}{low}, {high}{']' if high_inc else ')'}"
  if low is not None:
    return f"{'>=' if low_inc else '>'} {low}"
  if high is not None:
    return f"{'<=' if high_inc else '<'} {high}"
  return "finite"


def _problem(name: str, value, kind: str, low, high, low_inc: bool, high_inc: bool, what: str) -> str | None:
  """None if `value` fits, else '<name>=<value>: must be <a kind> <range> (<what>)'."""
  noun = "an integer" if kind == "int" else "a number"
  rule = f"must be {noun} {_range_text(low, high, low_inc, high_inc)} ({what})"
  if isinstance(value, bool) or not isinstance(value, int | float):
    return f"{name}={value!r}: {rule}"
  if kind == "int" and not isinstance(value, int):
    return f"{name}={value!r}: {rule}"
  if not math.isfinite(value):
    return f"{name}={value!r}: {rule}"
  too_low = low is not None and (value < low if low_inc else value <= low)
  too_high = high is not None and (value > high if high_inc else value >= high)
  return f"{name}={value!r}: {rule}" if too_low or too_high else None


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def check_config(config) -> None:
  """Raises ConfigError listing every numeric field of `config` outside its range (absent fields pass)."""
  problems = []
  for field, kind, low, high, low_inc, high_inc, what in _RULES:
    value = _get(config, field)
    if value is _MISSING:
      continue
    p = _problem(f"config.{field}", value, kind, low, high, low_inc, high_inc, what)
    if p:
      problems.append(p)
  data_axis = _get(config, "mesh.data")
  if data_axis is not _MISSING and (isinstance(data_axis, bool) or not isinstance(data_axis, int)
                                    or not (data_axis == -1 or data_axis >= 1)):
    problems.append(f"config.mesh.data={data_axis!r}: must be -1 (fill with the remaining devices) or an "
                    "integer >= 1 (data axis size)")
  steps, total = _get(config, "sample.steps"), _get(config, "schedule.num_steps")
  if (isinstance(steps, int) and isinstance(total, int) and steps >= 1 and total >= 1 and steps > total):
    problems.append(f"config.sample.steps={steps}: must be at most config.schedule.num_steps={total}")
  if problems:
    raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def check_number(name: str, value, *, low=None, high=None, kind: str = "int", what: str = "",
                 low_inclusive: bool = True, high_inclusive: bool = True) -> None:
  """Raises ConfigError if the flag or field `name` is outside [low, high] (or not an integer)."""
  p = _problem(name, value, kind, low, high, low_inclusive, high_inclusive, what or name)
  if p:
    raise ConfigError(p)

"""Why a model does or does not learn: per-level denoising error and cross-modal / temporal usage.

  python -m monl.diagnose --workdir RUN [--num 128] [--steps all|last] [--levels 100,300,...]

For every checkpoint of RUN (or the last) and a grid of noise levels, on `num` clips of the eval split:

* `joint`: every cell at level t. Per modality, the x0 error of the model's estimate, divided by that
  of the best *per-element* Gaussian denoiser (x̂0 = √ᾱ z_t, error 1 − ᾱ on unit-variance data). A
  ratio of 1 means the model has learned nothing beyond per-element statistics at that level; the
  lower, the more structure it uses.
* `cross`: modality m at level t, every other modality clean (t = 0, as in a2v / v2a) with (a) the
  clip's own other modalities, (b) another clip's (the batch rolled by one), (c) dropped to pure
  noise at T. `use` = 1 − err(a) / err(c) is how much of the error the other modality removes;
  `swap` = err(b) / err(a) how much a wrong partner hurts (1 = the partner is ignored).
* `temporal`: all modalities, segments ≥ k at level t and segments < k clean (continuation) with the
  clip's own context vs another clip's (`use`, `swap` as above, for the generated segments).

Writes RUN/diagnose/diagnose.json and diagnose.png (one panel per measurement, a curve per checkpoint).
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from monl import host
from monl import schedule as schedule_lib

LEVELS = (1, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


def _x0_error(obj, params, z0, t, key, replace=None):
  """Per-modality mean squared x0 error over the cells with t > 0.

  z0: {m: [B, L_m, P_m]} clean tokens; t: [B, M, N]; replace: {m: [B, L_m, P_m]} values fed instead
  of z0 for the clean (t = 0) cells (a swapped partner), or None.
  """
  lay = obj.layout
  cells = lay.cell_of_token_by_modality()
  keys = jax.random.split(key, len(lay.names))
  z_t = {}
  for k, m in zip(keys, lay.names):
    src = z0[m] if replace is None else replace[m]
    noisy = schedule_lib.add_noise(obj.schedule, z0[m], jax.random.normal(k, z0[m].shape), t, cells[m])
    clean = schedule_lib.per_element(t, cells[m], 3) == 0
    z_t[m] = jnp.where(clean, src, noisy)
  sc = jax.tree.map(jnp.zeros_like, z_t) if obj.model.cfg.self_condition else None
  eps = obj.eps(params, z_t, t, sc)
  ab = obj.schedule.alpha_bar_of(t)
  out = {}
  for m in lay.names:
    ab_m = schedule_lib.per_element(ab, cells[m], 3)
    x0 = schedule_lib.eps_to_x0(z_t[m], eps[m], ab_m)
    w = jnp.broadcast_to(schedule_lib.per_element(t, cells[m], 3) > 0, x0.shape).astype(jnp.float32)
    out[m] = jnp.sum(jnp.square(x0 - z0[m]) * w) / jnp.maximum(jnp.sum(w), 1.0)
  return out


def measure(obj, params, tokens, key, levels=LEVELS, continue_segments: int = 2) -> dict:
  """All measurements for one set of parameters. tokens: {m: [B, L_m, P_m]} normalised clean clips."""
  lay = obj.layout
  b = next(iter(tokens.values())).shape[0]
  m_, n_ = lay.num_modalities, lay.num_segments
  T = obj.schedule.num_steps
  rolled = {m: jnp.roll(v, 1, axis=0) for m, v in tokens.items()}
  err = jax.jit(lambda p, t, k, rep: _x0_error(obj, p, tokens, t, k, rep))
  res = {"levels": list(levels), "joint": {m: [] for m in lay.names},
         "cross": {m: {"own": [], "swapped": [], "dropped": []} for m in lay.names},
         "temporal": {"own": [], "swapped": [], "dropped": []}}
  gauss = 1.0 - obj.schedule.alpha_bar[np.asarray(levels)]
  for i, level in enumerate(levels):
    k = jax.random.fold_in(key, i)
    full = jnp.full((b, m_, n_), level, jnp.int32)
    e = err(params, full, k, None)
    for m in lay.names:
      res["joint"][m].append(float(e[m]) / float(gauss[i]))
    for j, m in enumerate(lay.names):
      if m_ < 2:
        break
      only = jnp.zeros((b, m_, n_), jnp.int32).at[:, j].set(level)
      dropped = jnp.full((b, m_, n_), T, jnp.int32).at[:, j].set(level)
      res["cross"][m]["own"].append(float(err(params, only, k, None)[m]))
      res["cross"][m]["swapped"].append(float(err(params, only, k, rolled)[m]))
      res["cross"][m]["dropped"].append(float(err(params, dropped, k, None)[m]))
    ctx = jnp.zeros((b, m_, n_), jnp.int32).at[:, :, continue_segments:].set(level)
    ctx_drop = jnp.full((b, m_, n_), T, jnp.int32).at[:, :, continue_segments:].set(level)
    mean = lambda d: float(np.mean([float(v) for v in d.values()]))
    res["temporal"]["own"].append(mean(err(params, ctx, k, None)))
    res["temporal"]["swapped"].append(mean(err(params, ctx, k, rolled)))
    res["temporal"]["dropped"].append(mean(err(params, ctx_drop, k, None)))
  return res


def summarize(res: dict) -> dict:
  """Scalar summaries: geometric-mean joint ratio per modality over the levels; cross-modal / temporal
  use and swap harm (arithmetic means over the levels)."""
  out = {f"joint_ratio_{m}": float(np.exp(np.mean(np.log(v)))) for m, v in res["joint"].items()}
  def use_swap(d):
    own, sw, dr = (np.asarray(d[k]) for k in ("own", "swapped", "dropped"))
    with np.errstate(divide="ignore", invalid="ignore"):  # an exact model (error 0): the ratio is nan / inf
      return float(np.mean(1 - own / dr)), float(np.mean(sw / own))
  for m, d in res["cross"].items():
    if d["own"]:
      out[f"cross_use_{m}"], out[f"cross_swap_{m}"] = use_swap(d)
  out["temporal_use"], out["temporal_swap"] = use_swap(res["temporal"])
  return out


def plot(results: dict[int, dict], path) -> None:
  """One panel per measurement, one curve per checkpoint step (matplotlib, the `plots` extra)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps = sorted(results)
  first = results[steps[0]]
  names = list(first["joint"])
  panels = [("joint", m) for m in names] + [("cross", m) for m in names if first["cross"][m]["own"]]
  panels.append(("temporal", None))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
  cmap = plt.get_cmap("viridis")
  for ax, (kind, m) in zip(axes[0], panels):
    for i, s in enumerate(steps):
      r = results[s]
      c = cmap(i / max(len(steps) - 1, 1))
      lv = r["levels"]
      if kind == "joint":
        ax.plot(lv, r["joint"][m], color=c, label=f"step {s}")
      else:
        d = r["cross"][m] if kind == "cross" else r["temporal"]
        own, sw, dr = (np.asarray(d[k]) for k in ("own", "swapped", "dropped"))
        ax.plot(lv, 1 - own / dr, color=c, label=f"step {s}")
        if i == len(steps) - 1:
          ax.plot(lv, 1 - sw / dr, color=c, ls="--", label="partner swapped")
    if kind == "joint":
      ax.axhline(1.0, color="grey", lw=0.8)
      ax.set_title(f"{m}: x0 error / per-element Gaussian")
      ax.set_yscale("log")
    else:
      ax.axhline(0.0, color="grey", lw=0.8)
      other = "given other modality" if kind == "cross" else "given first segments"
      ax.set_title(f"{m or 'all'}: error removed by {other}" if kind == "cross" else
                   "continuation: error removed by context")
      ax.set_ylim(-0.2, 1.0)
    ax.set_xlabel("noise level t")
    ax.legend(fontsize=7)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, dpi=110)
  plt.close(fig)


def run(config, workdir: str, num: int = 128, which: str = "all", seed: int = 0,
        levels=LEVELS) -> dict[int, dict]:
  """Measures every (or the last) checkpoint of `workdir`; writes diagnose.json and diagnose.png."""
  from monl.data import pipeline
  from monl.parallel import mesh as mesh_lib
  from monl.parallel import rules as rules_lib
  from monl.sample import run as run_lib
  from monl.train import checkpoint as ckpt_lib
  from monl.train import loop
  from monl.train import step as step_lib
  gen = run_lib.Generator(config, workdir)  # restores the last checkpoint, resolves the data
  ids, clips = pipeline.read_clips(gen.data_dir, config.data.eval_split, num, gen.layout.names)
  tokens = gen.layout.patchify({m: jnp.asarray(v) for m, v in gen.normalize(clips).items()})
  factory = loop.StateFactory(config, gen.obj, step_lib.make_optimizer(config.train),
                              mesh_lib.make_mesh(config.mesh), rules_lib.get_rules(config.mesh.rules))
  results = {}
  with ckpt_lib.Checkpointer(epath.Path(workdir) / "checkpoints", keep=10**6, async_save=False,
                             config=config) as ckpt:
    steps = sorted(ckpt.manager.all_steps()) if which == "all" else [ckpt.latest_step()]
    for s in steps:
      state = ckpt.restore(s, factory.abstract)
      params = state.ema_params if config.sample.use_ema else state.params
      results[s] = measure(gen.obj, params, tokens, jax.random.key(seed), levels=tuple(levels),
                           continue_segments=config.sample.continue_segments)
      print(f"step {s}: " + ", ".join(f"{k} {v:.3f}" for k, v in summarize(results[s]).items()), flush=True)
  out = epath.Path(workdir) / "diagnose"
  out.mkdir(parents=True, exist_ok=True)
  (out / "diagnose.json").write_text(json.dumps(
      {str(s): dict(r, summary=summarize(r)) for s, r in results.items()}, indent=1))
  plot(results, out / "diagnose.png")
  print(f"wrote {out}/diagnose.json and diagnose.png")
  return results


def run_config(workdir: str, config_file: str | None):
  """The run's own config (WORKDIR/config.json, written by `train`), else `config_file`: a model must be
  measured with the settings it was trained with (position codes, biases, prediction, schedule)."""
  import ml_collections
  from monl import ablate
  saved = epath.Path(workdir) / "config.json"
  if saved.exists():
    return ml_collections.ConfigDict(json.loads(saved.read_text()))
  if not config_file:
    raise FileNotFoundError(f"{saved} does not exist: pass --config (the file the run was trained with)")
  return ablate.load_config(config_file)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=None, help="config file, used only when WORKDIR/config.json is missing")
  p.add_argument("--workdir", required=True)
  p.add_argument("--num", type=int, default=128)
  p.add_argument("--steps", choices=("all", "last"), default="all")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--levels", default=",".join(map(str, LEVELS)), help="comma-separated noise levels")
  args = p.parse_args(argv)
  run(run_config(args.workdir, args.config), args.workdir, args.num, args.steps, args.seed,
      [int(x) for x in args.levels.split(",")])


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  host.apply_cpu_platform_default()
  main()

"""A minimal, independent single-modality DiT, to tell "monl's machinery learns slowly" from "the budget is
too small".

  python benchmarks/reference_dit.py --modality video [--steps 2000 --batch 16 --width 128 --depth 4]
      [--compare RUN/diagnose/diagnose.json] [--out benchmarks/results/reference_video.json]

Written from scratch (no monl model, schedule, mixture or trainer code; only monl's data pipeline for the
batches): patch tokens + fixed sin/cos positions, one global timestep through adaLN-Zero, v-prediction,
the DDPM linear schedule, AdamW with warm-up + cosine, EMA. It trains on one modality of the built-in
dataset with the default config's budget, then prints the same per-level measure as `monl.diagnose`'s
`joint` panel (x0 error / per-element Gaussian error, on the first `--num` test clips). With
`--compare`, the table puts monl's curve for that modality (every cell at the same level) beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LEVELS = (1, 25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)
PATCH = {"video": (2, 4, 4), "audio": (4,)}


def patchify(x: np.ndarray, patch) -> np.ndarray:
  """[B, *axes, C] -> [B, tokens, prod(patch) * C] (time-major)."""
  b, c = x.shape[0], x.shape[-1]
  grid = [s // p for s, p in zip(x.shape[1:-1], patch)]
  split = [v for g, p in zip(grid, patch) for v in (g, p)]
  x = x.reshape(b, *split, c)
  k = len(patch)
  x = x.transpose([0] + [1 + 2 * i for i in range(k)] + [2 + 2 * i for i in range(k)] + [1 + 2 * k])
  return x.reshape(b, math.prod(grid), -1), grid


def sincos(pos: np.ndarray, dim: int) -> np.ndarray:
  freqs = np.exp(-math.log(10000.0) * np.arange(dim // 2) / (dim // 2))
  a = pos[:, None] * freqs
  return np.concatenate([np.sin(a), np.cos(a)], -1)


def positions(grid, dim: int) -> np.ndarray:
  coords = np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, len(grid))
  per = 2 * (dim // (2 * len(grid)))
  emb = np.concatenate([sincos(coords[:, i].astype(np.float64), per) for i in range(len(grid))], -1)
  return np.pad(emb, ((0, 0), (0, dim - emb.shape[1]))).astype(np.float32)


class DiT(nn.Module):
  width: int
  depth: int
  heads: int
  out_dim: int
  pos: np.ndarray

  @nn.compact
  def __call__(self, x, t):
    d = self.width
    h = nn.Dense(d)(x) + self.pos
    half = 128
    f = jnp.exp(-math.log(10000.0) * jnp.arange(half) / half)
    temb = jnp.concatenate([jnp.cos(t[:, None] * f), jnp.sin(t[:, None] * f)], -1)
    c = nn.silu(nn.Dense(d)(nn.silu(nn.Dense(d)(temb))))
    ln = lambda z: nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(z)
    for _ in range(self.depth):
      s1, g1, b1, s2, g2, b2 = jnp.split(nn.Dense(6 * d, kernel_init=nn.initializers.zeros)(c)[:, None], 6, -1)
      h = h + b1 * nn.MultiHeadDotProductAttention(self.heads)(ln(h) * (1 + g1) + s1)
      m = nn.Dense(4 * d)(ln(h) * (1 + g2) + s2)
      h = h + b2 * nn.Dense(d)(nn.gelu(m, approximate=True))
    s, g = jnp.split(nn.Dense(2 * d, kernel_init=nn.initializers.zeros)(c)[:, None], 2, -1)
    return nn.Dense(self.out_dim, kernel_init=nn.initializers.zeros)(ln(h) * (1 + g) + s)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--modality", choices=("video", "audio"), required=True)
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--width", type=int, default=128)
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--num", type=int, default=128)
  p.add_argument("--compare", default="", help="a monl diagnose.json to print beside")
  p.add_argument("--compare_step", default="", help="its checkpoint step to compare with (default: the last)")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)

  from configs import default
  from monl.data import format as fmt
  from monl.data import pipeline, synthetic
  config = default.get_config()
  data_dir = synthetic.resolve_data_dir(config.data)
  spec = fmt.load_spec(data_dir)
  mod, patch = args.modality, PATCH[args.modality]
  ds = iter(pipeline.make_dataset(data_dir, "train", batch_size=args.batch, seed=0))
  _, test = pipeline.read_clips(data_dir, "test", args.num, [mod])
  test_tok, grid = patchify(np.asarray(fmt.normalize(spec, mod, test[mod])), patch)

  betas = np.linspace(1e-4, 2e-2, 1000)
  ab = jnp.asarray(np.concatenate([[1.0], np.cumprod(1 - betas)]), jnp.float32)
  model = DiT(args.width, args.depth, args.heads, test_tok.shape[-1], positions(grid, args.width))
  params = model.init(jax.random.key(0), jnp.asarray(test_tok[:1]), jnp.ones((1,)))
  sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10), args.steps)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))
  opt = tx.init(params)
  ema = params

  def loss_fn(prm, x0, key):
    k1, k2 = jax.random.split(key)
    t = jax.random.randint(k1, (x0.shape[0],), 1, 1001)
    a = ab[t][:, None, None]
    eps = jax.random.normal(k2, x0.shape)
    zt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * eps
    v = jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0
    return jnp.mean(jnp.square(model.apply(prm, zt, t.astype(jnp.float32)) - v))

  @jax.jit
  def step(prm, opt, ema, x0, i):
    loss, g = jax.value_and_grad(loss_fn)(prm, x0, jax.random.fold_in(jax.random.key(1), i))
    upd, opt = tx.update(g, opt, prm)
    prm = optax.apply_updates(prm, upd)
    d = jnp.minimum(0.999, (1.0 + i) / (10.0 + i))
    ema = jax.tree.map(lambda e, q: d * e + (1 - d) * q, ema, prm)
    return prm, opt, ema, loss

  t0 = time.perf_counter()
  for i in range(args.steps):
    x0, _ = patchify(next(ds)[mod], patch)
    params, opt, ema, loss = step(params, opt, ema, jnp.asarray(x0), i)
    if (i + 1) % 250 == 0:
      print(f"step {i + 1}/{args.steps} loss {float(loss):.4f} ({(i + 1) / (time.perf_counter() - t0):.1f} steps/s)",
            flush=True)

  @jax.jit
  def x0_err(prm, x0, level, key):
    a = ab[level]
    zt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * jax.random.normal(key, x0.shape)
    v = model.apply(prm, zt, jnp.full((x0.shape[0],), level, jnp.float32))
    return jnp.mean(jnp.square(jnp.sqrt(a) * zt - jnp.sqrt(1 - a) * v - x0))

  x0 = jnp.asarray(test_tok)
  ratios = [float(x0_err(ema, x0, lv, jax.random.key(i))) / float(1 - ab[lv]) for i, lv in enumerate(LEVELS)]
  monl_curve = None
  if args.compare:
    with open(args.compare) as f:
      d = json.load(f)
    step = args.compare_step or max(d, key=int)
    monl_curve = d[step]["joint"][mod]
  print(f"\nreference DiT on {mod} alone: {args.steps} steps, batch {args.batch}, width {args.width}, "
        f"depth {args.depth}; x0 error / per-element Gaussian error on {len(test_tok)} test clips")
  print("level  reference" + ("  monl" if monl_curve else ""))
  for i, lv in enumerate(LEVELS):
    print(f"{lv:5d}  {ratios[i]:9.3f}" + (f"  {monl_curve[i]:.3f}" if monl_curve else ""))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"modality": mod, "args": vars(args), "levels": LEVELS, "reference": ratios,
                 "monl": monl_curve}, f, indent=1)


if __name__ == "__main__":
  main()

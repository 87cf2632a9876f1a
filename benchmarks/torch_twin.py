"""A PyTorch eager twin of monl's AVDiT: the same architecture, shapes and parameter count (issue 7).

    python benchmarks/torch_twin.py [--config midsize] [--quick]   # checks the twin against monl

The timing comparison is benchmarks/train_vs_torch.py.

What "the same" means, piece by piece (monl/models/avdit.py, layers.py):
  per-modality patch embedding Linear(P_m -> D) + fixed sin/cos grid positions (monl's own table) +
  learned modality embedding; timestep features cos|sin(256) -> Linear(D) -> SiLU -> Linear(D), plus a
  learned cell embedding, SiLU -> cond [B, C, D]; each block: adaLN Linear(D -> 6D) on cond per cell,
  (shift1, scale1, gate1, shift2, scale2, gate2) gathered to the tokens of their cell, parameter-free
  LayerNorm(eps 1e-6), fused bias-free QKV, scaled-dot-product attention, output projection with
  bias, MLP D -> 4D -> D with tanh-GELU; final adaLN Linear(D -> 2D) + modulated LayerNorm +
  per-modality Linear(D -> P_m) heads. The check loads monl's (randomised) parameters into the twin
  and compares outputs, and asserts the parameter counts are equal.

The train step mirrors `monl.train.step.train_step`: per-cell noise levels, noised latents, ε MSE over
all elements, backward, global-norm clipping, AdamW (foreach), EMA of the parameters.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import common


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
  return F.layer_norm(x, x.shape[-1:], eps=eps)


class Block(nn.Module):
  def __init__(self, d: int, heads: int, mlp_ratio: int):
    super().__init__()
    self.heads = heads
    self.adaln = nn.Linear(d, 6 * d)
    self.qkv = nn.Linear(d, 3 * d, bias=False)  # output features ordered (q|k|v, head, head_dim)
    self.out = nn.Linear(d, d)
    self.fc1 = nn.Linear(d, mlp_ratio * d)
    self.fc2 = nn.Linear(mlp_ratio * d, d)

  def forward(self, x: torch.Tensor, cond: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    b, l, d = x.shape
    mod = self.adaln(cond)[:, cell]  # [B, C, 6D] per cell -> [B, L, 6D] gathered to tokens
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
    h = layer_norm(x) * (1 + scale1) + shift1
    qkv = self.qkv(h).view(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, H, L, K]
    x = x + gate1 * self.out(a.transpose(1, 2).reshape(b, l, d))
    h = layer_norm(x) * (1 + scale2) + shift2
    return x + gate2 * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class TorchAVDiT(nn.Module):
  """monl.models.avdit.AVDiT in PyTorch (no self-conditioning; the mid-size config has none)."""

  def __init__(self, layout, cfg):
    super().__init__()
    from monl.models import layers as jlayers
    if cfg.self_condition:
      raise NotImplementedError("the twin covers configs without self-conditioning")
    d = cfg.width
    self.layout, self.cfg = layout, cfg
    self.names = layout.names
    self.modality_embedding = nn.Parameter(torch.randn(layout.num_modalities, d) * 0.02)
    self.embed = nn.ModuleDict({m.name: nn.Linear(m.patch_dim, d) for m in layout.modalities})
    for m in layout.modalities:
      self.register_buffer(f"pos_{m.name}", torch.from_numpy(jlayers.grid_position_embedding(m.grid, d)))
    half = cfg.freq_embed_dim // 2
    self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half))
    self.t_mlp1 = nn.Linear(cfg.freq_embed_dim, d)
    self.t_mlp2 = nn.Linear(d, d)
    self.cell_embedding = nn.Parameter(torch.randn(layout.num_cells, d) * 0.02)
    self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
    self.final_adaln = nn.Linear(d, 2 * d)
    self.head = nn.ModuleDict({m.name: nn.Linear(d, m.patch_dim) for m in layout.modalities})
    self.register_buffer("cell", torch.from_numpy(layout.cell_of_token.astype(np.int64)))
    for lin in (self.final_adaln, *self.head.values(), *(blk.adaln for blk in self.blocks)):
      nn.init.zeros_(lin.weight)  # adaLN-Zero, as monl
      nn.init.zeros_(lin.bias)

  def forward(self, tokens: dict, t: torch.Tensor) -> dict:
    b = t.shape[0]
    xs = [self.embed[m](tokens[m]) + getattr(self, f"pos_{m}") + self.modality_embedding[i]
          for i, m in enumerate(self.names)]
    x = torch.cat(xs, dim=1)
    args = t.reshape(b, -1).float()[..., None] * self.freqs
    temb = self.t_mlp2(F.silu(self.t_mlp1(torch.cat([torch.cos(args), torch.sin(args)], -1))))
    cond = F.silu(temb + self.cell_embedding)
    for blk in self.blocks:
      x = blk(x, cond, self.cell)
    shift, scale = self.final_adaln(cond)[:, self.cell].chunk(2, dim=-1)
    x = layer_norm(x) * (1 + scale) + shift
    out, start = {}, 0
    for mod in self.layout.modalities:
      out[mod.name] = self.head[mod.name](x[:, start:start + mod.num_tokens])
      start += mod.num_tokens
    return out

  @torch.no_grad()
  def load_flax(self, params) -> None:
    """Copies monl's parameters ({'params': ...}, scanned layers) into this twin."""
    p = params["params"]
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy())
    lin = lambda mod, q: (mod.weight.copy_(t(q["kernel"]).T), mod.bias.copy_(t(q["bias"])))
    self.modality_embedding.copy_(t(p["modality_embedding"]))
    self.cell_embedding.copy_(t(p["cell_embedding"]))
    for m in self.names:
      lin(self.embed[m], p[f"embed_{m}"])
      lin(self.head[m], p[f"head_{m}"])
    lin(self.t_mlp1, p["t_mlp1"])
    lin(self.t_mlp2, p["t_mlp2"])
    lin(self.final_adaln, p["final_adaln"])
    bp = p["blocks"]
    for i, blk in enumerate(self.blocks):
      layer = lambda q: {k: v[i] for k, v in q.items()}
      lin(blk.adaln, layer(bp["adaln"]))
      lin(blk.fc1, layer(bp["mlp"]["fc1"]))
      lin(blk.fc2, layer(bp["mlp"]["fc2"]))
      qkv = np.asarray(bp["attn"]["qkv"][i])  # [3, D, H, K]
      blk.qkv.weight.copy_(t(qkv.transpose(0, 2, 3, 1).reshape(-1, qkv.shape[1])))
      w_out = np.asarray(bp["attn"]["out"][i])  # [H, K, D]
      blk.out.weight.copy_(t(w_out.reshape(-1, w_out.shape[-1]).T))
      blk.out.bias.copy_(t(bp["attn"]["out_bias"][i]))


def num_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


class TorchTrainer:
  """One train step like monl's: per-cell levels, noise, ε-MSE, clip, AdamW, EMA."""

  def __init__(self, model: TorchAVDiT, schedule, train_cfg, ema: float = 0.9999, seed: int = 0):
    self.model, self.lay = model, model.layout
    self.alpha_bar = torch.from_numpy(np.asarray(schedule.alpha_bar, np.float32))
    self.num_steps = schedule.num_steps
    self.params = [p for p in model.parameters()]
    self.opt = torch.optim.AdamW(self.params, lr=train_cfg.lr, betas=(train_cfg.b1, train_cfg.b2),
                                 weight_decay=train_cfg.weight_decay, foreach=True)
    self.grad_clip = train_cfg.grad_clip
    self.ema_decay = ema
    self.ema = [p.detach().clone() for p in self.params]
    self.cells = {k: torch.from_numpy(v.astype(np.int64)) for k, v in self.lay.cell_of_token_by_modality().items()}
    self.gen = torch.Generator().manual_seed(seed)

  def step(self, batch: dict) -> torch.Tensor:
    lay = self.lay
    tokens = {m.name: torch.from_numpy(np.asarray(m.patchify(batch[m.name]))) for m in lay.modalities}
    b = next(iter(tokens.values())).shape[0]
    t = torch.randint(1, self.num_steps + 1, (b, lay.num_modalities, lay.num_segments), generator=self.gen)
    ab = self.alpha_bar[t.reshape(b, -1)]  # [B, C]
    eps, z = {}, {}
    for m, x0 in tokens.items():
      e = torch.randn(x0.shape, generator=self.gen)
      a = ab[:, self.cells[m]][..., None]
      eps[m], z[m] = e, a.sqrt() * x0 + (1 - a).sqrt() * e
    out = self.model(z, t)
    n = sum(e.numel() for e in eps.values())
    loss = sum(torch.sum(torch.square(out[m] - eps[m])) for m in eps) / n
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
    self.opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_decay)
    return loss.detach()


def build(config):
  """(TorchAVDiT, monl Setup) for a config; asserts equal parameter counts."""
  from monl.models import avdit
  s = common.Setup(config)
  twin = TorchAVDiT(s.layout, avdit.AVDiTConfig.from_config(config.model))
  n_jax, n_torch = s.num_params(), num_params(twin)
  assert n_jax == n_torch, f"parameter counts differ: monl {n_jax:,} vs torch twin {n_torch:,}"
  return twin, s


def check(config, atol: float = 2e-4) -> dict:
  """Loads monl's randomised parameters into the twin and compares the outputs of both models."""
  import flax
  import jax
  twin, s = build(config)
  tokens, t = s.random_tokens_and_levels(2)
  params = flax.linen.meta.unbox(jax.jit(s.model.init)(s.key, tokens, t))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [l + 0.05 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])
  ref = jax.jit(s.model.apply)(params, tokens, t)
  twin.load_flax(params)
  with torch.no_grad():
    out = twin({k: torch.from_numpy(np.asarray(v)) for k, v in tokens.items()}, torch.from_numpy(np.asarray(t)))
  err = max(float(np.max(np.abs(out[m].numpy() - np.asarray(ref[m])))) for m in ref)
  scale = max(float(np.max(np.abs(np.asarray(ref[m])))) for m in ref)
  assert err <= atol * max(1.0, scale), f"twin differs from monl: max abs error {err:.3g} (scale {scale:.3g})"
  return {"params": num_params(twin), "max_abs_error": err, "output_scale": scale}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="midsize")
  p.add_argument("--quick", action="store_true", help="tiny width/depth (same layout)")
  p.add_argument("--out", default="torch_twin")
  args = p.parse_args(argv)
  info = common.machine_info()
  rows = [dict(config=args.config, **check(common.load_config(args.config, args.quick)))]
  path = common.write_json(args.out, {"machine": info, "results": rows, "quick": args.quick})
  common.print_table(f"torch twin vs monl AVDiT, same parameters loaded ({args.config}"
                     f"{', quick' if args.quick else ''})", rows,
                     ["config", "params", "max_abs_error", "output_scale"], info, [f"wrote {path}"])


if __name__ == "__main__":
  main()

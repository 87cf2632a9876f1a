"""AVDiT: one diffusion transformer over the tokens of every modality, modulated per cell.

Data flow (B batch, L tokens of all modalities, C = M * N cells, D width):
  tokens {m: [B, L_m, P_m]} --per-modality linear + fixed sin/cos positions + modality embedding-->
  x [B, L, D];  levels t [B, M, N] --sin/cos + MLP, + learned cell embedding--> cond [B, C, D]
  each block: adaLN-Zero shift/scale/gate computed per cell [B, C, 6, D], gathered to tokens inside the
  fused elementwise ops; full self-attention + MLP
  final: modulated LayerNorm + per-modality head (linear or `HEADS`) -> eps {m: [B, L_m, P_m]}
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from monl import layout as layout_lib
from monl.models import layers

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# Output heads. linear: one Dense per modality. mlp: a modality whose token is larger than the width
# gets Dense(H) -> GELU -> Dense(P) instead (P = its token size, H = `head_hidden`, by default P), so
# that it can output any token, not only those of a width-dimensional subspace (whole-frame video
# tokens: 1536 values from 128 features); smaller tokens keep the linear head, which reaches them all.
HEADS = ("linear", "mlp")


@dataclasses.dataclass(frozen=True)
class AVDiTConfig:
  """Static model hyper-parameters (hashable, built from `config.model`)."""
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  self_condition: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = True
  attention: str = "xla"
  freq_embed_dim: int = 256
  aligned_time: bool = False
  time_bias: bool = False
  time_bias_prior: float = 0.0
  head: str = "linear"  # linear | mlp (`HEADS`)
  head_hidden: int = 0  # mlp head: hidden width (0 = the token size)

  @classmethod
  def from_config(cls, model_cfg) -> "AVDiTConfig":
    if model_cfg.width % model_cfg.num_heads:
      raise ValueError(f"config.model.width={model_cfg.width} is not divisible by "
                       f"config.model.num_heads={model_cfg.num_heads}")
    if model_cfg.remat_policy not in ("none", *REMAT_POLICIES):
      raise ValueError(f"config.model.remat_policy={model_cfg.remat_policy!r}: expected one of "
                       f"{('none', *REMAT_POLICIES)}")
    if model_cfg.get("head", "linear") not in HEADS:
      raise ValueError(f"config.model.head={model_cfg.head!r}: expected one of {HEADS}")
    if model_cfg.attention not in layers.ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"config.model.attention={model_cfg.attention!r}: expected one of "
                       f"{layers.ATTENTION_IMPLEMENTATIONS}")
    return cls(width=model_cfg.width, depth=model_cfg.depth, num_heads=model_cfg.num_heads,
               mlp_ratio=model_cfg.mlp_ratio, self_condition=model_cfg.self_cond_rate > 0,
               dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype,
               remat_policy=model_cfg.remat_policy, scan_layers=model_cfg.scan_layers,
               attention=model_cfg.attention, freq_embed_dim=model_cfg.freq_embed_dim,
               aligned_time=model_cfg.get("aligned_time", False),
               time_bias=model_cfg.get("time_bias", False),
               time_bias_prior=float(model_cfg.get("time_bias_prior", 0.0)),
               head=model_cfg.get("head", "linear"), head_hidden=int(model_cfg.get("head_hidden", 0)))


@functools.lru_cache(maxsize=None)
def time_bias_buckets(lay: layout_lib.Layout) -> np.ndarray:
  """[L, L] relative-time buckets of `lay` (`layers.time_offset_buckets`): offsets in units of half the
  finest temporal patch spacing of any modality, up to one segment either way (farther pairs share the
  end buckets)."""
  finest = min(1.0 / max(np.bincount(m.segment_of_frame[:: m.patch[0]])) for m in lay.modalities)
  unit = finest / 2
  return layers.time_offset_buckets(lay.token_times, lay.modality_of_token, unit, int(round(1 / unit)))


def time_bias_prior(lay: layout_lib.Layout, peak: float) -> np.ndarray:
  """[num buckets] initial bias: `peak * exp(-offset² / 2)` (offset in bucket units) across modalities,
  0 within a modality. It starts every head attending to the other modality's tokens of the same
  moment, which a zero-initialised model does not find by itself (docs/diagnosis.md)."""
  radius = int(time_bias_buckets(lay).max() + 1) // 4
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  return np.concatenate([np.zeros(2 * radius + 1), peak * np.exp(-0.5 * offsets**2)]).astype(np.float32)


class Block(nn.Module):
  """adaLN-Zero transformer block; modulation is per cell and broadcast to the cell's tokens."""
  cfg: AVDiTConfig
  layout: layout_lib.Layout

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array):
    """x: [B, L, D] tokens; cond: [B, C, D] per-cell conditioning (already through SiLU)."""
    cfg, dtype, pdtype = self.cfg, jnp.dtype(self.cfg.dtype), jnp.dtype(self.cfg.param_dtype)
    cell_of_token = self.layout.cell_of_token
    d = x.shape[-1]
    mod = layers.dense(6 * d, ("embed", "mod"), dtype=dtype, param_dtype=pdtype, zero_init=True,
                       name="adaln")(cond)
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)  # each [B, C, D]

    h = layers.modulate(layers.layer_norm(x), shift1, scale1, cell_of_token)
    buckets = prior = None
    if cfg.time_bias:
      buckets = time_bias_buckets(self.layout)
      prior = time_bias_prior(self.layout, cfg.time_bias_prior) if cfg.time_bias_prior else None
    h = layers.Attention(cfg.num_heads, cfg.attention, dtype, pdtype, bias_buckets=buckets, bias_prior=prior,
                         name="attn")(h)
    x = x + layers.to_tokens(gate1, cell_of_token) * h
    x = nn.with_logical_constraint(x, layers.BLE)

    h = layers.modulate(layers.layer_norm(x), shift2, scale2, cell_of_token)
    h = layers.Mlp(cfg.mlp_ratio * d, dtype, pdtype, name="mlp")(h)
    x = x + layers.to_tokens(gate2, cell_of_token) * h
    return nn.with_logical_constraint(x, layers.BLE), None


class AVDiT(nn.Module):
  """Predicts the noise of every token of every modality from per-cell noise levels."""
  cfg: AVDiTConfig
  layout: layout_lib.Layout

  @nn.compact
  def __call__(self, tokens, t: jax.Array, self_cond=None):
    """Args:
      tokens: {name: [B, L_m, P_m]} noisy latents, patchified.
      t: [B, M, N] integer noise level of every cell (0 = clean).
      self_cond: {name: [B, L_m, P_m]} previous x0 estimate, or None (zeros) when the model
        was built with self-conditioning; must be None otherwise.
    Returns:
      {name: [B, L_m, P_m]} predicted noise.
    """
    cfg, lay = self.cfg, self.layout
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    d = cfg.width
    if self_cond is not None and not cfg.self_condition:
      raise ValueError("self_cond given to a model built without self-conditioning "
                       "(config.model.self_cond_rate = 0)")

    modality_emb = self.param("modality_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("modalities", "embed")), (lay.num_modalities, d), pdtype)
    xs = []
    for m, mod in enumerate(lay.modalities):
      x_m = tokens[mod.name].astype(dtype)
      if cfg.self_condition:
        sc = jnp.zeros_like(x_m) if self_cond is None else self_cond[mod.name].astype(dtype)
        x_m = jnp.concatenate([x_m, sc], axis=-1)
      x_m = layers.dense(d, ("patch", "embed"), dtype=dtype, param_dtype=pdtype,
                         name=f"embed_{mod.name}")(x_m)
      if cfg.aligned_time:
        # one temporal code for all modalities: time in segment units, scaled so that the finest
        # modality's temporal patches are one unit apart
        scale = max(m.grid[0] for m in lay.modalities) / lay.num_segments
        time_dim = 2 * (d // (2 * max(len(m.grid) for m in lay.modalities)))
        pos = layers.aligned_position_embedding(mod.grid, mod.time_patch_times, d, time_dim, scale)
      else:
        pos = layers.grid_position_embedding(mod.grid, d)
      xs.append(x_m + jnp.asarray(pos, dtype) + modality_emb[m].astype(dtype))
    x = nn.with_logical_constraint(jnp.concatenate(xs, axis=1), layers.BLE)

    b = t.shape[0]
    t_flat = t.reshape(b, lay.num_cells)
    temb = layers.timestep_features(t_flat, cfg.freq_embed_dim).astype(dtype)
    temb = layers.dense(d, ("freq", "embed"), dtype=dtype, param_dtype=pdtype, name="t_mlp1")(temb)
    temb = layers.dense(d, ("embed", "embed_out"), dtype=dtype, param_dtype=pdtype,
                        name="t_mlp2")(jax.nn.silu(temb))
    cell_emb = self.param("cell_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("cells", "embed")), (lay.num_cells, d), pdtype)
    cond = jax.nn.silu(temb + cell_emb.astype(dtype))
    cond = nn.with_logical_constraint(cond, layers.BCE)

    block = Block
    if cfg.remat_policy != "none":
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,), length=cfg.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, lay, name="blocks")(x, cond)
    else:
      for i in range(cfg.depth):
        x, _ = block(cfg, lay, name=f"block_{i}")(x, cond)

    final = layers.dense(2 * d, ("embed", "mod"), dtype=dtype, param_dtype=pdtype, zero_init=True,
                         name="final_adaln")(cond)
    shift, scale = jnp.split(final, 2, axis=-1)
    x = layers.modulate(layers.layer_norm(x), shift, scale, lay.cell_of_token)
    out, start = {}, 0
    for mod in lay.modalities:
      x_m = x[:, start:start + mod.num_tokens]
      start += mod.num_tokens
      in_axis = "embed"
      if cfg.head == "mlp" and mod.patch_dim > d:
        # the second kernel [H, P] has no `embed` axis to shard under fsdp: its H is `head_mlp`
        in_axis = "head_mlp"
        x_m = layers.dense(cfg.head_hidden or mod.patch_dim, ("embed", "mlp"), dtype=dtype, param_dtype=pdtype,
                           name=f"head_hidden_{mod.name}")(x_m)
        x_m = nn.with_logical_constraint(jax.nn.gelu(x_m, approximate=True), layers.BLM)
      out[mod.name] = layers.dense(mod.patch_dim, (in_axis, "patch"),
                                   dtype=dtype, param_dtype=pdtype, zero_init=True,
                                   name=f"head_{mod.name}")(x_m).astype(jnp.float32)
    return out


@functools.lru_cache(maxsize=None)
def count_params(cfg: AVDiTConfig, lay: layout_lib.Layout) -> int:
  """Number of parameters, from shapes only (jax.eval_shape; nothing is allocated)."""
  model = AVDiT(cfg, lay)
  tokens = {m.name: jax.ShapeDtypeStruct((1, m.num_tokens, m.patch_dim), jnp.float32) for m in lay.modalities}
  t = jax.ShapeDtypeStruct((1, lay.num_modalities, lay.num_segments), jnp.int32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens, t)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))

"""Samplers for every task: one compiled `lax.scan` over denoising steps, per-cell levels throughout.

A *level schedule* `levels: [S + 1, M, N]` gives every cell's level before each step (levels[0]) and
after the last (levels[S] = 0); different cells may sit at different levels (e.g. a pyramid along
time). At step i the generated cells move from levels[i] to levels[i + 1] with the DDIM (η) or DDPM
update of `monl.schedule`; a cell whose level does not change is left untouched.

Conditioning modes:
  monl         given cells are fed clean at level 0 on every step and never updated (the paper).
  replacement  given cells are re-noised to the generated cells' current level every step (the
               baseline for models trained with vanilla noise only; Video Diffusion Models, MM-Diffusion).
Guidance (free, no null token): the unconditional branch replaces the dropped given cells by pure
noise at level T; eps = (1 + s_m) eps_cond - s_m eps_uncond with a scale s_m per modality. Both
branches run in one batched model call. `uncond_drop` selects which given cells the unconditional
branch drops (default: all), giving guidance w.r.t. one modality or some segments only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from monl import layout as layout_lib
from monl import schedule as schedule_lib

# denoise_fn(tokens {m: [B, L_m, P_m]}, t [B, M, N], self_cond {m: ...} | None) -> eps {m: [B, L_m, P_m]}
DenoiseFn = Callable[[Mapping[str, jax.Array], jax.Array, Mapping[str, jax.Array] | None], dict]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  sampler: str = "ddim"  # ddim | ddpm
  eta: float = 0.0  # DDIM stochasticity (1.0 = DDPM-like variance)
  mode: str = "monl"  # monl | replacement
  guidance: tuple[float, ...] | None = None  # one scale per modality; None = no unconditional branch
  self_condition: bool = False

  def __post_init__(self):
    if self.sampler not in ("ddim", "ddpm"):
      raise ValueError(f"sampler {self.sampler!r}: expected 'ddim' or 'ddpm'")
    if self.mode not in ("monl", "replacement"):
      raise ValueError(f"conditioning mode {self.mode!r}: expected 'monl' or 'replacement'")


def uniform_levels(num_steps: int, steps: int) -> np.ndarray:
  """[steps + 1] strictly decreasing respaced levels from T to 0 (e.g. 50 of 1000)."""
  if not 1 <= steps <= num_steps:
    raise ValueError(f"sampling steps={steps} must be in 1..T={num_steps}")
  return np.round(np.linspace(num_steps, 0, steps + 1)).astype(np.int32)


def level_schedule(num_steps: int, steps: int, num_modalities: int, num_segments: int, *,
                   pyramid_delay: int = 0) -> np.ndarray:
  """[S + 1, M, N] levels of every cell before each step.

  pyramid_delay = 0: every cell follows the same respaced levels (S = steps).
  pyramid_delay = d > 0: segment n starts d * n steps after segment 0 (Diffusion-Forcing-style
  pyramid), so earlier segments are always less noisy; S = steps + d * (N - 1).
  """
  base = uniform_levels(num_steps, steps)
  total = steps + pyramid_delay * (num_segments - 1)
  i = np.arange(total + 1)[:, None] - pyramid_delay * np.arange(num_segments)[None, :]  # [S+1, N]
  per_segment = base[np.clip(i, 0, steps)]
  return np.broadcast_to(per_segment[:, None, :], (total + 1, num_modalities, num_segments)).astype(np.int32)


def _tokens_mask(layout: layout_lib.Layout, cell_values: jax.Array) -> dict[str, jax.Array]:
  """[B, M, N] per-cell values -> {m: [B, L_m, 1]} per token."""
  cells = layout.cell_of_token_by_modality()
  return {m: schedule_lib.per_element(cell_values, cells[m], 3) for m in layout.names}


def sample(denoise_fn: DenoiseFn, layout: layout_lib.Layout, schedule: schedule_lib.Schedule,
           levels: np.ndarray, x0_given: Mapping[str, jax.Array], given: jax.Array, key: jax.Array,
           cfg: SamplerConfig, uncond_drop: jax.Array | None = None) -> dict[str, jax.Array]:
  """Generates the non-given cells.

  Args:
    denoise_fn: the noise predictor (a model's apply with its parameters closed over).
    levels: [S + 1, M, N] level schedule (`level_schedule`); levels[-1] must be 0.
    x0_given: {m: [B, L_m, P_m]} clean tokens; only the given cells' values are read.
    given: [M, N] or [B, M, N] bool, True where a cell is conditioned on.
    key: PRNG key (the whole trajectory is a function of it).
    uncond_drop: [M, N] or [B, M, N] bool, the given cells that the guidance branch drops.
  Returns:
    {m: [B, L_m, P_m]} tokens: given cells bit-identical to x0_given, the rest generated.
  """
  names = layout.names
  b = x0_given[names[0]].shape[0]
  m_, n_ = layout.num_modalities, layout.num_segments
  levels = np.asarray(levels, np.int32)
  if levels.shape[1:] != (m_, n_) or np.any(levels[-1] != 0):
    raise ValueError(f"level schedule of shape {levels.shape} must be [S+1, {m_}, {n_}] and end at 0")
  given = jnp.broadcast_to(jnp.asarray(given, bool), (b, m_, n_))
  given_tok = {m: v > 0 for m, v in _tokens_mask(layout, given.astype(jnp.float32)).items()}
  guided = cfg.guidance is not None
  if guided:
    if len(cfg.guidance) != m_:
      raise ValueError(f"guidance {cfg.guidance}: need one scale per modality {names}")
    drop = given if uncond_drop is None else given & jnp.broadcast_to(jnp.asarray(uncond_drop, bool), given.shape)
    drop_tok = {m: v > 0 for m, v in _tokens_mask(layout, drop.astype(jnp.float32)).items()}
  cells = layout.cell_of_token_by_modality()
  ab_table = jnp.asarray(schedule.alpha_bar)
  monl_mode = cfg.mode == "monl"

  def per_token_ab(t):
    ab = ab_table[t]
    return {m: schedule_lib.per_element(ab, cells[m], 3) for m in names}

  def step(carry, xs):
    x, sc = carry
    t_cur, t_next, i = xs
    t_cur_b = jnp.broadcast_to(t_cur, (b, m_, n_))
    k_noise, k_given, k_uncond = jax.random.split(jax.random.fold_in(key, i), 3)
    if monl_mode:
      t_in = jnp.where(given, 0, t_cur_b)
      x_in = {m: jnp.where(given_tok[m], x0_given[m], x[m]) for m in names}
    else:  # replacement: given cells re-noised to the current level
      t_in = t_cur_b
      ab_cur = per_token_ab(t_cur_b)
      g_keys = jax.random.split(k_given, len(names))
      x_in = {m: jnp.where(given_tok[m], jnp.sqrt(ab_cur[m]) * x0_given[m] + jnp.sqrt(1 - ab_cur[m]) *
                           jax.random.normal(k, x[m].shape), x[m]) for k, m in zip(g_keys, names)}
    if guided:
      u_keys = jax.random.split(k_uncond, len(names))
      x_u = {m: jnp.where(drop_tok[m], jax.random.normal(k, x[m].shape), x_in[m]) for k, m in zip(u_keys, names)}
      t_u = jnp.where(drop, schedule.num_steps, t_in)
      both = {m: jnp.concatenate([x_in[m], x_u[m]]) for m in names}
      t_both = jnp.concatenate([t_in, t_u])
      # Each branch carries its own self-conditioning state ([2B, ...]): the unconditional branch's
      # x0 estimate is its own, so the cells it drops never see the condition in any channel.
      eps_both = denoise_fn(both, t_both, sc)
      eps = {}
      for j, m in enumerate(names):
        s = cfg.guidance[j]
        eps[m] = (1 + s) * eps_both[m][:b] - s * eps_both[m][b:]
      x_sc, t_sc, eps_sc = both, t_both, eps_both
    else:
      eps = denoise_fn(x_in, t_in, sc)
      x_sc, t_sc, eps_sc = x_in, t_in, eps
    ab_sc = per_token_ab(t_sc)
    new_sc = None if sc is None else {
        m: schedule_lib.eps_to_x0(x_sc[m], eps_sc[m], ab_sc[m]) for m in names}
    ab_t, ab_s = per_token_ab(t_cur_b), per_token_ab(jnp.broadcast_to(t_next, (b, m_, n_)))
    n_keys = jax.random.split(k_noise, len(names))
    new_x = {}
    deterministic = cfg.sampler == "ddim" and cfg.eta == 0
    for k, m in zip(n_keys, names):
      # deterministic DDIM multiplies the noise by σ = 0: skip drawing it
      noise = jnp.zeros_like(x[m]) if deterministic else jax.random.normal(k, x[m].shape)
      if cfg.sampler == "ddim":
        upd = schedule_lib.ddim_step(x[m], eps[m], ab_t[m], ab_s[m], cfg.eta, noise)
      else:
        upd = schedule_lib.ddpm_step(x[m], eps[m], ab_t[m], ab_s[m], noise)
      new_x[m] = jnp.where(given_tok[m], x[m], upd)
    return (new_x, new_sc), None

  key, k_init = jax.random.split(key)
  init_keys = jax.random.split(k_init, len(names))
  x = {m: jax.random.normal(k, x0_given[m].shape, jnp.float32) for k, m in zip(init_keys, names)}
  # self-conditioning state: the previous x0 estimate of every branch (cond, then uncond if guided)
  sc = {m: jnp.zeros((2 * b if guided else b,) + v.shape[1:], v.dtype) for m, v in x.items()} \
      if cfg.self_condition else None
  steps = len(levels) - 1
  xs = (jnp.asarray(levels[:-1]), jnp.asarray(levels[1:]), jnp.arange(steps))
  (x, _), _ = jax.lax.scan(step, (x, sc), xs)
  return {m: jnp.where(given_tok[m], x0_given[m], x[m]) for m in names}

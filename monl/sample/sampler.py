"""Samplers for every task: one compiled `lax.scan` over denoising steps, per-cell levels throughout.

A *level schedule* `levels: [S + 1, M, N]` gives every cell's level before each step (levels[0]) and
after the last (levels[S] = 0); different cells may sit at different levels (e.g. a pyramid along
time). At step i the generated cells move from levels[i] to levels[i + 1] with the DDIM (η) or DDPM
update of `monl.schedule`; a cell whose level does not change is left untouched. The levels of a
schedule are spread over 1..T evenly in t (the paper's respacing) or, for few multistep steps, evenly in
log-SNR (`spaced_levels`).

Solvers (`SamplerConfig.solver`):
  ddim              the one-step update of `sampler` above (the paper: 250 DDIM steps).
  dpmpp_2m / _3m    DPM-Solver++(2M) / (3M) (Lu et al. 2022): the probability-flow ODE in its data-prediction
                    form, x_s/σ_s = x_t/σ_t + ∫ e^λ x̂0(λ) dλ (λ = log(α/σ)), integrated exactly
                    for an x̂0 that is a polynomial in λ through the current and the previous one or two
                    steps' x̂0. λ, the step h = λ_s - λ_t and the ratios of consecutive steps are *per
                    cell*, and so is the order: a cell uses the history only of steps in which it moved
                    (a cell waiting at its level in a pyramid, or a given cell, contributes none), so its
                    first move, and its first move after a pause, is first order (= DDIM, η = 0); its
                    last move (to level 0, λ = ∞) is first order, and with 3M its second-to-last is at
                    most second order ("lower order final"). All coefficients depend on the levels only
                    and are computed once in float64 (`multistep_coefficients`).

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


# solver -> order of the multistep ODE solver (ddim: the one-step update of `SamplerConfig.sampler`)
SOLVERS = {"ddim": 1, "dpmpp_2m": 2, "dpmpp_3m": 3}


def check_solver(solver: str, where: str = "solver (config.sample.solver / --solver)") -> str:
  if solver not in SOLVERS:
    raise ValueError(f"{where}={solver!r}: expected one of {tuple(SOLVERS)}")
  return solver


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  sampler: str = "ddim"  # ddim | ddpm (the update of solver="ddim")
  eta: float = 0.0  # DDIM stochasticity (1.0 = DDPM-like variance)
  mode: str = "monl"  # monl | replacement
  guidance: tuple[float, ...] | None = None  # one scale per modality; None = no unconditional branch
  self_condition: bool = False
  solver: str = "ddim"  # ddim | dpmpp_2m | dpmpp_3m (deterministic multistep ODE solvers)
  spacing: str = "uniform"  # uniform | logsnr | karras: how the steps' levels are spread (`spaced_levels`)

  def __post_init__(self):
    if self.sampler not in ("ddim", "ddpm"):
      raise ValueError(f"sampler {self.sampler!r}: expected 'ddim' or 'ddpm'")
    if self.mode not in ("monl", "replacement"):
      raise ValueError(f"conditioning mode {self.mode!r}: expected 'monl' or 'replacement'")
    check_solver(self.solver)
    check_spacing(self.spacing)
    if self.solver != "ddim" and (self.sampler != "ddim" or self.eta != 0):
      raise ValueError(f"solver {self.solver!r} integrates the deterministic probability-flow ODE: it needs "
                       f"sampler='ddim' and eta=0, got sampler={self.sampler!r}, eta={self.eta} "
                       "(config.sample.sampler / --sampler, config.sample.eta / --eta)")


def uniform_levels(num_steps: int, steps: int) -> np.ndarray:
  """[steps + 1] strictly decreasing respaced levels from T to 0 (e.g. 50 of 1000)."""
  if not 1 <= steps <= num_steps:
    raise ValueError(f"sampling steps={steps} must be in 1..T={num_steps}")
  return np.round(np.linspace(num_steps, 0, steps + 1)).astype(np.int32)


# how the `steps` levels of a schedule are spread over 1..T (see `spaced_levels`); config.sample.spacing
# may also say "auto" (`resolve_spacing`)
SPACINGS = ("uniform", "logsnr", "karras")


def check_spacing(spacing: str, where: str = "spacing (config.sample.spacing / --spacing)",
                  auto: bool = False) -> str:
  allowed = ("auto",) + SPACINGS if auto else SPACINGS
  if spacing not in allowed:
    raise ValueError(f"{where}={spacing!r}: expected one of {allowed}")
  return spacing


def resolve_spacing(spacing: str, solver: str, where: str = "spacing (config.sample.spacing / --spacing)") -> str:
  """'auto' -> uniform for DDIM (the paper's respacing), logsnr for the multistep solvers (measured on the
  default model: 2M matches 250-step DDIM on every task within 25 steps with logsnr levels, not with
  uniform ones; README 'Fewer sampling steps'). Other spacings are returned as they are, checked."""
  check_spacing(spacing, where, auto=True)
  if spacing == "auto":
    return "uniform" if check_solver(solver) == "ddim" else "logsnr"
  return spacing


def solver_and_spacing(sample_config, solver: str | None = None, spacing: str | None = None) -> tuple[str, str]:
  """(solver, resolved spacing) that a request runs: its own values where given, else config.sample's
  (`sample_config`; runs trained before these fields: ddim, auto)."""
  solver = check_solver(solver or sample_config.get("solver", "ddim"))
  return solver, resolve_spacing(spacing or sample_config.get("spacing", "auto"), solver)


def spaced_levels(alpha_bar: np.ndarray, steps: int, spacing: str = "uniform", rho: float = 7.0) -> np.ndarray:
  """[steps + 1] strictly decreasing levels from T to 0, spread by `spacing`.

  uniform  evenly in the level t (DDIM's respacing; the paper).
  logsnr   evenly in λ = log(α/σ) from level T to level 1 (DPM-Solver's choice for few steps).
  karras   σ/α evenly in its 1/ρ-th power from level T to level 1 (Karras et al. 2022, ρ = 7): denser
           still at low noise.
  The last step goes from level 1 to 0 under logsnr / karras. With a linear β schedule, uniform
  spacing at 10 steps puts the last step at level 100 (σ ≈ 0.32), so the whole last tenth of the noise
  is removed in one first-order jump; the other two give the low-noise end its share of steps.
  Where rounding to integer levels makes two equal, one moves to a free neighbouring level.

  Args:
    alpha_bar: [T + 1] ᾱ of every level (`Schedule.alpha_bar`, ᾱ_0 = 1).
  """
  check_spacing(spacing)
  num_steps = len(alpha_bar) - 1
  if spacing == "uniform" or steps == 1:
    return uniform_levels(num_steps, steps)
  if not 1 <= steps <= num_steps:
    raise ValueError(f"sampling steps={steps} must be in 1..T={num_steps}")
  ab = np.asarray(alpha_bar, np.float64)[1:]  # levels 1..T
  lam = 0.5 * (np.log(ab) - np.log1p(-ab))  # decreasing in the level
  u = np.linspace(0.0, 1.0, steps)  # level T ... level 1
  if spacing == "logsnr":
    target = lam[-1] + u * (lam[0] - lam[-1])
  else:  # karras: in s = σ/α = e^-λ
    s_max, s_min = np.exp(-lam[-1]) ** (1 / rho), np.exp(-lam[0]) ** (1 / rho)
    target = -rho * np.log(s_max + u * (s_min - s_max))
  # λ of level t+1 is lam[t]; the level whose λ is nearest the target
  levels = 1 + np.abs(lam[None, :] - target[:, None]).argmin(axis=1)
  levels[0], levels[-1] = num_steps, 1
  for i in range(steps - 2, 0, -1):  # strictly decreasing: push collisions at the low-noise end upwards,
    levels[i] = max(levels[i], levels[i + 1] + 1)
  for i in range(1, steps - 1):  # then below level T (room for both as steps <= T)
    levels[i] = min(levels[i], levels[i - 1] - 1)
  return np.append(levels, 0).astype(np.int32)


def level_schedule(num_steps: int, steps: int, num_modalities: int, num_segments: int, *,
                   pyramid_delay: int = 0, spacing: str = "uniform",
                   alpha_bar: np.ndarray | None = None) -> np.ndarray:
  """[S + 1, M, N] levels of every cell before each step.

  pyramid_delay = 0: every cell follows the same respaced levels (S = steps).
  pyramid_delay = d > 0: segment n starts d * n steps after segment 0 (Diffusion-Forcing-style
  pyramid), so earlier segments are always less noisy; S = steps + d * (N - 1).
  spacing: how the levels are spread (`spaced_levels`); all but 'uniform' need the schedule's alpha_bar.
  """
  if spacing == "uniform":
    base = uniform_levels(num_steps, steps)
  elif alpha_bar is None or len(alpha_bar) != num_steps + 1:
    raise ValueError(f"spacing={spacing!r} needs alpha_bar of the schedule's {num_steps} + 1 levels")
  else:
    base = spaced_levels(alpha_bar, steps, spacing)
  total = steps + pyramid_delay * (num_segments - 1)
  i = np.arange(total + 1)[:, None] - pyramid_delay * np.arange(num_segments)[None, :]  # [S+1, N]
  per_segment = base[np.clip(i, 0, steps)]
  return np.broadcast_to(per_segment[:, None, :], (total + 1, num_modalities, num_segments)).astype(np.int32)


def multistep_coefficients(alpha_bar: np.ndarray, levels: np.ndarray, order: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-step, per-cell coefficients of DPM-Solver++ of `order` (1, 2 = 2M, 3 = 3M) on a level schedule.

  Step i moves a cell from level t = levels[i] to s = levels[i + 1] by
    x_s = c_x x_t + c[0] x̂0_i + c[1] x̂0_{i-1} + ... + c[order - 1] x̂0_{i-order+1},
  x̂0_j being the data prediction of step j. With α = sqrt(ᾱ), σ = sqrt(1 - ᾱ), λ = log(α/σ), h = λ_s - λ_t:
    order 1 (= DDIM, η = 0): c_x = σ_s/σ_t, c[0] = α_s (1 - e^-h) = α_s - c_x α_t.
    order 2 (2M, Lu et al. 2022, Alg. 2): r = h_{i-1}/h; c[0] = α_s (1 - e^-h)(1 + 1/(2r)), c[1] = -α_s (1 - e^-h)/(2r).
    order 3 (3M): exact integral of the quadratic in λ through x̂0_i, x̂0_{i-1}, x̂0_{i-2}.
  The order used per cell is min(order, 1 + the cell's consecutive moves just before step i, the cell's
  moves left from step i): history only from steps in which the cell itself moved (h_{i-1} > 0), and a
  first-order last move (to level 0, where h = ∞). A cell that does not move gets c_x = 1, c = 0.

  Args:
    alpha_bar: [T + 1] ᾱ of every level (`Schedule.alpha_bar`).
    levels: [S + 1, M, N] non-increasing level schedule.
  Returns:
    (c_x [S, M, N], c [S, order, M, N]) float64, moving [S, M, N] bool.
  """
  levels = np.asarray(levels, np.int64)
  if np.any(np.diff(levels, axis=0) > 0):
    raise ValueError("multistep solvers need a level schedule that never raises a cell's level")
  ab = np.asarray(alpha_bar, np.float64)[levels]  # [S + 1, M, N]
  alpha, sigma = np.sqrt(ab), np.sqrt(np.maximum(1.0 - ab, 0.0))
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)  # +inf at level 0
  moving = levels[:-1] > levels[1:]  # [S, M, N]
  steps = len(moving)
  run = np.zeros(moving.shape, np.int64)  # consecutive moves of the cell just before step i
  for i in range(1, steps):
    run[i] = np.where(moving[i - 1], run[i - 1] + 1, 0)
  left = np.cumsum(moving[::-1], axis=0)[::-1]  # moves from step i on (incl. i)
  k = np.where(moving, np.minimum(np.minimum(order, 1 + run), left), 0)

  a_t, a_s, s_t, s_s = alpha[:-1], alpha[1:], sigma[:-1], sigma[1:]
  safe_s_t = np.where(moving, s_t, 1.0)
  ratio = np.where(moving, s_s / safe_s_t, 1.0)
  big_a = np.where(moving, a_s - ratio * a_t, 0.0)  # α_s (1 - e^-h), finite also at s = 0
  # Step sizes in λ (1.0 where unused): h of this step, h1 and h2 of the previous two. k >= 2 means the
  # target is above level 0 (λ finite) and the cell moved in the step before (h1 > 0); k = 3 also in
  # the one before that (h2 > 0). Elsewhere λ may be ∞ - ∞ (cells resting at level 0).
  finite, use3 = k >= 2, k >= 3
  h, h1, h2 = np.ones(k.shape), np.ones(k.shape), np.ones(k.shape)
  with np.errstate(invalid="ignore"):
    h = np.where(finite, lam[1:] - lam[:-1], 1.0)
    h1[1:] = np.where(finite[1:], lam[1:-1] - lam[:-2], 1.0)
    h2[2:] = np.where(use3[2:], lam[1:-2] - lam[:-3], 1.0)
  c = np.zeros((steps, max(order, 1)) + levels.shape[1:], np.float64)
  c[:, 0] = big_a
  if order >= 2:
    r = h1 / h
    two = k == 2
    c[:, 0] = np.where(two, big_a * (1 + 1 / (2 * r)), c[:, 0])
    c[:, 1] = np.where(two, -big_a / (2 * r), 0.0)
  if order >= 3:
    # x̂0(u) = m0 + u D1 + u² D2 with u = (λ - λ_t)/h through m1 at u = -r0, m2 at u = -(r0 + r1); then
    # σ_s ∫ e^λ x̂0 dλ = α_s ∫_0^1 h e^{-h(1-u)} (m0 + u D1 + u² D2) du = α_s ((1 - e^-h) m0 + i1 D1 + i2 D2).
    r0, r1 = h1 / h, h2 / h
    em1 = np.expm1(-h)  # e^-h - 1
    p = -em1 / h  # (1 - e^-h)/h
    i1 = 1.0 - p
    i2 = 1.0 - 2.0 * p + 2.0 * (p - np.exp(-h)) / h
    d1_0 = np.stack([1 / r0, -1 / r0, np.zeros_like(r0)])  # (m0 - m1)/r0 over (m0, m1, m2)
    d1_1 = np.stack([np.zeros_like(r1), 1 / r1, -1 / r1])  # (m1 - m2)/r1
    d2 = (d1_0 - d1_1) / (r0 + r1)
    d1 = d1_0 + r0 * d2
    three = a_s * (i1 * d1 + i2 * d2)  # [3, S, M, N]
    three[0] += big_a
    for j in range(3):
      c[:, j] = np.where(use3, three[j], c[:, j])
  return ratio, c, moving


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
  multistep = cfg.solver != "ddim"
  order = SOLVERS[cfg.solver]

  def per_token_ab(t):
    ab = ab_table[t]
    return {m: schedule_lib.per_element(ab, cells[m], 3) for m in names}

  def per_token(cell_values):  # [M, N] -> {m: [1, L_m, 1]}
    return {m: schedule_lib.per_element(cell_values[None], cells[m], 3) for m in names}

  def multistep_update(x, eps, hist, t_cur_b, coef):
    """DPM-Solver++ step of the generated cells; returns (new x, new x0 history)."""
    c_x, c, moving = coef
    ab_t = per_token_ab(t_cur_b)
    x0 = {m: schedule_lib.eps_to_x0(x[m], eps[m], ab_t[m]) for m in names}
    c_x, moving = per_token(c_x), per_token(moving)
    c = [per_token(c[j]) for j in range(order)]  # c: [order, M, N] at this step
    new_x = {}
    for m in names:
      upd = c_x[m] * x[m] + c[0][m] * x0[m]
      for j in range(1, order):  # x̂0 of step i - j; zero coefficient where the cell has no such history
        upd = upd + c[j][m] * hist[j - 1][m]
      new_x[m] = jnp.where(given_tok[m] | ~moving[m], x[m], upd)
    return new_x, (x0,) + tuple(hist[:-1])

  def step(carry, xs):
    if multistep:
      x, hist, sc = carry
      t_cur, t_next, i, coef = xs
    else:
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
    if multistep:
      return (*multistep_update(x, eps, hist, t_cur_b, coef), new_sc), None
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
  if multistep:
    c_x, c, moving = multistep_coefficients(schedule.alpha_bar, levels, order)
    xs = xs + ((jnp.asarray(c_x, jnp.float32), jnp.asarray(c, jnp.float32), jnp.asarray(moving)),)  # [S, ...]
    # the previous steps' x̂0 (most recent first); unused until a cell has moved in them
    hist = tuple({m: jnp.zeros_like(v) for m, v in x.items()} for _ in range(order - 1))
    (x, _, _), _ = jax.lax.scan(step, (x, hist, sc), xs)
  else:
    (x, _), _ = jax.lax.scan(step, (x, sc), xs)
  return {m: jnp.where(given_tok[m], x0_given[m], x[m]) for m in names}

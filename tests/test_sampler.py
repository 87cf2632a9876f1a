"""Exactness of the whole conditioning path with no training: a closed-form optimal noise predictor.

Data x ~ N(0, Σ) jointly Gaussian across cells. With every element at its own level,
x_t = a ∘ x + s ∘ ε (a = sqrt(ᾱ), s = sqrt(1 - ᾱ) per element), so Cov(x_t) = (a aᵀ) ∘ Σ + diag(s²) and
the optimal predictor is E[ε | x_t] = s ∘ Cov(x_t)⁻¹ x_t. Plugging it in as the "model", sampling a
task must reproduce the Gaussian conditional of the generated cells given the given cells.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monl import layout as L
from monl import schedule as S
from monl.sample import sampler as SM
from monl.sample import tasks

LAY = L.Layout((L.ModalityLayout("video", (3, 2), (1,), (1, 1, 1)),
                L.ModalityLayout("audio", (3, 1), (1,), (1, 1, 1))))
SCHED = S.Schedule.from_betas(S.linear_betas(1000))
# element -> flattened cell, in the order tokens are flattened (video tokens x 2 dims, then audio)
CELL_OF_ELEMENT = np.array([0, 0, 1, 1, 2, 2, 3, 4, 5])


def _sigma():
  rng = np.random.default_rng(3)
  a = rng.normal(size=(9, 9))
  sigma = a @ a.T / 9 + 0.2 * np.eye(9)
  d = np.sqrt(np.diag(sigma))
  return sigma / d[:, None] / d[None, :]  # unit variances, strong correlations


SIGMA = _sigma()


def _flat(tokens):
  return jnp.concatenate([tokens["video"].reshape(tokens["video"].shape[0], -1),
                          tokens["audio"].reshape(tokens["audio"].shape[0], -1)], axis=1)


def _unflat(x):
  return {"video": x[:, :6].reshape(-1, 3, 2), "audio": x[:, 6:].reshape(-1, 3, 1)}


def oracle(tokens, t, self_cond=None):
  """E[eps | x_t] for x ~ N(0, SIGMA), every cell at its own level."""
  x = _flat(tokens)
  ab = jnp.asarray(SCHED.alpha_bar)[t.reshape(t.shape[0], -1)][:, CELL_OF_ELEMENT]  # [B, 9]
  a, s = jnp.sqrt(ab), jnp.sqrt(1 - ab)
  cov = a[:, :, None] * a[:, None, :] * jnp.asarray(SIGMA, jnp.float32) + jax.vmap(jnp.diag)(s**2)
  return _unflat(s * jnp.linalg.solve(cov, x[..., None])[..., 0])


def _conditional(given_elems, x_given):
  g = np.flatnonzero(given_elems)
  u = np.flatnonzero(~given_elems)
  k = SIGMA[np.ix_(u, g)] @ np.linalg.inv(SIGMA[np.ix_(g, g)])
  return u, k @ x_given, SIGMA[np.ix_(u, u)] - k @ SIGMA[np.ix_(g, u)]


def _run(task, n=4000, steps=1000, sampler="ddpm", mode="monl", guidance=None, seed=0):
  given = tasks.task_mask(task, LAY.names, 3, k=1)
  x_true = np.random.default_rng(7).multivariate_normal(np.zeros(9), SIGMA)
  x0 = _unflat(jnp.broadcast_to(jnp.asarray(x_true, jnp.float32), (n, 9)))
  levels = SM.level_schedule(1000, steps, 2, 3)
  cfg = SM.SamplerConfig(sampler=sampler, eta=1.0, mode=mode, guidance=guidance)
  run = jax.jit(functools.partial(SM.sample, oracle, LAY, SCHED, levels, cfg=cfg))
  out = run(x0, given, jax.random.key(seed))
  given_elems = given.reshape(-1)[CELL_OF_ELEMENT]
  return np.asarray(_flat(out), np.float64), x_true, given_elems, out, x0


@pytest.mark.parametrize("task", ["a2v", "v2a", "continue", "inpaint", "video:2,audio:3"])
def test_oracle_sampling_matches_gaussian_conditional(task):
  samples, x_true, given_elems, out, x0 = _run(task)
  u, mean, cov = _conditional(given_elems, x_true[given_elems])
  gen = samples[:, u]
  # Tolerances: the Monte-Carlo standard error with 4000 samples is <= 0.016 for a mean and <= 0.023
  # for a (co)variance of unit-variance elements; 0.06 is about 3-4 of them. The step discretisation
  # shrinks variances (by 6-9% at 100 steps, 0-6% at 250, within noise at 1000; measured), so the
  # exactness test runs all 1000 levels.
  np.testing.assert_allclose(gen.mean(0), mean, atol=0.06)
  np.testing.assert_allclose(np.cov(gen.T), cov, atol=0.06)
  # given cells come back bit-identical
  np.testing.assert_array_equal(samples[:, given_elems], np.asarray(_flat(x0), np.float64)[:, given_elems])


def test_joint_matches_prior():
  samples, *_ = _run("joint")
  np.testing.assert_allclose(samples.mean(0), 0.0, atol=0.06)
  np.testing.assert_allclose(np.cov(samples.T), SIGMA, atol=0.06)


def _conditional_mean_error(task, mode):
  samples, x_true, given_elems, *_ = _run(task, mode=mode, n=3000, steps=250)
  u, mean, _ = _conditional(given_elems, x_true[given_elems])
  return np.abs(samples[:, u].mean(0) - mean).max()


@pytest.mark.parametrize("task", ["a2v", "continue"])
def test_replacement_is_worse_than_monl(task):
  """Same oracle, same seed: re-noising the given cells (the vanilla-model baseline) biases the
  conditional mean (measured: a2v 0.31 vs 0.03, continue 0.16 vs 0.04 at 250 steps)."""
  monl_err = _conditional_mean_error(task, "monl")
  repl_err = _conditional_mean_error(task, "replacement")
  assert monl_err < 0.06
  assert repl_err > 3 * monl_err, (repl_err, monl_err)


def test_ddim_deterministic_and_seeded():
  a = _run("a2v", n=8, steps=20, sampler="ddim")[0]
  b = _run("a2v", n=8, steps=20, sampler="ddim")[0]
  c = _run("a2v", n=8, steps=20, sampler="ddim", seed=1)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_guidance_zero_equals_conditional():
  plain = _run("a2v", n=16, steps=20)[0]
  guided = _run("a2v", n=16, steps=20, guidance=(0.0, 0.0))[0]
  np.testing.assert_allclose(plain, guided, atol=1e-4)
  strong = _run("a2v", n=16, steps=20, guidance=(2.0, 2.0))[0]
  assert not np.allclose(plain, strong, atol=1e-3)


def test_pyramid_schedule():
  lv = SM.level_schedule(1000, 10, 2, 3, pyramid_delay=2)
  assert lv.shape == (15, 2, 3) and np.all(lv[-1] == 0) and np.all(lv[0, :, 0] == 1000)
  assert np.all(lv[:, :, 0] <= lv[:, :, 1]) and np.all(lv[:, :, 1] <= lv[:, :, 2])  # earlier = cleaner
  assert np.all(np.diff(lv, axis=0) <= 0)
  given = tasks.task_mask("continue", LAY.names, 3, k=1)
  x0 = _unflat(jnp.zeros((4, 9)))
  out = SM.sample(oracle, LAY, SCHED, lv, x0, given, jax.random.key(0), SM.SamplerConfig(sampler="ddim"))
  assert np.all(np.isfinite(np.asarray(_flat(out))))


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
def test_long_clip_stitching(solver):
  from monl.sample import long
  levels = SM.level_schedule(1000, 20, 2, 3)
  cfg = SM.SamplerConfig(sampler="ddim", solver=solver)
  windows = []

  def window_fn(x0, given, key):
    out = SM.sample(oracle, LAY, SCHED, levels, x0, given, key, cfg)
    windows.append((x0, given, out))
    return out

  x0 = _unflat(jnp.asarray(np.random.default_rng(0).normal(size=(4, 9)), jnp.float32))
  given = tasks.task_mask("continue", LAY.names, 3, k=1)
  out = long.sample_long(window_fn, LAY, x0, given, jax.random.key(0), total_segments=7, overlap=1)
  assert out["video"].shape == (4, 7, 2) and out["audio"].shape == (4, 7, 1)
  assert len(windows) == 3  # 3 + 2 + 2 segments
  # each window's first segment is bit-identical to the previous window's last one (no seam)
  for (_, _, prev), (x0_next, given_next, nxt) in zip(windows, windows[1:]):
    assert given_next[:, 0].all() and not given_next[:, 1:].any()
    np.testing.assert_array_equal(nxt["video"][:, 0], prev["video"][:, 2])
    np.testing.assert_array_equal(nxt["audio"][:, 0], prev["audio"][:, 2])
  # the stitched clip is window 0 followed by the generated parts of windows 1 and 2
  np.testing.assert_array_equal(out["video"][:, :3], windows[0][2]["video"])
  np.testing.assert_array_equal(out["video"][:, 3:5], windows[1][2]["video"][:, 1:])
  np.testing.assert_array_equal(out["video"][:, 0], x0["video"][:, 0])  # the real first segment


def test_long_clip_needs_equal_segments():
  from monl.sample import long
  uneven = L.Layout((L.ModalityLayout("audio", (5, 1), (1,), (1, 2, 2)),))
  with pytest.raises(ValueError, match="modality 'audio' has segments \\(1, 2, 2\\)"):
    long.check_uniform(uneven)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
@pytest.mark.parametrize("task", [t for t in tasks.task_names(LAY.names) if t != "joint"])
def test_self_conditioning_of_the_unconditional_branch_never_sees_the_condition(task, solver):
  """With guidance and self-conditioning, each branch carries its own previous x0 estimate: the cells
  the unconditional branch drops are noise at T in its tokens AND in its self-conditioning input."""
  given = tasks.task_mask(task, LAY.names, LAY.num_segments, k=1)
  b = 3
  x0 = {"video": jnp.full((b, 3, 2), 7.0), "audio": jnp.full((b, 3, 1), 7.0)}  # the condition: 7.0
  seen = []
  record = lambda t, sc: seen.append((np.asarray(t), {m: np.asarray(v) for m, v in sc.items()}))

  def model(tokens, t, self_cond):
    jax.debug.callback(record, t, self_cond)
    return oracle(tokens, t)

  cfg = SM.SamplerConfig(sampler="ddim", guidance=(2.0, 2.0), self_condition=True, solver=solver)
  levels = SM.level_schedule(1000, 5, 2, 3)
  SM.sample(model, LAY, SCHED, levels, x0, jnp.asarray(given), jax.random.key(0), cfg)
  jax.effects_barrier()
  assert len(seen) == 5
  cells = LAY.cell_of_token_by_modality()
  for step, (t, sc) in enumerate(seen):
    assert t.shape[0] == 2 * b and sc["video"].shape[0] == 2 * b
    for mi, m in enumerate(LAY.names):
      dropped = np.asarray(given)[mi][cells[m] - mi * LAY.num_segments]  # [L_m] given (= dropped) tokens
      if not dropped.any():
        continue
      uncond = sc[m][b:][:, dropped]
      assert not np.any(np.isclose(uncond, 7.0, atol=0.5)), (task, step, m, uncond)
      if step > 0:  # the conditional branch does see its clean given cells
        np.testing.assert_allclose(sc[m][:b][:, dropped], 7.0, atol=1e-4)


# ----------------------------------------------------------------------------------------------------
# DPM-Solver++ (multistep, data prediction) against the exact probability-flow ODE of the Gaussian


def _lam(levels):
  ab = SCHED.alpha_bar.astype(np.float64)[levels]
  return 0.5 * np.log(ab) - 0.5 * np.log(1 - ab)


def _step_with(order, levels, poly, x=1.3):
  """Applies `multistep_coefficients` to an x̂0 that is the polynomial `poly` of λ, step by step along a
  single-cell schedule `levels`; returns [(order used, predicted x_s, exact x_s)] per step, each step
  started from the exact value of the one before."""
  lv = np.asarray(levels)[:, None, None]
  c_x, c, _ = SM.multistep_coefficients(SCHED.alpha_bar, lv, order)
  ab = SCHED.alpha_bar.astype(np.float64)
  sig = lambda t: np.sqrt(1 - ab[t])
  out = []
  for i in range(len(levels) - 1):
    t, s = levels[i], levels[i + 1]
    hist = [poly(_lam(levels[i - j])) if i >= j else 0.0 for j in range(order)]
    pred = c_x[i, 0, 0] * x + sum(c[i, j, 0, 0] * hist[j] for j in range(order))
    if s == 0:  # σ_s = 0: the exact solution of the data-prediction ODE is the x̂0 at λ = ∞
      with np.errstate(invalid="ignore"):
        exact = poly(np.inf)
    else:  # x_s = σ_s (x_t/σ_t + ∫ e^λ x̂0(λ) dλ), by Gauss-Legendre (exact for these integrands to ~1e-12)
      nodes, weights = np.polynomial.legendre.leggauss(40)
      la, lb = _lam(t), _lam(s)
      lam_q = 0.5 * (lb - la) * nodes + 0.5 * (lb + la)
      exact = sig(s) * (x / sig(t) + 0.5 * (lb - la) * np.sum(weights * np.exp(lam_q) * poly(lam_q)))
    used = int(np.count_nonzero(c[i, :, 0, 0]))
    out.append((used, pred, exact))
    x = exact
  return out


LEVELS_UNEVEN = [1000, 900, 700, 650, 400, 380, 120, 0]  # uneven steps: ratios r far from 1


@pytest.mark.parametrize("order", [1, 2, 3])
def test_multistep_coefficients_are_exact_for_constant_x0_and_lower_order_final(order):
  steps = _step_with(order, LEVELS_UNEVEN, lambda lam: np.full_like(lam, 0.7, dtype=np.float64))
  for used, pred, exact in steps:
    np.testing.assert_allclose(pred, exact, rtol=1e-6, atol=1e-6)
  used = [u for u, _, _ in steps]
  # first step: no history; the last move (to level 0) first order; 3M: second-to-last at most 2nd order
  want = [min(order, i + 1, len(steps) - i) for i in range(len(steps))]
  assert used == want, (used, want)


def test_3m_is_exact_for_quadratic_x0_and_2m_has_third_order_local_error():
  for deg in range(3):  # 3M integrates e^λ x̂0 exactly for x̂0 polynomial of degree <= 2 in λ
    poly = lambda lam, d=deg: (0.3 + 0.2 * lam) ** d
    for used, pred, exact in _step_with(3, LEVELS_UNEVEN, poly)[:-2]:
      if used == 3:
        np.testing.assert_allclose(pred, exact, rtol=1e-5, atol=1e-6)
  # 2M (Lu et al. 2022, Alg. 2) on a linear x̂0: local error O(h^3): halving h at a fixed ratio
  # r = h_prev / h (about 1 and about 2) divides it by ~8 (a rule that got r wrong would give ~4).
  lin = lambda lam: 0.3 + 0.2 * lam
  for gap in (1, 2):
    errs = []
    for dt in (20, 10, 5):
      levels = [600 + (1 + gap) * dt, 600 + dt, 600, 0]
      used, pred, exact = _step_with(2, levels, lin)[1]
      assert used == 2
      errs.append(abs(pred - exact))
    assert 6 < errs[0] / errs[1] < 10 and 6 < errs[1] / errs[2] < 10, (gap, errs)


def test_multistep_coefficients_per_cell_history_on_a_pyramid():
  lv = SM.level_schedule(1000, 6, 2, 3, pyramid_delay=2)  # segment n waits 2n steps at T, then moves
  c_x, c, moving = SM.multistep_coefficients(SCHED.alpha_bar, lv, 2)
  for n in range(3):
    mv = moving[:, 0, n]
    np.testing.assert_array_equal(mv, lv[:-1, 0, n] > lv[1:, 0, n])
    assert not mv[:2 * n].any() and mv[2 * n: 2 * n + 6].all()
    # a waiting cell is left as it is
    np.testing.assert_array_equal(c_x[~mv, 0, n], 1.0)
    np.testing.assert_array_equal(c[~mv, :, 0, n], 0.0)
    moves = np.flatnonzero(mv)
    assert c[moves[0], 1, 0, n] == 0 and c[moves[-1], 1, 0, n] == 0  # first and last move: first order
    assert np.all(c[moves[1:-1], 1, 0, n] != 0)  # in between: second order
    np.testing.assert_array_equal(c_x[moves[-1], 0, n], 0.0)  # to level 0: x_0 = x̂0
    np.testing.assert_allclose(c[moves[-1], 0, 0, n], 1.0)
  # a step with cells at different levels gives them different step sizes, hence coefficients
  i = 4
  assert moving[i, 0, 0] and moving[i, 0, 1] and c[i, 1, 0, 0] != c[i, 1, 0, 1]


def test_multistep_rejects_rising_levels():
  lv = np.array([1000, 500, 600, 0])[:, None, None]
  with pytest.raises(ValueError, match="never raises a cell's level"):
    SM.multistep_coefficients(SCHED.alpha_bar, lv, 2)


def test_solver_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"solver \(config.sample.solver / --solver\)='dpm2': expected one of"):
    SM.SamplerConfig(solver="dpm2")
  with pytest.raises(ValueError, match="--solver='dpm2': expected one of .*'dpmpp_2m'"):
    SM.check_solver("dpm2", "--solver")
  with pytest.raises(ValueError, match="sampler='ddpm'.*config.sample.sampler"):
    SM.SamplerConfig(solver="dpmpp_2m", sampler="ddpm")
  with pytest.raises(ValueError, match="eta=0.5"):
    SM.SamplerConfig(solver="dpmpp_2m", eta=0.5)
  with pytest.raises(ValueError, match=r"spacing \(config.sample.spacing / --spacing\)='log': expected one of"):
    SM.SamplerConfig(spacing="log")
  assert [SM.resolve_spacing("auto", s) for s in ("ddim", "dpmpp_2m", "dpmpp_3m")] == ["uniform", "logsnr", "logsnr"]
  assert SM.resolve_spacing("karras", "ddim") == "karras"
  with pytest.raises(ValueError, match="config.sample.solver / --solver\\)='heun'"):
    SM.resolve_spacing("auto", "heun")
  with pytest.raises(ValueError, match="spacing='logsnr' needs alpha_bar of the schedule's 1000 \\+ 1 levels"):
    SM.level_schedule(1000, 10, 2, 3, spacing="logsnr")


@pytest.mark.parametrize("spacing", SM.SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 10, 50, 999, 1000])
def test_spaced_levels_run_from_T_to_0_strictly_decreasing(spacing, steps):
  lv = SM.spaced_levels(SCHED.alpha_bar, steps, spacing)
  assert lv.shape == (steps + 1,) and lv[0] == 1000 and lv[-1] == 0
  assert np.all(np.diff(lv) < 0), lv
  if spacing != "uniform" and steps > 1:
    assert lv[-2] == 1  # the last step is from level 1 (σ = 0.01) to 0


def test_spaced_levels_logsnr_is_even_in_lambda_and_karras_denser_at_low_noise():
  ab = np.asarray(SCHED.alpha_bar, np.float64)
  lam = lambda lv: 0.5 * np.log(ab[lv] / (1 - ab[lv]))
  np.testing.assert_array_equal(SM.spaced_levels(ab, 10, "uniform"), SM.uniform_levels(1000, 10))
  steps_in_lambda = np.diff(lam(SM.spaced_levels(ab, 25, "logsnr")[:-1]))
  np.testing.assert_allclose(steps_in_lambda, steps_in_lambda.mean(), rtol=0.1)  # up to integer rounding
  low = lambda sp: int((SM.spaced_levels(ab, 25, sp) < 100).sum())  # levels with σ < 0.32
  assert low("uniform") < low("karras") and low("uniform") < low("logsnr"), (low("uniform"), low("logsnr"))
  with pytest.raises(ValueError, match="steps=0 must be in 1..T=1000"):
    SM.spaced_levels(ab, 0, "logsnr")


def _exact_flow(x_T, given_elems, x_given):
  """The exact probability-flow ODE solution from level T to 0 of the generated elements of every
  sample x_T [B, 9]. Their conditional law is N(μ, C); in C's eigenbasis the flow is a per-direction
  rescaling: x_0 = μ + Q diag(sqrt(c / (ᾱ_T c + 1 - ᾱ_T))) Qᵀ (x_T - sqrt(ᾱ_T) μ)."""
  if given_elems.any():
    u, mu, cov = _conditional(given_elems, x_given)
  else:
    u, mu, cov = np.arange(9), np.zeros(9), SIGMA
  ab = float(SCHED.alpha_bar[-1])
  w, q = np.linalg.eigh(cov)
  flow = q @ np.diag(np.sqrt(w / (ab * w + 1 - ab))) @ q.T
  return u, mu + (x_T[:, u] - np.sqrt(ab) * mu) @ flow.T


def _ode_run(task, steps, solver, n=64, guidance=None, self_condition=False, pyramid_delay=0, seed=0,
             spacing="uniform"):
  """(samples [n, 9], x_T [n, 9] (the sampler's initial noise), given elements, x0) of one deterministic run."""
  given = tasks.task_mask(task, LAY.names, 3, k=1)
  x_true = np.random.default_rng(7).multivariate_normal(np.zeros(9), SIGMA)
  x0 = _unflat(jnp.broadcast_to(jnp.asarray(x_true, jnp.float32), (n, 9)))
  levels = SM.level_schedule(1000, steps, 2, 3, pyramid_delay=pyramid_delay, spacing=spacing,
                             alpha_bar=SCHED.alpha_bar)
  cfg = SM.SamplerConfig(sampler="ddim", eta=0.0, solver=solver, guidance=guidance,
                         self_condition=self_condition, spacing=spacing)
  first = []

  def model(tokens, t, self_cond):
    assert (self_cond is not None) == self_condition
    if self_condition:  # one self-conditioning state per guidance branch
      assert self_cond["video"].shape[0] == t.shape[0]
    jax.debug.callback(lambda x: first.append(np.asarray(x)) if not first else None, _flat(tokens)[:n])
    return oracle(tokens, t)

  out = jax.jit(lambda x0, key: SM.sample(model, LAY, SCHED, levels, x0, given, key, cfg))(x0, jax.random.key(seed))
  jax.effects_barrier()
  return np.asarray(_flat(out), np.float64), first[0].astype(np.float64), given.reshape(-1)[CELL_OF_ELEMENT], x0


def _ode_error(task, steps, solver, **kw):
  samples, x_T, given_elems, x0 = _ode_run(task, steps, solver, **kw)
  # given cells come back bit-identical to the condition
  np.testing.assert_array_equal(samples[:, given_elems], np.asarray(_flat(x0), np.float64)[:, given_elems])
  u, exact = _exact_flow(x_T, given_elems, np.asarray(_flat(x0), np.float64)[0, given_elems])
  return float(np.abs(samples[:, u] - exact).max())


@pytest.mark.parametrize("task", ["joint", "a2v", "continue"])
def test_dpmpp_is_closer_than_ddim_to_the_exact_ode_solution(task):
  """Max abs error vs the exact ODE solution from the same x_T, 64 samples. Measured (joint / a2v /
  continue): DDIM 0.53 / 0.51 / 0.51 at 10 steps, 0.22 / 0.22 / 0.21 at 25; DPM-Solver++(2M) 0.20 /
  0.22 / 0.19 and 0.034 / 0.028 / 0.021; 3M 0.18 / 0.20 / 0.18 and 0.024 / 0.020 / 0.017. At 10 steps
  all solvers share the first-order last step from level 100 to 0 (up to 24% off along the least
  likely direction of the data), which bounds what any order can do there (log-SNR spacing: below)."""
  for steps, factor in ((10, 2.0), (25, 4.0)):
    ddim = _ode_error(task, steps, "ddim")
    for solver in ("dpmpp_2m", "dpmpp_3m"):
      err = _ode_error(task, steps, solver)
      assert err * factor < ddim, (task, steps, solver, err, ddim)


@pytest.mark.parametrize("task", ["joint", "continue"])
def test_logsnr_spacing_takes_dpmpp_2m_closer_to_the_exact_ode_solution_at_10_steps(task):
  """Uniform levels end with a first-order step from level 100 (σ = 0.32) to 0; logsnr's last step is from
  level 1. Measured, joint / continue: 2M 0.198 / 0.185 (uniform) vs 0.117 / 0.105 (logsnr)."""
  uniform = _ode_error(task, 10, "dpmpp_2m")
  logsnr = _ode_error(task, 10, "dpmpp_2m", spacing="logsnr")
  assert logsnr < 0.7 * uniform, (logsnr, uniform)


def test_dpmpp_converges_to_the_exact_ode_solution():
  # measured at 250 steps: 2M 4.4e-4, 3M 1.0e-3 (3M's pre-final error no longer cancels the first-order
  # last step's 2e-4 from level 1 to 0), DDIM 0.022
  assert _ode_error("continue", 250, "dpmpp_2m") < 2e-3
  assert _ode_error("continue", 250, "dpmpp_3m") < 3e-3


@pytest.mark.parametrize("task,guidance", [("a2v", (1.0, 1.0)), ("continue", (2.0, 0.5))])
def test_dpmpp_with_guidance_and_self_conditioning_beats_ddim(task, guidance):
  """Guided ODE (no closed form): the reference is 2M at 1000 steps from the same x_T (the dropped
  cells' fresh noise at level T moves it by ~4e-4). Measured, a2v: DDIM 0.51 / 0.21, 2M 0.24 / 0.036 at
  10 / 25 steps."""
  ref, x_T_ref, given_elems, _ = _ode_run(task, 1000, "dpmpp_2m", guidance=guidance)
  u = ~given_elems
  for steps, factor in ((10, 1.5), (25, 4.0)):
    errs = {}
    for solver in ("ddim", "dpmpp_2m"):
      samples, x_T, _, x0 = _ode_run(task, steps, solver, guidance=guidance, self_condition=True)
      np.testing.assert_array_equal(x_T, x_T_ref)
      np.testing.assert_array_equal(samples[:, given_elems], np.asarray(_flat(x0), np.float64)[:, given_elems])
      errs[solver] = np.abs(samples[:, u] - ref[:, u]).max()
    assert errs["dpmpp_2m"] * factor < errs["ddim"], (steps, errs)


@pytest.mark.parametrize("task", ["joint", "continue"])
def test_dpmpp_on_a_pyramid_schedule_beats_ddim(task):
  """Cells at different levels in one step: segment n starts d * n steps late. The path through level
  space is the same for (steps, d) = (10, 2), (25, 5), (500, 100); the reference is 2M on the last.
  Measured, joint: DDIM 0.60 / 0.25, 2M 0.23 / 0.019."""
  ref, *_ = _ode_run(task, 500, "dpmpp_2m", pyramid_delay=100)
  for steps, delay, factor in ((10, 2, 2.0), (25, 5, 4.0)):
    errs = {}
    for solver in ("ddim", "dpmpp_2m"):
      samples, _, given_elems, x0 = _ode_run(task, steps, solver, pyramid_delay=delay)
      np.testing.assert_array_equal(samples[:, given_elems], np.asarray(_flat(x0), np.float64)[:, given_elems])
      errs[solver] = np.abs(samples[:, ~given_elems] - ref[:, ~given_elems]).max()
    assert errs["dpmpp_2m"] * factor < errs["ddim"], (steps, errs)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_dpmpp_is_the_same_for_every_prediction_parameterisation(prediction):
  """A v- or x0-predicting network, converted to eps by `schedule.output_to_eps` as the trained models
  are (`Objective.eps`), drives the solver to the same samples as the eps oracle."""
  cells = LAY.cell_of_token_by_modality()

  def as_prediction(tokens, t, self_cond=None):  # the oracle re-expressed as the network's output
    eps = oracle(tokens, t)
    out = {}
    for m in LAY.names:
      ab = S.per_element(SCHED.alpha_bar_of(t), cells[m], 3)
      x0 = S.eps_to_x0(tokens[m], eps[m], ab)
      out[m] = x0 if prediction == "x0" else S.eps_to_v(x0, eps[m], ab)
    return {m: S.output_to_eps(SCHED, prediction, tokens[m], out[m], t, cells[m]) for m in LAY.names}

  given = tasks.task_mask("a2v", LAY.names, 3, k=1)
  x0 = _unflat(jnp.asarray(np.random.default_rng(1).normal(size=(8, 9)), jnp.float32))
  levels = SM.level_schedule(1000, 10, 2, 3)
  cfg = SM.SamplerConfig(solver="dpmpp_2m")
  want = SM.sample(oracle, LAY, SCHED, levels, x0, given, jax.random.key(0), cfg)
  got = SM.sample(as_prediction, LAY, SCHED, levels, x0, given, jax.random.key(0), cfg)
  for m in LAY.names:
    np.testing.assert_allclose(got[m], want[m], atol=2e-3)

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monl import schedule as S


def test_tables():
  lin = S.Schedule.from_betas(S.linear_betas(1000))
  assert lin.num_steps == 1000 and lin.alpha_bar[0] == 1.0
  np.testing.assert_allclose(lin.alpha_bar[1], 1 - 1e-4, rtol=1e-6)
  assert np.all(np.diff(lin.alpha_bar) < 0)
  assert lin.alpha_bar[-1] < 1e-4  # the last level is (almost) pure noise
  cos = S.Schedule.from_betas(S.cosine_betas(1000))
  assert cos.alpha_bar[0] == 1.0 and np.all(np.diff(cos.alpha_bar) < 0) and cos.alpha_bar[-1] < 1e-6


def test_add_noise_per_cell_moments_and_clean_cells():
  """Every cell gets exactly its own level's mean and variance; t = 0 cells come back untouched."""
  sched = S.Schedule.from_betas(S.linear_betas(1000))
  b, k = 20000, 6
  cell_index = np.array([0, 0, 1, 2, 3, 3])  # 2 modalities x 2 segments
  t = jnp.broadcast_to(jnp.array([[0, 10], [500, 1000]]), (b, 2, 2))
  z0 = jnp.broadcast_to(jnp.array([1.0, -2.0, 3.0, 0.5, 2.0, -1.0])[None, :, None], (b, k, 3))
  eps = jax.random.normal(jax.random.key(0), z0.shape)
  z = np.asarray(S.add_noise(sched, z0, eps, t, cell_index))
  ab = sched.alpha_bar[np.array([0, 0, 10, 500, 1000, 1000])]
  mean = np.sqrt(ab) * np.asarray(z0[0, :, 0])
  std = np.sqrt(1 - ab)
  np.testing.assert_array_equal(z[:, :2], np.asarray(z0[:, :2]))  # clean cell, bit-identical
  for j in range(2, k):
    se = std[j] / np.sqrt(z.shape[0] * 3)
    assert abs(z[:, j].mean() - mean[j]) < 5 * se + 1e-6, j
    np.testing.assert_allclose(z[:, j].std(), std[j], rtol=0.02)


def test_conversions_round_trip():
  ab = jnp.array([0.9, 0.5, 0.01])[:, None]
  x0 = jnp.array([[0.3, -1.0]] * 3)
  eps = jnp.array([[1.5, 0.2]] * 3)
  x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
  np.testing.assert_allclose(S.eps_to_x0(x_t, eps, ab), x0, atol=1e-5)
  np.testing.assert_allclose(S.x0_to_eps(x_t, x0, ab), eps, atol=1e-4)
  v = S.eps_to_v(x0, eps, ab)
  np.testing.assert_allclose(S.v_to_eps(x_t, v, ab), eps, atol=1e-5)
  np.testing.assert_allclose(S.v_to_x0(x_t, v, ab), x0, atol=1e-5)


def test_ddim_eta_one_is_ddpm_posterior():
  key = jax.random.key(1)
  x_t, eps, noise = jax.random.normal(key, (3, 4, 5))
  ab_t = jnp.array([0.2, 0.5, 0.7, 0.3])[:, None]
  ab_s = jnp.array([0.4, 0.6, 0.7, 0.9])[:, None]  # third row: level unchanged
  a = S.ddim_step(x_t, eps, ab_t, ab_s, 1.0, noise)
  b = S.ddpm_step(x_t, eps, ab_t, ab_s, noise)
  np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_array_equal(a[2], x_t[2])


def test_ddim_deterministic_step_to_clean_returns_x0():
  x0 = jnp.array([[0.5, -0.25]])
  eps = jnp.array([[0.1, 0.9]])
  ab_t = jnp.full((1, 1), 0.3)
  x_t = jnp.sqrt(ab_t) * x0 + jnp.sqrt(1 - ab_t) * eps
  np.testing.assert_allclose(S.ddim_step(x_t, eps, ab_t, jnp.ones((1, 1)), 0.0, jnp.zeros_like(x0)), x0,
                             atol=1e-6)


def test_bad_kind():
  import ml_collections
  with pytest.raises(ValueError, match="config.schedule.kind='sqrt'"):
    S.Schedule.from_config(ml_collections.ConfigDict(dict(kind="sqrt", num_steps=10)))


@pytest.mark.parametrize("prediction", S.PREDICTIONS)
def test_prediction_target_and_output_to_eps_are_inverse_per_cell(prediction):
  """A network that outputs its exact target yields the true noise, each cell at its own level."""
  sched = S.Schedule.from_betas(S.linear_betas(1000))
  cell_index = np.array([0, 0, 1, 2, 3, 3])
  t = jnp.array([[[1, 10], [500, 1000]], [[999, 3], [250, 750]]])  # [B=2, M=2, N=2]
  z0 = jax.random.normal(jax.random.key(1), (2, 6, 4))
  eps = jax.random.normal(jax.random.key(2), (2, 6, 4))
  z_t = S.add_noise(sched, z0, eps, t, cell_index)
  target = S.prediction_target(sched, prediction, z0, eps, t, cell_index)
  np.testing.assert_allclose(S.output_to_eps(sched, prediction, z_t, target, t, cell_index), eps, atol=2e-5)
  if prediction == "v":  # v differs from eps by a per-cell ᾱ mix with x0, not a constant
    ab = np.asarray(sched.alpha_bar)[np.asarray(t).reshape(2, 4)][:, cell_index][..., None]
    np.testing.assert_allclose(target, np.sqrt(ab) * eps - np.sqrt(1 - ab) * z0, atol=1e-5)


def test_unknown_prediction_names_the_field():
  with pytest.raises(ValueError, match="config.model.prediction='sample'"):
    S.check_prediction("sample")


def test_x0_prediction_of_a_clean_cell_implies_the_clean_input():
  """At ᾱ = 1 the noise is undefined: x0 output -> eps 0, so eps_to_x0 gives the clean input back."""
  sched = S.Schedule.from_betas(S.linear_betas(1000))
  t = jnp.array([[[0, 500]]])  # [B=1, M=1, N=2]
  cell_index = np.array([0, 0, 1])
  z = jax.random.normal(jax.random.key(0), (1, 3, 2))
  out = jax.random.normal(jax.random.key(1), (1, 3, 2))  # whatever the network says for the clean cell
  eps = S.output_to_eps(sched, "x0", z, out, t, cell_index)
  np.testing.assert_array_equal(eps[:, :2], 0.0)
  ab = S.per_element(sched.alpha_bar_of(t), cell_index, 3)
  np.testing.assert_allclose(S.eps_to_x0(z, eps, ab)[:, :2], z[:, :2])
  np.testing.assert_allclose(S.eps_to_x0(z, eps, ab)[:, 2:], out[:, 2:], atol=1e-5)


def test_x0_loss_weight_is_the_v_weight_capped():
  sched = S.Schedule.from_betas(S.linear_betas(1000))
  t = jnp.array([1, 200, 500, 1000])
  ab = np.asarray(sched.alpha_bar)[np.asarray(t)]
  w = np.asarray(S.x0_loss_weight(sched, t, 5.0))
  np.testing.assert_allclose(w, np.minimum(1 / (1 - ab), 5.0), rtol=1e-5)
  assert w[0] == 5.0 and 1.0 < w[-1] < 1.001  # capped near clean, x0 error itself at pure noise


def test_x0_skip_interpolates_between_x0_and_v_prediction():
  """σ_d = 0 is plain x0, σ_d = 1 is v-prediction with F = -v; any σ_d passes a clean cell through."""
  sched = S.Schedule.from_betas(S.linear_betas(1000))
  t = jnp.array([[[0, 10], [500, 1000]]])  # [B=1, M=2, N=2]
  cell_index = np.array([0, 1, 1, 2, 3])
  z = jax.random.normal(jax.random.key(0), (1, 5, 3))
  out = jax.random.normal(jax.random.key(1), (1, 5, 3))
  ab = S.per_element(sched.alpha_bar_of(t), cell_index, 3)
  np.testing.assert_array_equal(S.output_to_x0(sched, z, out, t, cell_index, 0.0), out)
  np.testing.assert_allclose(S.output_to_x0(sched, z, out, t, cell_index, 1.0), S.v_to_x0(z, -out, ab), atol=1e-5)
  x0 = S.output_to_x0(sched, z, out, t, cell_index, 0.3)
  np.testing.assert_allclose(x0[:, :1], z[:, :1])  # clean cell: x̂0 = z whatever F is
  c_skip, c_out = S.x0_skip_coefficients(ab, 0.3)
  # the skip fades with the noise: nearly all input at t = 10, none of it at t = T
  assert float(c_skip[0, 1, 0]) > 0.9 and float(c_skip[0, 4, 0]) < 0.01
  np.testing.assert_allclose(x0, c_skip * z + c_out * out, atol=1e-6)
  # the sampler's noise is consistent with the x0 estimate
  eps = S.output_to_eps(sched, "x0", z, out, t, cell_index, 0.3)
  np.testing.assert_allclose(S.eps_to_x0(z, eps, ab)[:, 1:], x0[:, 1:], atol=1e-4)

import jax
import numpy as np
import pytest

from monl import mixture


def _draw(weights, n=4000, m=2, segs=5, clean_prob=0.0, seed=0):
  t, s = jax.jit(lambda k: mixture.sample_levels(k, n, m, segs, num_steps=1000, weights=weights,
                                                 clean_prob=clean_prob))(jax.random.key(seed))
  return np.asarray(t), np.asarray(s)


def test_each_strategy_has_its_structure():
  t, s = _draw((1, 1, 1, 1))
  assert t.min() >= 1 and t.max() <= 1000
  for idx, name in enumerate(mixture.STRATEGIES):
    x = t[s == idx]
    const_seg = np.all(x == x[:, :, :1], axis=(1, 2))  # constant along segments
    const_mod = np.all(x == x[:, :1, :], axis=(1, 2))  # constant across modalities
    if name == "vanilla":
      assert const_seg.all() and const_mod.all()
    elif name == "per_modality":
      assert const_seg.all() and not const_mod.all()
    elif name == "per_segment":
      assert const_mod.all() and not const_seg.all()
    else:
      assert not const_mod.any() and not const_seg.any()  # ties are rare at T = 1000


def test_levels_uniform():
  t, _ = _draw((0, 0, 0, 1), n=2000)
  hist = np.histogram(t, bins=10, range=(0.5, 1000.5))[0]
  np.testing.assert_allclose(hist / hist.sum(), 0.1, atol=0.01)


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (1, 0, 0, 0), (0, 2, 1, 1), (3, 1, 0, 0)])
def test_mixture_frequencies_match_weights(weights):
  n = 20000
  _, s = _draw(weights, n=n)
  p = np.asarray(weights, float) / sum(weights)
  counts = np.bincount(s, minlength=4)
  # each count is binomial(n, p): within 5 standard deviations (a false alarm has probability < 1e-6)
  sd = np.sqrt(n * p * (1 - p))
  assert np.all(np.abs(counts - n * p) <= 5 * sd + 1e-9), (counts, n * p)


def test_clean_prob():
  t, _ = _draw((1, 1, 1, 1), clean_prob=0.25, n=4000)
  frac = (t == 0).mean()
  assert abs(frac - 0.25) < 0.01
  t0, _ = _draw((1, 1, 1, 1), clean_prob=0.0)
  assert (t0 == 0).sum() == 0


def test_bad_weights():
  with pytest.raises(ValueError, match="config.mixture.weights"):
    mixture.validate_weights((0, 0, 0, 0))
  with pytest.raises(ValueError, match="config.mixture.weights"):
    mixture.validate_weights((1, 1))


def test_conditional_levels_clean_on_given_cells_one_level_elsewhere():
  given = np.array([[True, True, False, False], [False, False, False, True]])
  t, s = jax.jit(lambda k: mixture.conditional_levels(k, 3000, given, 1000))(jax.random.key(0))
  t, s = np.asarray(t), np.asarray(s)
  assert t.shape == (3000, 2, 4) and t.dtype == np.int32 and (s == 0).all()
  assert (t[:, given] == 0).all()  # exactly the given cells are clean ...
  rest = t[:, ~given]
  assert (rest >= 1).all() and (rest <= 1000).all()  # ... and none of the others
  assert (rest == rest[:, :1]).all()  # one shared level per example
  hist = np.histogram(rest[:, 0], bins=10, range=(0.5, 1000.5))[0]  # uniform on 1..T across examples
  np.testing.assert_allclose(hist / hist.sum(), 0.1, atol=0.02)


def test_condition_mask_resolves_tasks_and_names_the_field():
  names = ("video", "audio")
  assert mixture.condition_mask("", names, 4) is None
  assert mixture.condition_mask("a2v", names, 4) == ((False,) * 4, (True,) * 4)
  assert mixture.condition_mask("continue", names, 4, k=1) == ((True, False, False, False),) * 2
  assert mixture.condition_mask("video:1-2,audio:4", names, 4) == ((True, True, False, False),
                                                                   (False, False, False, True))
  with pytest.raises(ValueError, match="config.mixture.condition_mask='nope'"):
    mixture.condition_mask("nope", names, 4)
  with pytest.raises(ValueError, match="every cell is given"):
    mixture.condition_mask("video:all,audio:all", names, 4)


def test_objective_with_condition_mask_trains_only_the_generated_cells():
  from conftest import tiny_config
  from monl.train import loop
  from monl.train import step as step_lib
  c = tiny_config("", **{"mixture.condition_mask": "a2v"})
  model = loop.build_model(c)
  obj = step_lib.Objective.from_config(c, model)
  assert obj.condition_given == ((False,) * 4, (True,) * 4)
  batch = {m.name: jax.random.normal(jax.random.key(1), (4, *m.shape)) for m in model.layout.modalities}
  params = model.init(jax.random.key(0), model.layout.patchify(batch),
                      jax.numpy.ones((1, 2, 4), jax.numpy.int32))
  _, metrics = step_lib.loss_and_metrics(params, obj, batch, jax.random.key(2))
  video, audio = np.asarray(metrics["modality_count"])  # elements of noisy (trained) cells
  assert video > 0 and audio == 0  # the given audio is clean (t = 0) and excluded from the loss

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

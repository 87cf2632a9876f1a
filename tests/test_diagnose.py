"""monl.diagnose measures what it claims: cross-modal use is ~1 for a model that copies the clean partner
and ~0 for one that ignores it; the x0-error ratio is 1 for the per-element Gaussian denoiser."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from monl import diagnose
from monl import layout as L
from monl import schedule as S
from monl.train import step as step_lib

# video tokens [B, 16, 4] and audio tokens [B, 16, 4] with the same cells: audio can be a copy of video
LAY = L.Layout((L.ModalityLayout("video", (4, 4, 4, 1), (1, 2, 2), (2, 2)),
                L.ModalityLayout("audio", (16, 4), (1,), (8, 8))))
SCHED = S.Schedule.from_betas(S.linear_betas(1000))


@dataclasses.dataclass(frozen=True)
class _Cfg:
  self_condition: bool = False


@dataclasses.dataclass(frozen=True)
class FakeModel:
  """Predicts eps from an x0 estimate: the clean partner's tokens where the partner is clean and
  `copy` is set, else the per-element Gaussian denoiser sqrt(ᾱ) z."""
  copy: bool
  layout: L.Layout = LAY
  cfg: _Cfg = _Cfg()

  def apply(self, params, z_t, t, self_cond=None):
    cells = LAY.cell_of_token_by_modality()
    ab = {m: S.per_element(SCHED.alpha_bar_of(t), cells[m], 3) for m in z_t}
    out = {}
    for m, other in (("video", "audio"), ("audio", "video")):
      x0 = jnp.sqrt(ab[m]) * z_t[m]
      if self.copy:
        x0 = jnp.where(ab[other] == 1.0, z_t[other], x0)
      out[m] = S.x0_to_eps(z_t[m], x0, ab[m])
    return out


def _objective(copy):
  return step_lib.Objective(model=FakeModel(copy), layout=LAY, schedule=SCHED, mixture_weights=(1., 1., 1., 1.),
                            clean_prob=0.0, self_cond_rate=0.0, num_level_buckets=4, prediction="eps")


def test_cross_modal_use_tells_a_copying_model_from_an_ignoring_one():
  x = jax.random.normal(jax.random.key(0), (32, 16, 4))
  tokens = {"video": x, "audio": x}
  levels = (300, 700)
  copying = diagnose.summarize(diagnose.measure(_objective(True), None, tokens, jax.random.key(1), levels))
  ignoring = diagnose.summarize(diagnose.measure(_objective(False), None, tokens, jax.random.key(1), levels))
  assert copying["cross_use_video"] > 0.99 and copying["cross_use_audio"] > 0.99
  assert copying["cross_swap_video"] > 1.5  # another clip's partner is copied too, and is wrong
  for k in ("cross_use_video", "cross_use_audio"):
    assert abs(ignoring[k]) < 0.02
  assert abs(ignoring["cross_swap_video"] - 1.0) < 0.02
  # the Gaussian denoiser is the ratio's reference: 1 at every level (up to sampling noise)
  np.testing.assert_allclose(ignoring["joint_ratio_video"], 1.0, atol=0.05)

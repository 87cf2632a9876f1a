"""End-to-end training on the built-in data: one step, learning, and exact resume from the workdir."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from monl.data import format as data_format
from monl import layout as layout_lib
from monl.train import loop


def _params(state):
  return jax.tree.leaves(jax.device_get(state.params))


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_train_lowers_loss_and_writes_outputs(builtin_dataset, tmp_path, prediction):
  # eps from whole-frame tokens cannot get far below 1 (a 32-wide token cannot say what noise each of
  # its 1,536 pixels carries, docs/diagnosis.md): eps is checked with 4x4-pixel patches
  patch = (2, 4, 4) if prediction == "eps" else (2, 0, 0)
  config = tiny_config(builtin_dataset, **{"train.num_steps": 60, "train.lr": 3e-3, "train.log_every": 10,
                                           "ckpt.every": 60, "model.prediction": prediction,
                                           "layout.video.patch": patch})
  state = loop.train(config, str(tmp_path))
  assert int(state.step) == 60
  assert (tmp_path / "checkpoints" / "60").exists()
  assert list((tmp_path / "tb").iterdir())
  import json
  final = json.loads((tmp_path / "train_metrics.json").read_text())
  # the first logged windows sit near 1.0 (unit-variance eps or v target, zero-initialised output); the
  # v loss falls more slowly (its high-noise targets are mostly x0, which noise hides) -> 0.86 here; the
  # x0 loss starts at the mean weight E[min(1 + SNR, 5)] ≈ 1.8 (zero output, unit-variance x0) -> 1.15
  assert final["loss"] < {"eps": 0.8, "v": 0.9, "x0": 1.3}[prediction], final
  assert {"loss_video", "loss_audio", "grad_norm"} <= set(final)
  assert any(k.startswith("loss_t") for k in final)


def test_resume_is_exact(builtin_dataset, tmp_path):
  """20 steps straight == 10 steps, a new process-like restart from the workdir, then 10 more."""
  straight = loop.train(tiny_config(builtin_dataset), str(tmp_path / "a"))
  loop.train(tiny_config(builtin_dataset), str(tmp_path / "b"), stop_at=10)
  resumed = loop.train(tiny_config(builtin_dataset), str(tmp_path / "b"))
  assert int(resumed.step) == 20
  for x, y in zip(_params(straight), _params(resumed)):
    np.testing.assert_array_equal(x, y)


def test_config_dataset_mismatch_names_both_shapes(builtin_dataset, tmp_path):
  config = tiny_config(builtin_dataset, **{"layout.audio.shape": (64, 8)})
  with pytest.raises(layout_lib.LayoutError,
                     match=r"config.layout.audio.shape is \[64, 8\], but modality 'audio' of .*dataset.json has shape \[64, 16\]"):
    loop.train(config, str(tmp_path))


def test_relative_workdir_checkpoints_complete(builtin_dataset, tmp_path, monkeypatch):
  """Orbax needs absolute paths: a relative --workdir must still produce complete, restorable saves."""
  monkeypatch.chdir(tmp_path)
  config = tiny_config(builtin_dataset, **{"train.num_steps": 4, "ckpt.every": 2, "ckpt.async_save": True})
  loop.train(config, "rel/run")
  steps = sorted(p.name for p in (tmp_path / "rel" / "run" / "checkpoints").iterdir())
  assert steps == ["2", "4"], steps  # no *.orbax-checkpoint-tmp left behind
  assert int(loop.train(config, "rel/run").step) == 4  # resumes from the relative path


@pytest.mark.parametrize("skip", [0.0, 0.3])
def test_x0_loss_is_weighted_per_cell_by_the_capped_v_weight(builtin_dataset, skip):
  """The x0 objective equals the hand-computed weighted squared error of the x0 estimate (with the
  skip parameterisation, c_skip z_t + c_out F); a wrong weighting or a missing skip fails."""
  import jax.numpy as jnp
  from monl import mixture
  from monl import schedule as S
  from monl.train import step as step_lib
  # width 64: the whole-frame video tokens (1536 values) are larger, the audio tokens (64) are not
  config = tiny_config(builtin_dataset, **{"model.prediction": "x0", "model.x0_loss_cap": 3.0,
                                           "model.x0_skip": skip, "model.width": 64})
  model = loop.build_model(config)
  obj = step_lib.Objective.from_config(config, model)
  lay = model.layout
  skips = dict(obj.x0_skip)
  # the skip only goes to modalities whose token is larger than the width (here the video)
  assert skips == {m.name: skip if m.patch_dim > model.cfg.width else 0.0 for m in lay.modalities}
  assert skip == 0 or 0 < sum(v > 0 for v in skips.values()) < len(skips), (skips, model.cfg.width)
  params = step_lib.unbox(step_lib.init_state(jax.random.key(0), obj, step_lib.make_optimizer(config.train))).params
  rng = np.random.default_rng(0)
  batch = {m.name: jnp.asarray(rng.normal(size=(4,) + m.shape), jnp.float32) for m in lay.modalities}
  key = jax.random.key(3)
  loss, _ = step_lib.loss_and_metrics(params, obj, batch, key)
  # redo it by hand: the zero-initialised head outputs F = 0, so x̂0 = c_skip z_t (0 without the skip)
  k_t, k_eps, _, _ = jax.random.split(key, 4)
  t, _ = mixture.sample_levels(k_t, 4, lay.num_modalities, lay.num_segments, num_steps=1000,
                               weights=obj.mixture_weights)
  tokens = lay.patchify(batch)
  eps_keys = jax.random.split(k_eps, lay.num_modalities)
  w = np.asarray(S.x0_loss_weight(obj.schedule, t, 3.0)).reshape(4, -1)
  num = den = 0.0
  for k, (name, cells) in zip(eps_keys, lay.cell_of_token_by_modality().items()):
    z_t = S.add_noise(obj.schedule, tokens[name], jax.random.normal(k, tokens[name].shape), t, cells)
    c_skip, _ = S.x0_skip_coefficients(S.per_element(obj.schedule.alpha_bar_of(t), cells, 3), skips[name])
    sq = np.asarray(jnp.sum(jnp.square(c_skip * z_t - tokens[name]), -1))  # [B, L_m]
    num += (sq * w[:, cells]).sum()
    den += tokens[name].size  # every cell is noisy (t >= 1): all elements count
  np.testing.assert_allclose(float(loss), num / den, rtol=1e-5)


def test_a_non_finite_step_leaves_the_state_unchanged_but_counts_the_step(builtin_dataset):
  """train_step's guard: a NaN in the batch makes the loss non-finite; params, EMA and Adam moments stay
  as they were, the step advances and `finite` is 0. A clean batch does update the state."""
  import functools
  import jax.numpy as jnp
  from monl.train import step as step_lib
  config = tiny_config(builtin_dataset)
  model = loop.build_model(config)
  obj = step_lib.Objective.from_config(config, model)
  tx = step_lib.make_optimizer(config.train)
  state = step_lib.unbox(step_lib.init_state(jax.random.key(0), obj, tx))
  step = jax.jit(functools.partial(step_lib.train_step, obj=obj, tx=tx, ema=0.9))
  rng = np.random.default_rng(0)
  batch = {m.name: jnp.asarray(rng.normal(size=(2,) + m.shape), jnp.float32) for m in model.layout.modalities}
  leaves = lambda s: jax.tree.leaves(jax.device_get((s.params, s.ema_params, s.opt_state)))
  before = leaves(state)

  name = model.layout.names[0]
  bad, metrics = step(state, dict(batch, **{name: batch[name].at[0, 0].set(jnp.nan)}), jax.random.key(1))
  assert int(bad.step) == 1 and float(metrics["finite"]) == 0.0
  for x, y in zip(before, leaves(bad)):
    np.testing.assert_array_equal(x, y)

  good, metrics = step(state, batch, jax.random.key(1))
  assert int(good.step) == 1 and float(metrics["finite"]) == 1.0
  # the warm-up's learning rate is 0 at step 0, so of the state only the Adam moments move here
  moments = lambda s: jax.tree.leaves(jax.device_get(s.opt_state))
  assert any(not np.array_equal(x, y) for x, y in zip(moments(state), moments(good)))

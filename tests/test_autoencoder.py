"""monl.autoencoder: the causal shape rule, causality, the paper config's shapes, SSIM/PSNR/LSD against
known values, the built-in media data, and train_autoencoder (a few steps, exact resume, eval.json)."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from monl.autoencoder import metrics
from monl.autoencoder import model as model_lib


def small_cfg(patch=2, channels=(8, 8, 8), temporal=4, shortcuts=True):
  return model_lib.AutoencoderConfig(
      video=model_lib.VideoConfig(channels=channels, patch=patch, num_res_blocks=1, latent_channels=4,
                                  temporal_downsample=temporal, shortcuts=shortcuts, logvar_offset=-6.0),
      audio=model_lib.AudioConfig(channels=(4, 4, 4, 8), latent_channels=4, dilations=(1,)))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("patch,channels,down", [(1, (8, 8, 8), 4), (2, (8, 8, 8), 8), (1, (8, 8, 8, 8), 8),
                                                 (2, (8, 8, 8, 8), 16)])
def test_shape_rule_1_plus_4k_frames_to_1_plus_k(k, patch, channels, down):
  cfg = small_cfg(patch, channels)
  assert cfg.video.spatial_downsample == down
  m = model_lib.AVAutoencoder(cfg)
  frames, size, samples = 1 + 4 * k, 32, 640 * (1 + 4 * k)
  params = jax.eval_shape(lambda key: model_lib.init_params(m, key, frames, size, samples), jax.random.key(0))
  v = jax.ShapeDtypeStruct((2, frames, size, size, 3), jnp.float32)
  a = jax.ShapeDtypeStruct((2, samples), jnp.float32)
  z = jax.eval_shape(lambda p, v, a: m.apply(p, v, a, method=m.encode), params, v, a)
  assert z["video"].shape == (2, 1 + k, size // down, size // down, 4)
  assert z["audio"].shape == (2, samples // 320, 4)
  assert cfg.video.latent_shape(frames, size) == z["video"].shape[1:]
  out = jax.eval_shape(lambda p, z: m.apply(p, z, method=m.decode), params, z)
  assert out["video"].shape == (2, frames, size, size, 3) and out["audio"].shape == (2, samples)


def test_shape_rule_refuses_other_frame_counts():
  with pytest.raises(ValueError, match="1 \\+ 4k frames"):
    small_cfg().video.latent_shape(16, 32)


@pytest.mark.parametrize("shortcuts", [True, False])
def test_causality_a_frame_changes_no_earlier_latent_frame(shortcuts):
  cfg = small_cfg(patch=2, channels=(8, 8, 8), shortcuts=shortcuts)
  m = model_lib.AVAutoencoder(cfg)
  def init(key):  # jitted: op-by-op init of ~100 convs costs a minute on a busy CPU
    # the encoder's variables only (all that encode reads): compiling the decoder's init too took 3x as long
    video, audio = jnp.zeros((1, 9, 16, 16, 3)), jnp.zeros((1, 640 * 9))
    params = nn.meta.unbox(m.init(key, video, audio, method=m.encode))
    # zero-initialised residual convs would hide a leak: perturb every parameter
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  params = jax.jit(init)(jax.random.key(0))
  rng = np.random.default_rng(0)
  video = rng.uniform(size=(1, 13, 16, 16, 3)).astype(np.float32)  # 1 + 4*3 frames -> 4 latent frames
  audio = np.zeros((1, 640 * 13), np.float32)
  # params as an argument: closed over, XLA would constant-fold every conv at compile time (minutes)
  enc_p = jax.jit(lambda p, v: m.apply(p, v, audio, method=m.encode)["video"])
  enc = lambda v: enc_p(params, v)
  base = np.asarray(enc(video))
  for j in range(13):
    changed = video.copy()
    changed[0, j] = rng.uniform(size=(16, 16, 3))
    z = np.asarray(enc(changed))
    first = -(-j // 4)  # the latent frame that covers frame j: 0 for j = 0, ceil(j / 4) after
    np.testing.assert_array_equal(z[:, :first], base[:, :first], err_msg=f"frame {j} leaked into earlier latents")
    assert not np.allclose(z[:, first], base[:, first]), f"frame {j} did not reach latent frame {first}"


def test_shortcuts_fold_time_and_space_causally_and_invert():
  from monl.autoencoder import layers
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 8, 3))
  folded = layers.time_to_depth_causal(x)
  assert folded.shape == (2, 5, 8, 8, 6)
  np.testing.assert_array_equal(folded[:, 0], jnp.concatenate([x[:, 0], x[:, 0]], -1))  # frame 0 alone
  np.testing.assert_array_equal(folded[:, 2], jnp.concatenate([x[:, 3], x[:, 4]], -1))  # frames 3, 4
  np.testing.assert_array_equal(layers.upsample_time_causal(folded), x)
  down = layers.down_shortcut(x, 12, halve_time=True)  # 3 * 2 * 4 = 24 folded channels -> 12
  assert down.shape == (2, 5, 4, 4, 12)
  # group means: a video constant per clip stays that constant on the way down and up
  c = jnp.broadcast_to(jnp.arange(2.0)[:, None, None, None, None], (2, 9, 8, 8, 4))
  np.testing.assert_allclose(layers.down_shortcut(c, 8, True), jnp.broadcast_to(c[:, :5, :4, :4, :1], (2, 5, 4, 4, 8)))
  np.testing.assert_allclose(layers.up_shortcut(c[:, :5, :4, :4], 2, True), c[:, :, :, :, :2])
  with pytest.raises(ValueError, match="shortcuts: channels .* 96 folded channels onto 20"):
    model_lib.VideoConfig(channels=(12, 20), temporal_downsample=2, shortcuts=True)


def test_gradients_are_clipped_per_autoencoder():
  from monl.autoencoder import train as ae_train
  grads = {"params": {"video_encoder": {"k": jnp.full((4,), 10.0)}, "video_decoder": {"k": jnp.full((4,), 10.0)},
                      "audio_decoder": {"k": jnp.full((4,), 0.1)}}}
  out, _ = ae_train.clip_by_modality_norm(1.0).update(grads, None)
  video = jnp.concatenate([out["params"]["video_encoder"]["k"], out["params"]["video_decoder"]["k"]])
  np.testing.assert_allclose(jnp.linalg.norm(video), 1.0, rtol=1e-6)  # the video's own norm, 40 -> 1
  np.testing.assert_allclose(out["params"]["audio_decoder"]["k"], 0.1)  # below the limit: untouched
  assert ae_train.modality_of(grads)["params"]["audio_decoder"]["k"] == "audio"


def test_paper_config_builds_with_the_paper_latent_shapes():
  from configs import autoencoder_paper
  from monl.autoencoder import train as ae_train
  c = autoencoder_paper.get_config()
  m = ae_train.build_model(c)
  s = ae_train.clip_samples(c)
  params = jax.eval_shape(lambda key: model_lib.init_params(m, key, c.media.frames, c.media.size, s), jax.random.key(0))
  z = jax.eval_shape(lambda p: m.apply(p, jnp.zeros((1, 17, 128, 128, 3)), jnp.zeros((1, s)), method=m.encode), params)
  assert z["video"].shape == (1, 5, 16, 16, 8) and z["audio"].shape == (1, 34, 64) and s == 10880
  assert 5e7 < model_lib.count_params(params) < 3e8


# ----------------------------------------------------------------------------------------------------
# metrics


def test_psnr_known_values():
  x = np.random.default_rng(0).uniform(0.2, 0.8, (3, 16, 16, 3))
  np.testing.assert_allclose(metrics.psnr(x + 0.1, x), 20.0, rtol=1e-9)  # MSE 0.01
  np.testing.assert_allclose(metrics.psnr(x + 0.01, x), 40.0, rtol=1e-9)
  assert np.isinf(metrics.psnr(x, x)).all()
  np.testing.assert_allclose(metrics.psnr(x * 255 + 2.55, x * 255, data_range=255.0), 40.0, rtol=1e-9)


def test_ssim_identity_symmetry_and_a_closed_form():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 24, 20, 3))
  y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
  np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-12)
  np.testing.assert_allclose(metrics.ssim(x, y), metrics.ssim(y, x), atol=1e-12)
  assert (metrics.ssim(x, y) < 0.95).all()
  # constant frames a and b: only the luminance term is left, (2ab + C1) / (a² + b² + C1)
  a, b, c1 = 0.3, 0.6, 0.01 ** 2
  got = metrics.ssim(np.full((16, 16, 1), a), np.full((16, 16, 1), b))
  np.testing.assert_allclose(got, (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-10)


def test_ssim_matches_the_reference_formulation():
  """Against Wang et al.'s ssim.m as written: 2-D Gaussian window (fspecial 11, 1.5), filter2 'valid'."""
  from scipy import signal
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(20, 17))
  y = np.clip(0.7 * x + 0.2 + 0.05 * rng.standard_normal(x.shape), 0, 1)
  r = np.arange(11) - 5
  w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
  w /= w.sum()
  f = lambda im: signal.convolve2d(im, np.rot90(w, 2), mode="valid")
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mu1, mu2 = f(x), f(y)
  s1, s2, s12 = f(x * x) - mu1 ** 2, f(y * y) - mu2 ** 2, f(x * y) - mu1 * mu2
  ref = np.mean(((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2)))
  np.testing.assert_allclose(metrics.ssim(x[..., None], y[..., None]), ref, rtol=1e-10)


def test_log_spectral_distance_known_values():
  rng = np.random.default_rng(0)
  a = 0.3 * rng.standard_normal((2, 4000))
  np.testing.assert_allclose(metrics.log_spectral_distance(a, a), 0.0, atol=1e-12)
  # twice the amplitude is +6.02 dB of power in every bin and frame
  np.testing.assert_allclose(metrics.log_spectral_distance(2 * a, a), 20 * np.log10(2), rtol=1e-9)
  np.testing.assert_allclose(metrics.log_spectral_distance(a, 2 * a), metrics.log_spectral_distance(2 * a, a))


def _square_clip(frames=5, size=8, bg=0.2, fg=0.9):
  """[frames, size, size, 3]: a 2x2 square of value fg moving one pixel right per frame over bg."""
  y = np.full((frames, size, size, 3), bg)
  for t in range(frames):
    y[t, 3:5, t:t + 2] = fg
  return y


def test_moving_psnr_and_the_static_reference():
  y = _square_clip()
  mask = metrics.moving_mask(y)
  # the median over time is the background everywhere, so the moving pixels are the square's 4 per frame
  assert mask.sum() == 4 * 5 and mask[0, 3:5, 0:2].all() and not mask[0, 0].any()
  static = np.full_like(y, 0.2)  # the background alone: wrong by 0.7 on every moving pixel
  np.testing.assert_allclose(metrics.moving_psnr(static, y), 10 * np.log10(1 / 0.49), rtol=1e-9)
  np.testing.assert_allclose(metrics.moving_psnr(y + 0.01, y), 40.0, rtol=1e-9)
  # the temporal median is exactly that background: per frame 4 x 3 values off by 0.7 of 8 x 8 x 3
  np.testing.assert_allclose(metrics.static_baseline_psnr(y), 10 * np.log10(1 / (0.49 * 4 / 64)), rtol=1e-9)
  assert np.isnan(metrics.moving_psnr(y[:1].repeat(5, 0), y[:1].repeat(5, 0)))  # no motion: NaN


def test_motion_weighted_video_loss():
  from monl.autoencoder import losses
  y = jnp.asarray(_square_clip()[None])
  w = np.asarray(losses.motion_weights(y, 3.0))
  assert w.shape == (1, 5, 8, 8, 1)
  moving = np.asarray(metrics.moving_mask(np.asarray(y)))[..., None]
  assert w[moving].min() > 10.0  # what moves weighs more; the path's pixels too (distance from the mean)
  np.testing.assert_allclose(w[0, :, 0], 1.0)  # rows the square never enters: the plain weight
  pred = jnp.full_like(y, 0.2)  # paints the square over with background
  plain, weighted = losses.video_loss(pred, y), losses.video_loss(pred, y, motion_weight=3.0)
  np.testing.assert_allclose(plain, np.mean(np.abs(pred - y) + np.square(pred - y)), rtol=1e-6)
  assert float(weighted) > 2.0 * float(plain)
  still = jnp.asarray(np.full((1, 5, 8, 8, 3), 0.3))
  np.testing.assert_allclose(losses.motion_weights(still, 3.0), 1.0)  # no motion: the plain mean


# ----------------------------------------------------------------------------------------------------
# built-in media data


def test_media_clip_is_deterministic_rgb_25fps_with_a_waveform():
  from monl.data import builtin, synthetic_media as sm
  c1 = sm.generate_clip(builtin.clip_rng(0, 0, 3))
  c2 = sm.generate_clip(builtin.clip_rng(0, 0, 3))
  np.testing.assert_array_equal(c1["video"], c2["video"])
  np.testing.assert_array_equal(c1["audio"], c2["audio"])
  assert c1["video"].shape == (17, 32, 32, 3) and c1["audio"].shape == (10880, 1)
  assert 0 <= c1["video"].min() and c1["video"].max() <= 1 and np.abs(c1["audio"]).max() <= 1
  assert sm.audio_segments() == (640, 2560, 2560, 2560, 2560)
  # the tone follows the height: the strongest frequency of each frame's 40 ms is F_LO (F_HI / F_LO)^y
  clip = sm.render(builtin.clip_rng(0, 0, 5), frames=50)
  y = clip["meta"]["video_xy"][:, 1]
  windows = clip["audio"][: 50 * 640].reshape(50, 640)
  peak = np.argmax(np.abs(np.fft.rfft(windows * np.hanning(640), axis=-1)), axis=-1) * 16000 / 640
  want = sm.F_LO * (sm.F_HI / sm.F_LO) ** np.clip(y, 0, 1)
  assert np.median(np.abs(np.log2(peak / want))) < 0.1  # within a tenth of an octave


# ----------------------------------------------------------------------------------------------------
# train_autoencoder


def tiny_config(data_dir: str, **overrides):
  from configs import autoencoder_tiny
  c = autoencoder_tiny.get_config()
  c.data.builtin_dir = data_dir
  c.data.synthetic.num_train, c.data.synthetic.num_test = 16, 4
  c.data.batch_size = 4
  c.media.size = 16
  c.model.video.channels = (8, 8, 8)
  c.model.audio.channels = (4, 4, 4, 8)
  c.model.audio.latent_channels = 4
  c.train.num_steps, c.train.warmup_steps, c.train.log_every = 4, 1, 2
  c.ckpt.every, c.ckpt.async_save = 2, False
  c.eval.num, c.eval.batch_size = 4, 4
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("media") / "data")


def test_train_autoencoder_resume_is_exact_and_eval_json_is_written(media_dir, tmp_path, capsys):
  from monl.autoencoder import train as ae_train
  config = tiny_config(media_dir)
  whole = ae_train.train(config, str(tmp_path / "whole"))
  ae_train.train(config, str(tmp_path / "split"), stop_at=2)
  assert not (tmp_path / "split" / "eval.json").exists()
  resumed = ae_train.train(config, str(tmp_path / "split"))
  out = capsys.readouterr().out
  assert "resumed from step 2" in out and "steps/s" in out and "ETA" in out
  for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  results = json.loads((tmp_path / "whole" / "eval.json").read_text())
  assert results["num_clips"] == 4 and results["step"] == 4
  for key in ("video_psnr_db", "video_ssim", "audio_lsd_db"):
    assert np.isfinite(results[key]["mean"]), key
  assert "eval (4 test clips, step 4): video PSNR" in out
  from PIL import Image
  sheet = Image.open(tmp_path / "whole" / "reconstructions.png")  # 4 clips x 2 rows of 17 frames, x3
  assert sheet.size == (17 * (16 * 3 + 2), 4 * (2 * 16 * 3 + 6)), sheet.size
  assert json.loads((tmp_path / "whole" / "config.json").read_text())["kind"] == "autoencoder"
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "whole" / "tb"))
  assert sorted(os.listdir(tmp_path / "whole" / "checkpoints")) == ["2", "4"]


def test_reconstruction_fvd_scores_real_clips_against_their_reconstructions(media_dir, tmp_path, monkeypatch):
  """With eval.i3d, eval.json's FVD/KVD compare I3D features of the real test clips (as stored, in
  [0, 255]) with those of the reconstructions; without it, both say why they were skipped."""
  from conftest import FakeI3D
  from monl.autoencoder import train as ae_train
  from monl.data import pipeline
  from monl.eval import evaluate as ev
  from monl.eval import metrics as eval_metrics

  class Recording(FakeI3D):
    def features(self, chunks, total=None, out=None, progress=None):
      chunks = list(chunks)
      self.inputs.append(np.concatenate(chunks))
      return super().features(iter(chunks), total=total, out=out, progress=progress)

  fake = Recording()
  fake.inputs = []
  monkeypatch.setattr(ev, "make_i3d", lambda settings: fake)
  config = tiny_config(media_dir, **{"eval.i3d": True, "train.num_steps": 2})
  ae_train.train(config, str(tmp_path / "on"))
  results = json.loads((tmp_path / "on" / "eval.json").read_text())
  real, recon = fake.inputs[0::2], fake.inputs[1::2]  # one eval batch of 4: real, then reconstructed
  assert len(fake.inputs) == 2 and len(real[0]) == len(recon[0]) == 4
  _, clips = pipeline.read_clips(results["data_dir"], "test", 4, ("video",))
  np.testing.assert_allclose(real[0], np.clip(clips["video"].astype(np.float32) * 255, 0, 255), rtol=1e-6)
  assert np.abs(recon[0] - real[0]).mean() > 1.0  # an untrained autoencoder's output, not the input again
  fr, fg = (np.concatenate(x).reshape(4, 17, -1).mean(1) @ fake.w for x in (real, recon))
  assert results["video_fvd_i3d"]["value"] == pytest.approx(ev.frechet_distance_features(fr, fg), rel=1e-9)
  want = eval_metrics.kernel_distance(fr, fg, subset_size=4, num_subsets=100, seed=0)[0]
  assert results["video_kvd_i3d"]["value"] == pytest.approx(want, rel=1e-9)
  assert results["video_fvd_i3d"]["provenance"]["num_clips"] == 4 and results["video_fvd_i3d"]["value"] > 0
  assert results["video_fvd_i3d_real_halves"]["value"] == pytest.approx(ev.frechet_distance_features(fr[:2], fr[2:]))

  ae_train.train(tiny_config(media_dir, **{"train.num_steps": 2}), str(tmp_path / "off"))
  off = json.loads((tmp_path / "off" / "eval.json").read_text())
  assert off["video_fvd_i3d"] == {"skipped": "disabled (config.eval.i3d=False)"}

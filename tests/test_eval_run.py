"""`evaluate` on a tiny trained checkpoint: outputs, conditioning exclusion, real-feature cache reuse."""
import json

import numpy as np
import pytest

from conftest import FakeI3D, tiny_config
from monl.eval import evaluate as ev
from monl.eval import metrics


def test_unrelated_cells_takes_every_cell_from_another_clip():
  from types import SimpleNamespace
  lay = SimpleNamespace(modalities=[SimpleNamespace(name="video", segments=(1, 3)),
                                    SimpleNamespace(name="audio", segments=(2, 2))])
  b = 6
  # every frame of clip i holds i, so each cell names the clip it came from
  clips = {"video": np.arange(b, dtype=float)[:, None, None] * np.ones((b, 4, 2)),
           "audio": np.arange(b, dtype=float)[:, None] * np.ones((b, 4))}
  out = ev.unrelated_cells(clips, lay)
  assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in clips.items()}
  src = np.stack([out["video"][:, 0, 0], out["video"][:, 1, 0], out["audio"][:, 0], out["audio"][:, 2]], 1)
  np.testing.assert_array_equal(out["video"][:, 1:4, 0], np.repeat(src[:, 1:2], 3, 1))  # one source per cell
  for i in range(b):
    assert i not in src[i] and len(set(src[i])) == 4  # four cells, four other clips
  # fewer clips than cells: a segment's two modalities still come from different clips
  few = ev.unrelated_cells({k: v[:3] for k, v in clips.items()}, lay)
  assert (few["video"][:, 0, 0] != few["audio"][:, 0]).all()
  assert (few["video"][:, 1, 0] != few["audio"][:, 2]).all()
  with pytest.raises(ValueError, match="at least 2 clips"):
    ev.unrelated_cells({k: v[:1] for k, v in clips.items()}, lay)


def test_generated_frames_and_exclusion_of_conditioning_segments():
  np.testing.assert_array_equal(ev.generated_frames([False, True, True, False], [2, 1, 1, 2]),
                                [0, 0, 1, 1, 0, 0])
  rng = np.random.default_rng(0)
  real = rng.normal(size=(20, 16, 2, 2, 3))
  gen = real.copy()
  gen[:, :8] += 100.0  # the `continue` task's given segments 1-2 (frames 0-7) differ wildly
  keep = [False, False, True, True]
  fd = ev.latent_fd_entry(real, gen, "video", (4, 4, 4, 4), keep)
  assert abs(fd["value"]) < 1e-8 and fd["provenance"]["frames_kept"] == "8-15"
  assert "proxy" in fd["label"]
  full = ev.latent_fd_entry(real, gen, "video", (4, 4, 4, 4), [True] * 4)
  assert full["value"] > 100.0
  # and the other way round: a change only in generated frames is seen
  gen2 = real.copy()
  gen2[:, 12:] += 1.0
  assert ev.latent_fd_entry(real, gen2, "video", (4, 4, 4, 4), keep)["value"] > 1.0


@pytest.mark.parametrize("n,d", [(40, 5), (12, 30)])
def test_svd_frechet_matches_sqrtm(n, d):
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(n, d)), 0.5 + 2 * rng.normal(size=(n + 3, d))
  ref = metrics.frechet_distance(metrics.FeatureStats.from_features(a), metrics.FeatureStats.from_features(b))
  np.testing.assert_allclose(ev._frechet_svd(a, b), ref, rtol=1e-4)
  np.testing.assert_allclose(ev.frechet_distance_features(a, b), ref, rtol=1e-4)


def test_parse_tasks():
  names = ("video", "audio")
  assert ev.parse_tasks("paper", names) == list(ev.PAPER_TASKS)
  assert ev.parse_tasks("a2v, continue", names) == ["a2v", "continue"]
  assert ev.parse_tasks("video:1-2,audio:all", names) == ["video:1-2,audio:all"]
  assert len(ev.parse_tasks("all", names)) == 10


def test_evaluate_end_to_end_and_cache_reuse(trained, tmp_path, monkeypatch):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.cache_dir = str(tmp_path / "cache")
  fake = FakeI3D()
  monkeypatch.setattr(ev, "make_i3d", lambda settings: fake)
  kw = dict(tasks="joint,a2v,v2a,continue", num=5, steps=2, i3d=True, i3d_max_clips=4, quiet=True)
  res = ev.evaluate(config, workdir, output=str(tmp_path / "e1"), **kw)
  for f in ("results.json", "results.md", "results.png"):
    assert (tmp_path / "e1" / f).stat().st_size > 0
  assert list((tmp_path / "e1" / "tb").iterdir())
  assert json.loads((tmp_path / "e1" / "results.json").read_text())["tasks"].keys() == res["tasks"].keys()
  t = res["tasks"]
  assert res["num"] == 5 and res["checkpoint_step"] == 4 and res["builtin_dataset"]
  # metrics that apply, and only those
  assert {"latent_fd_video", "latent_fd_audio", "fvd_i3d", "kvd_i3d", "trajectory_error", "av_agreement",
          "bounce_sync", "background_noise", "appearance_drift"} <= t["joint"]["metrics"].keys()
  assert "latent_fd_audio" not in t["a2v"]["metrics"] and "latent_fd_video" not in t["v2a"]["metrics"]
  assert "trajectory_error" not in t["v2a"]["metrics"]
  assert "8 generated video frames" in t["continue"]["skipped"]["fvd_i3d"]  # conditioning excluded
  assert t["continue"]["metrics"]["latent_fd_video"]["provenance"]["frames_kept"] == "8-15"
  assert t["continue"]["metrics"]["latent_fd_audio"]["provenance"]["frames_kept"] == "32-63"
  assert [t[k]["primary"] for k in ("joint", "a2v", "continue")] == ["av_agreement", "av_agreement",
                                                                    "trajectory_error"]
  for k in ("trajectory_error", "av_agreement", "bounce_sync"):
    assert res["real_reference"][k]["value"] >= 0
  fvd = t["joint"]["metrics"]["fvd_i3d"]
  assert fvd["provenance"]["num_clips"] == 4 and fvd["provenance"]["resize"] == "none"
  assert "not comparable" in fvd["label"]
  # joint computed the real stats (1 real + 1 generated call); a2v reused them from the cache
  assert len(fake.calls) == 3 and not fvd["provenance"]["cache_hit"]
  assert t["a2v"]["metrics"]["fvd_i3d"]["provenance"]["cache_hit"]
  assert all(shape[0] == 4 for shape in fake.calls)
  assert np.load(tmp_path / "e1" / "samples" / "joint" / "i3d_features.npy").shape == (4, 6)
  # a second run reads the real-data statistics from the .npz cache: only generated clips go through I3D
  res2 = ev.evaluate(config, workdir, output=str(tmp_path / "e2"), **kw)
  assert len(fake.calls) == 3 + 2
  assert res2["tasks"]["joint"]["metrics"]["fvd_i3d"]["provenance"]["cache_hit"]
  np.testing.assert_allclose(res2["tasks"]["joint"]["metrics"]["fvd_i3d"]["value"], fvd["value"])
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
  md = (tmp_path / "e1" / "results.md").read_text()
  assert "| continue |" in md and "real clips (floor)" in md and "cells of unrelated clips (chance)" in md
  chance = res["chance_reference"]
  assert chance.keys() == {"trajectory_error", "av_agreement", "bounce_sync", "background_noise",
                           "appearance_drift"}
  assert res["real_reference"]["appearance_drift"]["value"] == 0.0 < chance["appearance_drift"]["value"]
  assert res["real_reference"]["background_noise"]["value"] == chance["background_noise"]["value"] == 0.0
  assert t["joint"]["metrics"]["background_noise"]["value"] > 0  # 4 training steps: noise
  assert chance["av_agreement"]["value"] > 3 * res["real_reference"]["av_agreement"]["value"]
  # AV-align on every task (both modalities decoded), the real clips as reference; FAD off, and said so
  real_av = res["real_reference"]["av_align"]
  assert 0 < real_av["value"] <= 1 and len(real_av["per_clip"]) == 5
  for name in ("joint", "a2v", "v2a", "continue"):
    av = t[name]["metrics"]["av_align"]
    assert 0 <= av["value"] <= 1 and av["real"] == real_av["value"] and av["higher_is_better"]
    assert "config.eval.vggish_weights is ''" in t[name]["skipped"]["fad_vggish"]
  assert any(n.startswith("FAD off: config.eval.vggish_weights") for n in res["notes"])
  assert "`av_align`" in md and "**Note:** FAD off" in md


def test_evaluate_fad_with_tiny_vggish(trained, tmp_path):
  from test_eval_plugins import write_tiny_vggish
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.eval.cache_dir = str(tmp_path / "cache")
  config.eval.vggish_weights = str(tmp_path / "missing.npz")
  kw = dict(tasks="a2v,v2a,continue", num=4, steps=2, i3d=False, quiet=True)
  with pytest.raises(FileNotFoundError, match="config.eval.vggish_weights=.*missing.npz"):
    ev.evaluate(config, workdir, output=str(tmp_path / "e0"), **kw)
  write_tiny_vggish(tmp_path / "vggish.npz")
  config.eval.vggish_weights = str(tmp_path / "vggish.npz")
  res = ev.evaluate(config, workdir, output=str(tmp_path / "e1"), **kw)
  t = res["tasks"]
  assert t["a2v"]["skipped"]["fad_vggish"] == "audio is fully given (nothing generated)"
  v2a, cont = t["v2a"]["metrics"]["fad_vggish"], t["continue"]["metrics"]["fad_vggish"]
  # 2 s of audio -> 2 VGGish examples per clip; continue generates audio frames 32-63 (1 s) -> 1
  assert v2a["provenance"]["examples_per_clip"] == 2 and v2a["provenance"]["frames"] == "0-63"
  assert cont["provenance"]["examples_per_clip"] == 1 and cont["provenance"]["frames"] == "32-63"
  assert v2a["value"] > 0 and np.isfinite(cont["value"]) and "not comparable" in v2a["label"]
  assert v2a["provenance"]["weights_sha256"] and not v2a["provenance"]["cache_hit"]
  assert not any("FAD" in n for n in res["notes"])
  # the generated audio is compared: real audio in place of the samples gives FAD ~ 0
  from monl.data import pipeline
  from monl.eval import plugins
  ids, real = pipeline.read_clips(res["dataset"], res["split"], 4, ("video", "audio"))
  vggish = plugins.load_extractor("vggish", tmp_path / "vggish.npz")
  dec = ev.decoder_registry()["monl.data.synthetic.bouncing_ball"]
  same = ev.fad_entry(vggish, real, real, np.arange(64), dec, ev.settings_from_config(config),
                      {"dataset": res["dataset_key"], "split": res["split"], "num": 4})
  assert abs(same["value"]) < 1e-6 * max(1.0, v2a["value"]) and same["provenance"]["cache_hit"]


def test_evaluate_says_when_only_the_latent_proxy_applies(trained, tmp_path, monkeypatch, capsys):
  config, workdir = trained
  monkeypatch.setattr(ev, "decoder_for", lambda spec: None)  # as for latents with no decoder here
  monkeypatch.setattr(ev, "ground_truth_for", lambda spec, names: None)
  res = ev.evaluate(config, workdir, tasks="v2a", num=3, steps=2, i3d=False, output=str(tmp_path / "e"))
  out = capsys.readouterr().out
  lines = [ln for ln in out.splitlines() if "no decoder" in ln]
  assert len(lines) == 1 and "computes only the latent-space Fréchet proxy" in lines[0], out
  m = res["tasks"]["v2a"]
  assert set(m["metrics"]) == {"latent_fd_audio", "latent_fd_mean"}
  assert "no decoder" in m["skipped"]["av_align"] and "no decoder" in m["skipped"]["fad_vggish"]
  assert not any(n.startswith("FAD") for n in res["notes"])  # the one line covers it


def test_paper_config_gets_only_the_latent_proxy():
  from configs import avdit_paper
  config = avdit_paper.get_config()
  settings = ev.settings_from_config(config)
  assert settings["vggish_weights"] == ""
  reason = ev.i3d_unavailable(settings, tuple(config.layout.video.shape))
  assert "no RGB video" in reason
  note = ev.coverage_note(None, reason, config.data.dir)
  assert "only the latent-space Fréchet proxy" in note and "FVD/KVD" not in note
  assert "FVD/KVD on its RGB video" in ev.coverage_note(None, None, "x")
  assert ev.coverage_note(ev.decoder_registry()["monl.data.symbols"], reason, "x") is None


def test_nice_ticks():
  assert ev.nice_ticks(0.0345) == [0.0, 0.01, 0.02, 0.03]
  assert ev.nice_ticks(250.0) == [0.0, 100.0, 200.0]
  ticks = ev.nice_ticks(7.3)
  assert ticks[0] == 0.0 and ticks[-1] <= 7.3 and 4 <= len(ticks) <= 8 and ticks[1] in (1.0, 2.0)


def _results(real=None, chance=None):
  metric = lambda v, se=None, **kw: {"value": v, "stderr": se, **kw}
  return {"checkpoint_step": 7, "real_reference": real or {}, "chance_reference": chance or {}, "tasks": {
      "joint": {"metrics": {"latent_fd_video": metric(200.0), "av_align": metric(0.3, higher_is_better=True),
                            "trajectory_error": metric(0.05, 0.01)}},
      "v2a": {"metrics": {"latent_fd_video": metric(100.0), "av_align": metric(0.6, higher_is_better=True)}}}}


def test_chart_places_ground_truth_between_real_clips_and_chance():
  res = _results(real={"trajectory_error": {"value": 0.01}}, chance={"trajectory_error": {"value": 0.09}})
  series, values, errors, title, reference = ev.chart_series(res)
  assert series == ["trajectory_error"] and reference == 1.0 and "0 = real clips" in title
  np.testing.assert_allclose(values[:, 0], [0.5, np.nan])  # (0.05 - 0.01) / (0.09 - 0.01); v2a: none
  np.testing.assert_allclose(errors[0, 0], 0.125)


def test_chart_without_ground_truth_names_the_higher_is_better_metric():
  series, values, errors, title, reference = ev.chart_series(_results())
  assert series == ["latent_fd_video", "av_align (higher is better)", "trajectory_error"]
  assert "except av_align" in title and reference is None and np.isnan(errors).all()
  np.testing.assert_allclose(values[:, 0], [1.0, 0.5])  # each metric over its largest value

"""`evaluate` on a tiny trained checkpoint: outputs, conditioning exclusion, real-feature cache reuse."""
import json

import numpy as np
import pytest

from conftest import tiny_config
from monl.eval import evaluate as ev
from monl.eval import metrics


class FakeI3D:
  """Stands in for I3D (1.5 s per clip on CPU): a fixed projection of the mean frame, counting calls."""
  provenance = {"extractor": "fake", "package": "test", "port_of": "none", "resize": "none"}

  def __init__(self):
    self.calls = []
    self.w = np.random.default_rng(0).normal(size=(16 * 16 * 3, 6))

  def __call__(self, videos):
    assert videos.shape[1] >= 9 and videos.max() <= 255.0
    self.calls.append(videos.shape)
    return videos.reshape(*videos.shape[:2], -1).mean(1) @ self.w


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
          "bounce_sync"} <= t["joint"]["metrics"].keys()
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
  # a second run reads the real-data statistics from the .npz cache: only generated clips go through I3D
  res2 = ev.evaluate(config, workdir, output=str(tmp_path / "e2"), **kw)
  assert len(fake.calls) == 3 + 2
  assert res2["tasks"]["joint"]["metrics"]["fvd_i3d"]["provenance"]["cache_hit"]
  np.testing.assert_allclose(res2["tasks"]["joint"]["metrics"]["fvd_i3d"]["value"], fvd["value"])
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
  md = (tmp_path / "e1" / "results.md").read_text()
  assert "| continue |" in md and "real clips (floor)" in md

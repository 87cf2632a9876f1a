"""Tests of the built-in symbols dataset: generation, the rule, classifiers, cell_error, build/reuse,
config dispatch and `evaluate` on a tiny trained run."""
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import symbols as symbols_config
from conftest import tiny_config
from monl.data import builtin
from monl.data import format as fmt
from monl.data import pipeline
from monl.data import symbols as sym
from monl.data import synthetic as syn
from monl.train import loop
from monl.sample import preview
from monl.sample import tasks as tasks_lib

NAMES = ("video", "audio")


@pytest.fixture(scope="module")
def clips():
  cs = [sym.generate_clip(sym.clip_rng(0, 0, i)) for i in range(200)]
  return (np.stack([c["video"] for c in cs]), np.stack([c["audio"] for c in cs]),
          np.stack([c["meta"]["symbols"] for c in cs]), cs)


def _mask(task):
  return tasks_lib.task_mask(task, NAMES, sym.NUM_SEGMENTS, k=2)


def _render(symbols_video, symbols_audio, meta, seed=0):
  """A clip with the given per-segment symbols in the look (colour, background, offset) of `meta`."""
  video = sym.render_video(symbols_video, meta["colour"], meta["background"], meta["offset"])
  return video, sym.render_audio(symbols_audio, np.random.default_rng(seed))


def test_clip_matches_symbols_config(clips):
  video, audio, _, _ = clips
  layout = loop.with_data_layout(symbols_config.get_config()).layout  # from builtin_modalities
  assert video.shape[1:] == tuple(layout.video.shape) == (20, 16, 16, 3) and video.dtype == np.float32
  assert audio.shape[1:] == tuple(layout.audio.shape) == (80, 16) and audio.dtype == np.float32
  assert sym.VIDEO_SEGMENTS == tuple(layout.video.segments)
  assert sym.AUDIO_SEGMENTS == tuple(layout.audio.segments)
  assert 0.0 <= video.min() and video.max() <= 1.0 and np.isfinite(audio).all()
  # Static glyph within a segment; ten distinct ~10x10 glyphs; ten distinct tone pairs.
  seg = video.reshape(len(video), 5, 4, 16, 16, 3)
  assert (seg == seg[:, :, :1]).all()
  assert sym.GLYPHS.shape == (10, 10, 10) and len({g.tobytes() for g in sym.GLYPHS}) == 10
  assert len({frozenset(p) for p in sym.TONE_PAIRS}) == 10


def test_generator_is_deterministic():
  a = sym.generate_clip(sym.clip_rng(7, 0, 3))
  b = sym.generate_clip(sym.clip_rng(7, 0, 3))
  c = sym.generate_clip(sym.clip_rng(8, 0, 3))
  np.testing.assert_array_equal(a["video"], b["video"])
  np.testing.assert_array_equal(a["audio"], b["audio"])
  assert not np.array_equal(a["audio"], c["audio"])


def test_rule_holds(clips):
  _, _, symbols, cs = clips
  for s, c in zip(symbols, cs):
    m = c["meta"]
    np.testing.assert_array_equal(s, (m["s1"] + m["step"] * np.arange(5)) % 10)
    assert (np.diff(s) % 10 == m["step"]).all() and abs(m["offset"]).max() <= 2
  # s_1 and d are drawn from their whole ranges.
  assert set(symbols[:, 0]) == set(range(10)) and {c["meta"]["step"] for c in cs} == {1, 2, 3}
  assert len(sym.all_rules()) == 30 and len({r.tobytes() for r in sym.all_rules()}) == 30


def test_classifiers_exact_on_real_clips(clips):
  video, audio, symbols, _ = clips
  np.testing.assert_array_equal(sym.classify_video(video), symbols)
  np.testing.assert_array_equal(sym.classify_audio(audio), symbols)
  np.testing.assert_array_equal(sym.classify_video(video[0]), symbols[0])  # one clip in, [N] out
  # with a margin: the right template correlates ~1, every other one far less
  _, vs = sym.classify_video(video, return_scores=True)
  _, as_ = sym.classify_audio(audio, return_scores=True)
  for s in (vs, as_):
    top2 = np.sort(s, axis=-1)[..., -2:]
    assert top2[..., 1].min() > 0.98 and (top2[..., 1] - top2[..., 0]).min() > 0.3
  # a blank cell is no symbol
  blank = video[:1].copy()
  blank[:, 4:8] = 0.1
  assert sym.classify_video(blank)[0, 1] == -1


def test_shuffled_or_foreign_cells_are_judged_wrong(clips):
  video, audio, symbols, _ = clips
  perm = [0, 2, 1, 3, 4]  # swap segments 2 and 3: a sequence no rule makes
  shuffled_v = video.reshape(-1, 5, 4, 16, 16, 3)[:, perm].reshape(video.shape)
  shuffled_a = audio.reshape(-1, 5, 16, 16)[:, perm].reshape(audio.shape)
  np.testing.assert_array_equal(sym.classify_video(shuffled_v), symbols[:, perm])
  joint = sym.cell_error(shuffled_v, shuffled_a, _mask("joint"), symbols)
  assert (joint > 0).all()  # d >= 1 means swapping two segments always breaks the rule
  assert (sym.cross_modal_agreement(shuffled_v, shuffled_a) == 0).all()  # but the modalities still agree
  # Another clip's video with this clip's audio: judged wrong wherever the symbols differ.
  other = np.roll(video, 1, axis=0)
  differ = symbols != np.roll(symbols, 1, axis=0)
  np.testing.assert_allclose(sym.cross_modal_agreement(other, audio), differ.mean(axis=1))
  np.testing.assert_allclose(sym.cell_error(other, audio, _mask("a2v"), symbols), differ.mean(axis=1))
  assert differ.mean() > 0.8


@pytest.mark.parametrize("task", tasks_lib.task_names(NAMES))
def test_cell_error_zero_on_real_clips(clips, task):
  video, audio, symbols, _ = clips
  assert (sym.cell_error(video, audio, _mask(task), symbols) == 0).all()
  assert (sym.cross_modal_agreement(video, audio) == 0).all()


def test_cell_error_is_chance_for_random_content(clips):
  video, audio, symbols, _ = clips
  rng = np.random.default_rng(0)
  b = len(video)
  # every cell from a random clip's random segment: a random symbol
  vr = video.reshape(b, 5, 4, 16, 16, 3)[rng.integers(b, size=(b, 5)), rng.integers(5, size=(b, 5))]
  ar = audio.reshape(b, 5, 16, 16)[rng.integers(b, size=(b, 5)), rng.integers(5, size=(b, 5))]
  vr, ar = vr.reshape(video.shape), ar.reshape(audio.shape)
  for task in ("a2v", "v2a", "continue", "inpaint"):  # the given cells fix the rule: chance is 0.9
    g = _mask(task)
    gen_v = np.where(np.repeat(g[0], 4)[None, :, None, None, None], video, vr)
    gen_a = np.where(np.repeat(g[1], 16)[None, :, None], audio, ar)
    assert 0.85 < sym.cell_error(gen_v, gen_a, g, symbols).mean() < 0.95, task
  # joint: the best of 30 rules per clip, so below 0.9, still far from 0
  assert 0.55 < sym.cell_error(vr, ar, _mask("joint"), symbols).mean() < 0.85
  assert 0.85 < sym.cross_modal_agreement(vr, ar).mean() < 0.95


def test_a_wrong_cell_is_counted(clips):
  video, audio, symbols, cs = clips
  s = symbols[0]
  wrong = s.copy()
  wrong[2] = (s[2] + 5) % 10
  v, a = _render(wrong, s, cs[0]["meta"])
  assert sym.cell_error(v, a, _mask("a2v"), s) == pytest.approx(1 / 5)  # 5 generated cells, 1 wrong
  assert sym.cross_modal_agreement(v, a) == pytest.approx(1 / 5)
  v, a = _render(s, wrong, cs[0]["meta"])
  assert sym.cell_error(v, a, _mask("a2v"), s) == 0  # audio is given: its cells are not judged
  assert sym.cell_error(v, a, _mask("continue"), s) == pytest.approx(1 / 6)  # segment 3 of audio
  assert sym.cell_error(video[:1], audio[:1], _mask("v2a"), symbols[:1])[0] == 0


def test_inpaint_and_continue_answers_follow_the_rule():
  true = sym.rule_sequence(2, 3)  # 2 5 8 1 4
  slow = sym.rule_sequence(2, 1)  # 2 3 4 5 6: same start, another step
  err = lambda v, a, task: sym.cell_error_from_symbols(np.stack([v, a])[None], _mask(task), true[None])[0]
  for task in ("inpaint", "continue"):
    assert err(true, true, task) == 0
    assert err(slow, slow, task) == 1  # all generated cells are wrong: the given cells fix d = 3
  # inpaint: segments 1 and 5 (2 and 4) fix 4d mod 10 = 2, i.e. d = 3; the middle must be 5 8 1
  guess = true.copy()
  guess[2] = 9
  assert err(guess, true, "inpaint") == pytest.approx(1 / 6)
  # continue_2s: one given segment leaves d open; any step is right if both modalities follow it
  assert err(slow, slow, "continue_2s") == 0
  assert err(true, slow, "continue_2s") == pytest.approx(0.5)
  # joint: any rule; a sequence following no rule is wrong in its worst-fitting cells
  assert err(sym.rule_sequence(7, 2), sym.rule_sequence(7, 2), "joint") == 0
  assert err(np.array([0, 1, 2, 3, 9]), np.array([0, 1, 2, 3, 9]), "joint") == pytest.approx(0.2)
  with pytest.raises(ValueError, match="follow no rule"):
    sym.cell_error_from_symbols(np.stack([true, true])[None], _mask("continue"), np.array([[0, 5, 1, 1, 1]]))
  assert np.isnan(sym.cell_error_from_symbols(np.stack([true, true])[None], np.ones((2, 5), bool), true[None])[0])


def test_contact_sheet_and_previews_take_the_symbols_layout(clips, tmp_path):
  video, audio, _, _ = clips
  given = _mask("inpaint")
  sheet = preview.contact_sheet(tmp_path / "sheet.png", video[:2], audio[:2], given, NAMES,
                                sym.VIDEO_SEGMENTS, sym.AUDIO_SEGMENTS)
  with Image.open(sheet) as im:
    assert im.size[0] == 20 * (16 * 4 + 2)
  files = preview.write_clip(tmp_path, "c", video[0], audio[0])
  with Image.open(tmp_path / files[0]) as im:  # Pillow merges a segment's 4 identical frames into one
    total_ms = 0
    for i in range(im.n_frames):
      im.seek(i)
      total_ms += im.info["duration"]
    assert im.n_frames == 5 and total_ms == 20 * 125  # 20 frames at 8 fps
  assert syn.audio_to_waveform(audio[0]).shape == (int(2.5 * 16000),)


def test_ensure_builtin_dataset(tmp_path, capsys):
  out = sym.ensure_builtin_dataset(tmp_path / "sym", num_train=16, num_test=8, seed=0, num_shards=2)
  spec = fmt.load_spec(out)
  pipeline.check_layout(spec, pipeline.layout_from_config(loop.with_data_layout(symbols_config.get_config()).layout), str(out))
  assert spec.produced_by["generator"] == sym.generator_params(16, 8, 0, 2)
  assert spec.produced_by["generator"]["name"] == "monl.data.symbols"
  assert spec.modality("audio").seconds_per_segment == (0.5,) * 5
  stamp = (out / "dataset.json").stat().mtime
  assert sym.ensure_builtin_dataset(tmp_path / "sym", num_train=16, num_test=8, seed=0, num_shards=2) == out
  assert (out / "dataset.json").stat().mtime == stamp  # reused, not rebuilt
  sym.ensure_builtin_dataset(tmp_path / "sym", num_train=8, num_test=8, seed=0, num_shards=2)
  assert "rebuilding" in capsys.readouterr().err
  assert fmt.load_spec(out).splits["train"].num_examples == 8
  # The stored clips are the generator's, and classified exactly.
  _, real = pipeline.read_clips(out, "test", 8, NAMES)
  want = np.stack([sym.generate_clip(sym.clip_rng(0, 1, i))["meta"]["symbols"] for i in range(8)])
  np.testing.assert_array_equal(sym.classify_video(real["video"]), want)
  # Neither generator overwrites the other's dataset.
  with pytest.raises(fmt.DatasetError, match="not produced by monl.data.synthetic.bouncing_ball"):
    syn.ensure_builtin_dataset(out, num_train=4, num_test=2, num_shards=1)
  ball = syn.ensure_builtin_dataset(tmp_path / "ball", num_train=4, num_test=2, num_shards=1)
  with pytest.raises(fmt.DatasetError, match="not produced by monl.data.symbols"):
    sym.ensure_builtin_dataset(ball, num_train=4, num_test=2, num_shards=1)
  assert builtin.module_for_spec(fmt.load_spec(ball)) is syn
  assert builtin.module_for_spec(fmt.load_spec(out)) is sym


def test_resolve_data_dir_dispatches_on_config_builtin(tmp_path):
  config = symbols_config.get_config()
  assert config.data.builtin == "symbols" and config.data.builtin_dir.endswith("symbols_v1")
  config.data.builtin_dir = str(tmp_path / "sym")
  config.data.synthetic.update(num_train=4, num_test=2, num_shards=1)
  out = syn.resolve_data_dir(config.data)
  assert fmt.load_spec(out).produced_by["generator"] == sym.generator_params(4, 2, 0, 1)
  # A config without the field (older configs) means the bouncing ball.
  old = ml_collections.ConfigDict({"dir": "", "builtin_dir": str(tmp_path / "ball"),
                                   "synthetic": {"num_train": 4, "num_test": 2, "seed": 0, "num_shards": 1}})
  out = syn.resolve_data_dir(old)
  assert fmt.load_spec(out).produced_by["generator"] == syn.generator_params(4, 2, 0, 1)
  old.builtin = "nope"
  with pytest.raises(ValueError, match=r"config.data.builtin='nope': known built-in datasets are"):
    syn.resolve_data_dir(old)


def test_ground_truth_registry_names_both_generators():
  from monl.eval import evaluate as ev
  assert set(ev.ground_truth_registry()) == {syn.GENERATOR_NAME, sym.GENERATOR_NAME}
  assert ev.ground_truth_registry()[sym.GENERATOR_NAME].primary("joint", {"cell_error": {}}) == "cell_error"


@pytest.fixture(scope="module")
def trained_symbols(tmp_path_factory):
  """(config, workdir) of a tiny model trained for 4 steps on a 16 + 8 clip symbols dataset."""
  from monl.train import loop
  data = sym.ensure_builtin_dataset(tmp_path_factory.mktemp("symbols") / "data", num_train=16, num_test=8,
                                    seed=0, num_shards=1)
  workdir = tmp_path_factory.mktemp("symbols_run")
  config = tiny_config(str(data), base="symbols",
                       **{"train.num_steps": 4, "ckpt.every": 4, "sample.batch_size": 4})
  loop.train(config, str(workdir))
  return config, str(workdir)


def test_evaluate_reports_cell_error_as_primary(trained_symbols, tmp_path):
  from monl.eval import evaluate as ev
  config, workdir = trained_symbols
  res = ev.evaluate(config, workdir, tasks="joint,a2v,continue_2s,inpaint", num=4, steps=2, i3d=False,
                    output=str(tmp_path / "e"), quiet=True)
  assert res["builtin_dataset"] and res["ground_truth"] == "monl.data.symbols"
  assert res["real_reference"]["cell_error"]["value"] == 0
  assert res["real_reference"]["cross_modal_agreement"]["value"] == 0
  assert res["chance_reference"]["cross_modal_agreement"]["value"] > 0  # a segment's two cells: other clips
  for name, t in res["tasks"].items():
    assert t["primary"] == "cell_error", name
    m = t["metrics"]
    assert {"cell_error", "cross_modal_agreement"} <= m.keys() and "trajectory_error" not in m
    assert 0 <= m["cell_error"]["value"] <= 1 and m["cell_error"]["real"] == 0
    assert m["cell_error"]["provenance"]["source"].startswith("monl.data.symbols.cell_error")
  samples = tmp_path / "e" / "samples" / "inpaint"
  assert {"00000.gif", "00000.wav", "contact_sheet.png"} <= {p.name for p in samples.iterdir()}
  md = (tmp_path / "e" / "results.md").read_text()
  assert "cell_error" in md and "real clips (floor)" in md

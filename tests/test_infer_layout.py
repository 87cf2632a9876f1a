"""Tests of `monl.data.infer_layout`: the default patch rule, completing a config from the data, and the
errors when a config contradicts it."""
import pytest

from configs import common
from monl import layout as layout_lib
from monl.data import infer_layout

BUILTIN = {"video": ((16, 16, 16, 3), (4, 4, 4, 4)), "audio": ((64, 16), (16,) * 4)}


@pytest.mark.parametrize("shape,segments,tokens,patch", [
    ((16, 16, 16, 3), (4, 4, 4, 4), 4, (1, 16, 16)),  # one token per whole frame
    ((64, 16), (16,) * 4, 4, (4,)),
    # 16 per cell: (1, 8, 8), (2, 8, 4), (2, 4, 8) and (4, 4, 4) all hold 64 pixels; the shorter temporal
    # patch wins
    ((16, 16, 16, 3), (4, 4, 4, 4), 16, (1, 8, 8)),
    # (1, 6, 2) and (1, 3, 4) both give 2 tokens of 12 pixels per frame: the squarer one wins
    ((4, 6, 4, 3), (2, 2), 4, (1, 3, 4)),
    # unequal segments: the temporal patch divides both (gcd 8) and bounds the longer one (16 frames)
    ((24, 5), (8, 16), 4, (4,)),
    ((24, 5), (8, 16), 2, (8,)),
])
def test_default_patch_rule(shape, segments, tokens, patch):
  assert infer_layout.default_patch(shape, segments, tokens) == patch
  lay = layout_lib.ModalityLayout("m", shape, patch, segments)  # the rule's patch always fits
  assert max(segments) // patch[0] * lay.tokens_per_frame_patch <= tokens


def test_default_patch_says_when_no_patch_fits():
  # a temporal patch cannot straddle segments of 1 and 15 frames: at least 15 tokens in the second cell
  with pytest.raises(layout_lib.LayoutError, match=r"tokens_per_cell=4 tokens per cell \(the fewest possible is 15"):
    infer_layout.default_patch((16, 5), (1, 15), 4)
  with pytest.raises(layout_lib.LayoutError, match=r"config.layout.tokens_per_cell is 0"):
    infer_layout.default_patch((16, 5), (8, 8), 0)


def test_base_config_is_completed_from_the_data():
  config = common.base_config()
  assert not infer_layout.is_complete(config.layout)
  with pytest.raises(layout_lib.LayoutError, match=r"leaves modalities unset .*with_data_layout"):
    layout_lib.Layout.from_config(config.layout)
  done, notes = infer_layout.complete(config, BUILTIN, where="D/dataset.json")
  assert infer_layout.is_complete(done.layout) and not infer_layout.is_complete(config.layout)  # a copy
  lay = layout_lib.Layout.from_config(done.layout)
  assert lay.names == ("video", "audio")
  assert [m.patch for m in lay.modalities] == [(1, 16, 16), (4,)]
  assert notes == ["layout.modalities = ['video', 'audio'] (from D/dataset.json)",
                   "layout.video.patch = (1, 16, 16) (default rule, tokens_per_cell=4)",
                   "layout.audio.patch = (4,) (default rule, tokens_per_cell=4)"]
  assert "video: shape [16, 16, 16, 3], segments [4, 4, 4, 4], patch (1, 16, 16) -> 16 tokens of 768 " \
         "values (at most 4 per cell)" in infer_layout.describe(lay)


def test_set_fields_are_kept_and_other_names_and_orders_follow_the_config():
  config = common.base_config()
  config.layout.video.patch = (2, 0, 0)
  config.layout.audio.shape = (64, 16)
  done, notes = infer_layout.complete(config, BUILTIN, where="D")
  assert tuple(done.layout.video.patch) == (2, 0, 0) and not any("video.patch" in n for n in notes)
  # another modality name gets a group; the config's order of names is kept
  config = common.base_config()
  config.layout.modalities = ("motion", "video")
  done, notes = infer_layout.complete(config, {"video": BUILTIN["video"], "motion": ((8, 6), (2, 2, 2, 2))}, where="D")
  assert layout_lib.Layout.from_config(done.layout).names == ("motion", "video")
  assert "audio" not in done.layout  # the base's unused (unset) group is dropped without a note
  assert not any("audio" in n for n in notes)


def test_unused_set_group_is_noted_and_dropped():
  config = common.base_config()
  config.layout.audio.patch = (8,)
  done, notes = infer_layout.complete(config, {"video": BUILTIN["video"]}, where="D/dataset.json")
  assert "audio" not in done.layout
  assert "layout.audio ({'patch': (8,)}) is not used: D/dataset.json has no modality 'audio'" in notes


@pytest.mark.parametrize("field,value,message", [
    ("audio.shape", (64, 8), r"config.layout.audio.shape is \[64, 8\], but modality 'audio' of D/dataset.json "
                             r"has shape \[64, 16\]"),
    ("video.segments", (8, 8), r"config.layout.video.segments is \[8, 8\], but modality 'video' of "
                               r"D/dataset.json has segments \[4, 4, 4, 4\]"),
    ("modalities", ("video", "text"), r"config.layout.modalities is \['video', 'text'\], but D/dataset.json "
                                      r"has modalities \['video', 'audio'\]"),
    ("video.patch", (2, 5, 0), r"config.layout.video.patch \(2, 5, 0\) does not fit the data of D/dataset.json: "
                               r".*patch 5 does not divide axis 1 of length 16"),
    ("audio.patch", (32,), r"config.layout.audio.patch \(32,\) does not fit .*segment 0 has 16 frames"),
])
def test_contradictions_name_the_field_and_both_values(field, value, message):
  config = common.base_config()
  node, leaf = (config.layout, field) if "." not in field else (config.layout[field.split(".")[0]],
                                                              field.split(".")[1])
  node[leaf] = value
  with pytest.raises(layout_lib.LayoutError, match=message):
    infer_layout.complete(config, BUILTIN, where="D/dataset.json")


@pytest.mark.parametrize("name,video_patch,audio_patch", [
    ("default", (2, 16, 16), (4,)), ("symbols", (2, 16, 16), (4,)), ("avdit_paper", None, None)])
def test_shipped_configs_resolve_on_their_data(name, video_patch, audio_patch):
  import importlib
  from monl.train import loop
  config = importlib.import_module(f"configs.{name}").get_config()
  lay = layout_lib.Layout.from_config(loop.with_data_layout(config, quiet=True).layout)
  assert lay.names == ("video", "audio")
  if video_patch is not None:
    assert (lay["video"].patch, lay["audio"].patch) == (video_patch, audio_patch)
  else:  # the paper's config sets its whole layout, so nothing is read from data
    assert infer_layout.is_complete(config.layout)

import numpy as np
import pytest

from monl.sample import tasks

NAMES = ("video", "audio")


def test_named_tasks_paper_n5():
  m = lambda t, k=2: tasks.task_mask(t, NAMES, 5, k=k).astype(int).tolist()
  assert m("joint") == [[0] * 5, [0] * 5]
  assert m("a2v") == [[0] * 5, [1] * 5]
  assert m("v2a") == [[1] * 5, [0] * 5]
  assert m("continue") == [[1, 1, 0, 0, 0]] * 2
  assert m("continue_2s") == [[1, 0, 0, 0, 0]] * 2
  assert m("inpaint") == [[1, 0, 0, 0, 1]] * 2
  assert m("continue_video") == [[1, 1, 0, 0, 0], [0] * 5]
  assert m("continue_video_with_audio") == [[1, 1, 0, 0, 0], [1] * 5]
  assert m("continue_audio", k=3) == [[0] * 5, [1, 1, 1, 0, 0]]


def test_every_listed_task_parses():
  for t in tasks.task_names(NAMES):
    assert tasks.task_mask(t, NAMES, 4).shape == (2, 4)


@pytest.mark.parametrize("spec, expected", [
    ("video:1-2,audio:all", [[1, 1, 0, 0, 0], [1] * 5]),
    ("audio:3", [[0] * 5, [0, 0, 1, 0, 0]]),
    ("video:1+4-5,audio:none", [[1, 0, 0, 1, 1], [0] * 5]),
])
def test_mask_syntax(spec, expected):
  given = tasks.parse_mask(spec, NAMES, 5)
  assert given.astype(int).tolist() == expected
  assert tasks.parse_mask(tasks.format_mask(given, NAMES), NAMES, 5).tolist() == given.tolist()


@pytest.mark.parametrize("spec, message", [
    ("video:1-2,sound:all", "part 'sound:all' names modality 'sound'"),
    ("video:0-2", "range '0-2' in part 'video:0-2' is outside segments 1..5"),
    ("video:2-9", "outside segments 1..5"),
    ("video:a", "'a' in part 'video:a' is not a segment"),
    ("video", None),
    ("video:1,video:2", "modality 'video' appears twice"),
    ("video:", None),
])
def test_mask_errors_name_the_bad_part(spec, message):
  with pytest.raises(tasks.MaskError) as e:
    tasks.task_mask(spec, NAMES, 5)
  if message:
    assert message in str(e.value)


def test_unknown_task_lists_names():
  with pytest.raises(tasks.MaskError, match="unknown task 'a2b'.*a2v"):
    tasks.task_mask("a2b", NAMES, 5)
  with pytest.raises(tasks.MaskError, match="k=5 must be in 1..4"):
    tasks.task_mask("continue", NAMES, 5, k=5)

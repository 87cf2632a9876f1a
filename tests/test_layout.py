import numpy as np
import pytest

from monl import layout as L

PAPER = L.Layout((L.ModalityLayout("video", (5, 16, 16, 8), (1, 2, 2), (1, 1, 1, 1, 1)),
                  L.ModalityLayout("audio", (106, 1024), (1,), (6, 25, 25, 25, 25))))
DEFAULT = L.Layout((L.ModalityLayout("video", (16, 16, 16, 3), (2, 4, 4), (4, 4, 4, 4)),
                    L.ModalityLayout("audio", (64, 16), (4,), (16, 16, 16, 16))))
THREE = L.Layout((L.ModalityLayout("video", (6, 4, 6, 2), (3, 2, 3), (3, 3)),
                  L.ModalityLayout("audio", (10, 3), (1,), (4, 6)),
                  L.ModalityLayout("imu", (8, 2, 5), (2, 1), (2, 6))))


@pytest.mark.parametrize("lay", [PAPER, DEFAULT, THREE], ids=["paper", "default", "three"])
def test_patchify_round_trip(lay):
  rng = np.random.default_rng(0)
  clip = {m.name: rng.normal(size=(2,) + m.shape).astype(np.float32) for m in lay.modalities}
  tokens = lay.patchify(clip)
  for m in lay.modalities:
    assert tokens[m.name].shape == (2, m.num_tokens, m.patch_dim)
  back = lay.unpatchify(tokens)
  for name in clip:
    np.testing.assert_array_equal(back[name], clip[name])


def test_patch_contents_are_local():
  """A token holds exactly one (pt, ph, pw) block of the input, channels last."""
  m = L.ModalityLayout("video", (4, 4, 6, 2), (2, 2, 3), (2, 2))
  x = np.arange(np.prod(m.shape)).reshape((1,) + m.shape)
  tok = m.patchify(x)
  # token (t=1, h=0, w=1) of grid (2, 2, 2) is index 1*4 + 0*2 + 1 = 5
  expected = x[0, 2:4, 0:2, 3:6, :].reshape(-1)
  np.testing.assert_array_equal(tok[0, 5], expected)


def test_paper_cells_and_token_counts():
  assert PAPER["video"].num_tokens == 5 * 8 * 8
  assert PAPER["audio"].num_tokens == 106
  cells = PAPER.cell_of_token
  assert cells.shape == (426,)
  np.testing.assert_array_equal(np.bincount(cells), [64] * 5 + [6, 25, 25, 25, 25])
  # tokens of one cell are contiguous and cells appear in order
  assert np.all(np.diff(cells) >= 0)
  assert PAPER.num_cells == 10
  np.testing.assert_array_equal(PAPER.elements_per_cell, [16 * 16 * 8] * 5 + [s * 1024 for s in (6, 25, 25, 25, 25)])


def test_cell_of_frame():
  np.testing.assert_array_equal(PAPER.cell_of_frame("audio")[:7], [5] * 6 + [6])
  np.testing.assert_array_equal(DEFAULT.cell_of_frame("video"), np.repeat([0, 1, 2, 3], 4))


@pytest.mark.parametrize("kwargs, message", [
    (dict(shape=(10, 4), patch=(1,), segments=(5, 4)), "sum to 9, but the time length is 10"),
    (dict(shape=(10, 4, 3), patch=(1, 3), segments=(5, 5)), "patch 3 does not divide axis 1 of length 4"),
    (dict(shape=(12, 4), patch=(4,), segments=(6, 6)), "segment 0 has 6 frames, which a temporal patch of 4"),
    (dict(shape=(12, 4), patch=(2, 2), segments=(6, 6)), "needs one size per non-channel axis"),
])
def test_errors_name_modality_and_numbers(kwargs, message):
  with pytest.raises(L.LayoutError, match="modality 'audio'") as e:
    L.ModalityLayout("audio", **kwargs)
  assert message in str(e.value)


def test_segment_count_must_agree():
  with pytest.raises(L.LayoutError, match="same number of segments"):
    L.Layout((L.ModalityLayout("a", (4, 1), (1,), (2, 2)), L.ModalityLayout("b", (3, 1), (1,), (1, 1, 1))))


def test_check_shapes_names_both():
  with pytest.raises(L.LayoutError, match=r"'audio' has shape \(64, 8\), the layout expects \(64, 16\)"):
    DEFAULT.check_shapes({"video": np.zeros((1, 16, 16, 16, 3)), "audio": np.zeros((1, 64, 8))}, "batch")


def test_time_patch_times_align_modalities_in_segment_units():
  v, a = PAPER["video"].time_patch_times, PAPER["audio"].time_patch_times
  np.testing.assert_allclose(v, [0.5, 1.5, 2.5, 3.5, 4.5])
  assert a.shape == (106,) and np.all(np.diff(a) > 0)
  # every audio patch lies inside its own segment's unit interval, as the video frame of that cell does
  np.testing.assert_array_equal(np.floor(a).astype(int), PAPER["audio"].segment_of_frame)
  np.testing.assert_allclose(DEFAULT["video"].time_patch_times, np.arange(8) / 2 + 0.25)


def test_patch_zero_means_the_whole_axis():
  m = L.ModalityLayout("video", (16, 12, 20, 3), (2, 0, 0), (8, 8))
  assert m.patch == (2, 12, 20) and m.grid == (8, 1, 1) and m.patch_dim == 2 * 12 * 20 * 3
  with pytest.raises(L.LayoutError, match="must be positive"):
    L.ModalityLayout("video", (16, 12, 20, 3), (2, -1, 0), (8, 8))

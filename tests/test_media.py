"""monl.media on files made here with PyAV: clip cutting, frame picking, crop/resize, resampled audio,
broken files, the MP4 writer; and `sample` writing MP4 previews with sound from a tiny trained model."""
import os

import numpy as np
import pytest

av = pytest.importorskip("av")

from monl import media  # noqa: E402
from monl.media import frames as frames_lib  # noqa: E402
from monl.media import source  # noqa: E402

W, H, SRC_FPS, SRC_RATE, SECONDS = 97, 61, 30, 44100, 3.0
CLICKS = (0.30, 1.10, 1.75, 2.60)  # s
BG = 30
FPS, RATE, SIZE = 8, 16000, 32


def square_centre(t: float) -> tuple[int, int]:
  """(x, y) of the moving 5x5 square's centre pixel in the source frame shown from time t."""
  return int(round(25 + 16 * t)), int(round(8 + 14 * t))


def source_frame(k: int) -> np.ndarray:
  img = np.full((H, W, 3), BG, np.uint8)
  x, y = square_centre(k / SRC_FPS)
  img[y - 2:y + 3, x - 2:x + 3] = 255
  return img


def source_audio(seconds: float, rate: int) -> np.ndarray:
  """[2, S]: a 440 Hz tone left, 660 Hz right, 2 ms clicks of 0.8 on both at CLICKS."""
  t = np.arange(int(seconds * rate)) / rate
  a = np.stack([0.15 * np.sin(2 * np.pi * 440 * t), 0.15 * np.sin(2 * np.pi * 660 * t)])
  for c in CLICKS:
    if c < seconds:
      a[:, int(c * rate):int(c * rate) + int(0.002 * rate)] = 0.8
  return a.astype(np.float32)


def write_fixture(path, *, video=True, audio=True, seconds=SECONDS, vcodec="libx264", pix_fmt="yuv444p",
                  acodec="aac", rate=SRC_RATE, options=None):
  """97x61 at 30 fps (yuv444p: libx264 takes odd sizes only without chroma subsampling) + stereo audio."""
  with av.open(str(path), "w", options=options or {}) as c:
    if video:
      vs = c.add_stream(vcodec, rate=SRC_FPS)
      vs.width, vs.height, vs.pix_fmt = W, H, pix_fmt
    if audio:
      au = c.add_stream(acodec, rate=rate)
      au.layout = "stereo"
    n = int(seconds * SRC_FPS)
    wave = source_audio(seconds, rate)
    per = rate // SRC_FPS if rate % SRC_FPS == 0 else rate / SRC_FPS
    for k in range(n):
      if video:
        f = av.VideoFrame.from_ndarray(source_frame(k), format="rgb24")
        f.pts = k
        c.mux(vs.encode(f))
      if audio:
        lo, hi = int(round(k * per)), int(round((k + 1) * per)) if k < n - 1 else wave.shape[1]
        a = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, lo:hi]), format="fltp", layout="stereo")
        a.sample_rate, a.pts = rate, lo
        c.mux(au.encode(a))
    if video:
      c.mux(vs.encode(None))
    if audio:
      c.mux(au.encode(None))
  return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("media")
  out = {"mp4": write_fixture(d / "pattern.mp4"),
         "webm": write_fixture(d / "pattern.webm", vcodec="libvpx-vp9", pix_fmt="yuv420p", acodec="libopus",
                               rate=48000),
         "silent": write_fixture(d / "silent.mp4", audio=False, seconds=1.5),
         "sound_only": write_fixture(d / "sound_only.mp4", video=False, seconds=1.5),
         "faststart": write_fixture(d / "faststart.mp4", options={"movflags": "+faststart"})}
  data = open(out["mp4"], "rb").read()
  out["cut"] = str(d / "cut.mp4")  # the default muxer writes its index last: cut, it is lost
  open(out["cut"], "wb").write(data[: len(data) * 2 // 3])
  data = open(out["faststart"], "rb").read()
  out["cut_faststart"] = str(d / "cut_faststart.mp4")  # index first: the header promises more than there is
  open(out["cut_faststart"], "wb").write(data[: len(data) // 2])
  out["garbage"] = str(d / "garbage.mp4")
  open(out["garbage"], "wb").write(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
  out["missing"] = str(d / "missing.mp4")
  return out


def read(path, **kw):
  return list(media.read_clips(path, **dict(dict(fps=FPS, sample_rate=RATE, size=SIZE, clip_seconds=1.0), **kw)))


@pytest.fixture(scope="module")
def hopped(files):
  return read(files["mp4"], hop_seconds=0.5)


def test_probe(files):
  info = media.probe(files["mp4"])
  assert (info.width, info.height, info.fps, info.num_frames) == (W, H, SRC_FPS, 90)
  assert (info.sample_rate, info.channels, info.video_codec, info.audio_codec) == (SRC_RATE, 2, "h264", "aac")
  assert info.duration == pytest.approx(SECONDS, abs=0.05)
  assert "pattern.mp4: 3.0" in str(info) and "97x61 at 30 fps" in str(info)
  assert media.probe(files["silent"]).audio_codec is None


def test_clip_count_shapes_and_ids(files, hopped):
  # 3 s, 1 s clips every 0.5 s: starts 0, 0.5, ..., 2.0 (the last ends exactly at the end of the file)
  assert [c.source_id for c in hopped] == [f"pattern.mp4@{s}s" for s in ("0.0", "0.5", "1.0", "1.5", "2.0")]
  for c in hopped:
    assert c.video.shape == (FPS, SIZE, SIZE, 3) and c.video.dtype == np.uint8
    assert c.audio.shape == (RATE,) and c.audio.dtype == np.float32
  back_to_back = read(files["mp4"])
  assert [c.start for c in back_to_back] == [0.0, 1.0, 2.0]
  np.testing.assert_array_equal(back_to_back[1].video, hopped[2].video)  # the same frames, whatever the hop
  np.testing.assert_array_equal(back_to_back[1].audio, hopped[2].audio)
  two = read(files["mp4"], clip_seconds=2.0, hop_seconds=0.75, size=16)
  assert [c.source_id for c in two] == ["pattern.mp4@0.0s", "pattern.mp4@0.75s"]
  assert two[0].video.shape == (16, 16, 16, 3) and two[0].audio.shape == (32000,)


def test_reads_through_a_file_object_as_for_gs(files, hopped, monkeypatch):
  monkeypatch.setattr(source, "is_local", lambda path: False)  # FFmpeg gets an epath file object
  clips = read(files["mp4"], hop_seconds=0.5)
  assert [c.source_id for c in clips] == [c.source_id for c in hopped]
  np.testing.assert_array_equal(clips[3].video, hopped[3].video)
  np.testing.assert_array_equal(clips[3].audio, hopped[3].audio)


def test_frames_are_picked_by_timestamp_and_the_pattern_is_where_it_should_be(hopped):
  """Output frame i shows the source frame on screen at (i + 0.5) / 8 s; the square's centroid after the
  centre crop (x offset (97 - 61) // 2 = 18) and the resize (61 -> 32) is within 0.3 px of the mapped
  source position."""
  scale, x0 = SIZE / H, (W - H) // 2
  for c in hopped:
    for j, frame in enumerate(c.video):
      i = round(c.start * FPS) + j
      k = int(np.floor((i + 0.5) / FPS * SRC_FPS + 1e-9))  # the last source frame at or before the centre
      sx, sy = square_centre(k / SRC_FPS)
      want = np.array([(sx - x0 + 0.5) * scale - 0.5, (sy + 0.5) * scale - 0.5])
      w = np.clip(frame.astype(np.float32).mean(-1) - BG, 0, None)
      ys, xs = np.mgrid[:SIZE, :SIZE]
      got = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
      assert np.abs(got - want).max() < 0.3, (c.source_id, j, got, want)
      # and the time it stands for is within one source frame of the centre of its interval
      cx_true = 25 + 16 * (i + 0.5) / FPS
      assert abs(got[0] - ((cx_true - x0 + 0.5) * scale - 0.5)) < 1.5


def click_onsets(audio: np.ndarray, rate: int) -> np.ndarray:
  loud = np.flatnonzero(np.abs(audio) > 0.4)
  if not len(loud):
    return np.zeros(0)
  starts = loud[np.r_[True, np.diff(loud) > 0.02 * rate]]
  return starts / rate


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_click_times_survive_resampling(files, hopped, kind):
  """Stereo at 44.1 / 48 kHz -> mono at 16 kHz: every click is where it was, to well within a frame."""
  clips = hopped if kind == "mp4" else read(files[kind], hop_seconds=0.5)
  assert len(clips) == 5
  for c in clips:
    want = [t - c.start for t in CLICKS if c.start + 0.01 <= t < c.start + 0.99]
    got = click_onsets(c.audio, RATE)
    assert len(got) == len(want), (c.source_id, got, want)
    np.testing.assert_allclose(got, want, atol=0.002)  # a frame is 0.125 s
    # mono = the mean of the two 0.15-amplitude tones: RMS 0.075; the clicks stay at 0.8
    assert np.sqrt(np.mean(c.audio[np.abs(c.audio) < 0.4] ** 2)) == pytest.approx(0.075, rel=0.1)
    assert 0.7 < np.abs(c.audio).max() <= 1.0


@pytest.mark.parametrize("name, reason", [
    ("silent", "no audio stream"),
    ("sound_only", "no video stream"),
    ("cut", "undecodable: FFmpeg cannot open it"),
    ("cut_faststart", "truncated"),
    ("garbage", "undecodable"),
    ("missing", "no such file"),
])
def test_broken_files_name_the_file_and_the_reason(files, name, reason):
  with pytest.raises(media.MediaError, match=reason) as e:
    read(files[name])
  assert e.value.path == files[name] and str(e.value).startswith(files[name] + ": ")


def test_shorter_than_one_clip(files):
  with pytest.raises(media.MediaError, match=r"pattern.mp4: shorter than one clip: 3.000 s < clip_seconds 4 s"):
    media.read_clips(files["mp4"], fps=FPS, sample_rate=RATE, size=SIZE, clip_seconds=4.0)
  with pytest.raises(ValueError, match=r"clip_seconds \* fps must be a whole number"):
    media.read_clips(files["mp4"], fps=FPS, sample_rate=RATE, size=SIZE, clip_seconds=0.3)


def read_back(path):
  """PyAV's view of a file: (average fps, [frames rgb], mono samples, sample rate, duration)."""
  with av.open(str(path)) as c:
    vs, au = c.streams.video[0], c.streams.audio[0]
    frames, samples = [], []
    for packet in c.demux(vs, au):
      for f in packet.decode():
        if packet.stream.type == "video":
          frames.append(f.to_ndarray(format="rgb24"))
        else:
          samples.append(f.to_ndarray()[0])
    return float(vs.average_rate), np.stack(frames), np.concatenate(samples), au.rate, c.duration / 1e6


@pytest.mark.parametrize("local", [True, False])
def test_write_mp4_round_trip(tmp_path, monkeypatch, local):
  """A flat colour at an odd size (padded to even) + a 2 s tone: fps, frame count, colour and audio
  length come back; the non-local branch (temp file + copy, as for gs://) writes the same."""
  if not local:
    monkeypatch.setattr(source, "is_local", lambda path: False)
  colour = np.array([200, 40, 90], np.uint8)
  video = np.broadcast_to(colour, (16, 61, 97, 3))
  t = np.arange(32000) / 16000
  audio = 0.3 * np.sin(2 * np.pi * 500 * t)
  out = media.write_mp4(tmp_path / "flat.mp4", video, audio, fps=8, sample_rate=16000)
  assert out.name == "flat.mp4"
  fps, frames, samples, rate, duration = read_back(tmp_path / "flat.mp4")
  assert fps == 8 and frames.shape == (16, 62, 98, 3) and rate == 16000
  assert np.abs(frames.astype(int) - colour).max() <= 4
  assert 32000 <= len(samples) < 32000 + 1024 * 2  # AAC rounds up to whole 1024-sample frames
  assert duration == pytest.approx(2.0, abs=1024 / 16000)
  assert np.sqrt(np.mean(samples[1000:31000] ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
  # float video in [0, 1] and monl's reader agree
  media.write_mp4(tmp_path / "float.mp4", video / 255.0, audio, fps=8, sample_rate=16000)
  (clip,) = media.read_clips(tmp_path / "float.mp4", fps=8, sample_rate=16000, size=16, clip_seconds=2.0)
  assert np.abs(clip.video.astype(int) - colour).max() <= 4
  np.testing.assert_allclose(np.sqrt(np.mean(clip.audio[1000:31000] ** 2)), 0.3 / np.sqrt(2), rtol=0.05)


def test_write_mp4_refuses_bad_arrays(tmp_path):
  v = np.zeros((4, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=r"bad.mp4: audio must be a mono waveform \[S >= 1\], got shape \[2, 10\]"):
    media.write_mp4(tmp_path / "bad.mp4", v, np.zeros((2, 10)), fps=8, sample_rate=16000)
  with pytest.raises(ValueError, match="sample_rate 12345 is not an AAC rate"):
    media.write_mp4(tmp_path / "bad.mp4", v, np.zeros(10), fps=8, sample_rate=12345)
  with pytest.raises(ValueError, match=r"video must be \[T >= 1, H, W, 3\], got shape \[8, 8, 3\]"):
    media.write_mp4(tmp_path / "bad.mp4", v[0], np.zeros(10), fps=8, sample_rate=16000)


def test_side_by_side_and_upscale():
  a = np.zeros((3, 4, 5, 3), np.uint8)
  b = np.ones((3, 6, 2, 3), np.float32)
  s = media.side_by_side([a, b], gap=2)
  assert s.shape == (3, 6, 9, 3) and s.dtype == np.uint8
  assert (s[:, :4, :5] == 0).all() and (s[:, 4:, :5] == 255).all()  # tops aligned, white below
  assert (s[:, :, 5:7] == 255).all() and (s[:, :, 7:] == 255).all()
  with pytest.raises(ValueError, match="one T"):
    media.side_by_side([a, b[:2]])
  assert media.upscale_nearest(a, 128).shape == (3, 128, 160, 3)  # 4 px -> x32
  assert frames_lib.pad_even(a[:, :3]).shape == (3, 4, 6, 3)


def test_missing_pyav_says_how_to_install_it(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "av", None)
  with pytest.raises(ImportError, match="pip install av"):
    media.require_av()


# ----------------------------------------------------------------------------------------------------
# sample -> MP4


def test_sample_writes_mp4_previews_with_sound(trained, tmp_path):
  """a2v on the tiny model: <i>.mp4 (128x128, 8 fps, 2 s, 16 kHz) for the previewed clips only, and
  <i>_compare.mp4 with three panels; the GIF/WAV previews are still there."""
  from monl.sample import run
  config, workdir = trained
  manifests = run.run(config, workdir, run.SampleRequest(task="a2v", num=3, steps=2, previews=2), str(tmp_path))
  out = tmp_path / "a2v"
  names = {p.name for p in out.iterdir()}
  assert {"00000.mp4", "00001.mp4", "00000_compare.mp4", "00001_compare.mp4", "00000.gif", "00000.wav",
          "contact_sheet.png"} <= names and "00002.mp4" not in names
  assert {"00000.mp4", "00000_compare.mp4"} <= set(manifests["a2v"]["previews"])
  fps, frames, samples, rate, duration = read_back(out / "00000.mp4")
  assert (fps, frames.shape, rate) == (8, (16, 128, 128, 3), 16000)
  assert duration == pytest.approx(2.0, abs=0.07) and 32000 <= len(samples) < 32000 + 2048
  with np.load(out / "00000.npz") as z:  # the frames are the generated clip's, upscaled x8
    want = frames_lib.to_uint8(z["video"]).repeat(8, 1).repeat(8, 2)
  assert np.abs(frames.astype(int) - want).mean() < 6
  fps, frames, samples, rate, _ = read_back(out / "00000_compare.mp4")
  assert fps == 8 and frames.shape == (16, 128 + 8, 3 * 128 + 2 * 2, 3) and len(samples) >= 32000
  # a2v gives no video: the given-input panel is grey; its bar says video generated (red), audio given (green)
  # (rows next to the bar are left out: H.264 stores colour at half resolution and blurs it over edges)
  assert np.abs(frames[:, :120, :120].astype(int) - 128).max() <= 4
  bar = frames[:, 128:136, :120].astype(int)
  assert (bar[:, 1, :, 0] - bar[:, 1, :, 1] > 80).all() and (bar[:, 6, :, 1] - bar[:, 6, :, 0] > 60).all()


def test_mp4_note_without_a_decoder(trained, monkeypatch):
  from monl.data import decoders
  from monl.sample import run
  config, workdir = trained
  gen = run.Generator(config, workdir)
  assert run.mp4_note(gen, run.SampleRequest(previews=2)) is None
  monkeypatch.setattr(decoders, "decoder_for", lambda spec: None)
  assert "no decoder" in run.mp4_note(gen, run.SampleRequest(previews=2))
  assert run.mp4_note(gen, run.SampleRequest(previews=0)) is None

"""Helpers shared by the autoencoder, encode and media end-to-end tests: the shrunk autoencoder config
and video files with sound written here with PyAV (odd sizes and rates, no audio, truncated)."""
import numpy as np


def tiny_ae_config(data_dir: str, **overrides):
  """`configs/autoencoder_tiny.py` shrunk for tests: 16x16 frames, 8-channel levels, batch 4, 4 steps,
  the built-in media data (16 train / 4 test clips) built under `data_dir`."""
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


def scene(seconds: float, fps: float, rate: int, width: int, height: int, channels: int = 2):
  """(video uint8 [T, height, width, 3], audio float32 [channels, S]): a bright square moving right
  and down over a dark background; a 440 Hz tone (660 Hz on a second channel) with a 3 ms click every
  0.4 s."""
  n = int(round(seconds * fps))
  video = np.full((n, height, width, 3), 30, np.uint8)
  side = max(3, min(width, height) // 5)
  for k in range(n):
    x = int((width - side) * (k / max(n - 1, 1)))
    y = int((height - side) * (0.5 + 0.5 * np.sin(2 * np.pi * k / n)))
    video[k, y:y + side, x:x + side] = (250, 200, 40)
  t = np.arange(int(round(seconds * rate))) / rate
  audio = np.stack([0.2 * np.sin(2 * np.pi * f * t) for f in (440.0, 660.0)[:channels]])
  for c in np.arange(0.2, seconds, 0.4):
    audio[:, int(c * rate):int(c * rate) + int(0.003 * rate)] = 0.7
  return video, audio.astype(np.float32)


def write_av(path, *, seconds: float, fps: int, rate: int, width: int, height: int, audio: bool = True,
             options=None) -> str:
  """A file written with PyAV itself: H.264 (yuv444p, so odd sizes need no padding) + stereo AAC."""
  import av
  video, wave = scene(seconds, fps, rate, width, height)
  with av.open(str(path), "w", options=options or {}) as c:
    vs = c.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv444p"
    if audio:
      au = c.add_stream("aac", rate=rate)
      au.layout = "stereo"
    per = wave.shape[1] / len(video)
    for k, frame in enumerate(video):
      f = av.VideoFrame.from_ndarray(frame, format="rgb24")
      f.pts = k
      c.mux(vs.encode(f))
      if audio:
        lo, hi = int(round(k * per)), int(round((k + 1) * per))
        a = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, lo:hi]), format="fltp", layout="stereo")
        a.sample_rate, a.pts = rate, lo
        c.mux(au.encode(a))
    c.mux(vs.encode(None))
    if audio:
      c.mux(au.encode(None))
  return str(path)


def truncate(src, dst, fraction: float = 0.5) -> str:
  """`dst` = the first `fraction` of the bytes of `src` (a +faststart file: the index promises more)."""
  data = open(src, "rb").read()
  open(dst, "wb").write(data[: int(len(data) * fraction)])
  return str(dst)

"""The built-in audiovisual dataset: a bouncing ball you can see and hear, with known ground truth.

Every clip lasts 2 s and is cut into 4 segments of 0.5 s. It is procedural and seeded (no downloads):

- video `[16, 16, 16, 3]` float32 in [0, 1]: 16 frames at 8 fps of a 16×16 RGB box. Frame j shows the
  scene at time (j + 0.5) / 8 s. One ball (random radius 0.09–0.16 of the box, saturated random colour,
  soft 1-pixel edge) over a uniform grey background (random level 0–0.2). Physics in box units (the box
  is [0, 1]², y up): gravity `GRAVITY` = 3 /s², elastic side walls, floor restitution 0.8–0.95. The start
  is chosen so the ball never reaches the ceiling and never comes to rest within 2 s (every floor
  impact is faster than ~1 box/s).
- audio `[64, 16]` float32: log-magnitude spectrogram frames at 32 frames/s over 16 frequency bins
  (bin b ≈ `BIN_FREQS_HZ[b]`, log-spaced 200–3200 Hz). Frame k covers [k/32, (k+1)/32) s and shows the
  scene at its centre. Content: a tone whose (fractional) bin follows the ball's centre height
  y ∈ [0, 1] linearly, `bin = PITCH_LO + (PITCH_HI - PITCH_LO) * y` (Gaussian across bins, σ 0.8 bin),
  plus a broadband click (level `CLICK`) in the frame of each floor bounce (and 0.3× in the next),
  over a noise floor of about 0.01: `audio = log(tone + click + floor)`.

Ground-truth scores (for generated clips, on the RAW de-normalised scale; lower is better, 0 = ideal):
- `av_agreement(video, audio)`: mean |height seen in the video − height implied by the audio pitch| over
  video frames, in box units (the box is 1 tall). Ground truth ≈ 0.01; unrelated pairs ≈ 0.2–0.3.
- `trajectory_error(video)`: mean deviation (box units per frame²) of the ball's second differences from
  free fall (Δ²x = 0, Δ²y = −GRAVITY·dt²), where a kick towards the inside of the box is excused next to
  the floor or a wall (a bounce). Ground truth ≈ 0.002; frame-shuffled video ≈ 0.1.
- `bounce_sync(video, audio)`: symmetric mean distance in seconds between floor bounces seen in the video
  and clicks heard in the audio, each distance capped at 0.5 s (0.5 if one side has none).
- `background_noise(video)`: RMS deviation from a flat colour of the pixels away from the ball (raw
  units). Ground truth: exactly 0; speckle, stains and ghost balls raise it.
- `appearance_drift(video)`: how far each frame's background colour and ball colour are from their
  medians over the clip (raw units). Ground truth: exactly 0; a continuation that changes the scene's
  colours, or a ball that dims in some frames, raises it.

Decoders for looking and listening: `video_to_frames` → `write_gif`; `audio_to_waveform` (additive
resynthesis: one sinusoid per bin) → `write_wav`.

`ensure_builtin_dataset` generates the npz clips into a temporary directory and runs
`monl.data.prepare` (the machinery shared with `monl.data.symbols`, in `monl.data.builtin`);
`dataset.json`'s `produced_by.generator` records the generator version and parameters, so an existing
dataset is reused only when they match. `resolve_data_dir` picks the built-in dataset that
`config.data.builtin` names.
"""
from __future__ import annotations

import math
import wave
from typing import Any

import numpy as np
from etils import epath

from monl.data import builtin
from monl.data import format as fmt

GENERATOR_NAME = "monl.data.synthetic.bouncing_ball"
GENERATOR_VERSION = 1  # bump whenever generated clips change

SECONDS = 2.0
VIDEO_FPS = 8
AUDIO_FPS = 32
NUM_SEGMENTS = 4
VIDEO_SHAPE = (16, 16, 16, 3)  # [T, H, W, RGB]
AUDIO_SHAPE = (64, 16)  # [T, frequency bins]
VIDEO_SEGMENTS = (4, 4, 4, 4)
AUDIO_SEGMENTS = (16, 16, 16, 16)

GRAVITY = 3.0  # box heights / s²
PITCH_LO, PITCH_HI = 1.0, 14.0  # fractional bin of the tone at y = 0 and y = 1
PITCH_SIGMA = 0.8  # tone width across bins
CLICK = 0.6  # linear magnitude of a bounce click in every bin
NOISE_FLOOR = 0.01
BIN_FREQS_HZ = np.geomspace(200.0, 3200.0, AUDIO_SHAPE[1])
EDGE = 1.0 / 16  # soft edge width of the ball (one pixel)
MAX_RADIUS = 0.16  # largest ball radius (box units)

# Score constants (box units). A floor bounce happens within FLOOR_ZONE of the bottom (centre height;
# radius ≤ 0.16 plus one frame of the fastest fall); a wall bounce within WALL_ZONE of a side wall.
FLOOR_ZONE = 0.45
WALL_ZONE = 0.3
SCORE_CAP_S = 0.5


# ----------------------------------------------------------------------------------------------------
# simulation and rendering


def _simulate_y(y0: float, vy0: float, r: float, e: float, times: np.ndarray, gravity: float = GRAVITY,
                seconds: float = SECONDS) -> tuple[np.ndarray, list[float]]:
  """Centre height at `times` (sorted) and floor bounce times before `seconds`, by exact ballistic arcs
  between bounces (`gravity` in box heights / s²)."""
  ys = np.empty_like(times)
  bounces: list[float] = []
  t0, y, v = 0.0, y0, vy0
  i = 0
  while i < len(times):
    # Time from t0 until the arc reaches the floor (y = r) going down.
    dt_hit = (v + math.sqrt(v * v + 2 * gravity * (y - r))) / gravity
    t_hit = t0 + dt_hit
    while i < len(times) and times[i] <= t_hit:
      tau = times[i] - t0
      ys[i] = y + v * tau - 0.5 * gravity * tau * tau
      i += 1
    if t_hit < seconds:
      bounces.append(t_hit)
    v_impact = v - gravity * dt_hit
    t0, y, v = t_hit, r, -e * v_impact
    if v < 1e-3:  # at rest on the floor (else infinitely many ever shorter bounces, Zeno's)
      ys[i:] = r
      break
  return ys, bounces


def _fold(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Position of a point moving freely in [lo, hi] with elastic walls, from its unfolded position."""
  span = hi - lo
  w = np.mod(u - lo, 2 * span)
  return lo + np.where(w < span, w, 2 * span - w)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
  return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def generate_clip(rng: np.random.Generator) -> dict[str, Any]:
  """One clip: `{"video": float32 [16,16,16,3], "audio": float32 [64,16], "meta": dict}`.

  meta: radius, colour, background, restitution, x0/y0/vx0/vy0, `bounce_times` (s), and the true
  centre positions at video frames (`video_xy` [16, 2]) and audio frames (`audio_y` [64])."""
  t_v, h, w, _ = VIDEO_SHAPE
  t_a, n_bins = AUDIO_SHAPE
  r = rng.uniform(0.09, MAX_RADIUS)
  e = rng.uniform(0.8, 0.95)
  vx = rng.uniform(0.25, 0.6) * rng.choice([-1.0, 1.0])
  vy = rng.uniform(-0.5, 0.5)
  # Start high enough never to come to rest in 2 s, low enough never to touch the ceiling.
  y_top = 1.0 - r - 0.02
  y0 = rng.uniform(0.55, y_top - max(vy, 0.0) ** 2 / (2 * GRAVITY))
  x0 = rng.uniform(r, 1.0 - r)
  colour = _hsv_to_rgb(rng.uniform(), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
  background = rng.uniform(0.0, 0.2)

  times_v = (np.arange(t_v) + 0.5) / VIDEO_FPS
  times_a = (np.arange(t_a) + 0.5) / AUDIO_FPS
  times = np.concatenate([times_v, times_a])
  order = np.argsort(times, kind="stable")
  ys_sorted, bounces = _simulate_y(y0, vy, r, e, times[order])
  ys = np.empty_like(times)
  ys[order] = ys_sorted
  y_v, y_a = ys[:t_v], ys[t_v:]
  x_v = _fold(x0 + vx * times_v, r, 1.0 - r)

  # Video: soft disc over the background; pixel centres at ((i + 0.5) / W, 1 - (row + 0.5) / H).
  px = (np.arange(w) + 0.5) / w
  py = 1.0 - (np.arange(h) + 0.5) / h
  dist = np.sqrt((px[None, None, :] - x_v[:, None, None]) ** 2 + (py[None, :, None] - y_v[:, None, None]) ** 2)
  alpha = np.clip((r - dist) / EDGE + 0.5, 0.0, 1.0)[..., None]  # [T, H, W, 1]
  video = background * (1.0 - alpha) + colour * alpha

  # Audio: tone following the height, clicks at floor bounces, a jittered noise floor.
  bins = np.arange(n_bins)
  pitch = PITCH_LO + (PITCH_HI - PITCH_LO) * y_a
  mag = np.exp(-0.5 * ((bins[None, :] - pitch[:, None]) / PITCH_SIGMA) ** 2)
  for tb in bounces:
    k = int(tb * AUDIO_FPS)
    mag[k] += CLICK
    if k + 1 < t_a:
      mag[k + 1] += 0.3 * CLICK
  mag += NOISE_FLOOR * np.exp(0.2 * rng.standard_normal(mag.shape))
  audio = np.log(mag)

  meta = {"radius": r, "restitution": e, "colour": colour, "background": background, "x0": x0, "y0": y0,
          "vx0": vx, "vy0": vy, "bounce_times": np.asarray(bounces), "video_xy": np.stack([x_v, y_v], -1),
          "audio_y": y_a}
  return {"video": video.astype(np.float32), "audio": audio.astype(np.float32), "meta": meta}


clip_rng = builtin.clip_rng  # the generator of clip `index` of split number `split_index`


def write_npz_dataset(out_dir: fmt.PathLike, num_train: int, num_test: int, seed: int,
                      progress: bool = False) -> epath.Path:
  """Writes `out_dir/{train,test}/clip_XXXXXX.npz` (keys `video`, `audio`), the input of `prepare`."""
  return builtin.write_npz_clips(out_dir, generate_clip, num_train, num_test, seed, progress=progress)


def generator_params(num_train: int, num_test: int, seed: int, num_shards: int) -> dict[str, Any]:
  """What `produced_by.generator` records; an existing dataset is reused only if it is equal."""
  return builtin.generator_params(GENERATOR_NAME, GENERATOR_VERSION, num_train, num_test, seed, num_shards)


def ensure_builtin_dataset(dataset_dir: fmt.PathLike, num_train: int = 2048, num_test: int = 256,
                           seed: int = 0, num_shards: int = 4, progress: bool = False) -> epath.Path:
  """Returns `dataset_dir` (user-expanded) holding the built-in dataset, building it if needed.

  Reuses a complete dataset whose `produced_by.generator` equals `generator_params(...)`; rebuilds one
  produced by this generator with other parameters or version; refuses (DatasetError) to touch a
  directory that holds anything else (`monl.data.builtin.ensure_dataset`). Multi-host: call it on one
  process and wait, or give each host its own directory."""
  return builtin.ensure_dataset(
      dataset_dir, generator_params(num_train, num_test, seed, num_shards), generate_clip,
      segments={"video": VIDEO_SEGMENTS, "audio": AUDIO_SEGMENTS},
      seconds_per_segment=(SECONDS / NUM_SEGMENTS,) * NUM_SEGMENTS, source="monl.data.synthetic",
      progress=progress)


def resolve_data_dir(data_config: Any) -> epath.Path:
  """`config.data` → the dataset directory: `data.dir`, or, when it is '', the built-in dataset that
  `data.builtin` names (`monl.data.builtin.DATASETS`; no field = this bouncing ball)."""
  return builtin.resolve_data_dir(data_config)


# ----------------------------------------------------------------------------------------------------
# decoders (look and listen)


def video_to_frames(video: np.ndarray, scale: int = 8) -> np.ndarray:
  """`video: [T, H, W, 3]` in [0, 1] → uint8 `[T, H*scale, W*scale, 3]` (clipped, nearest upscaling)."""
  v = np.asarray(video, np.float32)
  if v.ndim != 4 or v.shape[-1] != 3:
    raise ValueError(f"video_to_frames: expected [T, H, W, 3], got shape {list(v.shape)}")
  frames = (np.clip(v, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def write_gif(path: fmt.PathLike, frames: np.ndarray, fps: float = VIDEO_FPS) -> epath.Path:
  """Writes uint8 `frames: [T, H, W, 3]` as a looping GIF (Pillow)."""
  from PIL import Image
  path = epath.Path(path)
  images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
  with path.open("wb") as f:
    images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)
  return path


def audio_to_waveform(audio: np.ndarray, sample_rate: int = 16000, frame_rate: float = AUDIO_FPS,
                      freqs_hz: np.ndarray = BIN_FREQS_HZ) -> np.ndarray:
  """Log-magnitude frames `audio: [T, F]` → float32 waveform `[T * sample_rate / frame_rate]`.

  Additive resynthesis: one sinusoid per bin at `freqs_hz[b]`, its amplitude the bin's magnitude
  interpolated linearly between frame centres, fixed per-bin phases. Scaled down only if it would clip."""
  a = np.asarray(audio, np.float64)
  if a.ndim != 2 or a.shape[1] != len(freqs_hz):
    raise ValueError(f"audio_to_waveform: expected [T, {len(freqs_hz)}], got shape {list(a.shape)}")
  mag = np.exp(np.minimum(a, 10.0)) - NOISE_FLOOR  # drop the floor's hum; cap absurd generated values
  mag = np.maximum(mag, 0.0)
  n = int(round(a.shape[0] * sample_rate / frame_rate))
  t = np.arange(n) / sample_rate
  centres = (np.arange(a.shape[0]) + 0.5) / frame_rate
  phases = np.random.default_rng(0).uniform(0, 2 * np.pi, len(freqs_hz))
  wave_ = np.zeros(n)
  for b, f in enumerate(freqs_hz):
    wave_ += np.interp(t, centres, mag[:, b]) * np.sin(2 * np.pi * f * t + phases[b])
  wave_ *= 0.3  # a single full tone (magnitude 1) at 0.3 of full scale
  peak = np.abs(wave_).max(initial=0.0)
  if peak > 1.0:
    wave_ /= peak
  return wave_.astype(np.float32)


def write_wav(path: fmt.PathLike, wave_: np.ndarray, sample_rate: int = 16000) -> epath.Path:
  """Writes a mono float waveform in [-1, 1] as 16-bit PCM WAV (stdlib `wave`)."""
  path = epath.Path(path)
  pcm = (np.clip(np.asarray(wave_, np.float64), -1.0, 1.0) * 32767.0).round().astype("<i2")
  with path.open("wb") as f, wave.open(f, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(pcm.tobytes())
  return path


# ----------------------------------------------------------------------------------------------------
# ground-truth scores (raw scale; lower is better)


def _batched(x: np.ndarray, rank: int, name: str) -> tuple[np.ndarray, bool]:
  x = np.asarray(x, np.float64)
  if x.ndim == rank:
    return x[None], False
  if x.ndim == rank + 1:
    return x, True
  raise ValueError(f"{name}: expected rank {rank} (one clip) or {rank + 1} (a batch), got shape "
                   f"{list(x.shape)}")


def _out(scores: np.ndarray, batched: bool) -> np.ndarray | float:
  return scores if batched else float(scores[0])


def ball_positions(video: np.ndarray) -> np.ndarray:
  """Ball centre per frame, `video: [B, T, H, W, 3]` → `[B, T, 2]` (x, y) in box units (y up).

  Weighted centroid of the pixels that differ from the frame's median colour (the background) by more
  than half the frame's largest difference: the ball's core, symmetric around its centre."""
  _, _, h, w, _ = video.shape
  bg = np.median(video.reshape(*video.shape[:2], -1, 3), axis=2)[:, :, None, None, :]
  d = np.linalg.norm(video - bg, axis=-1)  # [B, T, H, W]
  wgt = np.maximum(d - 0.5 * d.max(axis=(2, 3), keepdims=True), 0.0)
  total = np.maximum(wgt.sum(axis=(2, 3)), 1e-12)
  px = (np.arange(w) + 0.5) / w
  py = 1.0 - (np.arange(h) + 0.5) / h
  x = (wgt * px[None, None, None, :]).sum(axis=(2, 3)) / total
  y = (wgt * py[None, None, :, None]).sum(axis=(2, 3)) / total
  return np.stack([x, y], axis=-1)


def audio_heights(audio: np.ndarray) -> np.ndarray:
  """Height implied by the tone's pitch, `audio: [B, T, F]` → `[B, T]` in box units.

  The floor and any click (broadband: the median bin) are removed in the linear domain; the peak bin is
  refined by a parabola through the log magnitudes of its neighbours (exact for a Gaussian tone)."""
  mag = np.exp(np.minimum(audio, 10.0))
  mag = np.maximum(mag - np.median(mag, axis=-1, keepdims=True), 1e-6)
  lm = np.log(mag)
  n_bins = lm.shape[-1]
  k = np.clip(np.argmax(lm, axis=-1), 1, n_bins - 2)
  lo = np.take_along_axis(lm, (k - 1)[..., None], -1)[..., 0]
  mid = np.take_along_axis(lm, k[..., None], -1)[..., 0]
  hi = np.take_along_axis(lm, (k + 1)[..., None], -1)[..., 0]
  denom = lo - 2 * mid + hi
  delta = np.where(denom < -1e-9, 0.5 * (lo - hi) / np.where(denom < -1e-9, denom, -1.0), 0.0)
  pitch = k + np.clip(delta, -0.5, 0.5)
  return (pitch - PITCH_LO) / (PITCH_HI - PITCH_LO)


def av_agreement(video: np.ndarray, audio: np.ndarray) -> np.ndarray | float:
  """Mean |video height − audio-implied height| over video frames, box units (lower is better).

  `video: [(B,) T_v, H, W, 3]`, `audio: [(B,) T_a, F]` raw scale → `[B]` (or a float for one clip).
  Audio heights are interpolated to the video frame times (frame centres of each)."""
  v, batched = _batched(video, 4, "av_agreement video")
  a, _ = _batched(audio, 2, "av_agreement audio")
  if len(v) != len(a):
    raise ValueError(f"av_agreement: {len(v)} videos but {len(a)} audio clips")
  hv = ball_positions(v)[..., 1]  # [B, T_v]
  ha = audio_heights(a)  # [B, T_a]
  t_v = (np.arange(hv.shape[1]) + 0.5) / hv.shape[1]  # clip fraction
  t_a = (np.arange(ha.shape[1]) + 0.5) / ha.shape[1]
  ha_v = np.stack([np.interp(t_v, t_a, row) for row in ha])
  return _out(np.abs(hv - ha_v).mean(axis=1), batched)


def _background(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per frame of `v: [B, T, H, W, 3]`: the mask of pixels whose centre lies farther than the largest ball
  radius plus two pixels from the ball's centre (`ball_positions`), `[B, T, H, W, 1]`, and their median
  colour (the background's), `[B, T, 3]`."""
  _, _, h, w, _ = v.shape
  pos = ball_positions(v)  # [B, T, 2]
  px = (np.arange(w) + 0.5) / w
  py = 1.0 - (np.arange(h) + 0.5) / h
  dist = np.sqrt((px[None, None, None, :] - pos[..., 0, None, None]) ** 2 +
                 (py[None, None, :, None] - pos[..., 1, None, None]) ** 2)  # [B, T, H, W]
  far = (dist > MAX_RADIUS + 2.0 / max(h, w))[..., None]
  bg = np.stack([[np.median(f[m[..., 0]], axis=0) for f, m in zip(clip, mask)] for clip, mask in zip(v, far)])
  return far, bg


def background_noise(video: np.ndarray) -> np.ndarray | float:
  """RMS deviation of the background from a flat colour, raw units (lower is better; real clips: 0).

  `video: [(B,) T, H, W, 3]` → `[B]`. Per frame, the pixels away from the ball (`_background`) against
  their median colour; mean over frames. Speckle, stains and ghost balls raise it; the ball itself is
  never counted."""
  v, batched = _batched(video, 4, "background_noise video")
  far, bg = _background(v)
  sq = np.where(far, (v - bg[:, :, None, None, :]) ** 2, 0.0).sum(axis=(2, 3, 4))
  rms = np.sqrt(sq / np.maximum(3 * far.sum(axis=(2, 3, 4)), 1))  # [B, T]
  return _out(rms.mean(axis=1), batched)


def appearance_drift(video: np.ndarray) -> np.ndarray | float:
  """How much the scene's colours change over the clip, raw units (lower is better; real clips: 0).

  `video: [(B,) T, H, W, 3]` → `[B]`. Per frame two colours: the background's (`_background`) and the
  ball's (the pixel farthest from the background colour: the ball's core, exactly its colour in a real
  clip). Each is compared with its median over the clip's frames (RMS over the 3 channels); the score
  is the mean over frames of the two deviations' average. A continuation whose background or ball
  changes colour from the given frames, or a ball that dims in some frames, raises it; motion does not."""
  v, batched = _batched(video, 4, "appearance_drift video")
  _, bg = _background(v)
  d = np.linalg.norm(v - bg[:, :, None, None, :], axis=-1).reshape(*v.shape[:2], -1)  # [B, T, H*W]
  core = np.take_along_axis(v.reshape(*v.shape[:2], -1, 3), d.argmax(-1)[..., None, None], axis=2)[:, :, 0]
  drift = [np.sqrt(((c - np.median(c, axis=1, keepdims=True)) ** 2).mean(-1)) for c in (bg, core)]
  return _out((0.5 * (drift[0] + drift[1])).mean(axis=1), batched)


def _second_differences(video: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Positions [B, T, 2] and excess accelerations vs free fall per interior frame: ex, ey [B, T-2]."""
  pos = ball_positions(video)
  dt = 1.0 / VIDEO_FPS
  d2 = pos[:, 2:] - 2 * pos[:, 1:-1] + pos[:, :-2]
  return pos, d2[..., 0], d2[..., 1] + GRAVITY * dt * dt


def trajectory_error(video: np.ndarray) -> np.ndarray | float:
  """Mean deviation from the physics over frame triples, box units per frame² (lower is better).

  `video: [(B,) T, H, W, 3]` raw scale → `[B]` (or a float). For each triple (j-1, j, j+1) the excess
  acceleration over free fall is |Δ²x| + |Δ²y + GRAVITY·dt²|; a vertical kick upward is excused when
  the lowest of the three frames is within FLOOR_ZONE of the bottom (a floor bounce), a horizontal kick
  towards the centre when a frame is within WALL_ZONE of that wall (a wall bounce)."""
  v, batched = _batched(video, 4, "trajectory_error video")
  pos, ex, ey = _second_differences(v)
  x3 = np.stack([pos[:, :-2, 0], pos[:, 1:-1, 0], pos[:, 2:, 0]], -1)
  y_low = np.minimum(np.minimum(pos[:, :-2, 1], pos[:, 1:-1, 1]), pos[:, 2:, 1])
  floor_ok = (ey > 0) & (y_low < FLOOR_ZONE)
  wall_ok = ((ex > 0) & (x3.min(-1) < WALL_ZONE)) | ((ex < 0) & (x3.max(-1) > 1.0 - WALL_ZONE))
  err = np.where(floor_ok, 0.0, np.abs(ey)) + np.where(wall_ok, 0.0, np.abs(ex))
  return _out(err.mean(axis=1), batched)


def _arc(t1: float, y1: float, t2: float, y2: float) -> tuple[float, float]:
  """(a, b) of the free-fall arc y = a + b t − GRAVITY t² / 2 through two points."""
  g1, g2 = y1 + 0.5 * GRAVITY * t1 * t1, y2 + 0.5 * GRAVITY * t2 * t2
  b = (g2 - g1) / (t2 - t1)
  return g1 - b * t1, b


def video_bounce_times(video: np.ndarray, min_kick: float = 0.05) -> list[np.ndarray]:
  """Floor bounces seen in `video: [B, T, H, W, 3]`: per clip, times in seconds.

  A run of consecutive triples with an upward kick (Δ²y above free fall) next to the floor is one
  bounce if its summed kick exceeds `min_kick`. Its time is where the free-fall arc through the two
  frames before it meets the arc through the two frames after it (both arcs have the same curvature,
  so they cross once, at the bounce); where two frames on each side are missing (clip edges), the
  kick-weighted mean of the middle frames' times."""
  pos, _, ey = _second_differences(np.asarray(video, np.float64))
  y = pos[..., 1]
  n_t = y.shape[1]
  times = (np.arange(n_t) + 0.5) / VIDEO_FPS
  y_low = np.minimum(np.minimum(y[:, :-2], y[:, 1:-1]), y[:, 2:])
  kicks = np.where((ey > 0) & (y_low < FLOOR_ZONE), ey, 0.0)  # [B, T-2], triple c ↔ middle frame c+1
  out = []
  for yc, kick in zip(y, kicks):
    found, c = [], 0
    while c < len(kick):
      if kick[c] <= 0:
        c += 1
        continue
      e = c
      while e < len(kick) and kick[e] > 0:
        e += 1
      run = kick[c:e]
      if run.sum() > min_kick:
        best = None
        # Bounce between frames j and j+1 puts kicks on middle frames j and j+1 (triples j-1 and j).
        for j in range(c, e + 1):
          if j - 1 < 0 or j + 2 > n_t - 1:
            continue
          a1, b1 = _arc(times[j - 1], yc[j - 1], times[j], yc[j])
          a2, b2 = _arc(times[j + 1], yc[j + 1], times[j + 2], yc[j + 2])
          if abs(b1 - b2) < 1e-9:
            continue
          tb = (a2 - a1) / (b1 - b2)
          weight = kick[j - 1] + (kick[j] if j < len(kick) else 0.0)
          if times[j] - 1e-6 <= tb <= times[j + 1] + 1e-6 and (best is None or weight > best[0]):
            best = (weight, tb)
        if best is None:
          best = (0.0, float((run * times[c + 1:e + 1]).sum() / run.sum()))
        found.append(float(best[1]))
      c = e
    out.append(np.asarray(found))
  return out


def audio_click_times(audio: np.ndarray, threshold: float = 0.5 * CLICK) -> list[np.ndarray]:
  """Clicks heard in `audio: [B, T, F]`: per clip, centre times (s) of frames whose broadband level
  (median bin magnitude above the clip's typical one) exceeds `threshold`; adjacent frames merge."""
  mag = np.exp(np.minimum(np.asarray(audio, np.float64), 10.0))
  level = np.median(mag, axis=-1)
  level = level - np.median(level, axis=-1, keepdims=True)
  out = []
  for row in level:
    on = np.flatnonzero(row > threshold)
    starts = on[np.diff(np.concatenate([[-2], on])) > 1]  # first frame of each run
    out.append((starts + 0.5) / AUDIO_FPS)
  return out


def _chamfer(a: np.ndarray, b: np.ndarray, cap: float, window: tuple[float, float]) -> float:
  """Mean over events of either set inside `window` of the (capped) distance to the other set."""
  def dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x[(x >= window[0]) & (x <= window[1])]
    if len(y) == 0:
      return np.full(len(x), cap)
    return np.minimum(np.abs(x[:, None] - y[None, :]).min(axis=1), cap)
  d = np.concatenate([dists(a, b), dists(b, a)])
  return float(d.mean()) if len(d) else 0.0


def bounce_sync(video: np.ndarray, audio: np.ndarray) -> np.ndarray | float:
  """Symmetric mean distance (s) between video bounces and audio clicks, capped at 0.5 s each
  (0.5 when only one side has events, 0 when neither has). Lower is better.

  `video: [(B,) T_v, H, W, 3]`, `audio: [(B,) T_a, F]` raw scale → `[B]` (or a float)."""
  v, batched = _batched(video, 4, "bounce_sync video")
  a, _ = _batched(audio, 2, "bounce_sync audio")
  if len(v) != len(a):
    raise ValueError(f"bounce_sync: {len(v)} videos but {len(a)} audio clips")
  vb, ac = video_bounce_times(v), audio_click_times(a)
  # Only the video can miss a bounce, and only near the ends: score events between the centres of the
  # second and the second-to-last video frames (matching against all events).
  n_t = v.shape[1]
  window = (1.5 / VIDEO_FPS, (n_t - 1.5) / VIDEO_FPS)
  return _out(np.array([_chamfer(x, y, SCORE_CAP_S, window) for x, y in zip(vb, ac)]), batched)

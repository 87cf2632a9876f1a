"""Built-in media data: the bouncing ball as RGB frames at 25 fps with a real 16 kHz waveform.

What the autoencoder (`monl.autoencoder`) trains on and `monl.data.encode` reads, made offline and
deterministically (seeded per clip, no downloads). One clip (`generate_clip`):

- video float32 [17, S, S, 3] in [0, 1] (S = 32 by default): 17 frames (1 + 4k, k = 4) at 25 fps =
  0.68 s; frame j shows time (j + 0.5) / 25. A saturated ball (radius 0.12-0.2 of the box, soft 1-px
  edge) over a vertical two-colour gradient background (random dark colours). Physics of
  `monl.data.synthetic` (exact ballistic arcs, elastic side walls, floor restitution 0.8-0.92) with a
  stronger gravity (`GRAVITY` = 12 box heights / s²) so that 0.68 s holds visible motion and often a
  bounce.
- audio float32 [10880, 1] at 16 kHz: a sine tone whose pitch follows the ball's centre height
  y in [0, 1] (log-linearly, `F_LO` = 300 Hz at the floor .. `F_HI` = 1500 Hz at the top; phase
  continuous, amplitude 0.25, with its second harmonic at 0.08), plus a click at every floor bounce
  (a 6 ms burst of seeded noise, decaying exponentially, peak 0.5), plus noise at 1e-3.

`ensure_builtin_dataset` builds the media dataset (monl format through `prepare`: modalities `video`
[17, S, S, 3] and `audio` [10880, 1], 5 segments of 1 + 4 + 4 + 4 + 4 frames) for `train_autoencoder`.
`write_mp4_folder` writes longer clips of the same scene as MP4 files (H.264 + AAC) into
`DIR/{train,test}/ball_XXXX.mp4`, the input of `python -m monl.data.encode`:

    python -m monl.data.synthetic_media --output media_mp4/ --num_train 32 --num_test 8
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from monl.data import builtin
from monl.data import format as fmt
from monl.data import synthetic

GENERATOR_NAME = "monl.data.synthetic_media.bouncing_ball"
GENERATOR_VERSION = 1  # bump whenever generated clips change

FPS = 25
FRAMES = 17  # 1 + 4k
SAMPLE_RATE = 16000
SIZE = 32
SECONDS = FRAMES / FPS  # 0.68
GRAVITY = 12.0
F_LO, F_HI = 300.0, 1500.0
TONE_AMP, HARMONIC_AMP = 0.25, 0.08
CLICK_AMP, CLICK_SECONDS = 0.5, 0.006
NOISE = 1e-3
VIDEO_SEGMENTS = (1, 4, 4, 4, 4)


def audio_segments(frames: int = FRAMES, fps: float = FPS, sample_rate: int = SAMPLE_RATE) -> tuple[int, ...]:
  """Samples per segment for segments of 1, 4, 4, ... frames."""
  per_frame = sample_rate / fps
  ends = [1] + [1 + 4 * (i + 1) for i in range((frames - 1) // 4)]
  bounds = [0] + [int(round(e * per_frame)) for e in ends]
  return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))


def render(rng: np.random.Generator, *, frames: int = FRAMES, size: int = SIZE, fps: float = FPS,
           sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
  """One scene of `frames / fps` seconds: {'video': float32 [frames, size, size, 3] in [0, 1],
  'audio': float32 [S] mono (S = frames / fps * sample_rate), 'meta': dict}."""
  seconds = frames / fps
  n = int(round(seconds * sample_rate))
  r = rng.uniform(0.12, 0.2)
  e = rng.uniform(0.8, 0.92)
  vx = rng.uniform(0.4, 1.2) * rng.choice([-1.0, 1.0])
  vy = rng.uniform(-1.5, 1.0)
  y_top = 1.0 - r - 0.02
  y0 = rng.uniform(r + 0.1, max(r + 0.1, y_top - max(vy, 0.0) ** 2 / (2 * GRAVITY)))
  x0 = rng.uniform(r, 1.0 - r)
  colour = synthetic._hsv_to_rgb(rng.uniform(), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))
  top = synthetic._hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.4))
  bottom = synthetic._hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.4))

  times_v = (np.arange(frames) + 0.5) / fps
  times_a = np.arange(n) / sample_rate
  times = np.concatenate([times_v, times_a])
  order = np.argsort(times, kind="stable")
  ys_sorted, bounces = synthetic._simulate_y(y0, vy, r, e, times[order], gravity=GRAVITY, seconds=seconds)
  ys = np.empty_like(times)
  ys[order] = ys_sorted
  y_v, y_a = ys[:frames], ys[frames:]
  x_v = synthetic._fold(x0 + vx * times_v, r, 1.0 - r)

  px = (np.arange(size) + 0.5) / size
  py = 1.0 - (np.arange(size) + 0.5) / size
  background = (bottom[None, :] * (1.0 - py[:, None]) + top[None, :] * py[:, None])[None, :, None, :]
  dist = np.sqrt((px[None, None, :] - x_v[:, None, None]) ** 2 + (py[None, :, None] - y_v[:, None, None]) ** 2)
  alpha = np.clip((r - dist) * size + 0.5, 0.0, 1.0)[..., None]  # [T, H, W, 1]
  video = background * (1.0 - alpha) + colour * alpha

  freq = F_LO * (F_HI / F_LO) ** np.clip(y_a, 0.0, 1.0)
  phase = 2 * np.pi * np.cumsum(freq) / sample_rate + rng.uniform(0, 2 * np.pi)
  audio = TONE_AMP * np.sin(phase) + HARMONIC_AMP * np.sin(2 * phase)
  click_n = int(round(CLICK_SECONDS * sample_rate))
  envelope = np.exp(-np.arange(click_n) / (click_n / 5))
  for tb in bounces:
    k = int(round(tb * sample_rate))
    burst = CLICK_AMP * envelope * rng.uniform(-1.0, 1.0, click_n)
    end = min(n, k + click_n)
    audio[k:end] += burst[: end - k]
  audio += NOISE * rng.standard_normal(n)
  audio = np.clip(audio, -1.0, 1.0)
  meta = {"radius": r, "restitution": e, "colour": colour, "x0": x0, "y0": y0, "vx0": vx, "vy0": vy,
          "bounce_times": np.asarray(bounces), "video_xy": np.stack([x_v, y_v], -1)}
  return {"video": video.astype(np.float32), "audio": audio.astype(np.float32), "meta": meta}


def generate_clip(rng: np.random.Generator, size: int = SIZE) -> dict[str, Any]:
  """One dataset clip: {'video': float32 [17, size, size, 3], 'audio': float32 [10880, 1], 'meta'}."""
  clip = render(rng, size=size)
  return {"video": clip["video"], "audio": clip["audio"][:, None], "meta": clip["meta"]}


def generator_params(num_train: int, num_test: int, seed: int, num_shards: int, size: int = SIZE) -> dict[str, Any]:
  out = builtin.generator_params(GENERATOR_NAME, GENERATOR_VERSION, num_train, num_test, seed, num_shards)
  out.update(size=int(size), fps=FPS, frames=FRAMES, sample_rate=SAMPLE_RATE)
  return out


def ensure_builtin_dataset(dataset_dir: fmt.PathLike, num_train: int = 512, num_test: int = 64, seed: int = 0,
                           num_shards: int = 2, size: int = SIZE, progress: bool = False) -> epath.Path:
  """The media dataset at `dataset_dir` (built on first use, reused while its generator parameters match;
  `monl.data.builtin.ensure_dataset`)."""
  return builtin.ensure_dataset(
      dataset_dir, generator_params(num_train, num_test, seed, num_shards, size),
      lambda rng: generate_clip(rng, size),
      segments={"video": VIDEO_SEGMENTS, "audio": audio_segments()},
      seconds_per_segment=tuple(s / FPS for s in VIDEO_SEGMENTS), source="monl.data.synthetic_media",
      progress=progress)


def write_mp4_folder(out_dir: fmt.PathLike, num_train: int, num_test: int, *, seed: int = 1,
                     clips_per_file: int = 3, size: int = 64, progress: bool = False) -> list[epath.Path]:
  """MP4 files `out_dir/{train,test}/ball_XXXX.mp4` of `clips_per_file` clips' length (plus 0.2 s, so
  that AAC's rounding never loses the last clip), one continuous scene each, at `size` px (encode
  resizes). Seeded per file (`builtin.clip_rng(seed, split, i)`); returns the paths."""
  from tqdm import tqdm
  from monl import media
  out, paths = epath.Path(out_dir), []
  frames = FRAMES * clips_per_file + int(round(0.2 * FPS))
  for split_index, (split, n) in enumerate((("train", num_train), ("test", num_test))):
    (out / split).mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(n), desc=f"mp4 {split}", unit="file", disable=not progress):
      clip = render(builtin.clip_rng(seed, split_index, i), frames=frames, size=size)
      paths.append(media.write_mp4(out / split / f"ball_{i:04d}.mp4", clip["video"], clip["audio"],
                                   fps=FPS, sample_rate=SAMPLE_RATE))
  return paths


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m monl.data.synthetic_media",
                              description="Write the built-in bouncing-ball media as MP4 files (H.264 + AAC).")
  p.add_argument("--output", required=True, help="directory; files go to OUTPUT/{train,test}/")
  p.add_argument("--num_train", type=int, default=32)
  p.add_argument("--num_test", type=int, default=8)
  p.add_argument("--clips_per_file", type=int, default=3, help=f"length of each file in {SECONDS:g}-s clips")
  p.add_argument("--size", type=int, default=64, help="frame size of the files, px")
  p.add_argument("--seed", type=int, default=1)
  args = p.parse_args(argv)
  paths = write_mp4_folder(args.output, args.num_train, args.num_test, seed=args.seed,
                           clips_per_file=args.clips_per_file, size=args.size, progress=True)
  print(f"wrote {len(paths)} files to {args.output}/{{train,test}}/ "
        f"({args.clips_per_file * SECONDS + 0.2:.2f} s each, {FPS} fps, {SAMPLE_RATE} Hz)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

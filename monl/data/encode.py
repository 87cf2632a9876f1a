"""`encode`: a folder of video files with sound -> a monl latent dataset, through a trained autoencoder.

    python -m monl.data.encode --input clips/ --output latents/ --encoder RUN \
        [--fps 25 --sample_rate 16000 --size 32 --clip_seconds 0.68 --hop_seconds 0.68] \
        [--batch_size N --num_shards 4 --overwrite --no_progress]
    python -m monl.data.encode --input clips/ --output media/ --raw [--fps ... --size ...]

`--raw` writes the preprocessed clips themselves instead of latents (video float32 [T, size, size, 3]
in [0, 1], audio float32 [S, 1]): the media dataset `train_autoencoder` trains on
(`--config.data.dir=media/`), so an autoencoder can learn your own footage. Its preprocessing defaults
are `configs/autoencoder_common.py`'s `media` group (17 frames at 25 fps, 32 px, 16 kHz) and its clips
must be 1 + 4k frames (the autoencoder's causal rule); its segments are 1, 4, 4, ... frames.

Input: `INPUT/<split>/**` video files (mp4, webm, mov, mkv, avi, m4v), one split per subdirectory as for
`prepare`; files directly in INPUT form the split `train`. Each file is cut into clips by
`monl.media.read_clips` (frames picked by timestamp, centre crop + resize, audio resampled to mono);
the preprocessing defaults come from the encoder's config (`config.media`: fps, sample rate, size,
clip_seconds = frames / fps; clips back to back unless `--hop_seconds`). A file FFmpeg cannot read,
without audio or video, shorter than one clip or truncated is skipped, named with the reason (a
truncated file's clips read before the damage are dropped with it); if every file is bad nothing is
written (exit 2).

Output: the standard dataset (`monl.data.prepare` writes it, so the format is identical): modalities
`video` [1 + k, H/8, W/8, C] and `audio` [F, C_a] (posterior means), one segment per video latent frame
as in the paper (segments video [1, 1, ..., 1], audio the latent frames of the same time spans, e.g.
[2, 8, 8, 8, 8] for 17 frames at 25 fps and hop 320), `seconds_per_segment`, per-channel statistics of
the train split. Every record's source id is `file.mp4@12.0s` (the split-relative path and the clip's
start). `dataset.json`'s `produced_by` records the encoder (run directory, checkpoint step), the
preprocessing (fps, sample rate, size, clip and hop seconds, audio hop, downsampling factors), every
input file with its status, and the skipped files with their reasons.

Resumable, per input file: clips are encoded into `OUTPUT.parts/<split>/` (one npz per clip) and each
file gets a small JSON record there when it is done (its size and mtime, its clips, or why it was
skipped), written last and atomically. A rerun (after a crash, or with files added) skips every file
whose record matches the file's size and mtime, encodes the rest, then rewrites OUTPUT from all parts.
`OUTPUT.parts/job.json` holds the encoder and preprocessing: a rerun with another encoder checkpoint or
other preprocessing is refused (delete OUTPUT.parts, or choose another --output). An existing OUTPUT
written by `encode` is replaced; anything else only with `--overwrite` (the `prepare` rules). Nothing
needs redoing when OUTPUT is complete for the same job and files: the rerun says so and stops.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath
from tqdm import tqdm

from monl import host
from monl.data import format as fmt
from monl.data import prepare

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
PARTS_SUFFIX = ".parts"
JOB_FILE = "job.json"
# --batch_size by default: the largest batch up to this one that the encoder's memory plan fits
# (monl.autoencoder.load.Codec.fitting_batch_size)
MAX_AUTO_BATCH = 16


class EncodeError(fmt.DatasetError):
  """Nothing to encode, every input file is bad, or a rerun does not match the parts already written."""


def find_video_files(input_dir: epath.PathLike) -> dict[str, list[epath.Path]]:
  """{split: sorted video files}: one split per non-hidden subdirectory; loose files are 'train'."""
  root = epath.Path(input_dir)
  if not root.is_dir():
    raise EncodeError(f"--input {root}: not a directory")

  def walk(d: epath.Path) -> list[epath.Path]:
    out = []
    for p in d.iterdir():
      if p.is_dir() and not p.name.startswith("."):
        out += walk(p)
      elif p.name.lower().endswith(VIDEO_EXTENSIONS) and not p.name.startswith("."):
        out.append(p)
    return out
  splits: dict[str, list[epath.Path]] = {}
  loose = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(VIDEO_EXTENSIONS))
  if loose:
    splits["train"] = loose
  for sub in sorted(root.iterdir()):
    if sub.is_dir() and not sub.name.startswith("."):
      files = sorted(walk(sub))
      if files:
        splits.setdefault(sub.name, [])
        splits[sub.name] = sorted(splits[sub.name] + files)
  if not splits:
    raise EncodeError(f"--input {root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in it or its subdirectories")
  return splits


def segments_for(latent_frames: int, audio_frames: int, fps: float, temporal_downsample: int,
                 audio_rate: float) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
  """(video segments, audio segments, seconds per segment): one segment per video latent frame; latent
  frame 0 stands for video frame 0, latent frame j >= 1 for frames r(j-1)+1 .. rj; audio segments are
  the audio latent frames of the same spans (boundaries rounded to whole frames)."""
  r = temporal_downsample
  ends = [(1 + r * j) / fps for j in range(latent_frames)]  # seconds
  bounds = [0] + [int(round(e * audio_rate)) for e in ends[:-1]] + [audio_frames]
  audio = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))
  if any(a <= 0 for a in audio):
    raise EncodeError(f"audio latent frames {audio_frames} at {audio_rate:g}/s cannot be cut into "
                      f"{latent_frames} segments of the video latent frames' spans")
  seconds = tuple(e - s for s, e in zip([0.0] + ends[:-1], ends))
  return (1,) * latent_frames, audio, seconds


RAW_TEMPORAL = 4  # --raw clips are 1 + 4k frames: what every autoencoder config takes (temporal_downsample 4)


def preprocessing(codec, fps=None, sample_rate=None, size=None, clip_seconds=None, hop_seconds=None) -> dict[str, Any]:
  """The preprocessing of this job: flags over the encoder config's `media` defaults (`codec` None:
  `--raw`, over `configs.autoencoder_common`'s), checked against what the encoder takes."""
  if codec is None:
    from configs import autoencoder_common
    media_cfg = autoencoder_common.base_config().media
  else:
    media_cfg = codec.config.media
  fps = float(media_cfg.fps if fps is None else fps)
  sample_rate = int(media_cfg.sample_rate if sample_rate is None else sample_rate)
  size = int(media_cfg.size if size is None else size)
  clip_seconds = float(media_cfg.frames / media_cfg.fps if clip_seconds is None else clip_seconds)
  hop_seconds = float(clip_seconds if hop_seconds is None else hop_seconds)
  frames = clip_seconds * fps
  r, d, hop = (RAW_TEMPORAL, 1, 1) if codec is None else (codec.temporal_downsample, codec.spatial_downsample,
                                                           codec.hop)
  if abs(frames - round(frames)) > 1e-6 or (round(frames) - 1) % r:
    raise EncodeError(f"--clip_seconds {clip_seconds:g} at --fps {fps:g} is {frames:g} frames; the encoder "
                      f"needs 1 + {r}k frames (e.g. {(1 + 4 * r) / fps:g} s = {1 + 4 * r} frames)")
  samples = clip_seconds * sample_rate
  if abs(samples - round(samples)) > 1e-6 or round(samples) % hop:
    raise EncodeError(f"--clip_seconds {clip_seconds:g} at --sample_rate {sample_rate} is {samples:g} samples, "
                      f"not a multiple of the encoder's audio hop {hop}")
  if size % d:
    raise EncodeError(f"--size {size}: not divisible by the encoder's spatial downsampling {d}")
  out = {"fps": fps, "sample_rate": sample_rate, "size": size, "clip_seconds": clip_seconds,
         "hop_seconds": hop_seconds, "frames": int(round(frames)), "samples": int(round(samples))}
  if codec is not None:
    out.update(audio_hop=hop, temporal_downsample=r, spatial_downsample=d)
  return {**out,
          "video": "centre square crop, Pillow antialiased bilinear resize, frame on screen at (i + 0.5) / fps",
          "audio": "FFmpeg swresample to sample_rate, mean of the channels"}


def _atomic_write(path: epath.Path, data: bytes) -> None:
  tmp = path.parent / f".{path.name}.tmp"
  with tmp.open("wb") as f:
    f.write(data)
  tmp.rename(path)


def _stat(path: epath.Path) -> dict[str, int]:
  st = os.stat(os.fspath(path)) if "://" not in os.fspath(path) else None
  if st is not None:
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
  info = path.stat()
  return {"size": int(info.length), "mtime_ns": int(info.mtime * 1e9)}


def _record_name(rel: str) -> str:
  return rel.replace("/", "__") + ".json"


def _encode_file(codec, path: epath.Path, rel: str, parts: epath.Path, prep: Mapping[str, Any]) -> dict[str, Any]:
  """Encodes one file's clips into `parts` (npz per clip; `codec` None: the clips themselves) and returns
  its record (not yet written)."""
  from monl import media
  record: dict[str, Any] = {"file": rel, **_stat(path)}
  try:
    clips = list(media.read_clips(path, fps=prep["fps"], sample_rate=prep["sample_rate"], size=prep["size"],
                                  clip_seconds=prep["clip_seconds"], hop_seconds=prep["hop_seconds"]))
  except media.MediaError as e:
    return dict(record, status="bad", reason=e.reason if hasattr(e, "reason") else str(e))
  video, audio = np.stack([c.video for c in clips]), np.stack([c.audio for c in clips])  # uint8 [n, T, S, S, 3], [n, S]
  if codec is None:  # --raw: the clips themselves, as train_autoencoder reads them
    latents = {"video": video.astype(np.float32) / 255.0, "audio": audio.astype(np.float32)[..., None]}
  else:
    latents = codec.encode(video, audio)
  prefix = os.path.dirname(rel)
  entries = []
  for i, clip in enumerate(clips):
    name = f"{rel.replace('/', '__')}.{i:05d}.npz"
    sid = f"{prefix}/{clip.source_id}" if prefix else clip.source_id
    tmp = parts / f".{name}.tmp"
    with tmp.open("wb") as f:
      np.savez(f, video=latents["video"][i], audio=latents["audio"][i])
    tmp.rename(parts / name)
    entries.append({"npz": name, "source_id": sid})
  return dict(record, status="ok", clips=entries)


def encode(input_dir: epath.PathLike, output_dir: epath.PathLike, encoder: str | None, *, fps: float | None = None,
           sample_rate: int | None = None, size: int | None = None, clip_seconds: float | None = None,
           hop_seconds: float | None = None, batch_size: int | None = None, num_shards: int = 4, overwrite: bool = False,
           progress: bool = True, command: str | None = None) -> fmt.DatasetSpec:
  """Encodes `input_dir` into the dataset `output_dir` (module docstring); returns its spec. `encoder`
  None: `--raw` (the preprocessed clips, for train_autoencoder)."""
  from monl.autoencoder import load as ae_load
  out = epath.Path(output_dir)
  existing = fmt.load_spec(out) if (out / fmt.SPEC_FILE).exists() else None
  ours = existing is not None and existing.produced_by.get("tool") == "monl.data.encode"
  if not ours:
    prepare._check_output(out, overwrite)  # before anything is read
  splits = find_video_files(input_dir)
  codec = None if encoder is None else ae_load.load(encoder, batch_size=batch_size or MAX_AUTO_BATCH)
  prep = preprocessing(codec, fps, sample_rate, size, clip_seconds, hop_seconds)
  if codec is None:
    job = {"encoder": None, "raw": True, "preprocessing": prep}
  else:
    job = {"encoder": {"run": os.path.abspath(encoder) if "://" not in encoder else encoder,
                       "checkpoint_step": codec.step, "model": "monl.autoencoder.AVAutoencoder (posterior means)"},
           "preprocessing": prep}
  parts = out.parent / f"{out.name}{PARTS_SUFFIX}"
  parts.mkdir(parents=True, exist_ok=True)
  if (parts / JOB_FILE).exists():
    before = json.loads((parts / JOB_FILE).read_text())
    if before != job:
      raise EncodeError(f"{parts} holds clips encoded by another job:\n  then: {json.dumps(before)}\n  now:  "
                        f"{json.dumps(job)}\ndelete {parts} to start over, or choose another --output")
  else:
    _atomic_write(parts / JOB_FILE, json.dumps(job, indent=2).encode())

  records: dict[str, dict[str, dict]] = {}
  todo = []
  for split, files in splits.items():
    (parts / split).mkdir(parents=True, exist_ok=True)
    records[split] = {}
    for path in files:
      under = epath.Path(input_dir) / split
      rel = str(path.relative_to(under)) if os.fspath(path).startswith(os.fspath(under) + "/") else path.name
      rpath = parts / split / _record_name(rel)
      if rpath.exists():
        rec = json.loads(rpath.read_text())
        if {k: rec.get(k) for k in ("size", "mtime_ns")} == _stat(path):
          records[split][rel] = rec
          continue
      todo.append((split, path, rel))
  done_before = sum(len(v) for v in records.values())
  if codec is not None and batch_size is None and todo:  # the largest that should fit (a fixed 16 did not at
    # the paper's 128x128 in 24 GB of host memory)
    codec.batch_size, how = codec.fitting_batch_size(prep["frames"], prep["size"], prep["samples"],
                                                     most=MAX_AUTO_BATCH)
    print(f"[encode] batch size {codec.batch_size} ({how}; --batch_size N overrides)", file=sys.stderr, flush=True)
  t0, n_clips = time.perf_counter(), 0
  with tqdm(total=len(todo), desc="encode", unit="file", disable=not progress) as bar:
    for split, path, rel in todo:
      rec = _encode_file(codec, path, rel, parts / split, prep)
      _atomic_write(parts / split / _record_name(rel), json.dumps(rec).encode())  # last: marks the file done
      records[split][rel] = rec
      n_clips += len(rec.get("clips", ()))
      bar.update(1)
      bar.set_postfix(clips=n_clips, clips_per_s=f"{n_clips / max(time.perf_counter() - t0, 1e-9):.1f}")
  bad = [(f"{split}/{rel}", r["reason"]) for split, recs in records.items() for rel, r in sorted(recs.items())
         if r["status"] == "bad"]
  total = sum(len(v) for v in records.values())
  for where, reason in bad:
    print(f"skipped {where}: {reason}", file=sys.stderr, flush=True)
  print(f"encode: {len(todo)} file(s) encoded now ({n_clips} clips), {done_before} already done; "
        f"{len(bad)} of {total} skipped as bad", flush=True)
  if len(bad) == total:
    raise EncodeError(f"all {total} input files are bad (listed above): nothing to write")
  inputs = {split: [{"file": rel, "status": r["status"], "clips": len(r.get("clips", ())), "size": r["size"],
                     "mtime_ns": r["mtime_ns"]} for rel, r in sorted(recs.items())]
            for split, recs in records.items()}
  if ours and not todo and existing.produced_by.get("encoder") == job["encoder"] and \
      existing.produced_by.get("preprocessing") == prep and existing.produced_by.get("inputs") == inputs:
    print(f"encode: {out} is up to date (same encoder, preprocessing and files): nothing to do", flush=True)
    return existing

  empty = [s for s, recs in records.items() if not any(r["status"] == "ok" for r in recs.values())]
  if empty:
    raise EncodeError(f"split(s) {empty}: every file is bad, no clips to write")
  source_ids = {f"{split}/{c['npz']}": c["source_id"] for split, recs in records.items()
                for r in recs.values() for c in r.get("clips", ())}
  valid = set(source_ids)
  for split in records:  # stale clips of files that changed since (fewer clips now) are not data
    for p in (parts / split).glob("*.npz"):
      if f"{split}/{p.name}" not in valid:
        p.unlink()
  latent = fmt.load_npz(next(iter(sorted((parts / next(iter(valid)).split("/")[0]).glob("*.npz")))), ("video", "audio"))
  if codec is None:  # raw frames: segments of 1, 4, 4, ... frames, audio samples of the same spans
    k = (prep["frames"] - 1) // RAW_TEMPORAL
    _, a_segs, seconds = segments_for(1 + k, latent["audio"].shape[0], prep["fps"], RAW_TEMPORAL, prep["sample_rate"])
    v_segs = (1,) + (RAW_TEMPORAL,) * k
  else:
    v_segs, a_segs, seconds = segments_for(latent["video"].shape[0], latent["audio"].shape[0], prep["fps"],
                                           prep["temporal_downsample"], prep["sample_rate"] / prep["audio_hop"])
  stats_split = "train" if "train" in records else sorted(records)[0]
  spec = prepare.prepare(
      parts, out, modalities=("video", "audio"), segments={"video": v_segs, "audio": a_segs},
      seconds_per_segment=seconds, num_shards=num_shards, stats_split=stats_split, overwrite=True,
      progress=progress, source_ids=source_ids,
      produced_by={"tool": "monl.data.encode", "command": command, "input_dir": str(input_dir),
                   "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "encoder": job["encoder"], **({"raw": True} if codec is None else {}),
                   "preprocessing": prep, "inputs": inputs,
                   "skipped": [{"file": w, "reason": r} for w, r in bad], "parts_dir": str(parts)})
  for name, info in spec.splits.items():
    print(f"{name}: {info.num_examples} clips in {info.num_shards} shard(s)", flush=True)
  print(f"wrote {out} (video {list(spec.modality('video').shape)}, audio {list(spec.modality('audio').shape)})",
        flush=True)
  return spec


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m monl.data.encode",
                              description="Video files with sound -> a monl latent dataset, through a trained autoencoder.")
  p.add_argument("--input", required=True, help="directory of video files (one subdirectory per split)")
  p.add_argument("--output", required=True, help="dataset directory to write")
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument("--encoder", help="a train_autoencoder run directory: write its latents")
  which.add_argument("--raw", action="store_true",
                     help="write the preprocessed clips themselves (the media dataset train_autoencoder trains on)")
  p.add_argument("--fps", type=float, help="frames per second (default: the encoder's config.media.fps; --raw: 25)")
  p.add_argument("--sample_rate", type=int, help="Hz (default: the encoder's; --raw: 16000)")
  p.add_argument("--size", type=int, help="square frame size, px (default: the encoder's; --raw: 32)")
  p.add_argument("--clip_seconds", type=float, help="clip length (default: the encoder's frames / fps; --raw: 17 / 25 s)")
  p.add_argument("--hop_seconds", type=float, help="start-to-start distance of clips (default: clip_seconds)")
  p.add_argument("--batch_size", type=int, default=None,
                 help=f"clips per encoder call (default: the most, up to {MAX_AUTO_BATCH}, that XLA's memory plan "
                      "of the encoder fits in half the free memory)")
  p.add_argument("--num_shards", type=int, default=4, help="ArrayRecord shards per split (at most)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing monl dataset not written by encode")
  p.add_argument("--no_progress", action="store_true")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = build_parser().parse_args(argv)
  try:
    encode(args.input, args.output, None if args.raw else args.encoder, fps=args.fps, sample_rate=args.sample_rate, size=args.size,
           clip_seconds=args.clip_seconds, hop_seconds=args.hop_seconds, batch_size=args.batch_size,
           num_shards=args.num_shards, overwrite=args.overwrite, progress=not args.no_progress,
           command="python -m monl.data.encode " + shlex.join(argv))
  except (fmt.DatasetError, FileNotFoundError, ValueError) as e:
    print(f"encode: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  host.apply_cpu_platform_default()
  sys.exit(main())

"""`evaluate`: sample every task from a trained workdir and score it; results.json / .md / .png + TensorBoard.

For every task (named tasks of `monl.sample.tasks`, the eval split `config.data.eval_split`):

1. `num` clips are sampled with `monl.sample.run.sample_task` (the same code as `monl.main sample`),
   conditioned on the first `num` clips of the eval split; the samples land in OUT/samples/<task>/.
2. Metrics that apply (every entry of results.json carries `value`, `label` and `provenance`):
   * `latent_fd_<m>`: Fréchet distance in the model's own (normalised data) space, per modality that
     the task generates (`monl.eval.latent_fd`, mean/std pooling over the kept frames). Always a
     *proxy*, not comparable to literature numbers.
   * `fvd_i3d` / `kvd_i3d`: Fréchet / kernel distance of Kinetics-400 I3D logits (`monl.eval.i3d`)
     on RGB video with >= 9 generated frames, on at most `config.eval.i3d_max_clips` clips (I3D on
     CPU costs ~1.5 s per clip). Video in [0, 1] is scaled by `config.eval.video_scale` to [0, 255].
     Real-data feature statistics are cached as `.npz` under `config.eval.cache_dir`, keyed by
     dataset, split, extractor, resize rule, number of clips and the frames kept.
   * on a built-in dataset, the ground-truth task scores of the generator that made it
     (`ground_truth_for`, keyed by `produced_by.generator.name`) on the raw (de-normalised) clips,
     lower is better, each with the same score on the real clips (the reference floor) and on real
     cells of unrelated clips (`unrelated_cells`, chance):
     - bouncing ball (`monl.data.synthetic`): `trajectory_error`, `background_noise` and
       `appearance_drift` when any video cell is generated, `av_agreement` and `bounce_sync`
       (cross-modal) for every task;
     - symbols (`monl.data.symbols`): `cell_error` (generated cells with the wrong symbol for the given
       cells and the rule) when any cell is generated, `cross_modal_agreement` for every task; the
       true symbols are those of the real clips the task conditioned on.
     Their entries also hold `per_clip` (one float per clip, in the
     order of the eval split's first `num` clips), for paired tests between runs (`monl.ablate`).
   * `av_align` (higher is better): AV-align (`metrics.av_align`, audio onsets vs video motion peaks,
     IoU within ±1 video frame) of the whole clip, per clip, with the real clips' score as `real`,
     for every task when the dataset has a decoder (`monl.data.decoders.decoder_for`): the built-in
     datasets' raw clips are RGB + spectrogram frames already; autoencoder latents written by
     `monl.data.encode` are decoded by their autoencoder to RGB + a waveform (onsets from its STFT).
   * `fad_vggish`: Fréchet distance of VGGish embeddings (`monl.eval.plugins`) of the waveforms of
     the generated audio frames (and the same frames of the real clips): resynthesised from spectrogram
     frames, or the decoded waveform's samples of those frames; when `config.eval.vggish_weights`
     names a local `.npz`; otherwise evaluate says once why FAD is off and lists it under `skipped`.
   On autoencoder latents, FVD/KVD too score the decoded RGB frames of the generated segments, and
   "real" is the autoencoder's decoding of the real clips' latents (the source files are not in the
   dataset): the scores measure the diffusion model, not the reconstruction. On a dataset without a
   decoder (e.g. the paper config's MAGVIT-v2 / SoundStream latents) only the latent proxy (and
   FVD/KVD if its video is RGB) applies; evaluate prints this (`results["notes"]`).
   Conditioning segments are EXCLUDED from the Fréchet metrics (latent FD, FVD, KVD, FAD): only the
   frames of the segments the task generates are compared, at the same positions in the real clips,
   as the paper does for continuation/interpolation. The ground-truth scores use the whole clip (the
   seam between given and generated segments is part of what they measure).
3. The task's `primary` metric (used by the ablation table): the ground-truth score that the task
   is about (bouncing ball: `PRIMARY_GT`; symbols: `cell_error` for every task), or on other datasets
   the mean latent FD over the generated modalities.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from monl.data.decoders import Decoder, decoder_for, decoder_registry, encoded_by  # noqa: F401 (re-exported)
from monl.eval import latent_fd as latent_fd_lib
from monl.eval import metrics as metrics_lib

PAPER_TASKS = ("joint", "a2v", "v2a", "continue", "continue_2s", "inpaint")

# The ground-truth score each task is about (lower is better). Tasks not listed: trajectory_error
# when they generate video, av_agreement otherwise.
PRIMARY_GT = {
    "joint": "av_agreement",  # both modalities from nothing: a ball whose height the pitch follows
    "a2v": "av_agreement",
    "v2a": "av_agreement",
    "continue": "trajectory_error",
    "continue_2s": "trajectory_error",
    "inpaint": "trajectory_error",
    "continue_audio": "av_agreement",
    "continue_audio_with_video": "av_agreement",
    "continue_video_with_audio": "av_agreement",
}

GT_LABELS = {
    "trajectory_error": "trajectory error vs free fall (box units / frame², lower is better; ground truth)",
    "av_agreement": "|ball height - pitch-implied height| (box units, lower is better; ground truth)",
    "bounce_sync": "video bounce vs audio click distance (s, capped 0.5, lower is better; ground truth)",
    "background_noise": "RMS deviation of the background (away from the ball) from a flat colour (raw "
                        "units, lower is better; ground truth: 0 on real clips)",
    "appearance_drift": "background and ball colours vs their medians over the clip (raw units, lower "
                        "is better; ground truth: 0 on real clips)",
}

SYMBOL_GT_LABELS = {
    "cell_error": "fraction of generated cells with the wrong symbol for the given cells and the rule "
                  "(lower is better; ground truth)",
    "cross_modal_agreement": "fraction of segments whose video symbol differs from the audio symbol "
                             "(lower is better; ground truth)",
}

DEFAULTS = {
    "i3d": True,  # FVD/KVD with I3D when the video is RGB with >= 9 generated frames
    "i3d_max_clips": 32,  # I3D on at most this many clips per task (CPU: ~1.5 s per clip)
    "i3d_resize": "tf1_bilinear",  # tf1_bilinear (google-research FVD) | half_pixel_bilinear
    "i3d_batch_size": 8,
    "video_scale": 255.0,  # raw video * this = [0, 255] for I3D (built-in data is in [0, 1])
    "cache_dir": "~/.cache/monl/eval_stats",  # real-data feature statistics (.npz)
    "kvd_subsets": 100,
    "pooling": "mean_std",  # latent FD pooling
    "previews": 2,  # GIF/WAV/MP4 previews per task
    "vggish_weights": "",  # local VGGish .npz (monl.eval.plugins.VGGISH_NPZ_KEYS) for FAD; '' = FAD off
}

AV_ALIGN_LABEL = ("AV-align: IoU of audio onsets (spectral flux) and video motion peaks (frame "
                  "differences) within ±1 video frame, whole clip (HIGHER is better; 1 = every onset has "
                  "its own peak)")
# VGGish needs one 0.96 s example: 400 + 95 * 160 samples at 16 kHz.
_VGGISH_MIN_SECONDS = 0.975


def settings_from_config(config, **overrides) -> dict[str, Any]:
  """`config.eval` fields with defaults for those the config lacks; `overrides` (not None) win."""
  ev = config.get("eval", None) or {}
  out = {k: (ev.get(k, v) if hasattr(ev, "get") else v) for k, v in DEFAULTS.items()}
  out.update({k: v for k, v in overrides.items() if v is not None})
  return out


# ----------------------------------------------------------------------------------------------------
# conditioning exclusion and fast Fréchet distance


def generated_frames(generated_segments: Sequence[bool], segment_lengths: Sequence[int]) -> np.ndarray:
  """Per-frame bool [T] from per-segment `generated_segments` [S] and `segment_lengths` [S]."""
  return np.repeat(np.asarray(generated_segments, bool), np.asarray(segment_lengths, np.int64))


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
  """Fréchet distance between the Gaussian fits of raw features a [N_a, D], b [N_b, D] (float64).

  Identical to `metrics.frechet_distance` of the two fits, but computed without a D×D matrix square
  root when D is large: with centred features X_a, X_b and Σ = XᵀX / (N − 1), the eigenvalues of
  Σ_a Σ_b are the squared singular values of X_a X_bᵀ / √((N_a − 1)(N_b − 1)), so
  Tr((Σ_a Σ_b)^{1/2}) is that matrix's nuclear norm (an N_a×N_b SVD instead of a D×D sqrtm, which
  takes ~20 s for D = 1536 on 2 CPU cores). Used when D > min(N_a, N_b).
  """
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape[1] <= min(len(a), len(b)):
    return metrics_lib.frechet_distance(metrics_lib.FeatureStats.from_features(a, keep_features=False),
                                        metrics_lib.FeatureStats.from_features(b, keep_features=False))
  return _frechet_svd(a, b)


def _frechet_svd(a: np.ndarray, b: np.ndarray) -> float:
  a = metrics_lib._as_features(a, "feats_a")
  b = metrics_lib._as_features(b, "feats_b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"frechet distance: feature dims differ ({a.shape[1]} vs {b.shape[1]})")
  ma, mb = a.mean(0), b.mean(0)
  xa, xb = a - ma, b - mb
  na, nb = len(a) - 1, len(b) - 1
  cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / math.sqrt(na * nb)
  diff = ma - mb
  return float(diff @ diff + (xa * xa).sum() / na + (xb * xb).sum() / nb - 2.0 * cross)


def latent_fd_entry(real: np.ndarray, gen: np.ndarray, modality: str, segment_lengths: Sequence[int],
                    generated_segments: Sequence[bool], pooling: str = "mean_std") -> dict[str, Any]:
  """Latent FD of one modality over the generated segments only (same positions in both sets)."""
  mask = np.asarray(generated_segments, bool)
  rf = latent_fd_lib.latent_clip_features(real, segment_lengths=segment_lengths, generated_mask=mask,
                                          pooling=pooling)
  gf = latent_fd_lib.latent_clip_features(gen, segment_lengths=segment_lengths, generated_mask=mask,
                                          pooling=pooling)
  kept = np.flatnonzero(generated_frames(mask, segment_lengths))
  return {"value": frechet_distance_features(rf, gf), "label": latent_fd_lib.latent_fd_label(modality),
          "provenance": {"space": "normalised data (the model's latent space)", "pooling": pooling,
                         "frames_kept": _ranges(kept), "segments_generated": mask.tolist(),
                         "num_real": len(rf), "num_gen": len(gf), "feature_dim": int(rf.shape[1])}}


def _ranges(idx: np.ndarray) -> str:
  """[0,1,2,5,6] -> '0-2,5-6'."""
  idx = [int(i) for i in idx]
  if not idx:
    return ""
  out, start, prev = [], idx[0], idx[0]
  for i in idx[1:] + [None]:
    if i is not None and i == prev + 1:
      prev = i
      continue
    out.append(f"{start}-{prev}" if prev != start else f"{start}")
    if i is not None:
      start = prev = i
  return ",".join(out)


# ----------------------------------------------------------------------------------------------------
# I3D with a cache of real-data statistics


def make_i3d(settings: dict[str, Any]):
  """The I3D extractor (a callable videos [B, T, H, W, 3] in [0, 255] -> [B, 400] with `.provenance`)."""
  from monl.eval import i3d
  return i3d.I3DFeatures(batch_size=int(settings["i3d_batch_size"]), resize=settings["i3d_resize"])


def dataset_key(data_dir: str) -> str:
  """`<dir name>-<sha256(dataset.json)[:10]>`: changes whenever the dataset's spec does."""
  from monl.data import format as data_format
  spec_file = epath.Path(data_dir) / data_format.SPEC_FILE
  digest = hashlib.sha256(spec_file.read_bytes()).hexdigest()[:10] if spec_file.exists() else "nospec"
  return f"{epath.Path(data_dir).name}-{digest}"


def real_stats_cached(cache_dir: str, key: dict[str, Any], compute: Callable[[], np.ndarray],
                      meta: dict[str, Any]) -> tuple[metrics_lib.FeatureStats, bool, str]:
  """Loads the real-data FeatureStats for `key` from `cache_dir`, or computes and saves them.

  Returns (stats, hit, path)."""
  name = "__".join(f"{k}={v}" for k, v in key.items())
  name = "".join(ch if ch.isalnum() or ch in "-_=.," else "_" for ch in name)
  directory = epath.Path(cache_dir).expanduser()
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{name}.npz"
  if path.exists():
    try:
      stats = metrics_lib.FeatureStats.load(path)
      if stats.meta.get("cache_key") == key and stats.features is not None:
        return stats, True, str(path)
    except ValueError as e:
      print(f"ignoring unreadable feature cache {path}: {e}", flush=True)
  stats = metrics_lib.FeatureStats.from_features(compute(), keep_features=True,
                                                 meta=dict(meta, cache_key=key))
  tmp = path.parent / (path.name + ".tmp")
  stats.save(tmp)
  tmp.rename(path)
  return stats, False, str(path)


def fad_entry(vggish, real: Mapping[str, np.ndarray], gen: Mapping[str, np.ndarray], frames: np.ndarray,
              decoder: Decoder, settings: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
  """FAD between real and generated clips' audio over the audio frames [K] (`fad_waveforms`): every
  VGGish example of every clip's waveform is one feature vector; real statistics are cached."""
  frange = _ranges(frames)
  how = (f"{decoder.to_waveform.__module__}.{decoder.to_waveform.__name__}" if decoder.spectrogram
         else decoder.name)
  prov = dict(vggish.provenance, frames=frange, num_clips=len(gen["audio"]),
              waveform=f"{how} at {decoder.sample_rate} Hz")
  embed = lambda clips: vggish.embed_waveforms(fad_waveforms(clips, frames, decoder), decoder.sample_rate)
  key = dict(key, extractor=f"vggish-{vggish.provenance['weights_sha256'][:12]}", frames=frange)
  rstats, hit, cpath = real_stats_cached(settings["cache_dir"], key,
                                         lambda: embed(real).reshape(-1, vggish.embedding_size), prov)
  gfeats = embed(gen)
  prov.update(examples_per_clip=int(gfeats.shape[1]), real_stats_cache=cpath, cache_hit=hit)
  what = "resynthesised" if decoder.spectrogram else "decoded"
  return {"value": frechet_distance_features(rstats.features, gfeats.reshape(-1, gfeats.shape[-1])),
          "label": (f"FAD (VGGish, {len(gen['audio'])} clips x {gfeats.shape[1]} examples of {what} audio; "
                    "not comparable to paper FADs)"), "provenance": prov}


def _i3d_input(video: np.ndarray, frames: np.ndarray, scale: float) -> np.ndarray:
  return np.clip(np.asarray(video, np.float32)[:, frames] * scale, 0.0, 255.0)


def i3d_features(extractor, clips_dir, split: str, num: int, frames: np.ndarray, scale: float,
                 out=None, progress: str | None = None, decoder: Decoder | None = None) -> np.ndarray:
  """I3D features [num, 400] of the first `num` clips of `clips_dir` (a dataset's `split` or a
  directory of sampled `.npz`), frames [K] only, streamed from disk one extractor batch at a time
  (so N = 2048+ clips never sit in memory together); `out`: a local `.npy` to write them to.
  `decoder` (autoencoder latents): each batch is decoded to RGB first and `frames` index decoded frames."""
  from monl.data import pipeline
  latents = decoder is not None and not decoder.spectrogram
  names = ["video", "audio"] if latents else ["video"]
  batches = (b for _, b in pipeline.iter_clips(clips_dir, split, num, names, extractor.batch_size))
  videos = (decoder.decode(b["video"], b["audio"])[0] for b in batches) if latents else (b["video"] for b in batches)
  chunks = (_i3d_input(v, frames, scale) for v in videos)
  return extractor.features(chunks, total=num, out=out, progress=progress)


# ----------------------------------------------------------------------------------------------------
# evaluation


def _task_dir(task: str) -> str:
  return task.replace(":", "_").replace(",", "__")


def _mean_entry(scores: np.ndarray, name: str, real: float | None,
                truth: GroundTruth | None = None) -> dict[str, Any]:
  truth = truth or ground_truth_registry()[_BALL]
  scores = np.asarray(scores, np.float64)
  se = float(scores.std(ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0
  return {"value": float(scores.mean()), "label": truth.labels[name], "stderr": se, "real": real,
          "per_clip": scores.tolist(),  # clip order = the first `num` clips of the split (paired tests)
          "provenance": {"source": f"{truth.source}.{name} on raw (de-normalised) clips, whole clip",
                         "num": int(len(scores))}}


def gt_scores(video: np.ndarray | None, audio: np.ndarray | None, video_generated: bool) -> dict[str, np.ndarray]:
  """Per-clip ground-truth scores that apply (bouncing-ball dataset, raw scale)."""
  from monl.data import synthetic
  out = {}
  if video is not None and video_generated:
    out["trajectory_error"] = np.asarray(synthetic.trajectory_error(video))
    out["background_noise"] = np.asarray(synthetic.background_noise(video))
    out["appearance_drift"] = np.asarray(synthetic.appearance_drift(video))
  if video is not None and audio is not None:
    out["av_agreement"] = np.asarray(synthetic.av_agreement(video, audio))
    out["bounce_sync"] = np.asarray(synthetic.bounce_sync(video, audio))
  return out


def symbol_scores(video: np.ndarray, audio: np.ndarray, given: np.ndarray,
                  real_video: np.ndarray) -> dict[str, np.ndarray]:
  """Per-clip ground-truth scores of the symbols dataset (raw scale). `given: [2, N]` (rows video,
  audio); the true symbols are those of `real_video [B, T, H, W, 3]`, the clips the task conditioned on
  (`classify_video` is exact on real clips)."""
  from monl.data import symbols
  out = {}
  if not np.asarray(given, bool).all():
    out["cell_error"] = np.asarray(symbols.cell_error(video, audio, given, symbols.classify_video(real_video)))
  out["cross_modal_agreement"] = np.asarray(symbols.cross_modal_agreement(video, audio))
  return out


# (generated {name: raw [B, ...]}, real {name: raw [B, ...]}, given {name: [N] bool}) -> {score: [B]}
ScoreFn = Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray], Mapping[str, np.ndarray]],
                   dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  """The ground-truth scores of one built-in generator (per clip, raw scale, lower is better)."""
  source: str  # the module the scores come from (provenance)
  labels: Mapping[str, str]
  scores: ScoreFn
  primary: Callable[[str, Mapping[str, Any]], str]  # (task, metrics) -> the score the task is about


_BALL = "monl.data.synthetic.bouncing_ball"  # == synthetic.GENERATOR_NAME (checked in the registry)


def _ball_primary(task: str, metrics: Mapping[str, Any]) -> str:
  return PRIMARY_GT.get(task) or ("trajectory_error" if "trajectory_error" in metrics else "av_agreement")


def _symbols_primary(task: str, metrics: Mapping[str, Any]) -> str:
  return "cell_error" if "cell_error" in metrics else "cross_modal_agreement"


@functools.cache
def ground_truth_registry() -> dict[str, GroundTruth]:
  """`produced_by.generator.name` -> its GroundTruth, for every built-in dataset."""
  from monl.data import symbols, synthetic
  if synthetic.GENERATOR_NAME != _BALL:
    raise AssertionError(f"evaluate._BALL {_BALL!r} != synthetic.GENERATOR_NAME {synthetic.GENERATOR_NAME!r}")
  ball = GroundTruth(
      source="monl.data.synthetic", labels=GT_LABELS, primary=_ball_primary,
      scores=lambda gen, real, given: gt_scores(gen["video"], gen["audio"],
                                                bool((~np.asarray(given["video"], bool)).any())))
  sym = GroundTruth(
      source="monl.data.symbols", labels=SYMBOL_GT_LABELS, primary=_symbols_primary,
      scores=lambda gen, real, given: symbol_scores(gen["video"], gen["audio"],
                                                    np.stack([given["video"], given["audio"]]), real["video"]))
  return {synthetic.GENERATOR_NAME: ball, symbols.GENERATOR_NAME: sym}


def ground_truth_for(spec, names: Sequence[str]) -> GroundTruth | None:
  """The ground truth of the built-in generator that produced the dataset of `spec` when the layout
  has both `video` and `audio`; None for any other dataset."""
  gen = spec.produced_by.get("generator")
  if not {"video", "audio"} <= set(names) or not isinstance(gen, Mapping):
    return None
  return ground_truth_registry().get(gen.get("name"))


def unrelated_cells(clips: Mapping[str, np.ndarray], lay) -> dict[str, np.ndarray]:
  """Real clips {m: [B, T_m, ...]} re-assembled so that no two cells of a clip belong together: cell
  c = segment · M + modality of clip i is that cell of clip (i + 1 + c mod (B - 1)) mod B, never clip i.
  Every cell is real data, so these clips score what drawing each cell on its own would: the chance
  reference next to the real clips' floor. The cells get distinct source clips when B > M·N; with fewer
  clips, a segment's modalities still come from different clips (B > M) and so do neighbouring segments."""
  b = len(next(iter(clips.values())))
  if b < 2:
    raise ValueError(f"unrelated_cells needs at least 2 clips, got {b}")
  num_modalities = len(lay.modalities)
  out = {}
  for mi, m in enumerate(lay.modalities):
    x = np.asarray(clips[m.name])
    bounds = np.cumsum((0, *m.segments))
    out[m.name] = np.concatenate(
        [x[(np.arange(b) + 1 + (s * num_modalities + mi) % (b - 1)) % b, bounds[s]:bounds[s + 1]]
         for s in range(len(m.segments))], axis=1)
  return out


def av_align_scores(video: np.ndarray, audio: np.ndarray, decoder: Decoder) -> np.ndarray:
  """Per-clip AV-align (higher is better) of a dataset's clips video [B, T', ...], audio [B, T_a, ...] -> [B]:
  on the arrays themselves when they are RGB + spectrogram frames (built-in datasets), else on the
  decoder's RGB frames and waveform (autoencoder latents; the waveform's STFT gives the onsets)."""
  if decoder.spectrogram:
    return metrics_lib.av_align_batch(np.clip(video, 0.0, 1.0), audio, decoder.video_fps, decoder.audio_fps)
  return np.asarray([metrics_lib.av_align_waveform(v, w, decoder.video_fps, decoder.sample_rate)
                     for rgb, wave in decoder.decoded_chunks(video, audio) for v, w in zip(rgb, wave)], np.float64)


def av_align_entry(scores: np.ndarray, real: float | None) -> dict[str, Any]:
  scores = np.asarray(scores, np.float64)
  se = float(scores.std(ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0
  return {"value": float(scores.mean()), "label": AV_ALIGN_LABEL, "stderr": se, "real": real,
          "per_clip": scores.tolist(), "higher_is_better": True,
          "provenance": {"source": "monl.eval.metrics.av_align on the decoded whole clip", "num": len(scores),
                         "window": "±1 video frame (open)", "matching": "one-to-one"}}


def fad_waveforms(clips: Mapping[str, np.ndarray], frames: np.ndarray, decoder: Decoder) -> np.ndarray:
  """The decoder's waveforms of the clips' audio [B, T_a, ...] restricted to the audio frames [K] -> [B, S]:
  spectrogram frames are resynthesised from those frames alone; an autoencoder's waveform of the whole
  clip is cut to the samples of those frames (`hop` per frame), in order."""
  if decoder.spectrogram:
    return np.stack([decoder.to_waveform(a[frames]) for a in np.asarray(clips["audio"], np.float32)])
  hop = decoder.hop
  idx = (np.asarray(frames)[:, None] * hop + np.arange(hop)[None, :]).ravel()
  return np.concatenate([wave[:, idx] for _, wave in decoder.decoded_chunks(clips["video"], clips["audio"])])


def make_vggish(settings: dict[str, Any]):
  """The VGGish extractor of `config.eval.vggish_weights`; errors name the field and the file."""
  from monl.eval import plugins
  path = settings["vggish_weights"]
  try:
    return plugins.load_extractor("vggish", epath.Path(path).expanduser())
  except (plugins.MissingWeightsError, ValueError) as e:
    raise type(e)(f"config.eval.vggish_weights={path!r}: {e}") from e


def i3d_unavailable(settings: dict[str, Any], video_shape: Sequence[int] | None) -> str | None:
  """Why FVD/KVD cannot run for a layout's video shape [T, H, W, C] (None: it can)."""
  if not settings["i3d"]:
    return "disabled (config.eval.i3d=False)"
  if video_shape is None or len(video_shape) != 4 or video_shape[-1] != 3:
    return f"no RGB video modality [T, H, W, 3] (layout video shape {video_shape})"
  return None


def coverage_note(decoder: Decoder | None, i3d_reason: str | None, data_dir: str) -> str | None:
  """One line saying what evaluate measures on a dataset of autoencoder latents, or can measure on a
  dataset without a decoder; None for the built-in datasets (RGB + spectrogram: everything applies)."""
  if decoder is not None and decoder.spectrogram:
    return None
  if decoder is not None:
    return (f"{data_dir} holds autoencoder latents (monl.data.encode): AV-align, FAD and FVD/KVD score the "
            f"media decoded by {decoder.name}, against its decoding of the real clips' latents (the source "
            f"files are not in the dataset): they measure the diffusion model, not the autoencoder's "
            f"reconstruction (train_autoencoder's eval.json does); no ground-truth scores")
  what = "the latent-space Fréchet proxy (latent_fd_*, not comparable to literature FVD/FAD)"
  if i3d_reason is None:
    what += " and FVD/KVD on its RGB video"
  return (f"{data_dir} has no decoder to RGB video + audio here (not a built-in dataset): evaluate computes "
          f"only {what}; no AV-align, FAD or ground-truth scores")


def parse_tasks(tasks: str | Sequence[str], names: Sequence[str]) -> list[str]:
  """'all' -> every named task; 'paper' -> the paper's six; else a comma-separated list (masks: use ';')."""
  from monl.sample import tasks as tasks_lib
  if not isinstance(tasks, str):
    return list(tasks)
  if tasks == "all":
    return tasks_lib.task_names(names)
  if tasks == "paper":
    return [t for t in PAPER_TASKS if t in tasks_lib.task_names(names)]
  sep = ";" if ";" in tasks else ","
  if sep == "," and ":" in tasks:  # a single user mask like 'video:1-2,audio:all'
    return [tasks]
  return [t.strip() for t in tasks.split(sep) if t.strip()]


def primary_metric(task: str, metrics: dict[str, Any], truth: GroundTruth | bool | None) -> str | None:
  """The task's primary metric: the one `truth` names (True = the bouncing ball's), else the mean
  latent FD over the generated modalities."""
  if truth is True:
    truth = ground_truth_registry()[_BALL]
  if truth:
    want = truth.primary(task, metrics)
    if want in metrics:
      return want
  fds = [k for k in metrics if k.startswith("latent_fd_")]
  if fds:
    metrics["latent_fd_mean"] = {
        "value": float(np.mean([metrics[k]["value"] for k in fds])),
        "label": "mean latent FD over generated modalities (proxy, not comparable to literature)",
        "provenance": {"of": fds}}
    return "latent_fd_mean"
  return None


def evaluate(config, workdir: str, *, tasks: str | Sequence[str] = "all", num: int = 256, steps: int = 50,
             seed: int = 0, guidance: str = "", output: str | None = None, i3d: bool | None = None,
             i3d_max_clips: int | None = None, generator=None, quiet: bool = False,
             solver: str | None = None, spacing: str | None = None) -> dict[str, Any]:
  """Samples and scores every task; writes results.json, results.md, results.png, tb/. Returns results.
  `solver`: ddim | dpmpp_2m | dpmpp_3m (None = config.sample.solver); `spacing`: auto | uniform | logsnr |
  karras (None = config.sample.spacing)."""
  from monl.data import pipeline
  from monl.sample import run as run_lib
  from monl.sample import sampler as sampler_lib
  t_start = time.perf_counter()
  settings = settings_from_config(config, i3d=i3d, i3d_max_clips=i3d_max_clips)
  gen = generator or run_lib.Generator(config, workdir)
  lay = gen.layout
  names = list(lay.names)
  out = epath.Path(output or f"{workdir}/eval")
  out.mkdir(parents=True, exist_ok=True)
  task_list = parse_tasks(tasks, names)
  split = config.data.eval_split
  data_dir = str(gen.data_dir)
  ids, real = pipeline.read_clips(data_dir, split, num, names)
  lay.check_shapes(real, where=f"eval clips from {data_dir}")
  n = len(ids)
  if n < 2:
    raise ValueError(f"evaluate needs at least 2 clips of split {split!r} in {data_dir}; got {n}")
  real_norm = gen.normalize(real)
  truth = ground_truth_for(gen.spec, names)  # None unless a built-in generator made the dataset
  builtin = truth is not None
  log = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

  # Reference floor: the ground-truth scores of the real clips (scored as if every cell were generated);
  # and chance: the same scores of real cells from unrelated clips (`unrelated_cells`).
  real_ref, chance_ref = {}, {}
  if builtin:
    every_cell = {m: np.zeros(lay.num_segments, bool) for m in names}
    for k, v in truth.scores(real, real, every_cell).items():
      real_ref[k] = _mean_entry(v, k, None, truth)
      real_ref[k]["label"] = truth.labels[k] + " on real clips (reference floor)"
    for k, v in truth.scores(unrelated_cells(real, lay), real, every_cell).items():
      chance_ref[k] = _mean_entry(v, k, None, truth)
      chance_ref[k]["label"] = truth.labels[k] + " on real cells of unrelated clips (chance)"

  # The decoder to RGB + audio that AV-align, FAD and (on latents) FVD see the clips through: a built-in
  # dataset's arrays are RGB + spectrogram already; autoencoder latents are decoded by their autoencoder.
  decoder = decoder_for(gen.spec)
  latents = decoder is not None and not decoder.spectrogram  # (such datasets have video and audio)
  real_what = "the autoencoder's decoding of the real clips' latents" if latents else "real clips"
  vshape = lay["video"].shape if "video" in names else None
  video_segs = lay["video"].segments if "video" in names else None
  if latents:  # FVD on the decoded RGB frames
    vshape, video_segs = decoder.decoded_video_shape(vshape), decoder.decoded_segments(video_segs)
  i3d_reason = i3d_unavailable(settings, vshape)
  extractor = None
  k_i3d = min(n, int(settings["i3d_max_clips"]))
  if i3d_reason is None and k_i3d < 2:
    i3d_reason = f"i3d_max_clips={settings['i3d_max_clips']} < 2"
  dkey = dataset_key(data_dir)

  notes = [x for x in [coverage_note(decoder, i3d_reason, data_dir)] if x]  # printed and in results.json
  av_reason = None
  if not {"video", "audio"} <= set(names):
    av_reason = f"needs both video and audio; the layout has {names}"
  elif decoder is None:
    av_reason = ("no decoder to RGB video + audio for this dataset (the built-in datasets and autoencoder "
                 "latents written by monl.data.encode have one)")
  else:
    scores = av_align_scores(real["video"], real["audio"], decoder)
    real_ref["av_align"] = dict(av_align_entry(scores, None), label=AV_ALIGN_LABEL + f" on {real_what} (reference)")
  vggish, fad_reason = None, None
  if "audio" not in names:
    fad_reason = "no audio modality"
  elif decoder is None:
    fad_reason = ("no decoder from this dataset's audio to a waveform (the built-in datasets and autoencoder "
                  "latents written by monl.data.encode have one)")
  elif not settings["vggish_weights"]:
    fad_reason = ("off: config.eval.vggish_weights is '' (VGGish weights cannot be downloaded here; convert "
                  "vggish_model.ckpt to the .npz layout of monl.eval.plugins.VGGISH_NPZ_KEYS and set the path)")
  else:
    vggish = make_vggish(settings)
  if decoder is not None and fad_reason:
    notes.append(f"FAD {fad_reason}")
  for note in notes:
    log(f"evaluate: {note}")

  writer = None
  try:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(out / "tb"))
  except ImportError:  # pragma: no cover - tensorboardX is a dependency
    pass

  solver, spacing = sampler_lib.solver_and_spacing(config.sample, solver, spacing)
  results: dict[str, Any] = {
      "workdir": str(workdir), "checkpoint_step": int(gen.step), "dataset": data_dir, "dataset_key": dkey,
      "split": split, "num": n, "steps": steps, "seed": seed, "guidance": guidance or None,
      "sampler": config.sample.sampler, "solver": solver, "spacing": spacing,
      "mode": config.sample.mode, "builtin_dataset": builtin,
      "ground_truth": truth.source if builtin else None, "settings": settings, "real_reference": real_ref,
      "chance_reference": chance_ref, "notes": notes, "tasks": {}}
  for ti, task in enumerate(task_list):
    t0 = time.perf_counter()
    req = run_lib.SampleRequest(task=task, split=split, num=n, steps=steps, guidance=guidance, seed=seed,
                                previews=int(settings["previews"]), solver=solver,
                                spacing=spacing)
    task_dir = out / "samples" / _task_dir(task)
    manifest = run_lib.sample_task(gen, task, req, task_dir, ids, real)
    _, gen_raw = pipeline.read_clips(task_dir, split, n, names)
    gen_norm = gen.normalize(gen_raw)
    given = np.asarray(manifest["given"], bool)  # [M, N]
    metrics: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for mi, m in enumerate(names):
      segs = lay[m].segments
      gmask = ~given[mi]
      if not gmask.any():
        skipped[f"latent_fd_{m}"] = f"{m} is fully given (nothing generated)"
        continue
      metrics[f"latent_fd_{m}"] = latent_fd_entry(real_norm[m], gen_norm[m], m, segs, gmask,
                                                  settings["pooling"])
    # FVD / KVD
    if "video" in names:
      vi = names.index("video")
      frames = np.flatnonzero(generated_frames(~given[vi], video_segs))  # decoded frames on latents
      reason = i3d_reason
      if reason is None and len(frames) == 0:
        reason = "video is fully given (nothing generated)"
      elif reason is None and len(frames) < 9:
        reason = (f"only {len(frames)} generated video frames (segments {(~given[vi]).tolist()}); "
                  f"I3D needs >= 9 and conditioning frames are excluded")
      if reason is None:
        if extractor is None:
          extractor = make_i3d(settings)
        scale = float(settings["video_scale"])
        frange = _ranges(frames)
        key = {"dataset": dkey, "split": split, "extractor": "i3d400", "resize": settings["i3d_resize"],
               "num": k_i3d, "frames": frange, "scale": scale}
        prov = dict(getattr(extractor, "provenance", {}), num_clips=k_i3d, frames=frange,
                    input_size=f"{vshape[1]}x{vshape[2]} upsampled to 224x224", video_scale=scale)
        if latents:
          key["decoder"] = prov["decoded_by"] = decoder.name
        via = decoder if latents else None
        t_real = time.perf_counter()
        bar = None if quiet else f"I3D {task}"
        rstats, hit, cpath = real_stats_cached(
            settings["cache_dir"], key,
            lambda: i3d_features(extractor, data_dir, split, k_i3d, frames, scale, progress=bar and bar + " (real)",
                                 decoder=via),
            prov)
        t_real = time.perf_counter() - t_real
        local = "://" not in str(task_dir)  # np.memmap needs a local file
        gfeats = i3d_features(extractor, task_dir, split, k_i3d, frames, scale, progress=bar,
                              out=str(task_dir / "i3d_features.npy") if local else None, decoder=via)
        gstats = metrics_lib.FeatureStats.from_features(gfeats, keep_features=True, meta=prov)
        cache_info = {"real_stats_cache": cpath, "cache_hit": hit, "real_seconds": round(t_real, 2)}
        decoded = " decoded" if latents else ""
        metrics["fvd_i3d"] = {"value": frechet_distance_features(rstats.features, gstats.features),
                              "label": f"FVD (I3D K400 logits, {k_i3d}{decoded} clips; not comparable to paper FVDs)",
                              "provenance": dict(prov, **cache_info)}
        kvd, kvd_std = metrics_lib.kernel_distance(rstats.features, gstats.features, subset_size=k_i3d,
                                                   num_subsets=int(settings["kvd_subsets"]), seed=seed)
        metrics["kvd_i3d"] = {"value": kvd, "std": kvd_std,
                              "label": f"KVD (I3D K400 logits, poly-kernel MMD², {k_i3d}{decoded} clips)",
                              "provenance": dict(prov, **cache_info)}
      else:
        skipped["fvd_i3d"] = skipped["kvd_i3d"] = reason
    if av_reason is None:
      metrics["av_align"] = av_align_entry(av_align_scores(gen_raw["video"], gen_raw["audio"], decoder),
                                           real_ref["av_align"]["value"])
    else:
      skipped["av_align"] = av_reason
    if "audio" in names:
      aframes = np.flatnonzero(generated_frames(~given[names.index("audio")], lay["audio"].segments))
      reason = fad_reason
      if reason is None and len(aframes) == 0:
        reason = "audio is fully given (nothing generated)"
      elif reason is None and len(aframes) / decoder.audio_fps < _VGGISH_MIN_SECONDS:
        reason = (f"only {len(aframes) / decoder.audio_fps:.3f} s of generated audio; VGGish needs >= "
                  f"{_VGGISH_MIN_SECONDS} s and conditioning frames are excluded")
      if reason is None:
        metrics["fad_vggish"] = fad_entry(vggish, real, gen_raw, aframes, decoder, settings,
                                          {"dataset": dkey, "split": split, "num": n})
      else:
        skipped["fad_vggish"] = reason
    if builtin:
      for k, v in truth.scores(gen_raw, real, {m: given[mi] for mi, m in enumerate(names)}).items():
        metrics[k] = _mean_entry(v, k, real_ref[k]["value"], truth)
    primary = primary_metric(task, metrics, truth)
    results["tasks"][task] = {"mask": manifest["mask"], "given": manifest["given"], "primary": primary,
                              "metrics": metrics, "skipped": skipped, "samples": str(task_dir),
                              "seconds": round(time.perf_counter() - t0, 2),
                              "sampling_seconds": manifest["seconds"]}  # incl. the first batch's compile
    if writer is not None:
      for k, v in metrics.items():
        writer.add_scalar(f"{_task_dir(task)}/{k}", v["value"], gen.step)
      writer.flush()
    summary = ", ".join(f"{k} {v['value']:.4g}" for k, v in metrics.items())
    log(f"[{ti + 1}/{len(task_list)}] {task}: {summary} ({time.perf_counter() - t0:.1f}s)")
  if writer is not None:
    writer.close()
  results["seconds"] = round(time.perf_counter() - t_start, 2)
  (out / "results.json").write_text(json.dumps(results, indent=2))
  (out / "results.md").write_text(results_markdown(results))
  results_chart(results, out / "results.png")
  log(f"evaluation written to {out}/results.{{json,md,png}} ({results['seconds']:.0f}s)")
  return results


# ----------------------------------------------------------------------------------------------------
# reports


def _fmt(v: float | None) -> str:
  if v is None or not np.isfinite(v):
    return "—"
  return f"{v:.4g}"


def results_markdown(results: dict[str, Any]) -> str:
  tasks = results["tasks"]
  keys: list[str] = []
  for t in tasks.values():
    keys += [k for k in t["metrics"] if k not in keys and k != "latent_fd_mean"]
  lines = [f"# Evaluation: checkpoint step {results['checkpoint_step']} of {results['workdir']}", "",
           f"{results['num']} clips of split `{results['split']}` per task, {results['steps']} "
           f"{results['sampler'] if results.get('solver', 'ddim') == 'ddim' else results['solver']} steps, "
           f"seed {results['seed']}, guidance {results['guidance'] or 'config'}. "
           "Lower is better everywhere except `av_align` (higher is better; the real-clip row is its "
           "ceiling, not a floor). **Bold** = the task's primary number.", "",
           "| task | given | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
  for name, t in tasks.items():
    cells = []
    for k in keys:
      m = t["metrics"].get(k)
      s = _fmt(m["value"]) if m else "—"
      cells.append(f"**{s}**" if m and k == t["primary"] else s)
    lines.append(f"| {name} | `{t['mask']}` | " + " | ".join(cells) + " |")
  for ref, label in (("real_reference", "real clips (floor)"),
                     ("chance_reference", "cells of unrelated clips (chance)")):
    if results.get(ref):
      lines.append(f"| *{label}* | | " + " | ".join(
          _fmt(results[ref][k]["value"]) if k in results[ref] else "" for k in keys) + " |")
  if results.get("notes"):
    lines += [""] + [f"**Note:** {n}" for n in results["notes"]]
  lines += ["", "Metrics:"]
  seen = {}
  for t in tasks.values():
    for k, m in t["metrics"].items():
      seen.setdefault(k, m)
  for k, m in seen.items():
    lines.append(f"- `{k}`: {m['label']}")
    if k.startswith("fvd") or k.startswith("kvd"):
      p = m["provenance"]
      lines.append(f"  - provenance: {p.get('package')} ({p.get('port_of')}), weights sha256 "
                   f"{str(p.get('weights_sha256'))[:12]}…, resize: {p.get('resize')}, {p.get('num_clips')} "
                   f"clips, frames {p.get('frames')}, {p.get('input_size')}")
  skipped = {f"{name}/{k}": r for name, t in tasks.items() for k, r in t["skipped"].items()}
  if skipped:
    lines += ["", "Not computed:"] + [f"- {k}: {r}" for k, r in skipped.items()]
  return "\n".join(lines) + "\n"


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def nice_ticks(vmax: float, target: int = 5) -> list[float]:
  """0, s, 2s, ... <= vmax with s = 1, 2 or 5 x 10^k, about `target` ticks."""
  raw = vmax / max(target - 1, 1)
  mag = 10.0 ** math.floor(math.log10(raw))
  step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
  return [i * step for i in range(int(vmax / step + 1e-9) + 1)]


def bar_chart(path, groups: list[str], series: list[str], values: np.ndarray, title: str,
              ylabel: str, reference: float | None = None, errors: np.ndarray | None = None) -> None:
  """Grouped bar chart with Pillow: values [len(groups), len(series)] (NaN = missing bar), with ±
  `errors` bars of the same shape when given (NaN = none)."""
  from PIL import Image, ImageDraw, ImageFont
  errors = np.full(values.shape, np.nan) if errors is None else np.asarray(errors, np.float64)
  font = ImageFont.load_default()
  g, s = len(groups), len(series)
  gap, left, top, plot_h = 24, 60, 40, 300
  bottom = int(0.87 * (8 * max((len(x) for x in groups), default=4) + 4)) + 30  # rotated labels
  legend_w = 10 + max((8 * len(x) for x in series), default=0) + 30
  # The canvas is at least as wide as the title; bars (14-40 px) widen to fill it.
  min_width = max(400, 6 * len(title) + left)
  bar_w = max(14, min(40, ((min_width - left - legend_w) // max(g, 1) - gap) // max(s, 1)))
  width = max(left + g * (s * bar_w + gap) + legend_w, min_width)
  img = Image.new("RGB", (width, top + plot_h + bottom), "white")
  d = ImageDraw.Draw(img)
  tops = values + np.where(np.isfinite(errors), errors, 0.0)
  finite = tops[np.isfinite(tops)]
  vmax = float(max(finite.max() if finite.size else 1.0, reference or 0.0, 1e-12)) * 1.1
  y_of = lambda v: top + plot_h - plot_h * max(v, 0.0) / vmax
  d.text((left, 10), title, fill="black", font=font)
  d.line([(left, top), (left, top + plot_h), (width - legend_w, top + plot_h)], fill="black")
  for v in nice_ticks(vmax):
    d.line([(left - 4, y_of(v)), (left, y_of(v))], fill="black")
    d.text((2, y_of(v) - 6), f"{v:.3g}", fill="black", font=font)
  d.text((2, top - 14), ylabel, fill="black", font=font)
  if reference is not None:
    d.line([(left, y_of(reference)), (width - legend_w, y_of(reference))], fill=(120, 120, 120))
  for gi, name in enumerate(groups):
    x0 = left + gap // 2 + gi * (s * bar_w + gap)
    for si in range(s):
      v, e = values[gi, si], errors[gi, si]
      if not np.isfinite(v):
        continue
      x = x0 + si * bar_w
      d.rectangle([x, y_of(v), x + bar_w - 2, top + plot_h], fill=PALETTE[si % len(PALETTE)])
      if np.isfinite(e) and e > 0:
        xc = x + (bar_w - 2) / 2
        lo, hi = y_of(v - e), y_of(v + e)
        d.line([(xc, lo), (xc, hi)], fill="black")
        d.line([(xc - 3, hi), (xc + 3, hi)], fill="black")
        d.line([(xc - 3, lo), (xc + 3, lo)], fill="black")
    lbl = Image.new("RGBA", (8 * len(name) + 4, 12), (255, 255, 255, 0))
    ImageDraw.Draw(lbl).text((0, 0), name, fill="black", font=font)
    lbl = lbl.rotate(60, expand=True)
    img.paste(lbl, (x0, top + plot_h + 4), lbl)
  lx = width - legend_w + 10
  for si, name in enumerate(series):
    y = top + si * 16
    d.rectangle([lx, y, lx + 10, y + 10], fill=PALETTE[si % len(PALETTE)])
    d.text((lx + 14, y), name, fill="black", font=font)
  with epath.Path(path).open("wb") as f:  # epath: gs:// too
    img.save(f, format="PNG")


def chart_series(results: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray, str, float | None]:
  """What results.png draws: (series, values [tasks, series], ± errors, title, reference line).

  With ground truth (built-in data): each ground-truth score placed between the real clips (0) and real
  cells of unrelated clips (1, chance), ± its standard error on the same scale. Otherwise: each metric
  divided by its largest value over tasks."""
  tasks = list(results["tasks"])
  floor, chance = results.get("real_reference") or {}, results.get("chance_reference") or {}
  keys: list[str] = []
  for t in results["tasks"].values():
    keys += [k for k in t["metrics"] if k not in keys and k != "latent_fd_mean"]
  scaled = [k for k in keys if k in chance and k in floor and chance[k]["value"] != floor[k]["value"]]
  keys = scaled or keys
  vals, errs = np.full((len(tasks), len(keys)), np.nan), np.full((len(tasks), len(keys)), np.nan)
  for i, t in enumerate(tasks):
    for j, k in enumerate(keys):
      entry = results["tasks"][t]["metrics"].get(k)
      if entry is not None:
        vals[i, j] = entry["value"]
        errs[i, j] = np.nan if entry.get("stderr") is None else entry["stderr"]
  step = results["checkpoint_step"]
  if scaled:
    lo = np.array([floor[k]["value"] for k in keys])
    span = np.array([chance[k]["value"] for k in keys]) - lo
    return (keys, (vals - lo) / span, errs / np.abs(span), f"monl evaluation, step {step}: ground-truth "
            "scores, 0 = real clips, 1 = cells of unrelated clips (line); lower is better, ± SE", 1.0)
  with np.errstate(invalid="ignore", divide="ignore"):
    vals = vals / np.nanmax(np.abs(vals), axis=0, keepdims=True) if len(tasks) else vals
  higher = [k for k in keys if any(results["tasks"][t]["metrics"].get(k, {}).get("higher_is_better")
                                   for t in tasks)]
  return ([f"{k} (higher is better)" if k in higher else k for k in keys], vals, np.full(vals.shape, np.nan),
          f"monl evaluation, step {step} (each metric / its max over tasks; lower is better"
          f"{' except ' + ', '.join(higher) if higher else ''})", None)


def results_chart(results: dict[str, Any], path) -> None:
  """results.png: one bar group per task (`chart_series`)."""
  series, values, errors, title, reference = chart_series(results)
  bar_chart(path, list(results["tasks"]), series, values, title, "rel.", reference=reference, errors=errors)

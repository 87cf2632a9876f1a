"""Sampling from a trained workdir: load EMA parameters, condition on clips, write npz + manifest + previews.

Output directory layout (one sub-directory per task):
  OUT/<task>/00000.npz ...       generated clips, de-normalised to the data's scale, same modality keys
  OUT/<task>/manifest.json       per clip: source clip, task, mask, sampler, steps, guidance, seed, step
  OUT/<task>/00000.gif/.wav      previews (built-in datasets only)
  OUT/<task>/00000.mp4           the same clip as video with sound; 00000_compare.mp4 for conditional tasks:
                                 given input | generated | real (datasets with a decoder: the built-in
                                 ones, and autoencoder latents of `monl.data.encode`, decoded by that
                                 autoencoder; `monl.data.decoders`, `preview_mp4`)
  OUT/<task>/contact_sheet.png   given (green) vs generated (red) cells of every previewed clip (built-in only)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from tqdm import tqdm

from monl.data import format as data_format
from monl.data import pipeline
from monl.sample import long as long_lib
from monl.sample import preview
from monl.sample import sampler as sampler_lib
from monl.sample import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  """What to sample; defaults come from `config.sample`."""
  task: str = "joint"  # a named task, a mask like 'video:1-2,audio:all', or 'all'
  input: str = ""  # dataset dir or npz dir to condition on ('' = the training dataset)
  split: str = "test"
  num: int = 16
  steps: int | None = None
  guidance: str = ""  # '' = config; one float for all modalities, or 'video=2,audio=1'
  seed: int = 0
  sampler: str | None = None
  solver: str | None = None  # ddim | dpmpp_2m | dpmpp_3m (None = config.sample.solver)
  spacing: str | None = None  # auto | uniform | logsnr | karras (None = config.sample.spacing)
  mode: str | None = None
  eta: float | None = None
  pyramid_delay: int = 0
  long_segments: int = 0  # > N: sliding-window long clips of this many segments
  previews: int = 4  # clips per task written as GIF/WAV and shown on the contact sheet


def check_request(req: SampleRequest) -> None:
  """Raises monl.validate.ConfigError naming the flag of any out-of-range number in `req`.

  Called before anything is restored or compiled: `--steps 0` must not quietly become the default.
  """
  from monl import validate
  validate.check_number("--num", req.num, low=1, what="clips per task")
  if req.steps is not None:
    validate.check_number("--steps", req.steps, low=1, what="sampling steps; omit it for config.sample.steps")
  validate.check_number("--previews", req.previews, low=0, what="clips per task written as GIF/WAV/MP4")
  validate.check_number("--pyramid", req.pyramid_delay, low=0, what="steps of delay between segments")
  validate.check_number("--long_segments", req.long_segments, low=0, what="segments of a long clip, 0 = off")
  validate.check_number("--seed", req.seed, what="sampling seed")
  if req.eta is not None:
    validate.check_number("--eta", req.eta, low=0, kind="float", what="DDIM eta")


def restore(config, workdir: str, model):
  """(objective, train state, step) of the latest checkpoint in `workdir`, on the configured mesh."""
  from monl.parallel import mesh as mesh_lib
  from monl.parallel import rules as rules_lib
  from monl.train import checkpoint as ckpt_lib
  from monl.train import loop
  from monl.train import step as step_lib
  obj = step_lib.Objective.from_config(config, model)
  factory = loop.StateFactory(config, obj, step_lib.make_optimizer(config.train),
                              mesh_lib.make_mesh(config.mesh), rules_lib.get_rules(config.mesh.rules))
  directory = epath.Path(workdir) / "checkpoints"
  # config: the checkpoint's recorded layout and shapes are compared with this config's (and refused)
  with ckpt_lib.Checkpointer(directory, keep=config.ckpt.keep, async_save=False, config=config) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {directory}: train first "
                              f"(python -m monl.main train --config ... --workdir {workdir})")
    return obj, ckpt.restore(step, factory.abstract), step


class Generator:
  """A trained model ready to sample: parameters restored once, one compiled sampler per task shape."""

  def __init__(self, config, workdir: str, use_ema: bool | None = None):
    from monl import validate
    from monl.train import loop
    validate.check_config(config)
    config = loop.with_data_layout(config)
    self.config = config
    self.model = loop.build_model(config)
    self.layout = self.model.layout
    self.data_dir = loop.resolve_data_dir(config)
    self.spec = loop.check_data(config, self.data_dir, self.layout)
    self.obj, self.state, self.step = restore(config, workdir, self.model)
    ema = config.sample.use_ema if use_ema is None else use_ema
    self.params = self.state.ema_params if ema else self.state.params
    self.schedule = self.obj.schedule

  def guidance_scales(self, text: str) -> tuple[float, ...] | None:
    """'' -> config.sample.guidance; '1.5' -> every modality; 'video=2,audio=1' -> per modality."""
    names = self.layout.names
    if not text:
      s = float(self.config.sample.guidance)
      return None if s == 0 else (s,) * len(names)
    if "=" not in text:
      s = float(text)
      return None if s == 0 else (s,) * len(names)
    scales = dict.fromkeys(names, 0.0)
    for part in text.split(","):
      name, _, value = part.partition("=")
      if name not in scales:
        raise ValueError(f"--guidance {text!r}: unknown modality {name!r}; modalities are {list(names)}")
      scales[name] = float(value)
    return tuple(scales[n] for n in names)

  def sampler_config(self, req: SampleRequest, guidance) -> sampler_lib.SamplerConfig:
    c = self.config.sample
    solver, spacing = sampler_lib.solver_and_spacing(c, req.solver, req.spacing)
    return sampler_lib.SamplerConfig(
        sampler=req.sampler or c.sampler, eta=c.eta if req.eta is None else req.eta,
        mode=req.mode or c.mode, guidance=guidance, self_condition=self.model.cfg.self_condition,
        solver=solver, spacing=spacing)

  @functools.lru_cache(maxsize=None)
  def _compiled(self, cfg: sampler_lib.SamplerConfig, steps: int, pyramid_delay: int):
    levels = sampler_lib.level_schedule(self.schedule.num_steps, steps, self.layout.num_modalities,
                                        self.layout.num_segments, pyramid_delay=pyramid_delay,
                                        spacing=cfg.spacing, alpha_bar=self.schedule.alpha_bar)
    obj, lay, sched = self.obj, self.layout, self.schedule

    def run(params, x0, given, key):
      denoise = lambda tok, t, sc: obj.eps(params, tok, t, sc)
      return sampler_lib.sample(denoise, lay, sched, levels, x0, given, key, cfg)
    return jax.jit(run), len(levels) - 1

  def window(self, cfg, steps: int, pyramid_delay: int = 0):
    """window_fn(x0_tokens, given, key) -> tokens, for one N-segment window."""
    fn, _ = self._compiled(cfg, steps, pyramid_delay)
    return lambda x0, given, key: fn(self.params, x0, jnp.asarray(given), key)

  def normalize(self, clips: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {m: data_format.normalize(self.spec, m, clips[m]) for m in self.layout.names}

  def denormalize(self, clips) -> dict[str, np.ndarray]:
    return {m: np.asarray(data_format.denormalize(self.spec, m, np.asarray(clips[m]))) for m in self.layout.names}


def _batches(n: int, size: int):
  for start in range(0, n, size):
    yield start, min(start + size, n)


def sample_task(gen: Generator, task: str, req: SampleRequest, out_dir: epath.Path,
                source_ids: list[str], clips: dict[str, np.ndarray]) -> dict:
  """Samples one task for every input clip, writes outputs, returns the manifest."""
  lay, c = gen.layout, gen.config
  given = tasks_lib.task_mask(task, lay.names, lay.num_segments, k=c.sample.continue_segments)
  check_request(req)
  steps = c.sample.steps if req.steps is None else req.steps  # not `or`: --steps 0 is an error, not 50
  guidance = gen.guidance_scales(req.guidance)
  cfg = gen.sampler_config(req, guidance)
  previews = min(req.previews, len(source_ids)) if _previewable(gen) else 0
  decoder = _mp4_decoder(gen) if previews else None
  if decoder is not None:  # before sampling: a missing PyAV must not cost the samples
    from monl import media
    media.require_av()
  window = gen.window(cfg, steps, req.pyramid_delay)
  bs = c.sample.batch_size
  norm = gen.normalize(clips)
  n = len(source_ids)
  out_dir.mkdir(parents=True, exist_ok=True)
  generated = {m: [] for m in lay.names}
  key = jax.random.key(req.seed)
  t0 = time.perf_counter()
  for b, (lo, hi) in enumerate(tqdm(list(_batches(n, bs)), desc=f"sampling {task}", unit="batch")):
    # pad the last batch to the compiled batch size (repeating its last clip), then drop the padding
    idx = np.minimum(np.arange(lo, lo + bs), hi - 1)
    x0 = lay.patchify({m: jnp.asarray(norm[m][idx]) for m in lay.names})
    k = jax.random.fold_in(key, b)
    if req.long_segments:
      out = long_lib.sample_long(window, lay, x0, given, k, total_segments=req.long_segments,
                                 overlap=c.sample.continue_segments)
    else:
      out = lay.unpatchify(window(x0, given, k))
    for m in lay.names:
      generated[m].append(np.asarray(out[m])[: hi - lo])
  seconds = time.perf_counter() - t0
  generated = gen.denormalize({m: np.concatenate(v) for m, v in generated.items()})

  entries = []
  for i in range(n):
    name = f"{i:05d}.npz"
    with (out_dir / name).open("wb") as f:
      np.savez(f, **{m: generated[m][i] for m in lay.names})
    entries.append({"file": name, "source_id": source_ids[i]})
  manifest = {
      "task": task, "mask": tasks_lib.format_mask(given, lay.names),
      "given": np.asarray(given).tolist(), "modalities": list(lay.names),
      "sampler": cfg.sampler, "solver": cfg.solver, "spacing": cfg.spacing, "eta": cfg.eta, "mode": cfg.mode, "steps": steps,
      "pyramid_delay": req.pyramid_delay, "guidance": None if guidance is None else dict(zip(lay.names, guidance)),
      "seed": req.seed, "checkpoint_step": gen.step, "use_ema": gen.params is gen.state.ema_params,
      "long_segments": req.long_segments or None, "input": req.input or str(gen.data_dir),
      "split": req.split, "seconds": round(seconds, 2), "clips": entries,
  }
  if previews:
    manifest["previews"] = _write_previews(gen, out_dir, generated, given, previews, clips, decoder)
  (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
  return manifest


def _is_builtin(spec: data_format.DatasetSpec) -> bool:
  """Whether a built-in generator (bouncing ball, symbols: `monl.data.builtin.DATASETS`) made the data."""
  from monl.data import builtin
  return builtin.module_for_spec(spec) is not None


def _gif_previewable(gen: Generator) -> bool:
  """GIF/WAV previews and the contact sheet: built-in data (pixels + spectrogram) with exactly video + audio."""
  return _is_builtin(gen.spec) and set(gen.layout.names) == {"video", "audio"}


def _mp4_decoder(gen: Generator):
  """The `monl.data.decoders.Decoder` of the dataset (to RGB video + a waveform: a built-in dataset's,
  or the autoencoder that encoded it), or None: no MP4 previews."""
  from monl.data import decoders
  return decoders.decoder_for(gen.spec) if {"video", "audio"} <= set(gen.layout.names) else None


def _previewable(gen: Generator) -> bool:
  """Whether any preview (GIF/WAV, or MP4 through a decoder) can be written for this dataset."""
  return _gif_previewable(gen) or _mp4_decoder(gen) is not None


def mp4_note(gen: Generator, req: SampleRequest) -> str | None:
  """Why `sample` writes no MP4 previews for this dataset, or None when it does (or none are asked for)."""
  if not req.previews or _mp4_decoder(gen) is not None:
    return None
  if not {"video", "audio"} <= set(gen.layout.names):
    return f"no MP4 previews: they need both video and audio; the layout has {list(gen.layout.names)}"
  return ("no MP4 previews: this dataset has no decoder from its clips to RGB video + a waveform (the "
          "built-in datasets and those written by monl.data.encode have one: monl.data.decoders.decoder_for)")


def _write_previews(gen: Generator, out_dir: epath.Path, generated, given, count: int, real,
                    decoder) -> list[str]:
  lay = gen.layout
  files = _write_mp4s(lay, out_dir, generated, given, count, real, decoder) if decoder is not None else []
  if not _gif_previewable(gen):  # latents (monl.data.encode): only the decoded MP4s
    return files
  for i in range(count):
    files += preview.write_clip(out_dir, f"{i:05d}", generated["video"][i], generated["audio"][i])
  video_segments, audio_segments = lay["video"].segments, lay["audio"].segments
  if generated["video"].shape[1] != lay["video"].shape[0]:  # long clips: segments repeat
    reps = generated["video"].shape[1] // video_segments[0]
    video_segments, audio_segments = (video_segments[0],) * reps, (audio_segments[0],) * reps
    full = np.zeros((len(lay.names), reps), bool)
    full[:, : given.shape[1]] = given
    given = full
  sheet = preview.contact_sheet(out_dir / "contact_sheet.png", generated["video"][:count],
                                generated["audio"][:count], given, lay.names, video_segments, audio_segments)
  return files + [sheet.name]


def _segments_of(lay, name: str, length: int) -> tuple[int, ...]:
  """Segment lengths of a generated modality of `length` frames: the layout's, or for long clips (equal
  segments, more of them) the first segment's length repeated."""
  segs = tuple(lay[name].segments)
  return segs if sum(segs) == length else (segs[0],) * (length // segs[0])


def _write_mp4s(lay, out_dir: epath.Path, generated, given, count: int, real, decoder) -> list[str]:
  """`<i>.mp4` per previewed clip; `<i>_compare.mp4` too when the task gives any cell (`preview_mp4`)."""
  from monl.sample import preview_mp4
  files = []
  names = list(lay.names)
  vi, ai = names.index("video"), names.index("audio")
  t, t_a = generated["video"].shape[1], generated["audio"].shape[1]
  v_segs, a_segs = _segments_of(lay, "video", t), _segments_of(lay, "audio", t_a)
  full = np.zeros((len(names), len(v_segs)), bool)  # long clips: only the first window's cells were given
  full[:, : given.shape[1]] = given
  rgb, wave = decoder.decode(generated["video"][:count], generated["audio"][:count])  # [B, T, H, W, 3], [B, S]
  t_rgb = rgb.shape[1]
  video_given = preview_mp4.frame_given(full[vi], decoder.decoded_segments(v_segs), t_rgb)
  audio_given = preview_mp4.audio_given_at_frames(full[ai], a_segs, t_a, t_rgb, decoder.video_fps,
                                                  decoder.audio_fps)
  real_rgb = decoder.decode(real["video"][:count], real["audio"][:count])[0] if given.any() else None
  for i in range(count):
    stem = f"{i:05d}"
    files.append(preview_mp4.clip_mp4(out_dir / f"{stem}.mp4", rgb[i], wave[i], decoder.video_fps,
                                      decoder.sample_rate).name)
    if real_rgb is not None:
      files.append(preview_mp4.compare_mp4(out_dir / f"{stem}_compare.mp4", real_rgb[i], rgb[i], wave[i],
                                           video_given, audio_given, decoder.video_fps,
                                           decoder.sample_rate).name)
  return files


def run(config, workdir: str, req: SampleRequest, output: str) -> dict[str, dict]:
  """Samples `req.task` (or every named task for 'all') and returns {task: manifest}."""
  check_request(req)
  gen = Generator(config, workdir)
  lay = gen.layout
  task_list = tasks_lib.task_names(lay.names) if req.task == "all" else [req.task]
  source = req.input or gen.data_dir
  needs_input = any(tasks_lib.task_mask(t, lay.names, lay.num_segments, k=config.sample.continue_segments).any()
                    for t in task_list)
  if needs_input or req.input:
    ids, clips = pipeline.read_clips(source, req.split, req.num, lay.names)
    lay.check_shapes(clips, where=f"clips from {source}")
  else:  # joint generation needs no clips: placeholders only fix the batch
    ids = ["(none: joint generation)"] * req.num
    clips = {m.name: np.zeros((req.num,) + m.shape, np.float32) for m in lay.modalities}
  note = mp4_note(gen, req)
  if note:
    print(f"sample: {note}", flush=True)
  out = epath.Path(output)
  manifests = {}
  for task in task_list:
    task_dir = out / task.replace(":", "_").replace(",", "__")
    manifests[task] = sample_task(gen, task, req, task_dir, ids, clips)
    print(f"{task}: {len(ids)} clips in {manifests[task]['seconds']}s -> {task_dir}", flush=True)
  return manifests

"""The second built-in audiovisual dataset: a sequence of symbols you can see and hear, changing by a rule.

Where the bouncing ball (`monl.data.synthetic`) is continuous motion, this one is discrete content:
which of K = 10 symbols each of N = 5 time segments (0.5 s each, 2.5 s per clip) shows and sounds.
Procedural and seeded (no downloads); select it with `config.data.builtin = "symbols"`
(`configs/symbols.py`).

- Rule: per clip s_1 is uniform in {0..K-1} and a step d uniform in {1, 2, 3};
  s_n = (s_1 + (n - 1) d) mod K (`rule_sequence`). Two consecutive segments determine d and so the rest;
  segments 1 and 5 determine 4d mod 10 ∈ {4, 8, 2}, hence d; one segment alone leaves d open.
- video `[20, 16, 16, 3]` float32 in [0, 1]: 4 frames (8 fps) per segment, the segment's glyph static
  within it. `GLYPHS` are 10 binary 10×10 bitmaps (plus, cross, square outline, filled square, triangle
  outline, horizontal bars, vertical bars, L, checker, diamond outline; every two correlate < 0.62 at
  any relative shift), drawn in one random saturated clip colour over a uniform random dark grey
  (0–0.2), at a random per-clip offset of ±2 px from the centre.
- audio `[80, 16]` float32: log-magnitude spectrogram frames (32 frames/s, the bins of
  `synthetic.BIN_FREQS_HZ`), 16 per segment. Symbol k sounds two tones (Gaussian across bins,
  σ `TONE_SIGMA`) at bins `TONE_PAIRS[k]`: the first steady over frames 1–14 of the segment, the second
  with rhythm `RHYTHMS[k % 3]` (steady, pulsed 2 on / 2 off, first half only); frames 0 and 15 are
  silent, so segment boundaries are audible. Over a noise floor like the ball's:
  `audio = log(tones + NOISE_FLOOR · exp(0.2 · normal))`. Every two patterns correlate < 0.37.

Ground-truth scores (generated clips, RAW de-normalised scale; lower is better, 0 = ideal):
- `classify_video(video) -> [B, N]`: nearest glyph per segment (foreground = distance from each frame's
  median colour, averaged over the segment's frames; normalised cross-correlation with every glyph at
  every allowed offset). `classify_audio(audio) -> [B, N]`: nearest sound pattern per segment
  (correlation of the segment's log spectrogram with each pattern's). Both exact on real clips; -1 marks
  a constant (blank) cell.
- `cell_error(video, audio, given, true_symbols)`: 1 − the fraction of generated cells whose symbol is
  right. Right is judged against the best rule (s_1, d) consistent with every given cell (given cells
  are real: their symbols are `true_symbols`), chosen per clip to maximise the right generated cells;
  video and audio of a segment are judged against the same rule. For a2v, v2a, continue and inpaint the
  given cells fix the rule, so this is "matches the real clip"; for joint it measures rule-consistency
  and cross-modal agreement; for continue_2s any of the 3 steps may be chosen.
- `cross_modal_agreement(video, audio)`: fraction of segments whose video symbol differs from the audio
  symbol (the name says what it checks; the value is the disagreement).

Decoders (`video_to_frames` → `write_gif`, `audio_to_waveform` → `write_wav`) are the ball's: the
frame rates, bins and noise floor are the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from monl.data import builtin
from monl.data import format as fmt
from monl.data import synthetic
from monl.data.synthetic import audio_to_waveform, video_to_frames, write_gif, write_wav  # noqa: F401

GENERATOR_NAME = "monl.data.symbols"
GENERATOR_VERSION = 1  # bump whenever generated clips change

NUM_SYMBOLS = 10  # K
NUM_SEGMENTS = 5  # N
STEPS = (1, 2, 3)  # the rule's step d
VIDEO_FPS = synthetic.VIDEO_FPS
AUDIO_FPS = synthetic.AUDIO_FPS
SECONDS_PER_SEGMENT = 0.5
SECONDS = SECONDS_PER_SEGMENT * NUM_SEGMENTS
FRAMES_PER_SEGMENT = 4  # video
AUDIO_FRAMES_PER_SEGMENT = 16
VIDEO_SHAPE = (NUM_SEGMENTS * FRAMES_PER_SEGMENT, 16, 16, 3)  # [T, H, W, RGB]
AUDIO_SHAPE = (NUM_SEGMENTS * AUDIO_FRAMES_PER_SEGMENT, 16)  # [T, frequency bins]
VIDEO_SEGMENTS = (FRAMES_PER_SEGMENT,) * NUM_SEGMENTS
AUDIO_SEGMENTS = (AUDIO_FRAMES_PER_SEGMENT,) * NUM_SEGMENTS
MAX_OFFSET = 2  # px, per clip, in each direction
NOISE_FLOOR = synthetic.NOISE_FLOOR
BIN_FREQS_HZ = synthetic.BIN_FREQS_HZ
TONE_SIGMA = 0.5  # tone width across bins

_GLYPH_ART = {
    "plus": """
        ....##....
        ....##....
        ....##....
        ....##....
        ##########
        ##########
        ....##....
        ....##....
        ....##....
        ....##....""",
    "cross": """
        ##......##
        ###....###
        .###..###.
        ..######..
        ...####...
        ...####...
        ..######..
        .###..###.
        ###....###
        ##......##""",
    "square": """
        ##########
        ##########
        ##......##
        ##......##
        ##......##
        ##......##
        ##......##
        ##......##
        ##########
        ##########""",
    "block": """
        ..........
        ..........
        ..######..
        ..######..
        ..######..
        ..######..
        ..######..
        ..######..
        ..........
        ..........""",
    "triangle": """
        ....##....
        ....##....
        ...####...
        ...#..#...
        ..##..##..
        ..#....#..
        .##....##.
        .#......#.
        ##########
        ##########""",
    "hbars": """
        ..........
        ..........
        ##########
        ##########
        ..........
        ..........
        ##########
        ##########
        ..........
        ..........""",
    "vbars": """
        ..##..##..
        ..##..##..
        ..##..##..
        ..##..##..
        ..##..##..
        ..##..##..
        ..##..##..
        ..##..##..
        ..##..##..
        ..##..##..""",
    "ell": """
        ###.......
        ###.......
        ###.......
        ###.......
        ###.......
        ###.......
        ###.......
        ##########
        ##########
        ##########""",
    "checker": """
        #####.....
        #####.....
        #####.....
        #####.....
        #####.....
        .....#####
        .....#####
        .....#####
        .....#####
        .....#####""",
    "diamond": """
        ....##....
        ...####...
        ..##..##..
        .##....##.
        ##......##
        ##......##
        .##....##.
        ..##..##..
        ...####...
        ....##....""",
}
GLYPH_NAMES = tuple(_GLYPH_ART)
GLYPHS = np.stack([np.array([[ch == "#" for ch in row.strip()] for row in art.strip().splitlines()])
                   for art in _GLYPH_ART.values()])  # [K, 10, 10] bool
GLYPH_SIZE = GLYPHS.shape[1]
ORIGIN = (VIDEO_SHAPE[1] - GLYPH_SIZE) // 2  # top-left corner of a glyph at offset (0, 0)

# Symbol k: steady tone at TONE_PAIRS[k][0], rhythmic tone at TONE_PAIRS[k][1] (RHYTHMS[k % 3]). Chosen
# by search so that every two patterns' log spectrograms correlate < 0.37 and no bin is used > 2 times.
TONE_PAIRS = ((4, 7), (13, 10), (5, 12), (3, 12), (10, 15), (8, 1), (14, 2), (6, 0), (9, 4), (0, 3))
_STEADY = np.zeros(AUDIO_FRAMES_PER_SEGMENT)
_STEADY[1:-1] = 1.0
_PULSED = np.zeros(AUDIO_FRAMES_PER_SEGMENT)
_PULSED[[1, 2, 5, 6, 9, 10, 13, 14]] = 1.0
_HALF = np.zeros(AUDIO_FRAMES_PER_SEGMENT)
_HALF[1:8] = 1.0
RHYTHMS = np.stack([_STEADY, _PULSED, _HALF])  # [3, 16] on/off per frame of a segment


def sound_templates() -> np.ndarray:
  """Linear tone magnitudes of every symbol's segment, `[K, 16 frames, 16 bins]` (no noise floor)."""
  bins = np.arange(AUDIO_SHAPE[1])
  out = np.zeros((NUM_SYMBOLS, AUDIO_FRAMES_PER_SEGMENT, AUDIO_SHAPE[1]))
  for k, (a, b) in enumerate(TONE_PAIRS):
    tone_a = np.exp(-0.5 * ((bins - a) / TONE_SIGMA) ** 2)
    tone_b = np.exp(-0.5 * ((bins - b) / TONE_SIGMA) ** 2)
    out[k] = _STEADY[:, None] * tone_a[None] + RHYTHMS[k % 3][:, None] * tone_b[None]
  return out


SOUNDS = sound_templates()


# ----------------------------------------------------------------------------------------------------
# the rule, rendering, generation


def rule_sequence(s1: int, d: int, num_segments: int = NUM_SEGMENTS) -> np.ndarray:
  """`[num_segments]` int: s_n = (s_1 + (n - 1) d) mod K."""
  return (s1 + d * np.arange(num_segments)) % NUM_SYMBOLS


def all_rules(num_segments: int = NUM_SEGMENTS) -> np.ndarray:
  """Every rule's sequence, `[K * len(STEPS), num_segments]` int (rows: s_1 major, d minor)."""
  return np.stack([rule_sequence(s1, d, num_segments) for s1 in range(NUM_SYMBOLS) for d in STEPS])


def glyph_mask(symbol: int, offset: Sequence[int]) -> np.ndarray:
  """`[H, W]` float {0, 1}: glyph `symbol` with its top-left corner at ORIGIN + offset (dy, dx)."""
  _, h, w, _ = VIDEO_SHAPE
  y, x = ORIGIN + int(offset[0]), ORIGIN + int(offset[1])
  canvas = np.zeros((h, w))
  canvas[y:y + GLYPH_SIZE, x:x + GLYPH_SIZE] = GLYPHS[symbol]
  return canvas


def render_video(symbols: Sequence[int], colour: np.ndarray, background: float,
                 offset: Sequence[int]) -> np.ndarray:
  """`symbols: [N]` → float32 `[N * 4, 16, 16, 3]`: each segment's glyph, static over its frames."""
  masks = np.stack([glyph_mask(s, offset) for s in symbols])  # [N, H, W]
  masks = np.repeat(masks, FRAMES_PER_SEGMENT, axis=0)[..., None]
  return (background + (np.asarray(colour) - background) * masks).astype(np.float32)


def render_audio(symbols: Sequence[int], rng: np.random.Generator) -> np.ndarray:
  """`symbols: [N]` → float32 `[N * 16, 16]` log magnitudes: each segment's pattern over the noise floor."""
  mag = np.concatenate([SOUNDS[s] for s in symbols])
  mag = mag + NOISE_FLOOR * np.exp(0.2 * rng.standard_normal(mag.shape))
  return np.log(mag).astype(np.float32)


def generate_clip(rng: np.random.Generator) -> dict[str, Any]:
  """One clip: `{"video": float32 [20,16,16,3], "audio": float32 [80,16], "meta": dict}`.

  meta: `symbols` [5] (s_1..s_5), `s1`, `step` (d), `colour` [3], `background`, `offset` (dy, dx)."""
  s1 = int(rng.integers(NUM_SYMBOLS))
  d = int(rng.choice(STEPS))
  symbols = rule_sequence(s1, d)
  colour = synthetic._hsv_to_rgb(rng.uniform(), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
  background = rng.uniform(0.0, 0.2)
  offset = rng.integers(-MAX_OFFSET, MAX_OFFSET + 1, size=2)
  video = render_video(symbols, colour, background, offset)
  audio = render_audio(symbols, rng)
  meta = {"symbols": symbols, "s1": s1, "step": d, "colour": colour, "background": background,
          "offset": offset}
  return {"video": video, "audio": audio, "meta": meta}


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
  """Returns `dataset_dir` (user-expanded) holding the symbols dataset, building it if needed.

  Reuses a complete dataset whose `produced_by.generator` equals `generator_params(...)`; rebuilds one
  produced by this generator with other parameters or version; refuses (DatasetError) to touch a
  directory that holds anything else, the bouncing ball included (`monl.data.builtin.ensure_dataset`)."""
  return builtin.ensure_dataset(
      dataset_dir, generator_params(num_train, num_test, seed, num_shards), generate_clip,
      segments={"video": VIDEO_SEGMENTS, "audio": AUDIO_SEGMENTS},
      seconds_per_segment=(SECONDS_PER_SEGMENT,) * NUM_SEGMENTS, source="monl.data.symbols",
      progress=progress)


# ----------------------------------------------------------------------------------------------------
# classifiers and ground-truth scores (raw scale; lower is better)


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Zero-mean, unit-norm rows over the last axis; and whether each row had any variance."""
  x = x - x.mean(axis=-1, keepdims=True)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  ok = norm[..., 0] > 1e-9
  return x / np.where(norm > 1e-9, norm, 1.0), ok


def _num_segments(length: int, per_segment: int, name: str) -> int:
  if length % per_segment:
    raise ValueError(f"{name}: time length {length} is not a multiple of {per_segment} frames per segment")
  return length // per_segment


_OFFSETS = [(dy, dx) for dy in range(-MAX_OFFSET, MAX_OFFSET + 1) for dx in range(-MAX_OFFSET, MAX_OFFSET + 1)]
# [K, offsets, H*W]: every glyph at every allowed offset, zero-mean unit-norm
_GLYPH_CANVASES = _unit_rows(np.stack([np.stack([glyph_mask(k, o).ravel() for o in _OFFSETS])
                                       for k in range(NUM_SYMBOLS)]))[0]
_SOUND_ROWS = _unit_rows(np.log(SOUNDS + NOISE_FLOOR).reshape(NUM_SYMBOLS, -1))[0]  # [K, 16*16]


def video_foreground(video: np.ndarray) -> np.ndarray:
  """`video: [B, T, H, W, 3]` → `[B, N, H, W]`: distance of every pixel from its frame's median colour
  (the background), averaged over each segment's 4 frames."""
  v = np.asarray(video, np.float64)
  b, t, h, w, _ = v.shape
  n = _num_segments(t, FRAMES_PER_SEGMENT, "classify_video video")
  bg = np.median(v.reshape(b, t, h * w, 3), axis=2)[:, :, None, None, :]
  d = np.linalg.norm(v - bg, axis=-1)  # [B, T, H, W]
  return d.reshape(b, n, FRAMES_PER_SEGMENT, h, w).mean(axis=2)


def classify_video(video: np.ndarray, return_scores: bool = False):
  """Nearest glyph of every segment: `video: [(B,) T, H, W, 3]` raw → int `[(B,) N]` (-1: blank cell).

  With `return_scores`, also the best correlation per glyph `[(B,) N, K]`."""
  v, batched = synthetic._batched(video, 4, "classify_video video")
  if v.shape[2:] != VIDEO_SHAPE[1:]:
    raise ValueError(f"classify_video: frames must be {list(VIDEO_SHAPE[1:])}, got {list(v.shape[2:])}")
  fg = video_foreground(v)
  rows, ok = _unit_rows(fg.reshape(*fg.shape[:2], -1))  # [B, N, H*W]
  scores = np.einsum("bnp,kop->bnko", rows, _GLYPH_CANVASES).max(axis=-1)  # [B, N, K]
  labels = np.where(ok, scores.argmax(axis=-1), -1)
  if not batched:
    labels, scores = labels[0], scores[0]
  return (labels, scores) if return_scores else labels


def classify_audio(audio: np.ndarray, return_scores: bool = False):
  """Nearest sound pattern of every segment: `audio: [(B,) T, F]` raw → int `[(B,) N]` (-1: constant).

  Pearson correlation of the segment's log spectrogram with each symbol's noise-floored pattern. With
  `return_scores`, also the correlations `[(B,) N, K]`."""
  a, batched = synthetic._batched(audio, 2, "classify_audio audio")
  if a.shape[2] != AUDIO_SHAPE[1]:
    raise ValueError(f"classify_audio: expected {AUDIO_SHAPE[1]} bins, got {a.shape[2]}")
  b, t, f = a.shape
  n = _num_segments(t, AUDIO_FRAMES_PER_SEGMENT, "classify_audio audio")
  a = np.nan_to_num(np.clip(a, -30.0, 30.0))
  rows, ok = _unit_rows(a.reshape(b, n, AUDIO_FRAMES_PER_SEGMENT * f))
  scores = rows @ _SOUND_ROWS.T  # [B, N, K]
  labels = np.where(ok, scores.argmax(axis=-1), -1)
  if not batched:
    labels, scores = labels[0], scores[0]
  return (labels, scores) if return_scores else labels


def cell_error_from_symbols(symbols: np.ndarray, given: np.ndarray, true_symbols: np.ndarray) -> np.ndarray:
  """`cell_error` from classified cells: `symbols: [B, 2, N]` int (rows video, audio), `given: [2, N]` or
  `[B, 2, N]` bool, `true_symbols: [B, N]` (the real clip's) → `[B]` float (NaN where nothing is
  generated). Raises ValueError if the given cells of a clip follow no rule."""
  symbols = np.asarray(symbols)
  true_symbols = np.asarray(true_symbols)
  b, m, n = symbols.shape
  if m != 2 or true_symbols.shape != (b, n):
    raise ValueError(f"cell_error: symbols must be [B, 2, N] and true_symbols [B, N], got "
                     f"{list(symbols.shape)} and {list(true_symbols.shape)}")
  given = np.broadcast_to(np.asarray(given, bool), (b, 2, n))
  seqs = all_rules(n)  # [R, N]
  # A rule is consistent if it predicts every given cell's (true) symbol.
  true_match = (true_symbols[:, None, :] == seqs[None])[:, :, None, :]  # [B, R, 1, N]
  consistent = np.all(~given[:, None] | true_match, axis=(2, 3))  # [B, R]
  right = ((~given[:, None]) & (symbols[:, None] == seqs[None, :, None, :])).sum(axis=(2, 3))  # [B, R]
  if not consistent.any(axis=1).all():
    bad = np.flatnonzero(~consistent.any(axis=1)).tolist()
    raise ValueError(f"cell_error: the given cells of clips {bad[:10]} follow no rule "
                     f"s_n = s_1 + (n-1) d mod {NUM_SYMBOLS}, d in {STEPS}: true_symbols are not of this dataset")
  best = np.where(consistent, right, -1).max(axis=1)
  num_generated = (~given).sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(num_generated > 0, 1.0 - best / num_generated, np.nan)


def cell_error(video: np.ndarray, audio: np.ndarray, given: np.ndarray, true_symbols: np.ndarray):
  """1 − fraction of generated cells with the right symbol (lower is better; see the module docstring).

  `video: [(B,) T, H, W, 3]`, `audio: [(B,) T_a, F]` raw generated clips, `given: [2, N]` or
  `[B, 2, N]` bool (rows video, audio: True = conditioned on, i.e. real), `true_symbols: [(B,) N]` the
  real clip's symbols (e.g. `classify_video(real_video)`) → `[B]` (or a float for one clip)."""
  v, batched = synthetic._batched(video, 4, "cell_error video")
  a, _ = synthetic._batched(audio, 2, "cell_error audio")
  if len(v) != len(a):
    raise ValueError(f"cell_error: {len(v)} videos but {len(a)} audio clips")
  true_symbols = np.asarray(true_symbols).reshape(len(v), -1)
  symbols = np.stack([classify_video(v), classify_audio(a)], axis=1)
  return synthetic._out(cell_error_from_symbols(symbols, given, true_symbols), batched)


def cross_modal_agreement(video: np.ndarray, audio: np.ndarray):
  """Fraction of segments whose video symbol differs from the audio symbol (a blank cell never agrees).

  `video: [(B,) T, H, W, 3]`, `audio: [(B,) T_a, F]` raw → `[B]` (or a float). Lower is better."""
  v, batched = synthetic._batched(video, 4, "cross_modal_agreement video")
  a, _ = synthetic._batched(audio, 2, "cross_modal_agreement audio")
  if len(v) != len(a):
    raise ValueError(f"cross_modal_agreement: {len(v)} videos but {len(a)} audio clips")
  sv, sa = classify_video(v), classify_audio(a)
  if sv.shape != sa.shape:
    raise ValueError(f"cross_modal_agreement: {sv.shape[1]} video segments but {sa.shape[1]} audio segments")
  return synthetic._out(((sv != sa) | (sv < 0) | (sa < 0)).mean(axis=1), batched)

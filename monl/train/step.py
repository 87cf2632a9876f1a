"""The MoNL training objective and the jitted train step.

Per example: draw a timestep matrix from the mixture, noise every cell at its own level, predict the
noise of every token, and take the squared error. Errors are summed per cell ([B, M * N]) with one
small matmul, so the overall, per-modality and per-noise-level-bucket losses all come from the same
per-cell table; cells at level 0 (clean) carry no noise and are excluded.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from monl import layout as layout_lib
from monl import mixture
from monl import schedule as schedule_lib
from monl.models import avdit


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs besides the data iterator."""
  step: jax.Array  # int32 scalar
  params: Any
  ema_params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Objective:
  """Static description of the loss (hashable; closed over by the jitted step)."""
  model: avdit.AVDiT
  layout: layout_lib.Layout
  schedule: schedule_lib.Schedule
  mixture_weights: tuple[float, ...]
  clean_prob: float
  self_cond_rate: float
  num_level_buckets: int
  prediction: str = "eps"  # what the network outputs: eps | v | x0 (schedule.PREDICTIONS)
  x0_loss_cap: float = 5.0  # x0 prediction: per-cell loss weight min(1 + SNR, cap)
  # x0 prediction: σ_d of the skip parameterisation (schedule.output_to_x0) per modality name; only
  # modalities whose tokens are larger than the width get it (`x0_skip_of`)
  x0_skip: tuple[tuple[str, float], ...] = ()
  condition_given: tuple[tuple[bool, ...], ...] | None = None  # [M][N] task-specific training mask

  @classmethod
  def from_config(cls, config, model: avdit.AVDiT) -> "Objective":
    return cls(model=model, layout=model.layout, schedule=schedule_lib.Schedule.from_config(config.schedule),
               mixture_weights=mixture.validate_weights(config.mixture.weights),
               clean_prob=float(config.mixture.clean_prob),
               self_cond_rate=float(config.model.self_cond_rate),
               num_level_buckets=int(config.train.num_level_buckets),
               prediction=schedule_lib.check_prediction(config.model.prediction),
               x0_loss_cap=float(config.model.get("x0_loss_cap", 5.0)),
               x0_skip=x0_skip_of(float(config.model.get("x0_skip", 0.0)), model.layout, model.cfg.width),
               condition_given=mixture.condition_mask(config.mixture.get("condition_mask", ""), model.layout.names,
                                                      model.layout.num_segments, k=config.sample.continue_segments))

  def eps(self, params, z_t, t, self_cond=None):
    """{m: [B, L_m, P_m]} the model's noise estimate, whatever its output parameterisation."""
    out = self.model.apply(params, z_t, t, self_cond)
    cells = self.layout.cell_of_token_by_modality()
    skip = dict(self.x0_skip)
    return {m: schedule_lib.output_to_eps(self.schedule, self.prediction, z_t[m], out[m], t, cells[m],
                                          skip.get(m, 0.0)) for m in out}


def x0_skip_of(sigma_data: float, lay: layout_lib.Layout, width: int) -> tuple[tuple[str, float], ...]:
  """((name, σ_d), ...): the skip goes to the modalities whose token is larger than the model width.

  Their linear head can only output x0 tokens in a `width`-dimensional subspace (whole-frame video
  tokens: 1536 values from 128 features), which leaves ringing and faded objects without a skip; a
  token no larger than the width is expressed exactly, and a skip would only pass noise on."""
  return tuple((m.name, sigma_data if m.patch_dim > width else 0.0) for m in lay.modalities)


def make_optimizer(train_cfg, clip: optax.GradientTransformation | None = None) -> optax.GradientTransformation:
  """AdamW with linear warm-up then cosine decay, after global-norm gradient clipping (or `clip`)."""
  lr = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_cfg.lr, warmup_steps=train_cfg.warmup_steps,
      decay_steps=max(train_cfg.num_steps, train_cfg.warmup_steps + 1),
      end_value=train_cfg.lr * train_cfg.end_lr_fraction)
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip) if clip is None else clip,
      optax.adamw(lr, b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay))


def predict_x0(obj: Objective, z_t, t, eps_hat):
  """{m: [B, L_m, P_m]} x0 estimate from noisy tokens and predicted noise."""
  cells = obj.layout.cell_of_token_by_modality()
  ab = obj.schedule.alpha_bar_of(t)
  return {m: schedule_lib.eps_to_x0(z_t[m], eps_hat[m], schedule_lib.per_element(ab, cells[m], 3))
          for m in z_t}


def per_cell_squared_error(obj: Objective, pred, target) -> jax.Array:
  """[B, M * N] sum of squared prediction errors (eps, v or x0) over each cell's elements."""
  total = 0.0
  for name, cells in obj.layout.cell_of_token_by_modality().items():
    sq = jnp.sum(jnp.square(pred[name] - target[name].astype(jnp.float32)), axis=-1)  # [B, L_m]
    one_hot = np.eye(obj.layout.num_cells, dtype=np.float32)[cells]  # [L_m, C], a constant
    total = total + sq @ one_hot
  return total


def loss_and_metrics(params, obj: Objective, batch, key: jax.Array):
  """MoNL loss of one batch.

  Args:
    params: model variables ({'params': ...}).
    batch: {name: [B, *shape]} normalised clean latents.
    key: PRNG key for this step.
  Returns:
    (loss, metrics) where metrics holds per-cell sums for logging.
  """
  lay = obj.layout
  tokens = lay.patchify({m: batch[m] for m in lay.names})
  b = next(iter(tokens.values())).shape[0]
  k_t, k_eps, k_sc, k_flip = jax.random.split(key, 4)
  if obj.condition_given is not None:  # task-specific baseline: given cells clean, the rest one level
    t, strategy = mixture.conditional_levels(k_t, b, obj.condition_given, obj.schedule.num_steps)
  else:
    t, strategy = mixture.sample_levels(k_t, b, lay.num_modalities, lay.num_segments,
                                        num_steps=obj.schedule.num_steps, weights=obj.mixture_weights,
                                        clean_prob=obj.clean_prob)
  eps_keys = jax.random.split(k_eps, lay.num_modalities)
  eps = {m: jax.random.normal(k, tokens[m].shape, jnp.float32) for k, m in zip(eps_keys, lay.names)}
  cells = lay.cell_of_token_by_modality()
  z_t = {m: schedule_lib.add_noise(obj.schedule, tokens[m], eps[m], t, cells[m]) for m in lay.names}

  self_cond = None
  if obj.self_cond_rate > 0:
    # With probability `self_cond_rate` (per batch, so the extra forward pass is skipped otherwise),
    # feed the model its own x0 estimate from a first pass, without gradient (W.A.L.T, Chen et al.).
    def estimate():
      eps_first = obj.eps(params, z_t, t)
      return jax.lax.stop_gradient(predict_x0(obj, z_t, t, eps_first))
    zeros = lambda: jax.tree.map(jnp.zeros_like, z_t)
    self_cond = jax.lax.cond(jax.random.bernoulli(k_flip, obj.self_cond_rate), estimate, zeros)

  pred = obj.model.apply(params, z_t, t, self_cond)
  if obj.prediction == "x0":  # the loss is on the x0 estimate, whatever its parameterisation
    skip = dict(obj.x0_skip)
    pred = {m: schedule_lib.output_to_x0(obj.schedule, z_t[m], pred[m], t, cells[m], skip[m]) for m in lay.names}
  target = {m: schedule_lib.prediction_target(obj.schedule, obj.prediction, tokens[m], eps[m], t, cells[m])
            for m in lay.names}
  cell_sq = per_cell_squared_error(obj, pred, target)  # [B, C]
  if obj.prediction == "x0":
    cell_sq = cell_sq * schedule_lib.x0_loss_weight(obj.schedule, t, obj.x0_loss_cap).reshape(b, -1)
  noisy = (t.reshape(b, -1) > 0).astype(jnp.float32)  # [B, C]; clean cells excluded
  count = jnp.asarray(lay.elements_per_cell)[None] * noisy
  loss = jnp.sum(cell_sq * noisy) / jnp.maximum(jnp.sum(count), 1.0)

  # Per-modality and per-noise-level-bucket (sum, count) pairs; means are taken on the host over the
  # logging window so that rare buckets are averaged correctly.
  k = obj.num_level_buckets
  bucket = jnp.clip((t.reshape(b, -1) - 1) * k // obj.schedule.num_steps, 0, k - 1)
  bucket_1h = jax.nn.one_hot(bucket, k) * noisy[..., None]  # [B, C, K]
  modality_of_cell = np.repeat(np.arange(lay.num_modalities), lay.num_segments)
  mod_1h = np.eye(lay.num_modalities, dtype=np.float32)[modality_of_cell]  # [C, M]
  metrics = {
      "loss": loss,
      "modality_sq": jnp.sum(cell_sq * noisy, 0) @ mod_1h,
      "modality_count": jnp.sum(count, 0) @ mod_1h,
      "bucket_sq": jnp.einsum("bc,bck->k", cell_sq, bucket_1h),
      "bucket_count": jnp.einsum("bc,bck->k", count, bucket_1h),
      "strategy_count": jnp.sum(jax.nn.one_hot(strategy, len(mixture.STRATEGIES)), 0),
  }
  return loss, metrics


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
  """EMA decay with the usual warm-up, min(decay, (1 + step) / (10 + step)), so short runs track."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def train_step(state: TrainState, batch, base_key: jax.Array, *, obj: Objective,
               tx: optax.GradientTransformation, ema: float):
  """One optimisation step. The step's randomness is fold_in(base_key, step), so a resume is exact.

  A step with a non-finite loss or gradient leaves the state unchanged and reports `finite = 0`;
  the loop stops with a message naming the step.
  """
  key = jax.random.fold_in(base_key, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(state.params, obj, batch, key)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(state, grads):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay(state.step, ema)
    ema_params = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    return TrainState(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)

  # A branch rather than a per-element select of new or old state: XLA:CPU then makes no select pass
  # over the parameters, EMA and Adam moments (2 % of the mid-size step, benchmarks/PERF_LOG.md §15).
  new_state = jax.lax.cond(finite, update, lambda state, _: state.replace(step=state.step + 1), state, grads)
  metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
  return new_state, metrics


def init_state(key: jax.Array, obj: Objective, tx: optax.GradientTransformation) -> TrainState:
  """Fresh parameters, EMA copy and optimizer state, boxed with their logical axis names.

  Use under `jax.eval_shape` to read partition specs, and `unbox` for the arrays themselves.
  """
  lay = obj.layout
  tokens = {m.name: jnp.zeros((1, m.num_tokens, m.patch_dim), jnp.float32) for m in lay.modalities}
  t = jnp.ones((1, lay.num_modalities, lay.num_segments), jnp.int32)
  params = obj.model.init(key, tokens, t)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params))


def unbox(tree):
  return nn.meta.unbox(tree)

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from monl import layout as L
from monl.models import avdit, layers
from monl.train import loop


def _setup(**model_overrides):
  c = default.get_config()
  c.model.width, c.model.depth, c.model.num_heads, c.model.head_hidden = 32, 2, 2, 64
  for k, v in model_overrides.items():
    c.model[k] = v
  lay = L.Layout.from_config(loop.with_data_layout(c).layout)
  return avdit.AVDiT(avdit.AVDiTConfig.from_config(c.model), lay), lay


def _inputs(lay, b=2, seed=0):
  rng = np.random.default_rng(seed)
  tokens = {m.name: jnp.asarray(rng.normal(size=(b, m.num_tokens, m.patch_dim)), jnp.float32)
            for m in lay.modalities}
  t = jnp.asarray(rng.integers(1, 1000, size=(b, lay.num_modalities, lay.num_segments)), jnp.int32)
  return tokens, t


def _randomize(variables, seed=1):
  """Replaces zero-initialised (adaLN-Zero) weights so that every path is active."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [l + 0.05 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


@pytest.mark.parametrize("scan", [True, False])
def test_every_parameter_has_logical_axes(scan):
  model, lay = _setup(scan_layers=scan)
  tokens, t = _inputs(lay, 1)
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, t)
  flat = jax.tree_util.tree_flatten_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  unnamed = [jax.tree_util.keystr(p) for p, x in flat if not isinstance(x, nn.Partitioned)]
  assert not unnamed
  for _, x in flat:
    assert len(x.names) == len(x.value.shape)
  # scanned layers carry the stacking axis name
  assert any(x.names[0] == "layers" for _, x in flat) == scan


@pytest.mark.parametrize("scan", [True, False])
def test_output_shapes_and_zero_init(scan):
  model, lay = _setup(scan_layers=scan)
  tokens, t = _inputs(lay)
  variables = jax.jit(model.init)(jax.random.key(0), tokens, t)
  out = jax.jit(model.apply)(variables, tokens, t)
  for m in lay.modalities:
    assert out[m.name].shape == (2, m.num_tokens, m.patch_dim)
    np.testing.assert_array_equal(out[m.name], 0.0)  # adaLN-Zero heads start at zero


@pytest.mark.parametrize("head, hidden", [("linear", 0), ("mlp", 0), ("mlp", 96)])
def test_mlp_head_reaches_tokens_outside_a_width_dimensional_subspace(head, hidden):
  model, lay = _setup(width=64, head=head, head_hidden=hidden)
  tokens, t = _inputs(lay, b=16)
  variables = _randomize(jax.jit(model.init)(jax.random.key(0), tokens, t))
  params = variables["params"]
  # only the video's tokens (1536 values) are larger than the width; the audio's (64) keep a linear head
  assert "head_hidden_audio" not in params
  assert ("head_hidden_video" in params) == (head == "mlp")
  if head == "mlp":
    assert params["head_hidden_video"]["kernel"].value.shape == (64, hidden or 1536)
  video = np.asarray(jax.jit(model.apply)(variables, tokens, t)["video"]).reshape(-1, 1536)  # [128, 1536]
  rank = np.linalg.matrix_rank(video - video.mean(0), tol=1e-4 * np.abs(video).max())
  # a linear head's outputs span at most `width` directions; the mlp head's span more
  assert rank <= 64 if head == "linear" else rank > 64


def test_one_cell_level_changes_only_that_cells_modulation():
  model, lay = _setup(scan_layers=False)
  tokens, t = _inputs(lay)
  variables = _randomize(nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, t)))
  cell = (1, 2)  # audio, segment 3
  t2 = t.at[0, cell[0], cell[1]].set((t[0, cell[0], cell[1]] + 300) % 1000 + 1)

  def modulation(levels):
    _, inter = jax.jit(functools.partial(model.apply, capture_intermediates=True))(variables, tokens, levels)
    return np.asarray(inter["intermediates"]["block_0"]["adaln"]["__call__"][0])  # [B, C, 6D]

  a, b = modulation(t), modulation(t2)
  changed = np.abs(a - b).max(axis=-1) > 0  # [B, C]
  flat_cell = cell[0] * lay.num_segments + cell[1]
  expected = np.zeros_like(changed)
  expected[0, flat_cell] = True
  np.testing.assert_array_equal(changed, expected)


def test_per_cell_values_reach_exactly_their_tokens():
  lay = L.Layout((L.ModalityLayout("video", (5, 4, 4, 2), (1, 2, 2), (1, 1, 1, 1, 1)),
                  L.ModalityLayout("audio", (106, 3), (1,), (6, 25, 25, 25, 25))))
  per_cell = jnp.arange(2 * lay.num_cells * 3, dtype=jnp.float32).reshape(2, lay.num_cells, 3)
  tok = np.asarray(layers.to_tokens(per_cell, lay.cell_of_token))
  np.testing.assert_array_equal(tok, np.asarray(per_cell)[:, lay.cell_of_token])
  # Its backward sums each cell's tokens, whichever group (one broadcast) the cell's run is part of.
  weights = jax.random.normal(jax.random.key(0), tok.shape)
  grad = jax.grad(lambda pc: jnp.sum(layers.to_tokens(pc, lay.cell_of_token) * weights))(per_cell)
  expected = np.stack([np.asarray(weights)[:, lay.cell_of_token == c].sum(1) for c in range(lay.num_cells)], 1)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


def test_cell_groups_join_equal_runs_of_consecutive_cells():
  cells = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 0, 0, 6, 6])
  assert layers.cell_groups(cells) == [(0, 3, 2), (3, 2, 3), (0, 1, 2), (6, 1, 2)]
  assert layers.cell_groups(np.array([5, 5, 5])) == [(5, 1, 3)]


def test_self_conditioning_input_is_used():
  model, lay = _setup(self_cond_rate=0.9)
  tokens, t = _inputs(lay)
  variables = _randomize(nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, t)))
  sc = jax.tree.map(jnp.ones_like, tokens)
  apply = jax.jit(model.apply)
  a = apply(variables, tokens, t)
  b = apply(variables, tokens, t, sc)
  assert not np.allclose(a["video"], b["video"])
  model_plain, _ = _setup()
  with pytest.raises(ValueError, match="self_cond_rate"):
    model_plain.apply(model_plain.init(jax.random.key(0), tokens, t), tokens, t, sc)


@pytest.mark.parametrize("impl", ["dot_product"])
def test_attention_implementations_agree(impl):
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 4, 10, 8))
  np.testing.assert_allclose(layers.dot_attention(q, k, v, "xla"), layers.dot_attention(q, k, v, impl),
                             atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_cpu_attention_matches_the_einsums_and_their_gradients(with_bias):
  """cpu_attention's hand-written backward gives JAX's gradients of einsum_attention, bias included."""
  ks = jax.random.split(jax.random.key(1), 5)
  q, k, v, g = (jax.random.normal(key, (2, 3, 40, 8)) for key in ks[:4])
  bias = jax.random.normal(ks[4], (3, 40, 40)) if with_bias else None
  argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)

  def grads(fn):
    return jax.jit(jax.grad(lambda q, k, v, b: jnp.sum(fn(q, k, v, b) * g), argnums=argnums))(q, k, v, bias)

  np.testing.assert_allclose(layers.cpu_attention(q, k, v, bias), layers.einsum_attention(q, k, v, bias),
                             atol=2e-6)
  want = grads(layers.einsum_attention)
  got = grads(layers.cpu_attention)
  assert len(got) == len(argnums)
  for name, a, b in zip("qkvb", got, want):
    assert float(jnp.abs(b).max()) > 1e-3, name  # a real gradient, not a zero compared with a zero
    np.testing.assert_allclose(a, b, atol=2e-6, err_msg=name)
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  low_grads = jax.grad(lambda *a: jnp.sum(layers.cpu_attention(*a, None).astype(jnp.float32)),
                       argnums=(0, 1, 2))(*low)
  assert all(x.dtype == jnp.bfloat16 for x in low_grads)


def test_xla_attention_on_cpu_keeps_every_product_on_ynnpack():
  """On CPU, "xla" runs cpu_attention: no dot of its backward is left outside a YNNPACK fusion (the
  einsums' backward leaves dP = dO V^T and dQ = dS K to Eigen)."""
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 2, 64, 16))

  def entry_dots(impl):
    grad = jax.grad(lambda q, k, v: jnp.sum(impl(q, k, v, None) ** 2), argnums=(0, 1, 2))
    hlo = jax.jit(grad).lower(q, k, v).compile().as_text()
    return sum(" dot(" in line for line in hlo.split("\nENTRY")[1].splitlines())

  assert jax.default_backend() == "cpu"
  assert entry_dots(lambda *a: layers.dot_attention(*a[:3], "xla", a[3])) == 0
  assert entry_dots(layers.einsum_attention) > 0  # the check can fail: the einsums do leave dots there


@pytest.mark.parametrize("n_in,n_out", [(24, 40), (40, 24)])
def test_cpu_matmul_matches_the_product_and_its_gradients(n_in, n_out):
  kx, kw, kg = jax.random.split(jax.random.key(2), 3)
  x, w = jax.random.normal(kx, (150, n_in)), jax.random.normal(kw, (n_in, n_out))
  g = jax.random.normal(kg, (150, n_out))

  def grads(product):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(product(x, w) * g), argnums=(0, 1)))(x, w)

  np.testing.assert_allclose(layers.cpu_matmul(x, w), x @ w, rtol=1e-5, atol=1e-5)
  for name, a, b in zip("xw", grads(layers.cpu_matmul), grads(lambda x, w: x @ w)):
    assert float(jnp.abs(b).max()) > 1e-3, name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)
  low = jax.grad(lambda x, w: jnp.sum(layers.cpu_matmul(x, w).astype(jnp.float32)), argnums=(0, 1))(
      x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert all(a.dtype == jnp.bfloat16 for a in low)


@pytest.mark.parametrize("length", [512, 100])  # 2 x 512 rows: cpu_matmul; 2 x 100: JAX's own product
def test_dense_layers_on_cpu_keep_large_weight_gradients_on_ynnpack(length):
  """On CPU, nn.Dense's weight gradient x^T dy would be an Eigen dot (both operands contract their
  first axis); over `CPU_MATMUL_MIN_ROWS` rows `layers.dense` computes it through `cpu_matmul`, and no
  dot is left outside YNNPACK. Below that it keeps JAX's product (the transposes would cost more)."""
  mlp = layers.Mlp(hidden=64, dtype=jnp.float32, param_dtype=jnp.float32)
  x = jax.random.normal(jax.random.key(0), (2, length, 32))
  params = mlp.init(jax.random.key(1), x)

  def entry_dots(apply):
    grad = jax.grad(lambda p, x: jnp.sum(apply(p, x) ** 2), argnums=(0, 1))
    hlo = jax.jit(grad).lower(params, x).compile().as_text()
    return sum(" dot(" in line for line in hlo.split("\nENTRY")[1].splitlines())

  def plain(p, x):  # the same MLP with JAX's own gradient of the products
    fc1, fc2 = p["params"]["fc1"], p["params"]["fc2"]
    h = jax.nn.gelu(x @ fc1["kernel"].value + fc1["bias"].value, approximate=True)
    return h @ fc2["kernel"].value + fc2["bias"].value

  np.testing.assert_allclose(mlp.apply(params, x), plain(params, x), rtol=1e-5, atol=1e-5)
  assert entry_dots(plain) > 0  # the check can fail: JAX's weight gradients are left to Eigen
  if 2 * length >= layers.CPU_MATMUL_MIN_ROWS:
    assert entry_dots(mlp.apply) == 0
  else:
    assert entry_dots(mlp.apply) == entry_dots(plain)


def test_remat_and_scan_give_same_output():
  base, lay = _setup()
  tokens, t = _inputs(lay)
  variables = _randomize(nn.meta.unbox(jax.jit(base.init)(jax.random.key(0), tokens, t)))
  ref = jax.jit(base.apply)(variables, tokens, t)
  remat, _ = _setup(remat_policy="dots")
  np.testing.assert_allclose(jax.jit(remat.apply)(variables, tokens, t)["audio"], ref["audio"], atol=1e-5)


def test_aligned_time_embedding_shares_the_temporal_code():
  lay = L.Layout((L.ModalityLayout("video", (4, 4, 4, 3), (2, 2, 2), (2, 2)),
                  L.ModalityLayout("audio", (8, 5), (1,), (4, 4))))
  d, time_dim = 48, 16
  scale = 4 / 2
  v = layers.aligned_position_embedding(lay["video"].grid, lay["video"].time_patch_times, d, time_dim, scale)
  a = layers.aligned_position_embedding(lay["audio"].grid, lay["audio"].time_patch_times, d, time_dim, scale)
  assert v.shape == (8, d) and a.shape == (8, d)
  # video time patch 0 covers frames 0-1 = audio frames 0-3 (segment 0): same time -> same code as
  # the mean of those audio times
  np.testing.assert_allclose(lay["video"].time_patch_times[0], lay["audio"].time_patch_times[:4].mean())
  model, _ = _setup(aligned_time=True)
  tokens, t = _inputs(model.layout)
  out = jax.jit(model.apply)(jax.jit(model.init)(jax.random.key(0), tokens, t), tokens, t)
  assert out["video"].shape == tokens["video"].shape


def test_time_offset_buckets_share_offset_zero_across_modalities():
  lay = L.Layout((L.ModalityLayout("video", (4, 4, 4, 3), (2, 2, 2), (2, 2)),
                  L.ModalityLayout("audio", (8, 5), (1,), (4, 4))))
  b = avdit.time_bias_buckets(lay)
  assert b.shape == (lay.num_tokens, lay.num_tokens)
  times, mod = lay.token_times, lay.modality_of_token
  # unit = half the finest patch spacing (audio: 4 patches per segment -> 1/8), radius = 1 segment = 8
  radius, width = 8, 17
  assert b.max() == 2 * width - 1
  same_time = np.isclose(times[:, None], times[None, :])
  cross = mod[:, None] != mod[None, :]
  np.testing.assert_array_equal(b[same_time & ~cross], radius)  # same modality, offset 0
  # the first video time patch sits at 0.5 (frames 0-1 of segment 0); the audio tokens at 0.375 and
  # 0.625 are one unit before / after it, across modalities
  v0, a1, a2 = 0, lay["video"].num_tokens + 1, lay["video"].num_tokens + 2
  np.testing.assert_allclose((times[v0], times[a1], times[a2]), (0.5, 0.375, 0.625))
  assert (b[v0, a1], b[v0, a2]) == (width + radius + 1, width + radius - 1)
  # pairs more than a segment apart share the end buckets
  far = np.abs(times[:, None] - times[None, :]) > 1.0 + 1e-9
  assert set(np.unique(b[far & ~cross])) <= {0, 2 * radius}


def test_time_bias_is_a_learned_zero_initialised_logit_bias():
  model, lay = _setup(time_bias=True, time_bias_prior=0.0)
  tokens, t = _inputs(lay)
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, t))
  table = variables["params"]["block_0"]["attn"]["time_bias"]
  # the default layout: audio 4 patches per segment -> unit 1/8 segment, radius 8
  assert table.shape == (2, 2 * (2 * 8 + 1)) and not np.any(table)
  # with a zero table the model is the plain one with the same weights
  plain, _ = _setup(time_bias=False)
  rnd = _randomize(variables)
  without = jax.tree.map(lambda x: x, rnd)
  for blk in [k for k in without["params"] if k.startswith("block_")]:
    without["params"][blk]["attn"] = {k: v for k, v in without["params"][blk]["attn"].items() if k != "time_bias"}
  zeroed = jax.tree.map(lambda x: x, rnd)
  for blk in [k for k in zeroed["params"] if k.startswith("block_")]:
    zeroed["params"][blk]["attn"]["time_bias"] = jnp.zeros_like(zeroed["params"][blk]["attn"]["time_bias"])
  np.testing.assert_allclose(jax.jit(model.apply)(zeroed, tokens, t)["video"],
                             jax.jit(plain.apply)(without, tokens, t)["video"], atol=1e-5)
  # a non-zero table changes the output, and the table gets a gradient
  assert not np.allclose(jax.jit(model.apply)(rnd, tokens, t)["video"], jax.jit(plain.apply)(without, tokens, t)["video"])
  grad = jax.grad(lambda v: jnp.sum(model.apply(v, tokens, t)["audio"] ** 2))(rnd)
  assert np.abs(grad["params"]["block_0"]["attn"]["time_bias"]).sum() > 0


def test_time_bias_refuses_the_splash_kernel():
  with pytest.raises(ValueError, match="time_bias"):
    layers.dot_attention(*(jnp.zeros((1, 2, 4, 8)),) * 3, "splash", bias=jnp.zeros((2, 4, 4)))


def test_time_bias_prior_starts_cross_modal_attention_at_the_same_moment():
  model, lay = _setup(time_bias=True, time_bias_prior=4.0)
  tokens, t = _inputs(lay)
  table = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, t))["params"]["block_0"]["attn"]["time_bias"]
  bias = np.asarray(table)[0][avdit.time_bias_buckets(lay)]  # [L, L] of head 0
  times, mod = lay.token_times, lay.modality_of_token
  cross = mod[:, None] != mod[None, :]
  gap = np.abs(times[:, None] - times[None, :])
  np.testing.assert_array_equal(bias[~cross], 0.0)  # no prior within a modality
  # across modalities the bias falls with the time gap, from near the peak for overlapping tokens
  near, far = cross & (gap < 0.2), cross & (gap > 0.5)
  assert bias[near].min() > 2.0 and bias[far].max() < 0.1

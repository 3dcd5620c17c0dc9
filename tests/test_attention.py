"""Fused attention (`jax.nn.dot_product_attention`) vs an explicit einsum
transcription and vs the official `segment_anything` modules (torch).

Image-encoder blocks are checked windowed with window-partition padding (the
grid is not a multiple of the window: 10 -> 12 with window 3, 7 -> 10 with
window 5) and global; decoder attention with and without channel
downsampling. Weights are random and decisive: the relative-position tables
are large enough that dropping them changes the output.
"""

import functools
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import torch_reference as tr
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.modeling.encoders import vit as ie
from simsam_jax.modeling import transformer as tf
from simsam_jax.modeling.policy import Policy, make_policy

F32 = Policy()
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
ATOL = 1e-5


def _randomize(module: nnx.Module, seed: int) -> nnx.Module:
  """Decisive random parameters: kernels N(0, 1/fan_in), LayerNorm scales
  1 + N(0, 0.1^2), biases N(0, 0.1^2), relative-position tables N(0, 0.5^2)."""
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(module)

  def fill(path, leaf):
    name, shape = str(path[-1].key), leaf.shape
    if name == "kernel":
      return rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[:-1]))
    if name == "scale":
      return 1 + 0.1 * rng.standard_normal(shape, np.float32)
    if name.startswith("rel_pos"):
      return 0.5 * rng.standard_normal(shape, np.float32)
    return 0.1 * rng.standard_normal(shape, np.float32)

  pure = jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(fill(p, x)),
                                          nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


# -- einsum transcription (the explicit-softmax form of the official code) ----


def einsum_encoder_attention(attn: ie.Attention, x):
  b, h, w, c = x.shape
  n = attn.num_heads
  qkv = attn.qkv(x).reshape(b, h, w, 3, n, c // n)
  q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
  logits = jnp.einsum("bhwnd,bxynd->bnhwxy", q * attn.scale, k)
  rh = attn.rel_pos_h[...][ie.relative_position_index(h)]
  rw = attn.rel_pos_w[...][ie.relative_position_index(w)]
  logits = (logits + jnp.einsum("bhwnd,hkd->bnhwk", q, rh)[..., :, None]
            + jnp.einsum("bhwnd,wkd->bnhwk", q, rw)[..., None, :])
  probs = jax.nn.softmax(logits.reshape(b, n, h, w, h * w), axis=-1)
  out = jnp.einsum("bnhwk,bknd->bhwnd", probs, v.reshape(b, h * w, n, -1))
  return attn.proj(out.reshape(b, h, w, c))


def einsum_block(block: ie.Block, x):
  shortcut, y = x, block.norm1(x)
  if block.window_size > 0:
    windows, padded = ie.window_partition(y, block.window_size)
    y = ie.window_unpartition(einsum_encoder_attention(block.attn, windows),
                              block.window_size, padded, x.shape[1:3])
  else:
    y = einsum_encoder_attention(block.attn, y)
  x = shortcut + y
  return x + block.mlp(block.norm2(x))


def einsum_decoder_attention(attn: tf.Attention, q, k, v):
  q, k, v = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
  n = attn.num_heads
  split = lambda t: t.reshape(t.shape[0], n, -1)
  q, k, v = split(q), split(k), split(v)
  probs = jax.nn.softmax(
      jnp.einsum("qnd,knd->nqk", q, k) / np.sqrt(q.shape[-1]), axis=-1)
  out = jnp.einsum("nqk,knd->qnd", probs, v)
  return attn.out_proj(out.reshape(out.shape[0], -1))


# -- official modules with the same weights ------------------------------------


def _copy_linear(dst: torch.nn.Linear, src: nnx.Linear):
  dst.weight.copy_(torch.from_numpy(np.asarray(src.kernel[...]).T.copy()))
  dst.bias.copy_(torch.from_numpy(np.array(src.bias[...])))


def _copy_norm(dst: torch.nn.LayerNorm, src: nnx.LayerNorm):
  dst.weight.copy_(torch.from_numpy(np.array(src.scale[...])))
  dst.bias.copy_(torch.from_numpy(np.array(src.bias[...])))


def official_block(block: ie.Block, config, grid: int):
  tr.import_official_modeling()
  from segment_anything.modeling.image_encoder import Block
  ref = Block(config.encoder.dim, config.encoder.num_heads,
              mlp_ratio=config.encoder.mlp_dim / config.encoder.dim,
              norm_layer=functools.partial(torch.nn.LayerNorm,
                                           eps=config.encoder.layer_norm_eps),
              use_rel_pos=True, window_size=block.window_size,
              input_size=(grid, grid)).eval()
  assert ref.mlp.lin1.out_features == config.encoder.mlp_dim
  with torch.no_grad():
    _copy_norm(ref.norm1, block.norm1)
    _copy_norm(ref.norm2, block.norm2)
    _copy_linear(ref.attn.qkv, block.attn.qkv)
    _copy_linear(ref.attn.proj, block.attn.proj)
    ref.attn.rel_pos_h.copy_(torch.from_numpy(np.array(block.attn.rel_pos_h[...])))
    ref.attn.rel_pos_w.copy_(torch.from_numpy(np.array(block.attn.rel_pos_w[...])))
    _copy_linear(ref.mlp.lin1, block.mlp.lin1)
    _copy_linear(ref.mlp.lin2, block.mlp.lin2)
  return ref


BLOCKS = [  # (preset, windowed): tiny grid 10 / window 3, tiny_wide grid 7 / window 5
    ("tiny", True), ("tiny", False), ("tiny_wide", True), ("tiny_wide", False)]


@pytest.mark.parametrize("preset,windowed", BLOCKS)
def test_encoder_block_fused_equals_einsum_and_official(preset, windowed):
  config = get_preset(preset)
  grid, window = config.image_embedding_size, config.encoder.window_size
  if windowed:
    assert grid % window, "the fixture must need window-partition padding"
  block = _randomize(ie.Block(config, window if windowed else 0,
                              rngs=nnx.Rngs(0), policy=F32), seed=1)
  x = np.random.default_rng(2).standard_normal((2, grid, grid, config.encoder.dim),
                                               np.float32)
  fused = np.asarray(jax.jit(lambda x: block(x))(x))
  einsum = np.asarray(jax.jit(lambda x: einsum_block(block, x))(x))
  np.testing.assert_allclose(fused, einsum, atol=ATOL, rtol=0)
  with torch.no_grad():
    official = official_block(block, config, grid)(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(fused, official, atol=ATOL, rtol=0)
  # Decisive: the relative-position bias changes the result.
  no_rel = _randomize(ie.Block(config, window if windowed else 0,
                               rngs=nnx.Rngs(0), policy=F32), seed=1)
  no_rel.attn.rel_pos_h[...] = jnp.zeros_like(no_rel.attn.rel_pos_h[...])
  no_rel.attn.rel_pos_w[...] = jnp.zeros_like(no_rel.attn.rel_pos_w[...])
  assert np.abs(np.asarray(no_rel(x)) - fused).max() > 0.05


@pytest.mark.parametrize("downsample", [1, 2])
def test_decoder_attention_fused_equals_einsum_and_official(downsample):
  tr.import_official_modeling()
  from segment_anything.modeling.transformer import Attention
  dim, heads = 48, 8
  attn = _randomize(tf.Attention(dim, heads, downsample, rngs=nnx.Rngs(0),
                                 policy=F32), seed=3)
  rng = np.random.default_rng(4)
  q = rng.standard_normal((7, dim), np.float32)
  k = 2 * rng.standard_normal((100, dim), np.float32)  # decisive softmax
  v = rng.standard_normal((100, dim), np.float32)
  fused = np.asarray(jax.jit(lambda *a: attn(*a))(q, k, v))
  einsum = np.asarray(jax.jit(lambda *a: einsum_decoder_attention(attn, *a))(q, k, v))
  np.testing.assert_allclose(fused, einsum, atol=ATOL, rtol=0)
  ref = Attention(dim, heads, downsample).eval()
  with torch.no_grad():
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      _copy_linear(getattr(ref, name), getattr(attn, name))
    official = ref(*(torch.from_numpy(t)[None] for t in (q, k, v)))[0].numpy()
  np.testing.assert_allclose(fused, official, atol=ATOL, rtol=0)


def test_attention_goes_through_dot_product_attention(monkeypatch):
  """Both the encoder and the decoder call jax.nn.dot_product_attention with
  the policy's implementation (the encoder with the relative-position bias)."""
  calls = []
  original = jax.nn.dot_product_attention

  def spy(q, k, v, bias=None, **kw):
    calls.append((q.ndim, bias is not None, kw["implementation"]))
    return original(q, k, v, bias=bias, **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  model = build_sam(get_preset("tiny"), 0)
  config = model.config
  embedding = model.encode_image(jnp.zeros((1, 160, 160, 3)))
  encoder_calls = len(calls)
  assert encoder_calls == config.encoder.depth
  assert all(bias and impl == "xla" for _, bias, impl in calls)
  model.decode(embedding, boxes=jnp.array([[[10.0, 20.0, 90.0, 100.0]]]))
  decoder_calls = calls[encoder_calls:]
  assert len(decoder_calls) == 3 * config.decoder_depth + 1
  assert not any(bias for _, bias, _ in decoder_calls)


# -- bad input -----------------------------------------------------------------


def test_unknown_attention_implementation_is_named():
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    Policy(attention_impl="flash")
  with pytest.raises(ValueError, match="'flash'.*xla, cudnn"):
    build_sam(get_preset("tiny"), attention_impl="flash")
  with pytest.raises(ValueError, match="needs precision 'bfloat16'"):
    make_policy("float32", "cudnn")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN is usable here")
def test_cudnn_without_gpu_is_refused():
  with pytest.raises(ValueError, match="needs a CUDA GPU"):
    make_policy("bfloat16", "cudnn")


def test_segment_cli_rejects_unknown_attention_implementation(tmp_path):
  out = tmp_path / "mask.png"
  proc = subprocess.run(
      [sys.executable, "-m", "simsam_jax.segment", "--checkpoint=random:tiny",
       "--image=synthetic:1:64x80", f"--out={out}", "--attention_impl=flash"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1, proc.stderr
  assert "--attention_impl='flash'" in proc.stderr
  assert "unknown attention implementation" in proc.stderr
  assert list(tmp_path.iterdir()) == []


# -- global attention in chunks on CPU ------------------------------------------


def test_cpu_query_chunks_of_released_models():
  """The chunk plans of the released grids (ViT-B/L/H at 1024, 12 or 16 heads)."""
  assert ie.cpu_query_chunks(64, 64, 12) == (4, 2)
  assert ie.cpu_query_chunks(64, 64, 16) == (4, 2)
  assert ie.cpu_query_chunks(32, 32, 12) == (8, 6)  # 512 input
  assert ie.cpu_query_chunks(14, 14, 12) is None  # every windowed block
  assert ie.cpu_query_chunks(10, 10, 3) is None  # the tiny test grids


# (queries, logits) per chunk -> (rows, heads) of the tiny preset's 10 x 10 grid, 3 heads.
CHUNK_LIMITS = [((20, 2000), (2, 1)), ((50, 10 ** 9), (5, 3)), ((10, 3000), (1, 3))]


@pytest.mark.parametrize("limits,plan", CHUNK_LIMITS)
def test_chunked_global_block_equals_einsum_and_official(monkeypatch, limits, plan):
  """On CPU a global block whose attention is split into chunks gives the
  official block's output; the chunks really are what ran (the spied query
  shapes), and a plain call (one chunk) agrees with them."""
  config = get_preset("tiny")
  grid, dim, heads = config.image_embedding_size, config.encoder.dim, config.encoder.num_heads
  monkeypatch.setattr(ie, "CPU_CHUNK_QUERIES", limits[0])
  monkeypatch.setattr(ie, "CPU_CHUNK_LOGITS", limits[1])
  assert ie.cpu_query_chunks(grid, grid, heads) == plan
  block = _randomize(ie.Block(config, 0, rngs=nnx.Rngs(0), policy=F32), seed=5)
  x = np.random.default_rng(6).standard_normal((2, grid, grid, dim), np.float32)
  shapes = []
  original = jax.nn.dot_product_attention

  def spy(q, k, v, bias=None, **kw):
    shapes.append(q.shape)
    return original(q, k, v, bias=bias, **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  chunked = np.asarray(jax.jit(lambda x: block(x))(x))
  rows, group = plan
  assert (2, rows * grid, group, dim // heads) in shapes  # the CPU branch's chunk
  with torch.no_grad():
    official = official_block(block, config, grid)(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(chunked, official, atol=ATOL, rtol=0)
  einsum = np.asarray(jax.jit(lambda x: einsum_block(block, x))(x))
  np.testing.assert_allclose(chunked, einsum, atol=ATOL, rtol=0)
  monkeypatch.setattr(ie, "CPU_CHUNK_QUERIES", 10 ** 6)
  monkeypatch.setattr(ie, "CPU_CHUNK_LOGITS", 10 ** 9)
  whole = np.asarray(jax.jit(lambda x: block(x))(x))
  np.testing.assert_allclose(chunked, whole, atol=1e-6, rtol=0)
  # Decisive: the relative-position rows one chunk further on (what a chunk
  # paired with the wrong rows would use) move the output far beyond ATOL.
  attn = block.attn
  q, k, v = attn.qkv_heads(jnp.asarray(x))
  right = attn.attend_chunks(q, k, v, grid, grid, rows, group)
  rh = attn.rel_pos_h[...]
  attn.rel_pos_h[...] = jnp.roll(rh, rows, axis=0)
  wrong = attn.attend_chunks(q, k, v, grid, grid, rows, group)
  attn.rel_pos_h[...] = rh
  assert float(jnp.abs(wrong - right).max()) > 0.05


def test_chunks_only_on_cpu(monkeypatch):
  """GPU / TPU lower the whole attention: StableHLO exported for cuda has no
  chunk loop, for cpu it has one."""
  config = get_preset("tiny")
  grid = config.image_embedding_size
  monkeypatch.setattr(ie, "CPU_CHUNK_QUERIES", 20)
  monkeypatch.setattr(ie, "CPU_CHUNK_LOGITS", 2000)
  attn = _randomize(ie.Attention(config.encoder.dim, config.encoder.num_heads, grid,
                                 rngs=nnx.Rngs(0), policy=F32), seed=7)
  spec = jax.ShapeDtypeStruct((1, grid, grid, config.encoder.dim), jnp.float32)
  text = {p: jax.export.export(jax.jit(lambda x: attn(x)), platforms=(p,))(spec).mlir_module()
          for p in ("cpu", "cuda")}
  assert "stablehlo.while" in text["cpu"]  # the chunk loop
  assert "stablehlo.while" not in text["cuda"]


@pytest.mark.parametrize("precision,tol", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_recomputed_attention_gradients_equal_autodiff(precision, tol):
  """The training chunks' attention (`recomputed_attention`, a hand-written
  backward that rebuilds the probabilities) gives the output and the
  gradients of JAX's autodiff through `jax.nn.dot_product_attention` with
  the broadcast relative-position bias, for every input."""
  rng = np.random.default_rng(8)
  b, n, r, w, hk, wk, d = 2, 3, 2, 5, 4, 5, 8
  t, s = r * w, hk * wk
  dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
  q, k, v = (jnp.asarray(2 * rng.standard_normal(shape, np.float32)).astype(dtype)
             for shape in ((b, t, n, d), (b, s, n, d), (b, s, n, d)))
  rel_h = jnp.asarray(rng.standard_normal((b, n, r, w, hk), np.float32))
  rel_w = jnp.asarray(rng.standard_normal((b, n, r, w, wk), np.float32))
  cot = jnp.asarray(rng.standard_normal((b, t, n, d), np.float32))
  scale = d ** -0.5

  def reference(q, k, v, rel_h, rel_w):
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, t, s)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale)

  def ours(q, k, v, rel_h, rel_w):
    return ie.recomputed_attention(q, k, v, rel_h, rel_w, scale, precision)

  def loss(f):
    return lambda *a: jnp.sum(f(*a).astype(jnp.float32) * cot)

  args = (q, k, v, rel_h, rel_w)
  want_out, got_out = jax.jit(reference)(*args), jax.jit(ours)(*args)
  np.testing.assert_allclose(np.asarray(got_out, np.float32), np.asarray(want_out, np.float32),
                             atol=tol, rtol=tol)
  want = jax.jit(jax.grad(loss(reference), argnums=range(5)))(*args)
  got = jax.jit(jax.grad(loss(ours), argnums=range(5)))(*args)
  for name, g, e in zip(("q", "k", "v", "rel_h", "rel_w"), got, want):
    assert g.dtype == e.dtype, name
    g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
    scale_e = np.abs(e).max()
    assert scale_e > 0.1, name  # decisive: every input gets a real gradient
    np.testing.assert_allclose(g / scale_e, e / scale_e, atol=tol, rtol=0, err_msg=name)
  # Decisive: the softmax is far from uniform, so a dropped row term would show.
  probs = jax.nn.softmax((jnp.einsum("btnd,bsnd->bnts", q.astype(jnp.float32),
                                     k.astype(jnp.float32)) * scale), axis=-1)
  assert float(probs.max()) > 0.5

"""SAM's image encoder: a ViT with windowed and global attention, and a neck.

Registered as the encoder family "vit" (`simsam_jax.modeling.encoders`), with
its config `ViTConfig` (`SamConfig.encoder`), the key rules of the official
and Hugging Face tensor names (`checkpoint.key_tables.VIT_RULES`) and the
hooks that detect the family, infer its config from a checkpoint and write
its Hugging Face `vision_config`.

Mirrors `segment_anything/modeling/image_encoder.py` (`ImageEncoderViT`) and
Hugging Face `SamVisionEncoder`. Feature maps are NHWC throughout.

Deviations from the PyTorch reference:
  * NHWC instead of NCHW, so the neck's LayerNorm2d is a plain LayerNorm over
    the last axis and no transposes are needed.
  * Relative position tables are used at their stored size; the reference
    interpolates them when the stored size differs from the attention size,
    which never happens for a checkpoint of the configured architecture (the
    converter rejects mismatched tables instead of resizing them silently).
  * Attention goes through `jax.nn.dot_product_attention` (XLA's fused
    attention, or cuDNN flash attention with `attention_impl="cudnn"`), with
    the decomposed relative-position terms as its additive bias; the logits
    are scaled after QK^T rather than scaling the query first (equal up to
    float32 rounding, ~1e-7 relative).
  * On CPU, global attention over large grids runs in chunks of query rows x
    heads (`cpu_query_chunks`, `Attention.attend_chunks`): XLA's CPU
    attention materialises the (B, N, T, T) logits, and passes over 800 MB
    tensors made the ViT-B encoder 1.5x slower than PyTorch's (whose CPU
    attention is blocked). Same result (bit-equal at ViT-B 1024); GPU / TPU
    lower the whole attention (`jax.lax.platform_dependent`).

Precision (`policy.Policy`): the patch embedding, the qkv / projection / MLP
linear layers, QK^T, PV, the relative-position terms and the neck
convolutions take the policy's dtype with float32 parameters cast at use;
the residual stream, the position embedding, LayerNorms, attention logits
and softmax, and the returned embedding are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import TYPE_CHECKING, Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simsam_jax.modeling.encoders import EncoderConfig, EncoderFamily, register_encoder
from simsam_jax.modeling.layers import (MLPBlock, attend, gelu, layer_norm,
                                       torch_like_linear)
from simsam_jax.modeling.policy import PRECISIONS, Policy

if TYPE_CHECKING:
  from simsam_jax.modeling.config import SamConfig


@dataclasses.dataclass(frozen=True)
class ViTConfig(EncoderConfig):
  """Architecture of SAM's ViT image encoder (defaults: ViT-B).

  Attributes:
    patch_size: patch side in pixels (16); the embedding grid side is
      `image_size // patch_size` (64).
    dim: ViT width (768 / 1024 / 1280 for B / L / H).
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of the MLPs (4 x dim).
    window_size: side of the attention windows of non-global blocks.
    global_attn_indexes: indices of the blocks with global attention.
    layer_norm_eps: epsilon of every LayerNorm of the blocks.
  """

  family = "vit"

  patch_size: int = 16
  dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  window_size: int = 14
  global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    object.__setattr__(self, "global_attn_indexes",
                       tuple(int(i) for i in self.global_attn_indexes))

  @property
  def stride(self) -> int:
    return self.patch_size

  def problems(self, image_size: int) -> list[str]:
    problems = []
    if image_size % self.patch_size:
      problems.append(f"image_size={image_size} is not a multiple of "
                      f"encoder.patch_size={self.patch_size}")
    if self.dim % self.num_heads:
      problems.append(f"encoder.dim={self.dim} is not divisible by "
                      f"encoder.num_heads={self.num_heads}")
    bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
    if bad:
      problems.append(f"encoder.global_attn_indexes {bad} outside [0, {self.depth})")
    if self.window_size < 0:
      problems.append("encoder.window_size must be >= 0")
    return problems


def relative_position_index(size: int) -> jax.Array:
  """(size, size) int32 index into a (2*size-1, C) table: i - j + size - 1."""
  coords = jnp.arange(size)
  return coords[:, None] - coords[None, :] + (size - 1)


# Global attention on CPU is computed over chunks whose float32 logits stay
# near the cache size: at most CPU_CHUNK_QUERIES queries x as many heads as
# keep CPU_CHUNK_LOGITS logits (8 MB). ViT-B at 1024 (T = 4096, 12 heads):
# 4 grid rows x 2 heads, 96 chunks; one global block 1.2 s instead of 2.9 s
# (benchmarks/RESULTS.md). XLA's GPU / TPU attention needs no chunks.
CPU_CHUNK_QUERIES = 256
CPU_CHUNK_LOGITS = 2 ** 21


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(at_most, 1))


def cpu_query_chunks(h: int, w: int, heads: int) -> Optional[tuple[int, int]]:
  """(grid rows, heads) per chunk of an H x W global attention on CPU, or None.

  None when all queries and heads fit in one chunk (every windowed block,
  and global blocks of small grids). Rows divide H, heads divide `heads`.
  """
  t = h * w
  rows = _largest_divisor(h, CPU_CHUNK_QUERIES // w)
  group = _largest_divisor(heads, CPU_CHUNK_LOGITS // (rows * w * t))
  return None if (rows, group) == (h, heads) else (rows, group)


def pair_bias(rel_h: jax.Array, rel_w: jax.Array) -> jax.Array:
  """(B, N, r, W, Hk) and (B, N, r, W, Wk) terms -> (B, N, r * W, Hk, Wk) bias.

  The bias of query (i, j) and key (k, l) is rel_h[..., i, j, k] +
  rel_w[..., i, j, l]; reshaped to (B, N, r * W, Hk * Wk) it is the additive
  bias of the keys in row-major order.
  """
  b, n, r, w, hk = rel_h.shape
  return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, n, r * w, hk, rel_w.shape[-1])


def _relative_logits(q, k, rel_h, rel_w, scale, dtype):
  """(B, T, N, D) q, (B, S, N, D) k, (B, N, r, W, Hk|Wk) terms -> (B, N, T, S) float32."""
  bias = pair_bias(rel_h, rel_w)  # added in its 5-D view: XLA fuses the broadcast
  logits = jnp.einsum("btnd,bsnd->bnts", q.astype(dtype), k.astype(dtype),
                      preferred_element_type=jnp.float32) * jnp.float32(scale)
  return (logits.reshape(bias.shape) + bias).reshape(logits.shape)


def _recomputed_forward(q, k, v, rel_h, rel_w, scale, precision):
  dtype = PRECISIONS[precision]
  logits = _relative_logits(q, k, rel_h, rel_w, scale, dtype)
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  unnormalised = jnp.exp(logits - top)
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  probs = (unnormalised / total).astype(dtype)
  out = jnp.einsum("bnts,bsnd->btnd", probs, v.astype(dtype),
                   preferred_element_type=jnp.float32).astype(v.dtype)
  return out, (q, k, v, rel_h, rel_w, top + jnp.log(total), out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def recomputed_attention(q: jax.Array, k: jax.Array, v: jax.Array, rel_h: jax.Array,
                         rel_w: jax.Array, scale: float, precision: str) -> jax.Array:
  """softmax(scale q k^T + rel_h + rel_w) v whose backward recomputes the probabilities.

  The forward is `layers.attend`'s with the broadcast relative-position
  bias (the same operations in the same order: float32 logits and softmax,
  matmul operands in the precision's dtype; in bfloat16 the PV product
  accumulates in float32 before its cast, a rounding-level difference). The
  softmax is written out rather than `jax.nn.softmax` because its max and sum
  give the log-sum-exp residual. It keeps for the backward only its inputs,
  its output and the (B, N, T) log-sum-exp, never the (B, N, T, S)
  probabilities; the backward rebuilds them with one QK^T and one exp and
  computes the gradients in one pass over them (the flash-attention
  backward, as whole-chunk XLA ops): at ViT-B 1024, batch 2, a global
  block's forward + backward took 7.4-7.5 s against 8.9 s with
  `jax.checkpoint` around `layers.attend` (benchmarks/RESULTS.md).

  Args:
    q: (B, T, N, D); k, v: (B, S, N, D), S = Hk * Wk keys in row-major order.
    rel_h, rel_w: (B, N, r, W, Hk) / (B, N, r, W, Wk) float32 decomposed
      relative-position terms of the T = r * W queries.
    scale: logit scale; precision: "float32" or "bfloat16" (static).
  Returns:
    (B, T, N, D) in v's dtype.
  """
  return _recomputed_forward(q, k, v, rel_h, rel_w, scale, precision)[0]


def _recomputed_backward(scale, precision, residuals, d_out):
  q, k, v, rel_h, rel_w, lse, out = residuals
  dtype = PRECISIONS[precision]
  probs = jnp.exp(_relative_logits(q, k, rel_h, rel_w, scale, dtype) - lse)  # (B, N, T, S)
  d_out_c = d_out.astype(dtype)
  d_v = jnp.einsum("bnts,btnd->bsnd", probs.astype(dtype), d_out_c,
                   preferred_element_type=jnp.float32)
  d_probs = jnp.einsum("btnd,bsnd->bnts", d_out_c, v.astype(dtype),
                       preferred_element_type=jnp.float32)
  row = jnp.einsum("btnd,btnd->bnt", d_out.astype(jnp.float32), out.astype(jnp.float32))
  d_logits = probs * (d_probs - row[..., None])  # (B, N, T, S) float32
  d_logits5 = d_logits.reshape(d_logits.shape[:3] + rel_h.shape[-1:] + rel_w.shape[-1:])
  d_rel_h = jnp.sum(d_logits5, axis=-1).reshape(rel_h.shape)
  d_rel_w = jnp.sum(d_logits5, axis=-2).reshape(rel_w.shape)
  d_scaled = d_logits.astype(dtype)
  d_q = jnp.einsum("bnts,bsnd->btnd", d_scaled, k.astype(dtype),
                   preferred_element_type=jnp.float32) * jnp.float32(scale)
  d_k = jnp.einsum("bnts,btnd->bsnd", d_scaled, q.astype(dtype),
                   preferred_element_type=jnp.float32) * jnp.float32(scale)
  return (d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype),
          d_rel_h.astype(rel_h.dtype), d_rel_w.astype(rel_w.dtype))


recomputed_attention.defvjp(_recomputed_forward, _recomputed_backward)


class Attention(nnx.Module):
  """Multi-head self-attention with decomposed relative position bias.

  The decomposed relative-position terms (computed from the unscaled query,
  as the reference) form the additive `bias` of
  `jax.nn.dot_product_attention` (`layers.attend`): (B, N, T, T) float32,
  T = H * W, built by broadcasting the (B, N, H, W, H) and (B, N, H, W, W)
  terms, which XLA fuses into the logits.

  Args of `__call__`:
    x: (B, H, W, C) float, with H == W == the size the tables were built for
      (window size, or the full grid for global blocks).
  Returns:
    (B, H, W, C) in the policy's dtype.
  """

  def __init__(self, dim: int, num_heads: int, input_size: int, *,
               rngs: nnx.Rngs, policy: Policy):
    self.num_heads = num_heads
    self.policy = policy
    head_dim = dim // num_heads
    self.scale = head_dim ** -0.5
    self.qkv = torch_like_linear(dim, 3 * dim, rngs, policy)
    self.proj = torch_like_linear(dim, dim, rngs, policy)
    # PyTorch initialises these at zero; random values keep tests decisive.
    init = jax.nn.initializers.normal(0.02)
    self.rel_pos_h = nnx.Param(init(rngs.params(), (2 * input_size - 1, head_dim)))
    self.rel_pos_w = nnx.Param(init(rngs.params(), (2 * input_size - 1, head_dim)))

  def relative_position_tables(self, h: int, w: int) -> tuple[jax.Array, jax.Array]:
    """The (H, Hk, D) and (W, Wk, D) relative-position tables of an H x W grid."""
    return (self.rel_pos_h[...][relative_position_index(h)],
            self.rel_pos_w[...][relative_position_index(w)])

  def relative_position_bias(self, q: jax.Array, rh: jax.Array | None = None,
                             rw: jax.Array | None = None) -> jax.Array:
    """q: (B, r, W, N, D) unscaled queries -> (B, N, r*W, Hk*Wk) float32 bias.

    `rh` (r, Hk, D) / `rw` (W, Wk, D) are the tables' rows of these queries
    (default: the whole grid, r = H = Hk, from `relative_position_tables`);
    a subset of query rows gives the bias of those queries only.
    """
    bias = pair_bias(*self.relative_position_terms(q, rh, rw))
    return bias.reshape(bias.shape[:3] + (-1,))

  def relative_position_terms(self, q: jax.Array, rh: jax.Array | None = None,
                              rw: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """q: (B, r, W, N, D) -> the (B, N, r, W, Hk) and (B, N, r, W, Wk) float32 terms.

    `pair_bias` broadcasts them to the bias of every (query, key) pair.
    """
    if rh is None or rw is None:
      rh, rw = self.relative_position_tables(q.shape[1], q.shape[2])
    cast = self.policy.cast
    q = cast(q)
    rel_h = jnp.einsum("bhwnd,hkd->bnhwk", q, cast(rh), preferred_element_type=jnp.float32)
    rel_w = jnp.einsum("bhwnd,wkd->bnhwk", q, cast(rw), preferred_element_type=jnp.float32)
    return rel_h, rel_w

  def qkv_heads(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x (B, H, W, C) -> q, k, v, each (B, H * W, N, C // N) in the policy's dtype."""
    b, h, w, c = x.shape
    qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def attend_all(self, q: jax.Array, k: jax.Array, v: jax.Array, h: int, w: int) -> jax.Array:
    """Attention of all H * W queries at once: q, k, v (B, T, N, D) -> (B, T, N, D)."""
    b, _, n, d = q.shape
    bias = self.relative_position_bias(q.reshape(b, h, w, n, d))
    return attend(q, k, v, self.policy, bias=bias, scale=self.scale)

  def attend_chunks(self, q: jax.Array, k: jax.Array, v: jax.Array, h: int, w: int,
                    rows: int, group: int, remat: bool = False) -> jax.Array:
    """`attend_all` computed over chunks of `rows` grid rows of queries x `group` heads.

    The chunks run one after another (`jax.lax.map` over row chunks, then
    over head groups); each builds the bias, logits and probabilities of its
    own queries and heads only, (B, group, rows * W, T) float32. Exact per
    query and head (the softmax is over the keys): equal to `attend_all` up
    to float32 rounding of the reordered products (bit-equal in practice).
    With `remat` each chunk's probabilities are recomputed in the backward
    from its log-sum-exp instead of kept (`recomputed_attention`).

    Args:
      q, k, v: (B, T, N, D), T = h * w; `rows` divides h, `group` divides N.
    Returns:
      (B, T, N, D) in the policy's dtype.
    """
    b, t, n, d = q.shape
    chunks, groups = h // rows, n // group
    # (row chunk, head group, B, rows, W, group, D); keys (head group, B, T, group, D).
    q_chunks = q.reshape(b, chunks, rows, w, groups, group, d).transpose(1, 4, 0, 2, 3, 5, 6)
    k_groups = k.reshape(b, t, groups, group, d).transpose(2, 0, 1, 3, 4)
    v_groups = v.reshape(b, t, groups, group, d).transpose(2, 0, 1, 3, 4)
    rh, rw = self.relative_position_tables(h, w)  # (H, Hk, D), (W, Wk, D)
    rh = rh.reshape(chunks, rows, h, d)

    def one(q_c, k_c, v_c, rh_c):  # (B, rows, W, group, D), (B, T, group, D) x 2, (rows, Hk, D)
      q_t = q_c.reshape(b, rows * w, group, d)
      if remat:
        rel_h, rel_w = self.relative_position_terms(q_c, rh_c, rw)  # (B, group, rows, W, Hk|Wk)
        return recomputed_attention(q_t, k_c, v_c, rel_h, rel_w, self.scale,
                                    self.policy.precision)
      bias = self.relative_position_bias(q_c, rh_c, rw)  # (B, group, rows * W, T)
      return attend(q_t, k_c, v_c, self.policy, bias=bias, scale=self.scale)

    def row_chunk(args):
      q_r, rh_r = args  # (groups, B, rows, W, group, D), (rows, Hk, D)
      return jax.lax.map(lambda a: one(a[0], a[1], a[2], rh_r), (q_r, k_groups, v_groups))

    out = jax.lax.map(row_chunk, (q_chunks, rh))  # (chunks, groups, B, rows * W, group, D)
    out = out.reshape(chunks, groups, b, rows, w, group, d).transpose(2, 0, 3, 4, 1, 5, 6)
    return out.reshape(b, t, n, d)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    q, k, v = self.qkv_heads(x)
    plan = cpu_query_chunks(h, w, self.num_heads)
    if plan is None:
      out = self.attend_all(q, k, v, h, w)
    else:  # chunked on CPU only; the whole attention on GPU / TPU
      out = jax.lax.platform_dependent(
          q, k, v, cpu=lambda q, k, v: self.attend_chunks(q, k, v, h, w, *plan),
          default=lambda q, k, v: self.attend_all(q, k, v, h, w))
    return self.proj(out.reshape(b, h, w, c))


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
  """Zero-pads (B, H, W, C) to multiples of `window` and splits it.

  Returns:
    windows: (B * nH * nW, window, window, C) and the padded (Hp, Wp).
  """
  b, h, w, c = x.shape
  pad_h, pad_w = (-h) % window, (-w) % window
  x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  hp, wp = h + pad_h, w + pad_w
  x = x.reshape(b, hp // window, window, wp // window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)
  return x, (hp, wp)


def window_unpartition(windows: jax.Array, window: int, padded: tuple[int, int],
                       original: tuple[int, int]) -> jax.Array:
  """Inverse of `window_partition`: (B*nH*nW, w, w, C) -> (B, H, W, C)."""
  hp, wp = padded
  h, w = original
  c = windows.shape[-1]
  x = windows.reshape(-1, hp // window, wp // window, window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
  return x[:, :h, :w, :]


class Block(nnx.Module):
  """Pre-norm transformer block; windowed attention when `window_size` > 0.

  Args of `__call__`:
    x: (B, G, G, C) float32 residual stream, G = image_size // patch_size.
  Returns:
    (B, G, G, C) float32 (the attention and MLP branches, in the policy's
    dtype, are added to the float32 stream).
  """

  def __init__(self, config: SamConfig, window_size: int, *, rngs: nnx.Rngs,
               policy: Policy):
    vit = config.encoder
    dim = vit.dim
    self.window_size = window_size
    input_size = window_size if window_size > 0 else config.image_embedding_size
    self.norm1 = layer_norm(dim, vit.layer_norm_eps, rngs)
    self.attn = Attention(dim, vit.num_heads, input_size, rngs=rngs, policy=policy)
    self.norm2 = layer_norm(dim, vit.layer_norm_eps, rngs)
    self.mlp = MLPBlock(dim, vit.mlp_dim, gelu, rngs=rngs, policy=policy)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x
    x = self.norm1(x)
    if self.window_size > 0:
      h, w = x.shape[1:3]
      x, padded = window_partition(x, self.window_size)
      x = self.attn(x)
      x = window_unpartition(x, self.window_size, padded, (h, w))
    else:
      x = self.attn(x)
    x = shortcut + x
    return x + self.mlp(self.norm2(x))


class ImageEncoder(nnx.Module):
  """ViT image encoder with neck (SAM's `ImageEncoderViT`).

  Args of `__call__`:
    pixels: (B, S, S, 3) float32, S = config.image_size; normalised with SAM's
      pixel mean/std and zero-padded (see `simsam_jax.processing`).
  Returns:
    image embeddings (B, G, G, prompt_embed_dim) float32 (the neck ends with a
    LayerNorm), G = S // config.encoder.patch_size.
  """

  def __init__(self, config: SamConfig, *, rngs: nnx.Rngs,
               policy: Policy = Policy()):
    vit = config.encoder
    dim, grid, p = vit.dim, config.image_embedding_size, vit.patch_size
    conv = functools.partial(nnx.Conv, dtype=policy.dtype,
                             param_dtype=policy.param_dtype, rngs=rngs)
    self.patch_embed = conv(3, dim, kernel_size=(p, p), strides=(p, p),
                            padding="VALID")
    self.pos_embed = nnx.Param(
        jax.random.normal(rngs.params(), (1, grid, grid, dim)) * 0.02)
    global_idx = set(vit.global_attn_indexes)
    self.blocks = nnx.List([
        Block(config, 0 if i in global_idx else vit.window_size, rngs=rngs, policy=policy)
        for i in range(vit.depth)
    ])
    out = config.prompt_embed_dim
    self.neck_conv1 = conv(dim, out, kernel_size=(1, 1), use_bias=False)
    self.neck_norm1 = layer_norm(out, 1e-6, rngs)
    self.neck_conv2 = conv(out, out, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                           use_bias=False)
    self.neck_norm2 = layer_norm(out, 1e-6, rngs)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    x = self.patch_embed(pixels).astype(jnp.float32) + self.pos_embed[...]
    for block in self.blocks:
      x = block(x)
    x = self.neck_norm1(self.neck_conv1(x))
    return self.neck_norm2(self.neck_conv2(x))


# Checkpoint hooks. Tensor names of the two naming conventions.
_NAMES = {
    "official": {"patch": "image_encoder.patch_embed.proj.weight",
                 "pos": "image_encoder.pos_embed",
                 "blocks": r"image_encoder\.blocks\.(\d+)\.",
                 "block": "image_encoder.blocks.{}."},
    "hugging_face": {"patch": "vision_encoder.patch_embed.projection.weight",
                     "pos": "vision_encoder.pos_embed",
                     "blocks": r"vision_encoder\.layers\.(\d+)\.",
                     "block": "vision_encoder.layers.{}."},
}


def detect(keys: frozenset) -> Optional[str]:
  """"official" / "hugging_face" when the names hold SAM's ViT, else None."""
  for naming, n in _NAMES.items():
    if n["patch"] in keys or n["pos"] in keys:
      return naming
  return None


def infer(tensors: Mapping[str, np.ndarray], naming: str) -> tuple[ViTConfig, int]:
  """ViTConfig and image_size from the tensor shapes (KeyError if missing)."""
  n = _NAMES[naming]
  dim, _, patch, _ = tensors[n["patch"]].shape
  grid = tensors[n["pos"]].shape[1]
  blocks = sorted({int(m.group(1)) for k in tensors if (m := re.match(n["blocks"], k))})
  if not blocks:
    raise KeyError(n["block"].format(0) + "attn.rel_pos_h")
  rel = [tensors[n["block"].format(i) + "attn.rel_pos_h"].shape for i in blocks]
  global_idx = tuple(i for i, s in zip(blocks, rel) if s[0] == 2 * grid - 1)
  windows = {(s[0] + 1) // 2 for s in rel if s[0] != 2 * grid - 1}
  if len(windows) > 1:
    raise ValueError(f"windowed blocks disagree on window size: {sorted(windows)}")
  config = ViTConfig(
      patch_size=patch, dim=dim, depth=len(blocks), num_heads=dim // rel[0][1],
      mlp_dim=tensors[n["block"].format(blocks[0]) + "mlp.lin1.weight"].shape[0],
      window_size=windows.pop() if windows else 0, global_attn_indexes=global_idx)
  return config, grid * patch


def from_hf(v: Mapping[str, Any]) -> tuple[ViTConfig, int]:
  """ViTConfig and image_size from a Hugging Face `SamVisionConfig` dict."""
  dim = v.get("hidden_size", 768)
  config = ViTConfig(
      patch_size=v.get("patch_size", 16), dim=dim, depth=v.get("num_hidden_layers", 12),
      num_heads=v.get("num_attention_heads", 12),
      mlp_dim=v.get("mlp_dim") or int(dim * v.get("mlp_ratio", 4.0)),
      window_size=v.get("window_size", 14),
      global_attn_indexes=tuple(v.get("global_attn_indexes", (2, 5, 8, 11))),
      layer_norm_eps=v.get("layer_norm_eps", 1e-6))
  return config, v.get("image_size", 1024)


def to_hf(config: ViTConfig, image_size: int, output_channels: int) -> dict[str, Any]:
  """Hugging Face `SamVisionConfig` dict of `config` (the inverse of `from_hf`)."""
  return dict(
      hidden_size=config.dim, output_channels=output_channels,
      num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
      image_size=image_size, patch_size=config.patch_size,
      window_size=config.window_size, global_attn_indexes=list(config.global_attn_indexes),
      mlp_dim=config.mlp_dim, num_pos_feats=output_channels // 2,
      layer_norm_eps=config.layer_norm_eps)


def _key_rules():
  from simsam_jax.checkpoint.key_tables import VIT_RULES
  return VIT_RULES


FAMILY = register_encoder(EncoderFamily(
    name="vit", module=ImageEncoder, config=ViTConfig, key_rules=_key_rules,
    detect=detect, infer=infer, from_hf=from_hf, to_hf=to_hf))

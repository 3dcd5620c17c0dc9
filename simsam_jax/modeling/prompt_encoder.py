"""SAM's prompt encoder: points, boxes and masks to sparse and dense embeddings.

Mirrors `segment_anything/modeling/prompt_encoder.py` (`PromptEncoder`) and
Hugging Face `SamPromptEncoder`. Works on ONE prompt set (no batch axis);
`Sam.decode` vmaps it over prompts and images.

Point labels: 1 positive (foreground), 0 negative (background), -1
"not a point" (padding: the coordinate is ignored and the learned
not-a-point embedding is used). Coordinates are (x, y) in pixels of the padded
model input frame (`config.image_size` square).

Deviations from the PyTorch reference:
  * Hugging Face also accepts label -10 (a zero embedding); it is not part of
    the official model and is not supported here.
  * The padding rule is the reference's: when points are given without a box,
    one not-a-point token is appended. It depends only on which prompt kinds
    are present, which is static under `jax.jit`, so every prompt mix of a
    given shape compiles once.
  * The Fourier features' 2 x C/2 product is computed at `Precision.HIGHEST`
    (true float32 on every backend; GPUs may otherwise use TF32 for float32
    matmuls).

Precision (`policy.Policy`): only the three mask-downscaling convolutions
take the policy's dtype (float32 parameters cast at use); the positional
encodings, the point / box / no-mask embeddings, the LayerNorms and the
sparse embedding are float32 in every precision.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from simsam_jax.modeling.config import SamConfig
from simsam_jax.modeling.layers import Buffer, gelu, layer_norm
from simsam_jax.modeling.policy import Policy


class PositionEmbeddingRandom(nnx.Module):
  """Random Fourier features of (x, y) coordinates (`PositionEmbeddingRandom`).

  `gaussian_matrix` (2, C/2) is a stored buffer (`positional_encoding_gaussian_matrix`
  in the official checkpoint, `shared_image_embedding.positional_embedding` in
  Hugging Face's).
  """

  def __init__(self, num_pos_feats: int, *, rngs: nnx.Rngs):
    self.gaussian_matrix = Buffer(
        jax.random.normal(rngs.params(), (2, num_pos_feats)))

  def encode(self, coords: jax.Array) -> jax.Array:
    """coords: (..., 2) float in [0, 1] (x, y). Returns (..., C) = [sin, cos]."""
    coords = 2.0 * coords - 1.0
    coords = jnp.matmul(coords, self.gaussian_matrix[...],
                        precision=jax.lax.Precision.HIGHEST)
    coords = 2.0 * math.pi * coords
    return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

  def grid(self, size: int) -> jax.Array:
    """Dense positional encoding of a size x size grid: (size, size, C)."""
    centers = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size
    y, x = jnp.meshgrid(centers, centers, indexing="ij")
    return self.encode(jnp.stack([x, y], axis=-1))

  def encode_pixels(self, coords: jax.Array, image_size: int) -> jax.Array:
    """coords: (..., 2) pixel (x, y) in a square frame of side `image_size`."""
    return self.encode(coords / image_size)


class PromptEncoder(nnx.Module):
  """Embeds one prompt set.

  Args of `__call__`:
    points: (N, 2) float32 pixel (x, y) in the model input frame, or None.
    point_labels: (N,) int32 in {1, 0, -1}; required with `points`.
    box: (4,) float32 (x0, y0, x1, y1) in the model input frame, or None.
    mask: (M, M) float32 dense mask prompt, M = config.mask_input_size (256),
      in logit units as SAM was trained (SimSAM's paper protocol feeds 0/1), or
      None for the learned no-mask embedding.
  Returns:
    sparse: (T, C) with T = N (+1 padding token if no box) (+2 if a box).
    dense: (G, G, C), G = config.image_embedding_size: float32 (the no-mask
      embedding) or, from a mask, in the policy's dtype.
  """

  def __init__(self, config: SamConfig, *, rngs: nnx.Rngs,
               policy: Policy = Policy()):
    c = config.prompt_embed_dim
    self.image_size = config.image_size
    self.grid_size = config.image_embedding_size
    self.pe_layer = PositionEmbeddingRandom(c // 2, rngs=rngs)
    init = jax.nn.initializers.normal(1.0)
    # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
    self.point_embeddings = nnx.List(
        [nnx.Embed(1, c, embedding_init=init, rngs=rngs) for _ in range(4)])
    self.not_a_point_embed = nnx.Embed(1, c, embedding_init=init, rngs=rngs)
    self.no_mask_embed = nnx.Embed(1, c, embedding_init=init, rngs=rngs)
    m = config.mask_in_chans
    conv = functools.partial(nnx.Conv, dtype=policy.dtype,
                             param_dtype=policy.param_dtype, rngs=rngs)
    self.mask_conv1 = conv(1, m // 4, kernel_size=(2, 2), strides=(2, 2),
                           padding="VALID")
    self.mask_norm1 = layer_norm(m // 4, 1e-6, rngs)
    self.mask_conv2 = conv(m // 4, m, kernel_size=(2, 2), strides=(2, 2),
                           padding="VALID")
    self.mask_norm2 = layer_norm(m, 1e-6, rngs)
    self.mask_conv3 = conv(m, c, kernel_size=(1, 1))

  def dense_positional_encoding(self) -> jax.Array:
    """(G, G, C) positional encoding of the image embedding grid."""
    return self.pe_layer.grid(self.grid_size)

  def embed_points(self, points: jax.Array, labels: jax.Array,
                   pad: bool) -> jax.Array:
    points = points.astype(jnp.float32) + 0.5  # pixel centres
    labels = labels.astype(jnp.int32)
    if pad:
      points = jnp.concatenate([points, jnp.zeros((1, 2), points.dtype)], 0)
      labels = jnp.concatenate([labels, -jnp.ones((1,), labels.dtype)], 0)
    emb = self.pe_layer.encode_pixels(points, self.image_size)
    lab = labels[:, None]
    emb = jnp.where(lab == -1, self.not_a_point_embed.embedding[...], emb)
    emb = jnp.where(lab == 0, emb + self.point_embeddings[0].embedding[...], emb)
    emb = jnp.where(lab == 1, emb + self.point_embeddings[1].embedding[...], emb)
    return emb

  def embed_box(self, box: jax.Array) -> jax.Array:
    corners = box.astype(jnp.float32).reshape(2, 2) + 0.5
    emb = self.pe_layer.encode_pixels(corners, self.image_size)
    return emb + jnp.concatenate([self.point_embeddings[2].embedding[...],
                                  self.point_embeddings[3].embedding[...]], 0)

  def embed_mask(self, mask: jax.Array) -> jax.Array:
    x = mask.astype(jnp.float32)[None, :, :, None]
    x = gelu(self.mask_norm1(self.mask_conv1(x)))
    x = gelu(self.mask_norm2(self.mask_conv2(x)))
    return self.mask_conv3(x)[0]

  def __call__(self, points: Optional[jax.Array], point_labels: Optional[jax.Array],
               box: Optional[jax.Array], mask: Optional[jax.Array]
               ) -> tuple[jax.Array, jax.Array]:
    c = self.no_mask_embed.embedding.shape[-1]
    parts = []
    if points is not None:
      if point_labels is None:
        raise ValueError("point_labels are required with points")
      parts.append(self.embed_points(points, point_labels, pad=box is None))
    if box is not None:
      parts.append(self.embed_box(box))
    sparse = (jnp.concatenate(parts, 0) if parts
              else jnp.zeros((0, c), jnp.float32))
    if mask is not None:
      dense = self.embed_mask(mask)
    else:
      dense = jnp.broadcast_to(self.no_mask_embed.embedding[...].reshape(1, 1, c),
                               (self.grid_size, self.grid_size, c))
    return sparse, dense

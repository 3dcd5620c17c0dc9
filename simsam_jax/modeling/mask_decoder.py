"""SAM's mask decoder: output tokens, two-way transformer, upscaling, heads.

Mirrors `segment_anything/modeling/mask_decoder.py` (`MaskDecoder`) and
Hugging Face `SamMaskDecoder`. Works on ONE prompt set; `Sam.decode` vmaps it
over prompts (sharing one image embedding) and images.

Deviations from the PyTorch reference:
  * The reference copies the image embedding once per prompt
    (`repeat_interleave`); here the decoder is vmapped with the embedding as an
    unbatched argument, so callers never materialise P copies.
  * Transposed convolutions use `nnx.ConvTranspose(transpose_kernel=True)`;
    PyTorch's (in, out, kh, kw) weight maps to flax's (kh, kw, out, in) kernel
    (permutation (2, 3, 1, 0), tested on its own).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from simsam_jax.modeling.config import SamConfig
from simsam_jax.modeling.layers import MLP, gelu, layer_norm
from simsam_jax.modeling.transformer import TwoWayTransformer


class MaskDecoder(nnx.Module):
  """Predicts masks and their IoU from an image embedding and prompt tokens.

  Args of `__call__`:
    image_embedding: (G, G, C) float32 image features of one image.
    image_pe: (G, G, C) dense positional encoding of the grid.
    sparse: (T, C) prompt tokens; dense: (G, G, C) dense prompt embedding.
  Returns:
    masks: (num_mask_tokens, 4G, 4G) float32 low-res logits (all tokens;
      `Sam.decode` selects single- or multi-mask outputs).
    iou_pred: (num_mask_tokens,) float32 predicted IoU.
  """

  def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
    c = config.prompt_embed_dim
    n = config.num_mask_tokens
    init = jax.nn.initializers.normal(1.0)
    self.num_mask_tokens = n
    self.transformer = TwoWayTransformer(config, rngs=rngs)
    self.iou_token = nnx.Embed(1, c, embedding_init=init, rngs=rngs)
    self.mask_tokens = nnx.Embed(n, c, embedding_init=init, rngs=rngs)
    self.upscale_conv1 = nnx.ConvTranspose(
        c, c // 4, kernel_size=(2, 2), strides=(2, 2), padding="VALID",
        transpose_kernel=True, rngs=rngs)
    self.upscale_norm = layer_norm(c // 4, 1e-6, rngs)
    self.upscale_conv2 = nnx.ConvTranspose(
        c // 4, c // 8, kernel_size=(2, 2), strides=(2, 2), padding="VALID",
        transpose_kernel=True, rngs=rngs)
    self.output_hypernetworks_mlps = nnx.List(
        [MLP(c, c, c // 8, 3, rngs=rngs) for _ in range(n)])
    self.iou_prediction_head = MLP(c, config.iou_head_hidden_dim, n,
                                   config.iou_head_depth, rngs=rngs)

  def __call__(self, image_embedding, image_pe, sparse, dense):
    g, _, c = image_embedding.shape
    output_tokens = jnp.concatenate(
        [self.iou_token.embedding[...], self.mask_tokens.embedding[...]], 0)
    tokens = jnp.concatenate([output_tokens, sparse.astype(output_tokens.dtype)], 0)
    src = (image_embedding + dense).reshape(g * g, c)
    hs, src = self.transformer(src, image_pe.reshape(g * g, c), tokens)
    iou_token_out = hs[0]
    mask_tokens_out = hs[1:1 + self.num_mask_tokens]

    up = gelu(self.upscale_norm(self.upscale_conv1(src.reshape(1, g, g, c))))
    up = gelu(self.upscale_conv2(up))[0]  # (4G, 4G, C/8)
    hyper_in = jnp.stack([mlp(mask_tokens_out[i]) for i, mlp in
                          enumerate(self.output_hypernetworks_mlps)], 0)
    masks = jnp.einsum("nc,hwc->nhw", hyper_in, up)
    iou_pred = self.iou_prediction_head(iou_token_out)
    return masks, iou_pred

"""SAM's mask decoder: output tokens, two-way transformer, upscaling, heads.

Mirrors `segment_anything/modeling/mask_decoder.py` (`MaskDecoder`) and
Hugging Face `SamMaskDecoder`. Works on ONE prompt set; `Sam.decode` vmaps it
over prompts (sharing one image embedding) and images.

Deviations from the PyTorch reference:
  * The reference copies the image embedding once per prompt
    (`repeat_interleave`); here the decoder is vmapped with the embedding as an
    unbatched argument, so callers never materialise P copies.
  * The two stride-2, 2x2 transposed convolutions of the upscaler do not
    overlap, so `UpConv2x2` computes them as one einsum (each input pixel
    becomes a 2x2 output block) instead of a dilated convolution; the
    kernel keeps the layout of `nnx.ConvTranspose(transpose_kernel=True)`,
    (kh, kw, out, in), i.e. PyTorch's (in, out, kh, kw) permuted by
    (2, 3, 1, 0) (tested on its own against `torch.nn.ConvTranspose2d`).

Precision (`policy.Policy`): the two-way transformer, the upscaling
products and the hypernetwork / IoU MLPs take the policy's dtype (float32
parameters cast at use); LayerNorms are float32, and the returned mask
logits (the hypernetwork x upscaled-features product, accumulated in
float32) and IoU predictions are float32 in every precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from simsam_jax.modeling.config import SamConfig
from simsam_jax.modeling.layers import MLP, gelu, layer_norm
from simsam_jax.modeling.policy import Policy
from simsam_jax.modeling.transformer import TwoWayTransformer


class UpConv2x2(nnx.Module):
  """Transposed convolution with kernel 2 and stride 2 (no overlap).

  out[b, 2i + a, 2j + c, o] = sum_n x[b, i, j, n] * kernel[a, c, o, n] + bias[o]

  Args of `__call__`:
    x: (B, H, W, in_features) float.
  Returns:
    (B, 2H, 2W, out_features) in the policy's dtype.
  """

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               policy: Policy = Policy()):
    self.policy = policy
    bound = 1.0 / (out_features * 4) ** 0.5
    self.kernel = nnx.Param(jax.random.uniform(
        rngs.params(), (2, 2, out_features, in_features), minval=-bound, maxval=bound))
    self.bias = nnx.Param(jnp.zeros((out_features,)))

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    cast = self.policy.cast
    y = jnp.einsum("bijn,acon->biajco", cast(x), cast(self.kernel[...]))
    return y.reshape(b, 2 * h, 2 * w, -1) + cast(self.bias[...])


class MaskDecoder(nnx.Module):
  """Predicts masks and their IoU from an image embedding and prompt tokens.

  Args of `__call__`:
    image_embedding: (G, G, C) float32 image features of one image.
    image_pe: (G, G, C) float32 dense positional encoding of the grid.
    sparse: (T, C) float32 prompt tokens; dense: (G, G, C) dense prompt
      embedding (policy dtype or float32).
  Returns:
    masks: (num_mask_tokens, 4G, 4G) float32 low-res logits (all tokens;
      `Sam.decode` selects single- or multi-mask outputs).
    iou_pred: (num_mask_tokens,) float32 predicted IoU.
  """

  def __init__(self, config: SamConfig, *, rngs: nnx.Rngs,
               policy: Policy = Policy()):
    c = config.prompt_embed_dim
    n = config.num_mask_tokens
    init = jax.nn.initializers.normal(1.0)
    self.num_mask_tokens = n
    self.transformer = TwoWayTransformer(config, rngs=rngs, policy=policy)
    self.iou_token = nnx.Embed(1, c, embedding_init=init, rngs=rngs)
    self.mask_tokens = nnx.Embed(n, c, embedding_init=init, rngs=rngs)
    self.upscale_conv1 = UpConv2x2(c, c // 4, rngs=rngs, policy=policy)
    self.upscale_norm = layer_norm(c // 4, 1e-6, rngs)
    self.upscale_conv2 = UpConv2x2(c // 4, c // 8, rngs=rngs, policy=policy)
    self.output_hypernetworks_mlps = nnx.List(
        [MLP(c, c, c // 8, 3, rngs=rngs, policy=policy) for _ in range(n)])
    self.iou_prediction_head = MLP(c, config.iou_head_hidden_dim, n,
                                   config.iou_head_depth, rngs=rngs, policy=policy)

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
    masks = jnp.einsum("nc,hwc->nhw", hyper_in, up,
                       preferred_element_type=jnp.float32)
    iou_pred = self.iou_prediction_head(iou_token_out).astype(jnp.float32)
    return masks, iou_pred

"""SAM's two-way transformer (tokens <-> image embedding).

Mirrors `segment_anything/modeling/transformer.py` and Hugging Face
`SamTwoWayTransformer`. Works on ONE prompt set: tokens (T, C) and image
keys (G*G, C); `Sam.decode` vmaps it.

Deviations from the PyTorch reference:
  * The epsilon of the LayerNorms in the attention blocks is a config field
    (`transformer_layer_norm_eps`): 1e-5 in the official code, 1e-6 in
    Hugging Face's port; the converter picks the source implementation's.
  * Attention goes through `jax.nn.dot_product_attention` (`layers.attend`;
    XLA's fused attention or cuDNN's with `attention_impl="cudnn"`) instead of
    explicit matmuls and softmax; the logits are scaled after QK^T, as the
    reference does.

Precision (`policy.Policy`): the q / k / v / out projections, QK^T, PV and
the MLP take the policy's dtype (float32 parameters cast at use); the token
and image-feature streams, LayerNorms, attention logits and softmax stay
float32.
"""

from __future__ import annotations

import jax
from flax import nnx

from simsam_jax.modeling.config import SamConfig
from simsam_jax.modeling.layers import MLPBlock, attend, layer_norm, torch_like_linear
from simsam_jax.modeling.policy import Policy


class Attention(nnx.Module):
  """Multi-head attention with an optional channel downsampling.

  Args of `__call__`:
    q: (Nq, C), k: (Nk, C), v: (Nk, C) float.
  Returns:
    (Nq, C) in the policy's dtype.
  """

  def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1, *,
               rngs: nnx.Rngs, policy: Policy):
    internal = dim // downsample_rate
    self.num_heads = num_heads
    self.policy = policy
    self.q_proj = torch_like_linear(dim, internal, rngs, policy)
    self.k_proj = torch_like_linear(dim, internal, rngs, policy)
    self.v_proj = torch_like_linear(dim, internal, rngs, policy)
    self.out_proj = torch_like_linear(internal, dim, rngs, policy)

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
    n = self.num_heads
    q = q.reshape(q.shape[0], n, -1)
    k = k.reshape(k.shape[0], n, -1)
    v = v.reshape(v.shape[0], n, -1)
    out = attend(q, k, v, self.policy)
    return self.out_proj(out.reshape(out.shape[0], -1))


class TwoWayAttentionBlock(nnx.Module):
  """Token self-attention, token->image, MLP, image->token (four norms).

  Args of `__call__`:
    queries: (T, C) tokens; keys: (G*G, C) image features;
    query_pe: (T, C) the original prompt tokens; key_pe: (G*G, C) image PE.
  Returns:
    updated (queries, keys).
  """

  def __init__(self, config: SamConfig, skip_first_layer_pe: bool, *,
               rngs: nnx.Rngs, policy: Policy):
    c, eps = config.prompt_embed_dim, config.transformer_layer_norm_eps
    heads, rate = config.decoder_num_heads, config.attention_downsample_rate
    self.skip_first_layer_pe = skip_first_layer_pe
    self.self_attn = Attention(c, heads, 1, rngs=rngs, policy=policy)
    self.norm1 = layer_norm(c, eps, rngs)
    self.cross_attn_token_to_image = Attention(c, heads, rate, rngs=rngs,
                                               policy=policy)
    self.norm2 = layer_norm(c, eps, rngs)
    self.mlp = MLPBlock(c, config.decoder_mlp_dim, jax.nn.relu, rngs=rngs,
                        policy=policy)
    self.norm3 = layer_norm(c, eps, rngs)
    self.norm4 = layer_norm(c, eps, rngs)
    self.cross_attn_image_to_token = Attention(c, heads, rate, rngs=rngs,
                                               policy=policy)

  def __call__(self, queries, keys, query_pe, key_pe):
    if self.skip_first_layer_pe:
      queries = self.self_attn(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + self.self_attn(q, q, queries)
    queries = self.norm1(queries)

    q, k = queries + query_pe, keys + key_pe
    queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
    queries = self.norm3(queries + self.mlp(queries))

    q, k = queries + query_pe, keys + key_pe
    keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
    return queries, keys


class TwoWayTransformer(nnx.Module):
  """Stack of two-way blocks and a final token->image attention.

  Args of `__call__`:
    image_embedding: (G*G, C); image_pe: (G*G, C); point_embedding: (T, C).
  Returns:
    tokens (T, C) and image features (G*G, C).
  """

  def __init__(self, config: SamConfig, *, rngs: nnx.Rngs, policy: Policy):
    c = config.prompt_embed_dim
    self.layers = nnx.List([
        TwoWayAttentionBlock(config, skip_first_layer_pe=(i == 0), rngs=rngs,
                             policy=policy)
        for i in range(config.decoder_depth)
    ])
    self.final_attn_token_to_image = Attention(
        c, config.decoder_num_heads, config.attention_downsample_rate, rngs=rngs,
        policy=policy)
    self.norm_final_attn = layer_norm(c, config.final_layer_norm_eps, rngs)

  def __call__(self, image_embedding, image_pe, point_embedding):
    queries, keys = point_embedding, image_embedding
    for layer in self.layers:
      queries, keys = layer(queries, keys, point_embedding, image_pe)
    q, k = queries + point_embedding, keys + image_pe
    queries = self.norm_final_attn(
        queries + self.final_attn_token_to_image(q, k, keys))
    return queries, keys

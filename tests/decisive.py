"""Decisive random SAM weights on the JAX side (no PyTorch needed).

Random weights give single-mask logits within +-0.01 of one sign, so masks,
top-K clicks and medoids would be float noise. `decisive_` scales mask token
0's hypernetwork output layer and shifts its bias so that the single-mask
logits of one image and box have mean 0: the mask has a boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def decisive_(model, pixels: np.ndarray, box_model, hyper_scale: float = 25.0):
  """Scales and balances `model` in place; returns it.

  The low-res logits are linear in the bias b of the last hypernetwork layer
  of token 0: mean(b) = mean(b0) + u . (b - b0), u = d mean / d b (computed
  with `jax.grad`). The shift d = -mean(b0) u / |u|^2 zeroes the mean.

  Args:
    pixels: (S, S, 3) float32 preprocessed image.
    box_model: (4,) box in the model frame.
  """
  last = model.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
  last.kernel.set_value(last.kernel[...] * hyper_scale)
  embedding = model.encode_image(jnp.asarray(pixels)[None])
  box = jnp.asarray(box_model, jnp.float32)[None, None]
  graphdef, state = nnx.split(model)
  b0 = last.bias[...]

  def mean_logit(state):
    low, _ = nnx.merge(graphdef, state).decode(embedding, boxes=box)
    return low.mean()

  value, grads = jax.jit(jax.value_and_grad(mean_logit))(state)
  pure = nnx.to_pure_dict(grads)["mask_decoder"]["output_hypernetworks_mlps"][0]
  u = pure["layers"][len(pure["layers"]) - 1]["bias"]
  last.bias.set_value(b0 - value * u / jnp.sum(u * u))
  return model

"""Small building blocks shared by SAM's parts."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


class Buffer(nnx.Variable):
  """A stored, non-trainable tensor (PyTorch's `register_buffer`).

  Saved in checkpoints and converted like a parameter, but never selected by
  `nnx.Param` filters, so optimisers leave it alone.
  """


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as `torch.nn.GELU()`; `jax.nn.gelu` defaults to tanh."""
  return jax.nn.gelu(x, approximate=False)


def layer_norm(num_features: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the last (channel) axis with PyTorch's two-pass variance.

  In NHWC, SAM's `LayerNorm2d` (normalise over channels) is this same layer.
  `use_fast_variance=False` computes E[(x - mean)^2] like PyTorch rather than
  E[x^2] - mean^2, which loses precision for large activations.
  """
  return nnx.LayerNorm(num_features, epsilon=eps, use_fast_variance=False,
                       rngs=rngs)


def torch_like_linear(in_features: int, out_features: int, rngs: nnx.Rngs,
                      use_bias: bool = True) -> nnx.Linear:
  """Linear layer with PyTorch's default (Kaiming-uniform) initialisation.

  Weights are always replaced by a converted checkpoint; the initialiser only
  matters for random-weight models in tests and benchmarks.
  """
  bound = 1.0 / (in_features ** 0.5)
  init = jax.nn.initializers.uniform(2 * bound)
  shifted = lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) - bound
  return nnx.Linear(in_features, out_features, use_bias=use_bias,
                    kernel_init=shifted, bias_init=shifted, rngs=rngs)


class MLPBlock(nnx.Module):
  """Two-layer MLP `lin2(act(lin1(x)))` (SAM's `MLPBlock`).

  Args of `__call__`:
    x: (..., embedding_dim) float.
  Returns:
    (..., embedding_dim).
  """

  def __init__(self, embedding_dim: int, mlp_dim: int,
               act: Callable[[jax.Array], jax.Array], *, rngs: nnx.Rngs):
    self.lin1 = torch_like_linear(embedding_dim, mlp_dim, rngs)
    self.lin2 = torch_like_linear(mlp_dim, embedding_dim, rngs)
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.lin2(self.act(self.lin1(x)))


class MLP(nnx.Module):
  """`num_layers` linear layers with ReLU between them (SAM's decoder `MLP`).

  Used for the hypernetwork MLPs and the IoU prediction head; no sigmoid on
  the output (SAM never sets `sigmoid_output`).

  Args of `__call__`:
    x: (..., input_dim) float.
  Returns:
    (..., output_dim).
  """

  def __init__(self, input_dim: int, hidden_dim: int, output_dim: int,
               num_layers: int, *, rngs: nnx.Rngs):
    if num_layers < 2:
      raise ValueError(f"MLP needs num_layers >= 2, got {num_layers}")
    dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
    dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
    self.layers = nnx.List([torch_like_linear(i, o, rngs)
                            for i, o in zip(dims_in, dims_out)])

  def __call__(self, x: jax.Array) -> jax.Array:
    n = len(self.layers)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < n - 1:
        x = jax.nn.relu(x)
    return x

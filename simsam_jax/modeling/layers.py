"""Small building blocks shared by SAM's parts.

Precision (see `policy`): linear layers compute in the policy's dtype with
float32 parameters (`dtype` / `param_dtype` of `nnx.Linear`); LayerNorm
always computes and returns float32 (flax takes its statistics in float32 and
its float32 scale and bias promote the output).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from simsam_jax.modeling.policy import Policy


class Buffer(nnx.Variable):
  """A stored, non-trainable tensor (PyTorch's `register_buffer`).

  Saved in checkpoints and converted like a parameter, but never selected by
  `nnx.Param` filters, so optimisers leave it alone.
  """


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as `torch.nn.GELU()`; `jax.nn.gelu` defaults to tanh."""
  return jax.nn.gelu(x, approximate=False)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, policy: Policy,
           bias: Optional[jax.Array] = None,
           scale: Optional[float] = None) -> jax.Array:
  """Multi-head attention through `jax.nn.dot_product_attention`.

  softmax(scale * q k^T + bias) v per head, with the policy's implementation
  ("xla" or "cudnn"). q, k, v are cast to the policy's dtype; the logits and
  the softmax are float32 in both precisions (XLA's implementation takes
  QK^T with float32 accumulation and output). For cuDNN the bias is cast to
  the compute dtype, as its kernel requires.

  Args:
    q: (B, T, N, D) or (T, N, D) queries, N heads of width D.
    k, v: (B, S, N, D) or (S, N, D).
    bias: broadcastable to (B, N, T, S) (4-D), added to the scaled logits, or
      None.
    scale: logit scale; None for 1 / sqrt(D).
  Returns:
    (B, T, N, D) or (T, N, D) in the policy's dtype.
  """
  q, k, v = policy.cast(q), policy.cast(k), policy.cast(v)
  if bias is not None and policy.attention_impl == "cudnn":
    bias = policy.cast(bias)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, scale=scale,
                                      implementation=policy.attention_impl)


def layer_norm(num_features: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """LayerNorm over the last (channel) axis with PyTorch's two-pass variance.

  In NHWC, SAM's `LayerNorm2d` (normalise over channels) is this same layer.
  `use_fast_variance=False` computes E[(x - mean)^2] like PyTorch rather than
  E[x^2] - mean^2, which loses precision for large activations.
  """
  return nnx.LayerNorm(num_features, epsilon=eps, use_fast_variance=False,
                       rngs=rngs)


def torch_like_linear(in_features: int, out_features: int, rngs: nnx.Rngs,
                      policy: Policy, use_bias: bool = True) -> nnx.Linear:
  """Linear layer with PyTorch's default (Kaiming-uniform) initialisation.

  Weights are always replaced by a converted checkpoint; the initialiser only
  matters for random-weight models in tests and benchmarks. Parameters are
  float32; inputs and weights are cast to `policy.dtype` at use, and the
  output has that dtype.
  """
  bound = 1.0 / (in_features ** 0.5)
  init = jax.nn.initializers.uniform(2 * bound)
  shifted = lambda key, shape, dtype=jnp.float32: init(key, shape, dtype) - bound
  return nnx.Linear(in_features, out_features, use_bias=use_bias,
                    kernel_init=shifted, bias_init=shifted, dtype=policy.dtype,
                    param_dtype=policy.param_dtype, rngs=rngs)


class MLPBlock(nnx.Module):
  """Two-layer MLP `lin2(act(lin1(x)))` (SAM's `MLPBlock`).

  Args of `__call__`:
    x: (..., embedding_dim) float.
  Returns:
    (..., embedding_dim) in the policy's dtype.
  """

  def __init__(self, embedding_dim: int, mlp_dim: int,
               act: Callable[[jax.Array], jax.Array], *, rngs: nnx.Rngs,
               policy: Policy):
    self.lin1 = torch_like_linear(embedding_dim, mlp_dim, rngs, policy)
    self.lin2 = torch_like_linear(mlp_dim, embedding_dim, rngs, policy)
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
    (..., output_dim) in the policy's dtype.
  """

  def __init__(self, input_dim: int, hidden_dim: int, output_dim: int,
               num_layers: int, *, rngs: nnx.Rngs, policy: Policy):
    if num_layers < 2:
      raise ValueError(f"MLP needs num_layers >= 2, got {num_layers}")
    dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
    dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
    self.layers = nnx.List([torch_like_linear(i, o, rngs, policy)
                            for i, o in zip(dims_in, dims_out)])

  def __call__(self, x: jax.Array) -> jax.Array:
    n = len(self.layers)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < n - 1:
        x = jax.nn.relu(x)
    return x

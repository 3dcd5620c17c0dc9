"""How SAM computes: compute precision and attention implementation.

Both are run options, not architecture: they change no parameter shape, are
not fields of `SamConfig` and are never written to a checkpoint's sidecar.
A `Policy` is handed to every SAM module at construction and lives in the
model's graph definition (static under `jax.jit`); `with_policy` re-targets
a built model without copying its arrays.

Precision (`PRECISIONS`):
  * "float32" (default): everything in float32, the reference numerics.
  * "bfloat16": mixed precision with float32 master weights. Parameters are
    stored float32 (`param_dtype`) and cast to bfloat16 where they are used:
    every matmul (linear layers, attention QK^T and PV, the relative-position
    terms, the upscaling and hypernetwork products) and convolution takes
    bfloat16 operands and accumulates in float32. Kept float32: the residual
    streams (a float32 stream plus a bfloat16 branch stays float32, as under
    PyTorch autocast), LayerNorm (statistics and output), the attention
    logits and softmax, the random-Fourier positional encoding of prompts and
    of the image grid, the image embedding returned by the encoder, the
    low-resolution mask logits and IoU predictions the decoder returns, and
    so everything SimSAM computes from them (sigmoid, error map, top-K, IoU
    aggregation).

Attention implementation (`ATTENTION_IMPLS`), the `implementation` of
`jax.nn.dot_product_attention`:
  * "xla" (default): XLA's fused attention, every backend.
  * "cudnn": cuDNN flash attention; needs a CUDA GPU, precision "bfloat16"
    (cuDNN has no float32 kernel) and head dimensions that are multiples of 8
    (true of every released SAM; not of the tiny test presets' decoders).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

PRECISIONS = {"float32": np.dtype(jnp.float32), "bfloat16": np.dtype(jnp.bfloat16)}
ATTENTION_IMPLS = ("xla", "cudnn")
PARAM_DTYPE = np.dtype(jnp.float32)

DTypeLike = Union[str, Any]


def precision_name(dtype: DTypeLike) -> str:
  """"float32" / "bfloat16" for a precision name or dtype.

  Raises:
    ValueError naming the bad value and the choices.
  """
  if isinstance(dtype, str):
    if dtype in PRECISIONS:
      return dtype
  else:
    try:
      canonical = np.dtype(dtype)
    except TypeError:
      canonical = None
    for name, known in PRECISIONS.items():
      if canonical == known:
        return name
    if canonical is not None:
      dtype = canonical.name
  raise ValueError(f"unknown precision {dtype!r}; use one of "
                   f"{', '.join(PRECISIONS)}")


def check_attention_impl(attention_impl: str) -> str:
  """Returns `attention_impl` if known; ValueError naming it otherwise."""
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention implementation {attention_impl!r}; "
                     f"use one of {', '.join(ATTENTION_IMPLS)}")
  return attention_impl


@dataclasses.dataclass(frozen=True)
class Policy:
  """Compute precision and attention implementation of a SAM.

  Attributes:
    precision: "float32" or "bfloat16" (a dtype is accepted and named).
    attention_impl: "xla" or "cudnn".
  """
  precision: str = "float32"
  attention_impl: str = "xla"

  def __post_init__(self):
    object.__setattr__(self, "precision", precision_name(self.precision))
    check_attention_impl(self.attention_impl)
    if self.attention_impl == "cudnn" and self.precision != "bfloat16":
      raise ValueError(
          "attention implementation 'cudnn' needs precision 'bfloat16' (cuDNN "
          f"flash attention has no {self.precision} kernel)")

  @property
  def dtype(self) -> np.dtype:
    """Compute dtype of matmuls and convolutions."""
    return PRECISIONS[self.precision]

  @property
  def param_dtype(self) -> np.dtype:
    """Storage dtype of every parameter (always float32)."""
    return PARAM_DTYPE

  def cast(self, x: jax.Array) -> jax.Array:
    """`x` in the compute dtype (a no-op in float32)."""
    return x.astype(self.dtype)

  def check_backend(self) -> "Policy":
    """ValueError unless this process can run the policy; returns self."""
    if self.attention_impl == "cudnn" and jax.default_backend() != "gpu":
      raise ValueError(
          "attention implementation 'cudnn' needs a CUDA GPU; the JAX backend "
          f"here is {jax.default_backend()!r} (use 'xla')")
    return self

  def to_dict(self) -> dict[str, str]:
    return {"precision": self.precision, "attention_impl": self.attention_impl}


def make_policy(dtype: Optional[DTypeLike] = None,
                attention_impl: Optional[str] = None,
                base: Optional[Policy] = None) -> Policy:
  """A `Policy` from the public keyword arguments.

  Args:
    dtype: "float32" / "bfloat16" or the dtype; None keeps `base`'s.
    attention_impl: "xla" / "cudnn"; None keeps `base`'s.
    base: the policy to start from (default: float32, xla).
  Raises:
    ValueError naming the unknown precision or attention implementation, or
    an unusable combination (cudnn without bfloat16 or without a GPU).
  """
  base = Policy() if base is None else base
  policy = Policy(base.precision if dtype is None else dtype,
                  base.attention_impl if attention_impl is None else attention_impl)
  return policy.check_backend()


def policy_from_flags(precision: Optional[str], attention_impl: Optional[str], *,
                      precision_flag: str = "--precision",
                      attention_impl_flag: str = "--attention_impl") -> Policy:
  """A checked `Policy` from command-line values (None: the default).

  Raises:
    ValueError whose message starts with the flag at fault and its value,
    e.g. "--precision='fp16': unknown precision 'fp16'; use one of ...".
  """
  try:
    Policy(Policy.precision if precision is None else precision)
  except ValueError as e:
    raise ValueError(f"{precision_flag}={precision!r}: {e}") from None
  try:
    return make_policy(precision, attention_impl)
  except ValueError as e:
    raise ValueError(f"{attention_impl_flag}={attention_impl!r}: {e}") from None

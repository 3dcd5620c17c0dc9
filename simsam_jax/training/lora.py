"""Low-rank adapters (LoRA, Hu et al. 2021) on SAM's attention, with Flax NNX's `nnx.LoRA`.

`add_lora(model, rank, alpha, decoder=False, rngs=...)` replaces, on a built
model, every image-encoder attention `qkv` and `proj` `nnx.Linear` (and with
`decoder=True` the q/k/v/out projections of the mask decoder's attentions)
by `nnx.LoRA(base_module=<that Linear>)`, whose output is

  base(x) + (alpha / rank) * x @ lora_a @ lora_b

with `lora_a` (in, rank) variance-scaling initialised and `lora_b` (rank, out)
zero, so the wrapped model starts equal to the base model. The adapter
weights are `nnx.LoRAParam`s: an optimiser over `nnx.LoRAParam` alone leaves
the base weights frozen.

Deviation from `nnx.LoRA` as shipped: it has no alpha; the scale
alpha / rank is applied to `lora_b` inside its `promote_dtype` hook (the
function `nnx.LoRA` already calls on (x, lora_a, lora_b) before the product),
so the module, its parameters and their paths are flax's own.

Exports (`simsam_jax.training.image_trainer`):
  * merged: `merge_lora(pure)` folds every adapter into its base kernel
    (kernel + alpha / rank * lora_a @ lora_b) and returns the pure dict of the
    ORIGINAL architecture: an ordinary checkpoint.
  * adapter only: `adapter_dict(pure)` (the LoRAParams), saved with the
    base checkpoint's weight hash; `apply_adapter` refuses another base.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

ENCODER_TARGETS = ("qkv", "proj")
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _scaled_promote(args, dtype=None, *, scale: float):
  x, a, b = dtypes.promote_dtype(args, dtype=dtype)
  return x, a, b * jnp.asarray(scale, b.dtype)


def _targets(model, decoder: bool):
  """[(parent module, attribute name, Linear)] to wrap."""
  out = []
  roots = [("image_encoder", ENCODER_TARGETS)]
  if decoder:
    roots.append(("mask_decoder", DECODER_TARGETS))
  for root, names in roots:
    for path, node in nnx.iter_graph(getattr(model, root)):
      if isinstance(node, nnx.Module) and not isinstance(node, nnx.LoRA):
        for name in names:
          child = getattr(node, name, None)
          if isinstance(child, nnx.Linear):
            out.append((node, name, child))
  return out


def check_rank(model, rank: int, decoder: bool = False) -> None:
  """ValueError naming --config.lora_rank unless 0 < rank <= every wrapped layer's width."""
  widths = [min(lin.in_features, lin.out_features) for _, _, lin in _targets(model, decoder)]
  if not widths:
    raise ValueError("the model has no attention layer to adapt")
  if not 0 < int(rank) <= min(widths):
    raise ValueError(f"--config.lora_rank={rank}: must be in [1, {min(widths)}] (the smallest "
                     "adapted layer's width)")


def add_lora(model, rank: int, alpha: float, *, decoder: bool = False,
             rngs: nnx.Rngs) -> list[str]:
  """Wraps the attention Linears of `model` in place; returns the wrapped names."""
  check_rank(model, rank, decoder)
  promote = functools.partial(_scaled_promote, scale=float(alpha) / int(rank))
  names = []
  for parent, name, linear in _targets(model, decoder):
    setattr(parent, name, nnx.LoRA(linear.in_features, int(rank), linear.out_features,
                                   base_module=linear, dtype=linear.dtype,
                                   promote_dtype=promote, rngs=rngs))
    names.append(name)
  return names


def _is_lora(d: Any) -> bool:
  return isinstance(d, dict) and "lora_a" in d and "lora_b" in d and "base_module" in d


def merge_lora(pure: dict, rank: int, alpha: float) -> dict:
  """Pure dict of a LoRA-wrapped model -> pure dict of the base architecture, adapters folded."""
  scale = float(alpha) / int(rank)

  def walk(d):
    if _is_lora(d):
      base = dict(d["base_module"])
      delta = jnp.asarray(d["lora_a"], jnp.float32) @ jnp.asarray(d["lora_b"], jnp.float32)
      base["kernel"] = jnp.asarray(base["kernel"], jnp.float32) + scale * delta
      return base
    if isinstance(d, dict):
      return {k: walk(v) for k, v in d.items()}
    return d

  return walk(pure)


def adapter_dict(pure: dict) -> dict:
  """Only the adapters: {path...: {"lora_a", "lora_b"}} of a wrapped model's pure dict."""
  def walk(d):
    if _is_lora(d):
      return {"lora_a": d["lora_a"], "lora_b": d["lora_b"]}
    if isinstance(d, dict):
      out = {k: walk(v) for k, v in d.items()}
      return {k: v for k, v in out.items() if v}
    return None

  return walk(pure) or {}


def base_dict(pure: dict) -> dict:
  """The base architecture's weights of a wrapped model (adapters dropped, not folded)."""
  def walk(d):
    if _is_lora(d):
      return d["base_module"]
    if isinstance(d, dict):
      return {k: walk(v) for k, v in d.items()}
    return d

  return walk(pure)


def lora_param_count(state) -> int:
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(state, nnx.LoRAParam))))

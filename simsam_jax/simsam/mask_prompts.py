"""Dense mask prompt fed with every simulated click.

Every strategy has the signature

  mask_prompt(first_low_res_logits, first_binary_low_res) -> (M, M) or None

  first_low_res_logits: (M, M) float32, the box-only decoder logits.
  first_binary_low_res: (M, M) float32 in {0, 1}, the first prediction
    (probabilities > 0.5 at the original resolution) placed in the low-res
    frame.

Register a new one with `@MASK_PROMPTS.register("name")`.
"""

from __future__ import annotations

from simsam_jax.simsam.registry import Registry

MASK_PROMPTS = Registry("mask prompt")


@MASK_PROMPTS.register("binary")
def binary(first_low_res_logits, first_binary_low_res):
  """The paper's prompt: the 0/1 first prediction (not logits)."""
  del first_low_res_logits
  return first_binary_low_res


@MASK_PROMPTS.register("logits")
def logits(first_low_res_logits, first_binary_low_res):
  """SAM's training convention: the previous low-res logits."""
  del first_binary_low_res
  return first_low_res_logits


@MASK_PROMPTS.register("none")
def none(first_low_res_logits, first_binary_low_res):
  """No dense prompt: each click is decoded with the box only."""
  del first_low_res_logits, first_binary_low_res
  return None

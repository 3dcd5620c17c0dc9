"""Methods an evaluation compares, by name: SAM and SimSAM variants.

Each method is a `SimSamConfig` (or `None` for SAM alone, whose mask is the
box-only first prediction every SimSAM run computes anyway). Names follow
Table 1 of the paper: `sam`, `simsam`, and the ablations `random` (random
clicks), `pixel_mean` (pixel-level aggregation), `k1` (K = 1); further
variants: `oracle` (ground-truth clicks, an upper bound), `iou_head`,
`majority_vote`, `logits_prompt`, `no_mask_prompt`, `in_box` (clicks inside
the box), `with_box_mask` (box-only mask among the candidates).

Register a new one with `@METHODS.register("name")` on a function
`(k, seed) -> SimSamConfig | None`.
"""

from __future__ import annotations

from typing import Optional

from simsam_jax.simsam.pipeline import SimSamConfig
from simsam_jax.simsam.registry import Registry

METHODS = Registry("method")


def _register(name, **overrides):
  @METHODS.register(name)
  def make(k: int, seed: int) -> Optional[SimSamConfig]:
    fields = dict(k=k, seed=seed)
    fields.update(overrides)
    return SimSamConfig(**fields)
  make.__doc__ = f"SimSamConfig(k, seed, **{overrides})"
  return make


@METHODS.register("sam")
def sam(k: int, seed: int) -> Optional[SimSamConfig]:
  """SAM alone: the box-only, single-mask prediction."""
  del k, seed
  return None


_register("simsam")
_register("random", clicks="random")
_register("pixel_mean", aggregation="pixel_mean")
_register("k1", k=1)
_register("oracle", clicks="oracle")
_register("iou_head", aggregation="iou_head")
_register("majority_vote", aggregation="majority_vote")
_register("logits_prompt", mask_prompt="logits")
_register("no_mask_prompt", mask_prompt="none")
_register("in_box", clicks_in_box=True)
_register("with_box_mask", include_box_only_mask=True)


def method_configs(names, k: int, seed: int) -> dict[str, Optional[SimSamConfig]]:
  """name -> SimSamConfig (None for SAM), validated; ValueError names bad ones."""
  out = {}
  for name in names:
    config = METHODS.get(name)(k, seed)
    out[name] = None if config is None else config.validate()
  return out

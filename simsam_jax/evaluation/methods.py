"""Methods an evaluation compares, by name: SAM and SimSAM variants.

Each method is a `SimSamConfig` (or `None` for SAM alone, whose mask is the
box-only first prediction every SimSAM run computes anyway). Names follow
Table 1 of the paper: `sam`, `simsam`, and the ablations `random` (random
clicks), `pixel_mean` (pixel-level aggregation), `k1` (K = 1); further
variants: `oracle` (ground-truth clicks, an upper bound), `iou_head`,
`majority_vote`, `logits_prompt`, `no_mask_prompt`, `in_box` (clicks inside
the box), `with_box_mask` (box-only mask among the candidates).

Register a new one with `@METHODS.register("name")` on a function
`(k, seed) -> SimSamConfig | None`, or give `config.methods` as a dict of
`SimSamConfig` overrides (`method_configs`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

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


def method_configs(methods: Union[str, Any, Mapping[str, Mapping[str, Any]]], k: int,
                   seed: int) -> dict[str, Optional[SimSamConfig]]:
  """name -> SimSamConfig (None for SAM), validated; ValueError names bad ones.

  Args:
    methods: registered method names (a list, or a comma-separated string),
      or a dict {name: overrides}: each method is the registered method
      `overrides["base"]` (default: `name` when registered, else "simsam")
      with the other entries replacing `SimSamConfig` fields, e.g.
      `{"sam": {}, "simsam": {}, "k8_in_box": {"k": 8, "clicks_in_box": True}}`.
      Methods keep the mapping's order (a `ConfigDict` sorts its keys unless
      built with `sort_keys=False`).
    k, seed: `config.k` and `config.seed`, given to the registered methods.
  """
  if hasattr(methods, "to_dict"):  # an ml_collections ConfigDict
    methods = methods.to_dict()
  if isinstance(methods, str):
    methods = [m.strip() for m in methods.split(",") if m.strip()]
  if not isinstance(methods, Mapping):  # names: each must be registered
    methods = {name: {"base": name} for name in methods}
  fields = {f.name for f in dataclasses.fields(SimSamConfig)}
  out = {}
  for name, overrides in methods.items():
    overrides = dict(overrides or {})
    base = overrides.pop("base", name if name in METHODS else "simsam")
    config = METHODS.get(base)(k, seed)
    if overrides:
      unknown = sorted(set(overrides) - fields)
      if config is None:
        raise ValueError(f"method {name!r}: SAM alone ({base!r}) takes no overrides, "
                         f"got {sorted(overrides)}")
      if unknown:
        raise ValueError(f"method {name!r}: unknown SimSamConfig fields {unknown}; "
                         f"known: {sorted(fields)}")
      config = dataclasses.replace(config, **overrides)
    try:
      out[name] = None if config is None else config.validate()
    except ValueError as e:
      raise ValueError(f"method {name!r}: {e}") from None
  return out

"""SimSAM: simulated clicks, batched re-decoding and IoU aggregation.

Strategies are registries; add one with a decorator:

  from simsam_jax.simsam import CLICK_STRATEGIES

  @CLICK_STRATEGIES.register("center")
  def center_click(probs, k, key, ground_truth=None, box=None):
    ...  # return (k, 2) int32 (x, y) pixels and (k,) int32 labels
"""

from simsam_jax.simsam.aggregation import (AGGREGATIONS, Aggregation, mean_pairwise_iou,
                                           pairwise_iou)
from simsam_jax.simsam.clicks import CLICK_STRATEGIES, error_map
from simsam_jax.simsam.engine import SimSam, check_box
from simsam_jax.simsam.mask_prompts import MASK_PROMPTS
from simsam_jax.simsam.pipeline import SimSamConfig, SimSamOutput, simsam_from_embedding

__all__ = ["AGGREGATIONS", "Aggregation", "CLICK_STRATEGIES", "MASK_PROMPTS", "SimSam",
           "SimSamConfig", "SimSamOutput", "check_box", "error_map", "mean_pairwise_iou",
           "pairwise_iou", "simsam_from_embedding"]

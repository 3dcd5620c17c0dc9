"""Aggregation: one mask out of K candidate masks.

Every strategy has the signature

  aggregate(candidate_logits, iou_predictions) -> Aggregation

  candidate_logits: (K, M, M) float32 low-res decoder logits (> 0 is
    foreground), as decoded; M = 256 for SAM at 1024.
  iou_predictions: (K,) float32, SAM's IoU head for each candidate.

and returns the final low-res logits, the chosen candidate index (-1 when the
result is synthesised rather than picked) and one score per candidate (what
the strategy ranked by). Pure JAX, static shapes. Register a new one with
`@AGGREGATIONS.register("name")`. An aggregation that reads the ground truth
registers with `needs_ground_truth=True` and is then called with the keyword
`ground_truth=` ((H, W) bool at the original resolution); the engine,
`segment` and the evaluation refuse to run it without one.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from simsam_jax.simsam.registry import Registry

AGGREGATIONS = Registry("aggregation", needs_ground_truth=False)


@flax.struct.dataclass
class Aggregation:
  logits: jax.Array  # (M, M) float32 final low-res logits (> 0 foreground)
  chosen: jax.Array  # () int32 candidate index, -1 if synthesised
  scores: jax.Array  # (K,) float32


def pairwise_iou(masks: jax.Array) -> jax.Array:
  """K x K IoU of binary masks as one matrix product (paper eq. 5).

  Args:
    masks: (K, ...) bool.
  Returns:
    (K, K) float32; IoU of two empty masks is 0 (NaN -> 0, as published).
  """
  flat = masks.reshape(masks.shape[0], -1).astype(jnp.float32)
  inter = jnp.dot(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
  area = jnp.sum(flat, axis=1)
  union = area[:, None] + area[None, :] - inter
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def mean_pairwise_iou(masks: jax.Array) -> jax.Array:
  """Mean IoU over distinct pairs (the confidence); 1.0 for a single mask."""
  k = masks.shape[0]
  if k == 1:
    return jnp.float32(1.0)
  iou = pairwise_iou(masks)
  return (iou.sum() - jnp.trace(iou)) / (k * (k - 1))


def iou_to(masks: jax.Array, reference: jax.Array) -> jax.Array:
  """(K,) IoU of each binary mask with one reference mask (empty/empty = 0)."""
  flat = masks.reshape(masks.shape[0], -1)
  ref = reference.reshape(1, -1)
  inter = jnp.sum(flat & ref, axis=1).astype(jnp.float32)
  union = jnp.sum(flat | ref, axis=1).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


@AGGREGATIONS.register("iou_medoid")
def iou_medoid(candidate_logits, iou_predictions) -> Aggregation:
  """The paper's image-level aggregation (eqs. 4-5).

  Score of candidate k = mean over all K candidates (itself included) of
  IoU(k, k'); the argmax is returned (first index on ties).
  """
  del iou_predictions
  scores = pairwise_iou(candidate_logits > 0).mean(axis=1)
  chosen = jnp.argmax(scores).astype(jnp.int32)
  return Aggregation(candidate_logits[chosen], chosen, scores)


@AGGREGATIONS.register("pixel_mean")
def pixel_mean(candidate_logits, iou_predictions) -> Aggregation:
  """Ablation (Table 1C): the pixel-wise mean of the candidate logits.

  Scores: each candidate's IoU with the resulting mask.
  """
  del iou_predictions
  logits = candidate_logits.mean(axis=0)
  scores = iou_to(candidate_logits > 0, logits > 0)
  return Aggregation(logits, jnp.int32(-1), scores)


@AGGREGATIONS.register("iou_head")
def iou_head(candidate_logits, iou_predictions) -> Aggregation:
  """The candidate SAM itself rates best (its IoU head); first on ties."""
  chosen = jnp.argmax(iou_predictions).astype(jnp.int32)
  return Aggregation(candidate_logits[chosen], chosen,
                     iou_predictions.astype(jnp.float32))


@AGGREGATIONS.register("majority_vote")
def majority_vote(candidate_logits, iou_predictions) -> Aggregation:
  """Pixels covered by more than half of the candidates.

  The returned "logits" are (fraction of candidates - 0.5), so > 0 is the
  majority; scores are each candidate's IoU with the majority mask.
  """
  del iou_predictions
  fraction = (candidate_logits > 0).mean(axis=0)
  logits = fraction - 0.5
  scores = iou_to(candidate_logits > 0, logits > 0)
  return Aggregation(logits, jnp.int32(-1), scores)

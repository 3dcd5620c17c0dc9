"""The SAM-FT loss (SPEC §2): squared-denominator Dice + IoU-head MSE.

Per sample, on the low-res logits grid (M x M, 256 x 256 at 1024 input):

  dice = 1 - (2 Σ p g + eps) / (Σ p² + Σ g² + eps),   p = sigmoid(logits)
  iou  = (iou_prediction - IoU(logits > t, g))²

with eps = 1e-5 and t = `iou_target_threshold`. The published code
thresholds the *logits* at 0.5 (not the probabilities, which would be
logits > 0), so t = 0.5 is the default; pass 0.0 for the "probability > 0.5"
reading. The IoU target is a constant (no gradient flows through the
threshold). The batch loss is the weighted mean of dice + iou over samples
(weights 0 mark padding in a short last batch).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

DEFAULT_IOU_TARGET_THRESHOLD = 0.5
DICE_EPS = 1e-5


def dice_loss(logits: jax.Array, target: jax.Array, eps: float = DICE_EPS) -> jax.Array:
  """Per-sample Dice loss with squared denominators on sigmoid(logits).

  Args:
    logits: (B, M, M) float32 mask logits.
    target: (B, M, M) float32 0/1 ground truth on the same grid.
    eps: smoothing added to numerator and denominator.
  Returns:
    (B,) float32 `1 - (2 Σ p g + eps) / (Σ p² + Σ g² + eps)`.
  """
  p = jax.nn.sigmoid(logits.astype(jnp.float32)).reshape(logits.shape[0], -1)
  g = target.astype(jnp.float32).reshape(target.shape[0], -1)
  numerator = 2.0 * jnp.sum(p * g, axis=-1) + eps
  denominator = jnp.sum(p * p, axis=-1) + jnp.sum(g * g, axis=-1) + eps
  return 1.0 - numerator / denominator


def iou_of_logits(logits: jax.Array, target: jax.Array,
                  threshold: float = DEFAULT_IOU_TARGET_THRESHOLD) -> jax.Array:
  """IoU of (logits > threshold) with the ground truth, no gradient.

  Args:
    logits: (B, M, M) float32.
    target: (B, M, M) float32 0/1.
    threshold: applied to the logits (published code: 0.5).
  Returns:
    (B,) float32 in [0, 1]; 0 when both masks are empty (union 0).
  """
  pred = jax.lax.stop_gradient(logits) > threshold
  gt = target > 0.5
  axes = tuple(range(1, logits.ndim))
  inter = jnp.sum(pred & gt, axis=axes).astype(jnp.float32)
  union = jnp.sum(pred | gt, axis=axes).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 0.0)


def iou_prediction_loss(iou_prediction: jax.Array, logits: jax.Array, target: jax.Array,
                        threshold: float = DEFAULT_IOU_TARGET_THRESHOLD) -> jax.Array:
  """(B,) squared error between the IoU head (B,) and `iou_of_logits`."""
  return (iou_prediction.astype(jnp.float32) - iou_of_logits(logits, target, threshold)) ** 2


def sam_ft_loss(logits: jax.Array, iou_prediction: jax.Array, target: jax.Array,
                weights: Optional[jax.Array] = None,
                iou_target_threshold: float = DEFAULT_IOU_TARGET_THRESHOLD
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The batch loss and its per-sample parts.

  Args:
    logits: (B, M, M) float32 low-res logits of the single-mask output.
    iou_prediction: (B,) float32 IoU head output.
    target: (B, M, M) float32 0/1 ground truth in the low-res frame.
    weights: (B,) float32 sample weights (1 real, 0 padding); None = all 1.
    iou_target_threshold: logit threshold of the IoU target (see module doc).
  Returns:
    scalar float32 weighted mean of dice + iou, and {"dice": (B,), "iou":
    (B,)} per-sample terms.
  """
  dice = dice_loss(logits, target)
  iou = iou_prediction_loss(iou_prediction, logits, target, iou_target_threshold)
  if weights is None:
    weights = jnp.ones_like(dice)
  total = jnp.sum(weights * (dice + iou)) / jnp.maximum(jnp.sum(weights), 1.0)
  return total, {"dice": dice, "iou": iou}

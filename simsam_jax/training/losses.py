"""The SAM-FT loss (SPEC §2): soft Dice with squared denominators + IoU-head MSE.

The published `SamBaseline` (`src/modeling.py`) computes
`monai.losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="none")` on
(B, H, W) logits and then averages the result over its last axes. MONAI reads
axis 1 as channels and reduces over the remaining (spatial) axis only, so the
published Dice is one soft Dice PER ROW of the low-res logits grid, averaged
over the rows. Two segmentation terms are offered (`SEG_LOSSES`, chosen by
`configs/finetune.py` `loss`):

  "dice_per_row" (published; `dice_loss_per_row`): per sample,
      mean over rows h of 1 - (2 Σ_w p g + eps) / (Σ_w p² + Σ_w g² + eps).
      A row without foreground costs ~1, with almost no gradient, until
      Σ_w p² nears eps (for a 256-pixel row: every logit below about -8;
      half cost at -8.5); there it pushes the row's logits further down.
  "dice_per_image" (cleaned; `dice_loss`): one soft Dice over all M x M
      pixels of the sample, 1 - (2 Σ p g + eps) / (Σ p² + Σ g² + eps).

with p = sigmoid(logits) and eps = 1e-5 (MONAI's `smooth_nr` = `smooth_dr`
default). The IoU term is

  iou = (iou_prediction - IoU(logits > t, g))²

with t = `iou_target_threshold`. The published code thresholds the *logits*
at 0.5 (not the probabilities, which would be logits > 0), so t = 0.5 is the
default; pass 0.0 for the "probability > 0.5" reading. The IoU target is a
constant (no gradient flows through the threshold). The batch loss is the
weighted mean of seg + iou over samples (weights 0 mark padding in a short
last batch), as the published mean over a batch of real samples.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

DEFAULT_IOU_TARGET_THRESHOLD = 0.5
DICE_EPS = 1e-5


def _soft_dice_last_axis(logits: jax.Array, target: jax.Array, eps: float) -> jax.Array:
  """`1 - (2 Σ p g + eps) / (Σ p² + Σ g² + eps)` over the last axis, p = sigmoid."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  g = target.astype(jnp.float32)
  numerator = 2.0 * jnp.sum(p * g, axis=-1) + eps
  denominator = jnp.sum(p * p, axis=-1) + jnp.sum(g * g, axis=-1) + eps
  return 1.0 - numerator / denominator


def dice_loss(logits: jax.Array, target: jax.Array, eps: float = DICE_EPS) -> jax.Array:
  """Per-sample Dice loss with squared denominators on sigmoid(logits).

  Args:
    logits: (B, M, M) float32 mask logits.
    target: (B, M, M) float32 0/1 ground truth on the same grid.
    eps: smoothing added to numerator and denominator.
  Returns:
    (B,) float32 `1 - (2 Σ p g + eps) / (Σ p² + Σ g² + eps)`.
  """
  batch = logits.shape[0]
  return _soft_dice_last_axis(logits.reshape(batch, -1), target.reshape(batch, -1), eps)


def dice_loss_per_row(logits: jax.Array, target: jax.Array, eps: float = DICE_EPS
                      ) -> jax.Array:
  """Per-sample mean over rows of a per-row squared-denominator soft Dice.

  This is MONAI's `DiceLoss(sigmoid=True, squared_pred=True,
  reduction="none")` on (B, H, W) input (H read as channels), averaged over H
  as the published `Model.compute_loss` does.

  Args:
    logits: (B, H, W) float32 mask logits.
    target: (B, H, W) float32 0/1 ground truth on the same grid.
    eps: smoothing added to numerator and denominator of every row.
  Returns:
    (B,) float32 in [0, 1].
  """
  return jnp.mean(_soft_dice_last_axis(logits, target, eps), axis=-1)


# Name (configs/finetune.py `loss`) -> (B, H, W) logits, target -> (B,) loss.
SEG_LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "dice_per_row": dice_loss_per_row,
    "dice_per_image": dice_loss,
}
DEFAULT_SEG_LOSS = "dice_per_row"


def get_seg_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """The segmentation loss registered as `name`; ValueError listing the names."""
  if name not in SEG_LOSSES:
    raise ValueError(f"unknown segmentation loss {name!r}; use one of {sorted(SEG_LOSSES)}")
  return SEG_LOSSES[name]


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
                iou_target_threshold: float = DEFAULT_IOU_TARGET_THRESHOLD,
                seg_loss: str = DEFAULT_SEG_LOSS
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The batch loss and its per-sample parts.

  Args:
    logits: (B, M, M) float32 low-res logits of the single-mask output
      (rows are axis 1).
    iou_prediction: (B,) float32 IoU head output.
    target: (B, M, M) float32 0/1 ground truth in the low-res frame.
    weights: (B,) float32 sample weights (1 real, 0 padding); None = all 1.
    iou_target_threshold: logit threshold of the IoU target (see module doc).
    seg_loss: a key of `SEG_LOSSES` (published: "dice_per_row").
  Returns:
    scalar float32 weighted mean of dice + iou, and {"dice": (B,), "iou":
    (B,)} per-sample terms ("dice" is the chosen segmentation term).
  """
  dice = get_seg_loss(seg_loss)(logits, target)
  iou = iou_prediction_loss(iou_prediction, logits, target, iou_target_threshold)
  if weights is None:
    weights = jnp.ones_like(dice)
  total = jnp.sum(weights * (dice + iou)) / jnp.maximum(jnp.sum(weights), 1.0)
  return total, {"dice": dice, "iou": iou}

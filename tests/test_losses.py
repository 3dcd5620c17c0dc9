"""SAM-FT losses against MONAI and the published `SamBaseline` objective.

The published code (`src/modeling.py`) computes
`monai.losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="none")` on
(B, H, W) logits, reshapes to (B, num_preds, -1), averages over the last
axis, takes the min over predictions and the batch mean, and adds
`F.mse_loss(iou_pred, IoU(logits > 0.5, labels))`. MONAI and torch are the
references here; nothing below reuses simsam_jax code for the expected values.
"""

import jax
import jax.numpy as jnp
import monai
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simsam_jax.training import losses

B, H, W = 3, 8, 10


def _example():
  """(B, H, W) logits and 0/1 targets with rows with and without foreground.

  Sample 0: a 2 x 4 block, background logits -1 (probability 0.27): every
  empty row costs ~1 in the per-row Dice (its gradient is tiny there). Sample
  1: random logits and an irregular mask (rows 1-6). Sample 2: an empty target
  with logits near -7, where Σ p² of a row is close to the 1e-5 smoothing and
  the empty rows' gradient is large.
  """
  rng = np.random.default_rng(7)
  target = np.zeros((B, H, W), np.float32)
  target[0, 2:4, 3:7] = 1
  target[1, 1:7] = rng.random((6, W)) < 0.6
  logits = np.where(target > 0, 6.0, -1.0).astype(np.float32)
  logits[1] = rng.normal(0.0, 3.0, (H, W))
  logits[2] = rng.normal(-7.0, 1.0, (H, W))
  return logits, target


def _monai_per_row(logits, target):
  """(B,) loss and d(sum)/d(logits): MONAI, then the mean over rows (H)."""
  x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
  dice = monai.losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="none")
  per_row = dice(x, torch.tensor(target, dtype=torch.float64))
  assert per_row.shape == (B, H, 1)  # MONAI reads axis 1 (H) as channels
  value = per_row.reshape(B, -1).mean(dim=1)
  value.sum().backward()
  return value.detach().numpy(), x.grad.numpy()


def test_per_row_dice_value_and_gradient_match_monai():
  logits, target = _example()
  expected, expected_grad = _monai_per_row(logits, target)
  ours = losses.dice_loss_per_row(jnp.asarray(logits), jnp.asarray(target))
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda x: losses.dice_loss_per_row(x, jnp.asarray(target)).sum())(
      jnp.asarray(logits))
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
  # Rows without foreground push their logits down (positive gradient), weakly
  # at probability 0.27 (the row's Dice is saturated near 1), strongly once
  # Σ p² of the row nears the smoothing (sample 2).
  grad = np.asarray(grad)
  assert np.all(grad[0, [0, 1, 4, 5, 6, 7]] > 0)
  assert np.all(grad[2] > 0) and grad[2].max() > 1e-2
  assert losses.get_seg_loss("dice_per_row") is losses.dice_loss_per_row


def test_per_image_dice_matches_monai_on_one_channel():
  # The cleaned term is MONAI's Dice with the whole image as one channel.
  logits, target = _example()
  dice = monai.losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="none")
  expected = dice(torch.tensor(logits[:, None]), torch.tensor(target[:, None])).reshape(B)
  np.testing.assert_allclose(losses.dice_loss(jnp.asarray(logits), jnp.asarray(target)),
                             expected.numpy(), rtol=1e-5, atol=1e-6)
  assert losses.get_seg_loss("dice_per_image") is losses.dice_loss


def test_per_row_differs_decisively_from_per_image():
  logits, target = _example()
  per_row = np.asarray(losses.dice_loss_per_row(jnp.asarray(logits), jnp.asarray(target)))
  per_image = np.asarray(losses.dice_loss(jnp.asarray(logits), jnp.asarray(target)))
  # Sample 0: the lesion is found, the per-image Dice is small, the empty
  # rows make the per-row Dice large.
  assert per_image[0] < 0.3 and per_row[0] > 0.7
  assert np.all(np.abs(per_row - per_image) > 0.02), (per_row, per_image)


def _published_objective(logits, target, iou_pred):
  """`SamBaseline.forward`'s loss (single-mask output), transcribed in torch."""
  x = torch.tensor(logits)[:, None, None]  # (bsz, 1, num_preds=1, H, W)
  labels = torch.tensor(target)
  bsz, _, num_preds, h, w = x.shape
  dice = monai.losses.DiceLoss(sigmoid=True, squared_pred=True, reduction="none")
  seg = dice(x.reshape(-1, h, w), labels.repeat_interleave(num_preds, dim=0))
  seg = seg.reshape(bsz, num_preds, -1).mean(dim=2).min(dim=1)[0].mean()
  pred = x.squeeze(1).numpy() > 0.5
  gt = labels.numpy() > 0
  iou_targets = torch.zeros(bsz, num_preds)
  for i in range(bsz):
    for j in range(num_preds):
      union = np.logical_or(pred[i, j], gt[i]).sum()
      iou_targets[i, j] = float(np.logical_and(pred[i, j], gt[i]).sum() / union)
  return float(seg + F.mse_loss(torch.tensor(iou_pred), iou_targets.squeeze()))


def test_total_matches_the_published_objective():
  logits, target = _example()
  keep = [0, 1]  # non-empty targets (the published IoU divides by the union)
  logits, target = logits[keep], target[keep]
  iou_pred = np.array([0.9, 0.2], np.float32)
  total, _ = losses.sam_ft_loss(jnp.asarray(logits), jnp.asarray(iou_pred), jnp.asarray(target))
  assert float(total) == pytest.approx(_published_objective(logits, target, iou_pred),
                                       rel=1e-5)
  other, parts = losses.sam_ft_loss(jnp.asarray(logits), jnp.asarray(iou_pred),
                                    jnp.asarray(target), seg_loss="dice_per_image")
  np.testing.assert_allclose(parts["dice"], losses.dice_loss(jnp.asarray(logits),
                                                             jnp.asarray(target)))
  assert abs(float(other) - float(total)) > 0.05


def test_unknown_loss_name():
  with pytest.raises(ValueError, match="dice_per_image.*dice_per_row"):
    losses.get_seg_loss("dice")

"""SAM-FT: fine-tuning SAM's mask decoder (the Table 1A upper bound).

See `simsam_jax.training.trainer` for the training loop and
`simsam_jax.finetune` for the command line.
"""

from simsam_jax.training.losses import (DEFAULT_IOU_TARGET_THRESHOLD, SEG_LOSSES, dice_loss,
                                        dice_loss_per_row, get_seg_loss, iou_of_logits,
                                        iou_prediction_loss, sam_ft_loss)
from simsam_jax.training.trainer import TrainingError, finetune

__all__ = ["DEFAULT_IOU_TARGET_THRESHOLD", "SEG_LOSSES", "dice_loss", "dice_loss_per_row",
           "get_seg_loss", "iou_of_logits", "iou_prediction_loss", "sam_ft_loss",
           "TrainingError", "finetune"]

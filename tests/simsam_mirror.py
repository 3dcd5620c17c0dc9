"""An independent PyTorch mirror of the published SimSAM data flow.

Written from the protocol description (SPEC section 2), on Hugging Face
`SamModel`, sharing nothing with `simsam_jax` but the weights:

* box-only, single-mask SAM -> low-res logits (256 x 256);
* probabilities: bilinear 256 -> 1024, crop to the resized input, bilinear
  to the original size (align_corners=False, no antialias), sigmoid;
* error map 0.5 - |p - 0.5|, top-K over the whole image, click (x, y) =
  (idx % W, idx // W), label 1 - (p > 0.5);
* K prompts {box, click, binary first prediction as mask prompt} decoded with
  the embedding repeated per prompt (HF's own batching), single mask;
* binarised candidates, K x K IoU, NaN -> 0, mean IoU per candidate, argmax.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def first_logits(hf, embedding, box_1024):
  """embedding (1, C, 64, 64); box (4,) in the 1024 frame -> (256, 256)."""
  with torch.no_grad():
    out = hf(image_embeddings=embedding,
             input_boxes=torch.as_tensor(box_1024, dtype=torch.float32)[None, None],
             multimask_output=False)
  return out.pred_masks[0, 0, 0]


def probabilities(low_res, resized_size, original_size, image_size=1024):
  x = low_res[None, None].float()
  x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
  x = x[..., :resized_size[0], :resized_size[1]]
  x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
  return torch.sigmoid(x[0, 0])


def topk_clicks(probs, k):
  """-> clicks (K, 2) (x, y) original pixels, labels (K,)."""
  binary = probs > 0.5
  err = 0.5 - torch.abs(probs - 0.5)
  idx = torch.topk(err.flatten(), k).indices
  w = probs.shape[1]
  xy = torch.stack([idx % w, idx // w], dim=1)
  labels = 1 - binary.flatten()[idx].long()
  return xy, labels


def candidates(hf, embedding, box_1024, clicks_1024, labels, mask_prompt):
  """K prompt sets -> (K, 256, 256) low-res logits."""
  k = clicks_1024.shape[0]
  with torch.no_grad():
    out = hf(image_embeddings=embedding,
             input_points=torch.as_tensor(clicks_1024, dtype=torch.float32)[None, :, None],
             input_labels=torch.as_tensor(labels)[None, :, None],
             input_boxes=torch.as_tensor(box_1024, dtype=torch.float32)[None].repeat(1, k, 1)
             if box_1024.ndim == 2 else
             torch.as_tensor(box_1024, dtype=torch.float32)[None, None].repeat(1, k, 1),
             input_masks=mask_prompt.float()[None, None],
             multimask_output=False)
  return out.pred_masks[0, :, 0]


def iou_medoid(candidate_logits):
  """-> (chosen index, scores (K,))."""
  b = (candidate_logits > 0).flatten(1).float()
  inter = b @ b.T
  area = b.sum(1)
  union = area[:, None] + area[None, :] - inter
  iou = torch.nan_to_num(inter / union, nan=0.0)
  scores = iou.mean(1)
  return int(torch.argmax(scores)), scores


def simsam(hf, pixel_values, box, resized_size, original_size, k=50):
  """The whole published flow for one image.

  pixel_values: (1, 3, 1024, 1024) preprocessed; box (4,) original pixels.
  """
  scale = np.array([resized_size[1] / original_size[1], resized_size[0] / original_size[0]] * 2)
  box_1024 = np.asarray(box, np.float64) * scale
  with torch.no_grad():
    embedding = hf.get_image_embeddings(pixel_values)
  first = first_logits(hf, embedding, box_1024)
  probs = probabilities(first, resized_size, original_size)
  xy, labels = topk_clicks(probs, k)
  clicks_1024 = xy.double().numpy() * scale[:2]
  cand = candidates(hf, embedding, box_1024, clicks_1024, labels, (probs > 0.5))
  chosen, scores = iou_medoid(cand)
  return {"first_logits": first, "probs": probs, "clicks": xy, "labels": labels,
          "candidates": cand, "chosen": chosen, "scores": scores,
          "mask": cand[chosen] > 0, "sam_mask": first > 0}

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

`native_simsam` runs the same flow at an image's own (non-square) size with
Hugging Face's `SamProcessor` and `post_process_masks`, the binary first mask
placed in the low-res frame as simsam_jax documents it (nearest neighbour on
the unpadded part, zeros where SAM pads).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def first_logits(hf, embedding, box_1024):
  """embedding (1, C, 64, 64); box (4,) in the 1024 frame -> (256, 256)."""
  with torch.no_grad():
    out = hf(image_embeddings=embedding,
             input_boxes=torch.as_tensor(box_1024, dtype=hf.dtype)[None, None],
             multimask_output=False)
  return out.pred_masks[0, 0, 0]


def probabilities(low_res, resized_size, original_size, image_size=1024):
  x = low_res[None, None]
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
  k, dtype = clicks_1024.shape[0], hf.dtype
  with torch.no_grad():
    out = hf(image_embeddings=embedding,
             input_points=torch.as_tensor(clicks_1024, dtype=dtype)[None, :, None],
             input_labels=torch.as_tensor(labels)[None, :, None],
             input_boxes=torch.as_tensor(box_1024, dtype=dtype)[None].repeat(1, k, 1)
             if box_1024.ndim == 2 else
             torch.as_tensor(box_1024, dtype=dtype)[None, None].repeat(1, k, 1),
             input_masks=mask_prompt.to(dtype)[None, None],
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


def simsam(hf, pixel_values, box, resized_size, original_size, k=50, decoder=None):
  """The whole published flow for one image.

  pixel_values: (1, 3, 1024, 1024) preprocessed; box (4,) original pixels.
  decoder: the model that decodes the K candidates (default `hf`), see
  `native_simsam`.
  """
  decoder = hf if decoder is None else decoder
  scale = np.array([resized_size[1] / original_size[1], resized_size[0] / original_size[0]] * 2)
  box_1024 = np.asarray(box, np.float64) * scale
  with torch.no_grad():
    embedding = hf.get_image_embeddings(pixel_values.to(hf.dtype))
  first = first_logits(hf, embedding, box_1024)
  probs = probabilities(first, resized_size, original_size)
  xy, labels = topk_clicks(probs, k)
  clicks_1024 = xy.double().numpy() * scale[:2]
  cand = candidates(decoder, embedding.to(decoder.dtype), box_1024, clicks_1024, labels,
                    (probs > 0.5))
  chosen, scores = iou_medoid(cand)
  return {"first_logits": first, "probs": probs, "clicks": xy, "labels": labels,
          "reshaped_size": tuple(resized_size), "original_size": tuple(original_size),
          "candidates": cand, "chosen": chosen, "scores": scores,
          "mask": cand[chosen] > 0, "sam_mask": first > 0}


# ---------------------------------------------------------------------------
# Native resolution (any H x W): the same flow through Hugging Face's own
# `SamProcessor` (resize, normalisation, coordinate scaling) and
# `post_process_masks`, with the binary first mask placed in the low-res
# frame as simsam_jax documents it.
# ---------------------------------------------------------------------------


def hf_processor():
  """Hugging Face `SamProcessor` on the PIL image processor (no torchvision)."""
  from transformers import SamImageProcessorPil, SamProcessor
  return SamProcessor(image_processor=SamImageProcessorPil())


def binary_in_low_res_frame(binary, reshaped_size, mask_size=256, image_size=1024):
  """(H, W) bool -> (M, M) float 0/1, as simsam_jax's docs describe it.

  The unpadded part of the model input (the top-left `reshaped_size` of the
  `image_size` frame) covers ceil(reshaped * M / S) low-res cells; the binary
  mask is resized there by pixel-centre nearest neighbour (torch's
  `nearest-exact`) and the rest (bottom and right, where SAM pads the image)
  is zero.
  """
  lh = math.ceil(reshaped_size[0] * mask_size / image_size)
  lw = math.ceil(reshaped_size[1] * mask_size / image_size)
  x = binary.float()[None, None]
  x = F.interpolate(x, (lh, lw), mode="nearest-exact")[0, 0]
  return F.pad(x, (0, mask_size - lw, 0, mask_size - lh))


def native_simsam(hf, processor, image, box, k=50, decoder=None):
  """The whole flow at the image's own resolution.

  image: (H, W, 3) uint8; box: (4,) original pixels. Everything model-side is
  Hugging Face's: pixels and coordinates from `processor`, probabilities and
  masks from `post_process_masks` (bilinear to 1024, crop, bilinear to H x W).
  decoder: the model that decodes the K candidates (default `hf`). A float64
  copy removes most float32 rounding, which random-weight decoders amplify
  once a mask prompt is given (a 1e-7 relative change of the embedding moves
  their logits by ~4e-4); not all of it: Hugging Face's eager attention takes
  its softmax in float32 even in a float64 model, so such a copy differs
  from the official decoder run in float64 by ~1e-6 of the logits' scale
  (see `assert_matches` and test_candidate_conditioning.py). Everything
  before it (first mask, probabilities, clicks) stays in `hf`'s float32, as
  users run it.
  """
  dtype = hf.dtype
  decoder = hf if decoder is None else decoder
  ip = processor.image_processor
  inputs = processor(images=image, input_boxes=[[[float(v) for v in box]]],
                     return_tensors="pt")
  original = inputs["original_sizes"]
  reshaped = inputs["reshaped_input_sizes"]
  post = lambda low, **kw: ip.post_process_masks(
      [low[None]], original, reshaped, binarize=False, **kw)[0][0]
  box_1024 = inputs["input_boxes"].to(dtype)  # (1, 1, 4)
  with torch.no_grad():
    embedding = hf.get_image_embeddings(inputs["pixel_values"].to(dtype))
    first = hf(image_embeddings=embedding, input_boxes=box_1024,
               multimask_output=False).pred_masks[0, 0]  # (1, 256, 256)
  probs = torch.sigmoid(post(first)[0])  # (H, W)
  xy, labels = topk_clicks(probs, k)
  clicks = processor(images=image, input_points=[[[[int(x), int(y)]] for x, y in xy.tolist()]],
                     return_tensors="pt")["input_points"].to(dtype)  # (1, K, 1, 2)
  mask_prompt = binary_in_low_res_frame(probs > 0.5, reshaped[0].tolist(),
                                        first.shape[-1], ip.pad_size["height"])
  dt = decoder.dtype
  with torch.no_grad():
    out = decoder(image_embeddings=embedding.to(dt), input_points=clicks.to(dt),
                  input_labels=labels[None, :, None], input_boxes=box_1024.repeat(1, k, 1).to(dt),
                  input_masks=mask_prompt[None, None].to(dt), multimask_output=False)
  cand = out.pred_masks[0, :, 0]  # (K, 256, 256)
  chosen, scores = iou_medoid(cand)
  return {"pixel_values": inputs["pixel_values"], "embedding": embedding,
          "original_size": tuple(original[0].tolist()),
          "reshaped_size": tuple(reshaped[0].tolist()),
          "box_1024": box_1024[0, 0], "first_logits": first[0], "probs": probs,
          "clicks": xy, "labels": labels, "clicks_1024": clicks[0, :, 0],
          "mask_prompt": mask_prompt, "candidates": cand, "chosen": chosen,
          "scores": scores, "mask": post(cand[chosen][None].to(dtype))[0] > 0,
          "sam_mask": post(first)[0] > 0}


# ---------------------------------------------------------------------------
# Comparing a simsam_jax `SimSamOutput` with a mirror result.
# ---------------------------------------------------------------------------


def triples(clicks, labels):
  return [(int(x), int(y), int(l)) for (x, y), l in zip(np.asarray(clicks), np.asarray(labels))]


def compare(out, ref, k):
  """Decisions and values of `out` (simsam_jax) against `ref` (a mirror run).

  Candidates are matched by their click (x, y, label), so the comparison does
  not depend on how either side orders equal error values. Returns a dict:
  same_clicks / same_order (click sets and lists equal), near_tie (the click
  sets or the mask prompts differ, which `assert_matches` accepts only as
  float-rounding near-ties), clicks_only_ours
  (our clicks (x, y, label) the mirror does not have), cutoff_gap (largest
  distance of a click position found on one side only from the mirror's K-th
  error: 0 unless float rounding reordered a near-tie at the top-K cut-off),
  label_flips / label_gap (positions both sides click with different labels,
  and the largest |p - 0.5| of the mirror there: 0 unless float rounding put
  a probability on the other side of 0.5), label_agreement (fraction of our
  clicks whose (x, y) the mirror also clicked with the same label),
  max_logit_delta (over matched candidates),
  relative_logit_delta (the same over max(1, max |mirror logit|)),
  first_logit_delta (max |difference| of the box-only low-res logits),
  first_logit_scale (max(1, max |mirror box-only logit|)),
  chosen (the chosen candidates' clicks), chosen_index, chosen_score_gap (the
  mirror's score of its choice minus its score of ours: 0 when the choices
  agree, tiny for a tie), mask_agreement, sam_agreement, first_mask_flips /
  first_mask_gap (pixels where our p > 0.5 (our box-only logits resampled
  as the mirror does) and the mirror's differ, and the largest |p - 0.5| of
  the mirror there), mask_prompt_cells
  (cells of the K decodes' mask prompt, built from those binary masks, that
  differ: the binary mask itself at the paper's 256 x 256, its low-res frame
  placement (`binary_in_low_res_frame`) at native size).
  """
  ours = triples(out.clicks, out.labels)
  theirs = triples(ref["clicks"].numpy(), ref["labels"].numpy())
  common = sorted(set(ours) & set(theirs))
  cand, ref_cand = np.asarray(out.candidate_logits), ref["candidates"].double().numpy()
  delta = max((np.abs(cand[ours.index(c)] - ref_cand[theirs.index(c)]).max()
               for c in common), default=np.inf)
  scale = max(1.0, float(np.abs(ref_cand).max()))
  probs = ref["probs"].double().numpy()
  err = 0.5 - np.abs(probs - 0.5)
  # Our p > 0.5, from our box-only logits through the mirror's resampling.
  our_first = np.array(out.first_low_res_logits, np.float32)
  our_probs = probabilities(torch.from_numpy(our_first), ref["reshaped_size"],
                            ref["original_size"])
  our_binary, their_binary = our_probs.numpy() > 0.5, probs > 0.5
  first_flips = our_binary != their_binary
  if "mask_prompt" in ref:  # native size: the low-res frame placement
    ours_prompt = binary_in_low_res_frame(torch.from_numpy(our_binary), ref["reshaped_size"],
                                          ref["mask_prompt"].shape[-1])
    prompt_cells = int((ours_prompt != ref["mask_prompt"]).sum())
  else:  # the paper's flow: the binary mask is the mask prompt
    prompt_cells = int(first_flips.sum())
  kth = np.sort(err.ravel())[-k]
  our_labels = {(x, y): l for x, y, l in ours}
  their_labels = {(x, y): l for x, y, l in theirs}
  off = [abs(float(err[y, x]) - kth) for x, y in set(our_labels) ^ set(their_labels)]
  flips = [abs(float(probs[y, x]) - 0.5) for (x, y), l in our_labels.items()
           if their_labels.get((x, y), l) != l]
  chosen = (ours[int(out.chosen)], theirs[ref["chosen"]])
  scores = ref["scores"].double().numpy()
  gap = (float(scores[ref["chosen"]] - scores[theirs.index(chosen[0])])
         if chosen[0] in theirs else np.inf)
  return {"same_clicks": set(ours) == set(theirs), "same_order": ours == theirs,
          "near_tie": set(ours) != set(theirs) or prompt_cells > 0,
          "clicks_only_ours": len(set(ours) - set(theirs)), "k": k,
          "cutoff_gap": max(off, default=0.0),
          "label_flips": len(flips), "label_gap": max(flips, default=0.0),
          "first_logit_delta": float(np.abs(our_first.astype(np.float64)
                                            - ref["first_logits"].double().numpy()).max()),
          "first_logit_scale": max(1.0, float(ref["first_logits"].abs().max())),
          "label_agreement": float(np.mean([their_labels.get((x, y)) == l
                                            for x, y, l in ours])),
          "max_logit_delta": float(delta), "relative_logit_delta": float(delta) / scale,
          "chosen": chosen,
          "chosen_index": (int(out.chosen), ref["chosen"]), "chosen_score_gap": gap,
          "mask_agreement": float(np.mean(np.asarray(out.mask) == ref["mask"].numpy())),
          "sam_agreement": float(np.mean(np.asarray(out.sam_mask) == ref["sam_mask"].numpy())),
          "first_mask_flips": int(first_flips.sum()),
          "first_mask_gap": float(np.abs(probs[first_flips] - 0.5).max(initial=0.0)),
          "mask_prompt_cells": prompt_cells}


def assert_matches(d, name, logit_tol=1e-3, tie=1e-4):
  """The decisions agree; near-ties (click cut-off, medoid score) explained.

  The box-only logits agree within `logit_tol` of their scale (as the
  candidates below); every other difference must then be explained by them.
  A click set may differ only at the top-K cut-off among error values closer
  than the two sides' first masks can separate them: the error 0.5 - |p - 0.5|
  moves by at most |dp| <= |d logit| / 4 (bilinear upsampling does not enlarge
  the largest logit difference), and two pixels swap places only when their
  errors are within twice that, so the bound is max(1e-5, first_logit_delta / 2).
  Likewise a click both sides place at the same pixel may carry different
  labels only where the mirror's probability is within |dp| of 0.5, i.e.
  within max(1e-5, first_logit_delta / 4) (the label is 1 - (p > 0.5)), and
  the same bound holds for every pixel where the binary box-only masks
  differ. Such a pixel may change the mask prompt shared by all K decodes;
  candidates decoded from different mask prompts are not compared (their
  logits, choice and final mask are only reported), since random decoders
  amplify a one-cell change of the prompt far beyond float rounding. Otherwise
  candidate logits must agree within `logit_tol` of their scale,
  max(1, max |logit|), not within an absolute `logit_tol`: random decoders
  with scaled hypernetwork outputs give candidate logits up to ~250 and
  amplify float32 rounding to up to ~3e-4 of that once a mask prompt is given
  (6.7e-2 on logits near 250 end to end, where the two sides' float32
  embeddings also differ by rounding). That gap is conditioning, not a
  difference of the decoders (test_candidate_conditioning.py, one candidate
  = box + click + mask prompt, stage by stage against the official decoder in
  float64): our float32 decoder is as close to it as the official float32
  decoder, at every stage (tiny_1024, hyper scale 100, real images, logits
  up to 14: 6e-5 to 9e-5 ours, 9e-5 to 1.1e-4 Hugging Face's in float32);
  the error grows in proportion to the hypernetwork scale (x4 scale, x4
  logit error, upstream stages unchanged);
  and with our float32 casts switched to float64 the candidate matches the
  float64 official decoder to 4e-13 at every stage (mask downscaling,
  transformer, hypernetwork, logits). A different chosen candidate is
  accepted only when the mirror scores both within `tie` (a tie broken by
  float rounding). When n clicks differ (at the cut-off or in their label),
  n candidates differ, which moves every mean-IoU score by up to 2n / K: the
  choice may then differ within that margin, and the final masks are not
  compared.
  """
  assert d["first_logit_delta"] <= logit_tol * d["first_logit_scale"], (name, d)
  cutoff_tol = max(1e-5, d["first_logit_delta"] / 2)
  probability_tol = max(1e-5, d["first_logit_delta"] / 4)
  assert d["same_clicks"] or d["cutoff_gap"] <= cutoff_tol, (name, d)
  assert d["label_gap"] <= probability_tol, (name, d)
  assert d["first_mask_gap"] <= probability_tol, (name, d)
  assert d["label_agreement"] >= 0.95, (name, d)
  assert d["sam_agreement"] >= 0.999, (name, d)
  if d["mask_prompt_cells"]:
    return  # a near-tie of the mask prompt: the candidates are not comparable
  assert d["relative_logit_delta"] <= logit_tol, (name, d)
  margin = tie + 2.0 * d["clicks_only_ours"] / d["k"]
  assert d["chosen"][0] == d["chosen"][1] or d["chosen_score_gap"] < margin, (name, d)
  if d["same_order"] and d["chosen"][0] == d["chosen"][1]:
    assert d["chosen_index"][0] == d["chosen_index"][1], (name, d)
  if d["same_clicks"]:
    assert d["mask_agreement"] >= 0.995, (name, d)

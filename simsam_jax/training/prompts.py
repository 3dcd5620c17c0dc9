"""Prompts during training (`config.prompt`), for the image-reading modes.

  "box": the GT box (`protocols.box_from_mask`), one single-mask decode.
  "box_jitter": the box enlarged by 0-19 px per side in original pixels
      (the authors' `get_bounding_box(add_perturbation=True)`; applied in the
      input pipeline, `simsam_jax.training.pipeline.jitter_box`).
  "interactive": SAM's iterative recipe: round 0 decodes the (jittered) box;
      each of `num_rounds` further rounds adds ONE click sampled from the
      error region of the previous prediction (positive in a false
      negative, negative in a false positive) and decodes {box, all clicks
      so far, previous prediction as dense mask prompt}. The loss is the mean
      of every round's loss; the previous prediction enters without gradient.

Clicks reuse the project's click code: `simsam_jax.simsam.clicks.error_distances`
(the exact EDT of the false-negative / false-positive regions that the
`oracle` strategy and RITM's clicker use) and `flat_to_xy`; the mask prompt
comes from `simsam_jax.simsam.mask_prompts.MASK_PROMPTS`.

Deliberate deviations from SAM's recipe, each with its reason:
  * A click is drawn from the whole error region with probability
    proportional to its distance to the region's border (SAM: uniform over the
    region): interior clicks are unambiguous at the low-res grid where they are
    drawn (M x M, the padded model frame; border pixels of a 1-pixel error
    ring are mostly resampling noise).
  * SAM's first prompt is a box or one point; here it is `first_prompt`
    (config field): "box" (the default: every evaluation here, box-only SAM,
    SimSAM, box starts of the click protocol, starts from a box), "point"
    (one positive point drawn uniformly from the ground-truth foreground, as
    SAM) or "box_or_point" (SAM's recipe: per example, box or point with
    probability 1/2). With "box_or_point" every round is decoded in both
    sparse layouts (box + clicks, point + clicks) and each example keeps its
    own (`jnp.where`): the compiled step has static shapes, at twice the
    decoder cost. An empty foreground has no point: "box_or_point" then starts
    from the box, "point" from a not-a-point (SAM's padding token).
  * The dense prompt of a round is, per example with probability 1/2, the
    previous low-res logits (SAM's convention) or their 0/1 binarisation
    (SimSAM's paper prompt), so a trained model serves both.
  * No click when the prediction has no error (label -1, SAM's not-a-point).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from simsam_jax.simsam.clicks import error_distances, flat_to_xy
from simsam_jax.simsam.mask_prompts import MASK_PROMPTS

PROMPT_SCHEMES = ("box", "box_jitter", "interactive")
FIRST_PROMPTS = ("box", "point", "box_or_point")
# fold_in data of the first-prompt key (the round keys use 0 .. num_rounds - 1).
_START = 0x5354


def check_scheme(name: str) -> str:
  if name not in PROMPT_SCHEMES:
    raise ValueError(f"--config.prompt={name!r}: unknown prompt scheme; use one of "
                     f"{list(PROMPT_SCHEMES)}")
  return name


def check_first_prompt(name: str) -> str:
  if name not in FIRST_PROMPTS:
    raise ValueError(f"--config.first_prompt={name!r}: unknown first prompt; use one of "
                     f"{list(FIRST_PROMPTS)}")
  return name


def error_click(prediction: jax.Array, target: jax.Array, valid: jax.Array,
                key: jax.Array, uniform: bool = False) -> tuple[jax.Array, jax.Array]:
  """One click in the error region of a low-res prediction.

  Args:
    prediction: (M, M) bool current prediction in the low-res frame.
    target: (M, M) bool ground truth.
    valid: (M, M) bool, the unpadded image region (padding never clicked).
    key: the click's `jax.random` key.
    uniform: static; False draws with probability proportional to the
      distance to the region's border (the click rounds), True uniformly
      over the region (SAM's first point: an all-false `prediction` makes the
      region the foreground).
  Returns:
    xy (2,) int32 (x, y) low-res pixel, (-1, -1) when there is no error;
    label () int32: 1 false negative, 0 false positive, -1 no error.
  """
  pred = prediction & valid
  fn_dist, fp_dist = error_distances(pred, target & valid)
  weight = fn_dist + fp_dist  # disjoint regions
  if uniform:
    weight = (weight > 0).astype(jnp.float32)
  any_error = weight.max() > 0
  logits = jnp.where(weight > 0, jnp.log(jnp.maximum(weight, 1e-6)), -jnp.inf).reshape(-1)
  logits = jnp.where(any_error, logits, 0.0)
  index = jax.random.categorical(key, logits)
  xy = flat_to_xy(index, prediction.shape[1])
  label = (fn_dist.reshape(-1)[index] > 0).astype(jnp.int32)
  return (jnp.where(any_error, xy, -1).astype(jnp.int32),
          jnp.where(any_error, label, -1).astype(jnp.int32))


def low_res_to_model_frame(xy: jax.Array, image_size: int, m: int) -> jax.Array:
  """(..., 2) low-res pixel indices -> model-frame pixel indices (centre to centre)."""
  scale = image_size / m
  return (xy.astype(jnp.float32) + 0.5) * scale - 0.5


def first_points(targets: jax.Array, valid: jax.Array, key: jax.Array, image_size: int,
                 first_prompt: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each example's first prompt: its box, or one foreground point.

  Args:
    targets, valid: (B, M, M) float32 0/1 ground truth and unpadded region
      in the low-res frame.
    key: the step's key; example b uses fold_in(fold_in(key, _START), b)
      (split into the coin and the point).
    image_size: S of the model frame.
    first_prompt: one of `FIRST_PROMPTS`.
  Returns:
    points (B, 2) float32 model-frame (x, y) (unused where the box starts),
    labels (B,) int32 (1 for a point start, -1 for a box start),
    use_box (B,) bool.
  """
  b, m = targets.shape[0], targets.shape[-1]
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, _START), i))(
      jnp.arange(b))
  empty = jnp.zeros((m, m), bool)
  xy, label = jax.vmap(lambda t, v, k: error_click(empty, t, v, k, uniform=True))(
      targets > 0.5, valid > 0.5, jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
  if first_prompt == "box":
    use_box = jnp.ones((b,), bool)
  elif first_prompt == "point":
    use_box = jnp.zeros((b,), bool)
  else:
    use_box = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 1)))(keys)
  use_box = use_box | (label != 1)  # no foreground: the box
  labels = jnp.where(use_box, -1, label).astype(jnp.int32)
  return low_res_to_model_frame(xy, image_size, m), labels, use_box


def interactive_losses(decode, loss_fn, embeddings, boxes, targets, valid, weights, key,
                       num_rounds: int, image_size: int, first_prompt: str = "box"):
  """Mean loss over round 0 (the first prompt) and `num_rounds` click rounds.

  Args:
    decode: (embeddings, points (B, N, 2) | None, labels (B, N) | None,
      boxes (B, 4) | None, mask (B, M, M) | None) -> (low (B, M, M), iou (B,)).
    loss_fn: (low, iou, targets, weights) -> scalar loss.
    embeddings: (B, G, G, C) float32; boxes (B, 4) model frame; targets,
      valid: (B, M, M) float32 0/1; weights (B,) float32.
    key: the step's key; example b of round r uses fold_in(fold_in(key, r), b).
    num_rounds: static number of click rounds (>= 0).
    image_size: S of the model frame.
    first_prompt: static, one of `FIRST_PROMPTS` (module doc); "box" decodes
      exactly as before the option existed.
  Returns:
    (scalar mean loss, (B, M, M) logits of the last round).
  """
  b, m = targets.shape[0], targets.shape[-1]
  if first_prompt == "box":
    start = 0
    points = jnp.zeros((b, max(num_rounds, 1), 2), jnp.float32)
    labels = jnp.full((b, max(num_rounds, 1)), -1, jnp.int32)
    step = lambda pts, labs, mask: decode(embeddings, pts, labs, boxes, mask)
    low, iou = decode(embeddings, None, None, boxes, None)
  else:
    start = 1
    first, first_label, use_box = first_points(targets, valid, key, image_size, first_prompt)
    points = jnp.zeros((b, 1 + num_rounds, 2), jnp.float32).at[:, 0].set(first)
    labels = jnp.full((b, 1 + num_rounds), -1, jnp.int32).at[:, 0].set(first_label)

    def step(pts, labs, mask):
      # Point starts: the point and the clicks, no box. Box starts: the box
      # and the clicks (slot 0 is a not-a-point there).
      low_p, iou_p = decode(embeddings, pts, labs, None, mask)
      if first_prompt == "point":
        return low_p, iou_p
      low_b, iou_b = decode(embeddings, pts[:, 1:], labs[:, 1:], boxes, mask)
      return (jnp.where(use_box[:, None, None], low_b, low_p),
              jnp.where(use_box, iou_b, iou_p))

    low, iou = decode(embeddings, points[:, :1], labels[:, :1], None, None)
    if first_prompt == "box_or_point":
      low_b, iou_b = decode(embeddings, None, None, boxes, None)
      low = jnp.where(use_box[:, None, None], low_b, low)
      iou = jnp.where(use_box, iou_b, iou)
  total = loss_fn(low, iou, targets, weights)
  rows = jnp.arange(b)
  for r in range(num_rounds):
    round_key = jax.random.fold_in(key, r)
    keys = jax.vmap(lambda i: jax.random.fold_in(round_key, i))(rows)
    prev = jax.lax.stop_gradient(low)
    xy, lab = jax.vmap(error_click)(prev > 0, targets > 0.5, valid > 0.5,
                                    jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
    points = points.at[:, start + r].set(low_res_to_model_frame(xy, image_size, m))
    labels = labels.at[:, start + r].set(lab)
    use_logits = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 1)))(keys)
    binary = (prev > 0).astype(jnp.float32)
    prompt = jnp.where(use_logits[:, None, None],
                       MASK_PROMPTS.get("logits")(prev, binary),
                       MASK_PROMPTS.get("binary")(prev, binary))
    low, iou = step(points, labels, prompt)
    total = total + loss_fn(low, iou, targets, weights)
  return total / (num_rounds + 1), low

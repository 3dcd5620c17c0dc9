"""Multi-round interactive segmentation (the click protocol) as one JAX program.

The standard evaluation of interactive segmentation (RITM: Sofiiuk, Petrov,
Konushin, "Reviving Iterative Training with Mask Guidance for Interactive
Segmentation", ICIP 2022, `isegm/inference/clicker.py`; used by SAM's paper
for its point-prompt results): a simulated user looks at the current
prediction and clicks the interior-most pixel of the largest error; the model
re-decodes with every click so far; after N rounds one reports how many
clicks were needed to reach an IoU (NoC@85, NoC@90) and the mean IoU after
k clicks.

Per image and start (`InteractiveConfig.starts`):

* round 0: the start's prediction. `box`: SAM's box-only mask; `simsam`:
  SimSAM's mask (its chosen low-res logits are the first mask prompt);
  `clicks_only`: an empty prediction, no box.
* rounds 1..N: `ritm_click` on (prediction, ground truth), then ONE decode
  with every click so far (padded to N with label -1, SAM's "not a point"),
  the box when the run started from one and `keep_box`, and the previous
  round's low-res logits as dense mask prompt (`mask_prompt`: a
  `MASK_PROMPTS` name; `logits` is SAM's training convention and the
  default, `binary` feeds the previous 0/1 prediction, `none` no mask).

`InteractiveSam` jits the whole thing per image size: the encoder runs once
per image, then every start's N rounds run as a `lax.scan` over rounds (no
host round trip), vmapped over images and sharded over devices like
`SimSam.run_batch` (`engine.data_parallel`).

Deviations from RITM, each deliberate:
  * A prediction without any error (perfect, or both masks empty) gets NO
    click: the round's click is (-1, -1) with label -1 and the prediction is
    carried over unchanged (RITM would click the pixel (0, 0) and re-run the
    model). A user who sees a perfect mask stops clicking; the fixed-length
    scan keeps static shapes.
  * Round 0 is the start's own prediction, so a box start that is already
    good enough needs 0 clicks (RITM starts counting at the first click).
  * IoU and DSC of two empty masks are 1 (no error), so a round without
    error has IoU 1.
  * The first round of `clicks_only` decodes without a mask prompt (SAM's
    convention for a first click); every later round, of every start, with.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simsam_jax import processing
from simsam_jax.modeling.sam import Sam
from simsam_jax.simsam import pipeline
from simsam_jax.simsam.clicks import error_distances, flat_to_xy
from simsam_jax.simsam.engine import StateReplicas, check_box, data_parallel
from simsam_jax.simsam.mask_prompts import MASK_PROMPTS

STARTS = ("box", "simsam", "clicks_only")


@dataclasses.dataclass(frozen=True)
class InteractiveConfig:
  """The click protocol.

  Attributes:
    num_rounds: N >= 1 clicks per image and start (RITM / SAM: 20).
    starts: non-empty tuple of distinct names in `STARTS`.
    mask_prompt: dense prompt of each round from the previous one, a
      `MASK_PROMPTS` name: `logits` (SAM's convention), `binary`, `none`.
    keep_box: box starts keep the box in every round (default True).
    simsam: the `SimSamConfig` of the `simsam` start.
  """
  num_rounds: int = 20
  starts: Tuple[str, ...] = STARTS
  mask_prompt: str = "logits"
  keep_box: bool = True
  simsam: pipeline.SimSamConfig = pipeline.SimSamConfig()

  def validate(self) -> "InteractiveConfig":
    """Raises ValueError naming the bad field; returns self."""
    n = self.num_rounds
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
      raise ValueError(f"num_rounds must be a positive integer, got num_rounds={n!r}")
    if not self.starts:
      raise ValueError(f"starts is empty; use some of {', '.join(STARTS)}")
    unknown = [s for s in self.starts if s not in STARTS]
    if unknown:
      raise ValueError(f"unknown start(s) {unknown} in starts; expected some of "
                       f"{', '.join(STARTS)}")
    if len(set(self.starts)) != len(self.starts):
      raise ValueError(f"starts={list(self.starts)} names a start twice")
    if self.mask_prompt not in MASK_PROMPTS.names():
      raise ValueError(f"unknown mask_prompt {self.mask_prompt!r}; expected one of "
                       f"{', '.join(MASK_PROMPTS.names())}")
    self.simsam.validate()
    return self


@flax.struct.dataclass
class InteractiveOutput:
  """One start's N rounds on one image (arrays on device).

  R = num_rounds; round 0 is the start's prediction, round r >= 1 the
  prediction after r clicks.
  """
  clicks: jax.Array  # (R, 2) int32 (x, y) original pixels; -1 when no click
  labels: jax.Array  # (R,) int32 1 positive / 0 negative / -1 no click
  iou: jax.Array  # (R + 1,) float32 IoU with the ground truth per round
  dsc: jax.Array  # (R + 1,) float32 DSC with the ground truth per round
  masks: jax.Array  # (R + 1, H, W) bool prediction per round
  low_res_logits: jax.Array  # (M, M) float32 logits of the last prediction


def mask_iou(prediction: jax.Array, ground_truth: jax.Array) -> jax.Array:
  """() float32 IoU of two (H, W) bool masks; 1 when both are empty."""
  inter = jnp.sum(prediction & ground_truth).astype(jnp.float32)
  union = jnp.sum(prediction | ground_truth).astype(jnp.float32)
  return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def mask_dice(prediction: jax.Array, ground_truth: jax.Array) -> jax.Array:
  """() float32 DSC of two (H, W) bool masks; 1 when both are empty."""
  inter = jnp.sum(prediction & ground_truth).astype(jnp.float32)
  total = (jnp.sum(prediction) + jnp.sum(ground_truth)).astype(jnp.float32)
  return jnp.where(total > 0, 2.0 * inter / jnp.maximum(total, 1.0), 1.0)


def ritm_click(prediction: jax.Array, ground_truth: jax.Array):
  """The next click of RITM's evaluation clicker (`Clicker._get_next_click`).

  The false-negative and false-positive regions get exact Euclidean
  distance transforms with the image border counting as region border
  (`clicks.error_distances`, the `oracle` strategy's EDT; RITM pads by one
  pixel before OpenCV's exact `DIST_L2` transform). The type whose largest
  distance is larger is clicked (RITM: `fn_max > fp_max`, so a tie goes to
  the false positives), at its pixel of largest distance, ties to the lowest
  flat (row-major) index (RITM: the first of `np.where(dt == max)`).

  Args:
    prediction: (H, W) bool.
    ground_truth: (H, W) bool.
  Returns:
    xy: (2,) int32 (x, y) pixel, (-1, -1) when there is no error;
    label: () int32, 1 in a false negative (add foreground), 0 in a false
      positive, -1 when prediction == ground truth (no click).
  """
  fn_dist, fp_dist = error_distances(prediction, ground_truth)
  fn_max, fp_max = fn_dist.max(), fp_dist.max()
  positive = fn_max > fp_max
  dist = jnp.where(positive, fn_dist, fp_dist)
  index = jnp.argmax(dist.reshape(-1))  # first maximum: lowest flat index
  error = jnp.maximum(fn_max, fp_max) > 0
  xy = jnp.where(error, flat_to_xy(index, prediction.shape[1]), -1)
  label = jnp.where(error, positive.astype(jnp.int32), -1)
  return xy.astype(jnp.int32), label.astype(jnp.int32)


def decode_round(model: Sam, embedding: jax.Array, box_model: Optional[jax.Array],
                 clicks: jax.Array, labels: jax.Array, mask_prompt: Optional[jax.Array],
                 info: processing.ImageInfo):
  """One single-mask decode of {all clicks, box, mask prompt}.

  Args:
    embedding: (G, G, C) float32.
    box_model: (4,) float32 box in the model frame, or None.
    clicks: (R, 2) int32 original pixels; labels: (R,) int32 (-1 = padding).
    mask_prompt: (M, M) float32 or None.
  Returns:
    low-res logits (M, M) float32 and SAM's IoU prediction () float32.
  """
  points = pipeline.to_model_frame(clicks, info)
  low, iou = model.decode(
      embedding[None], points[None, None], labels[None, None],
      None if box_model is None else box_model[None, None],
      None if mask_prompt is None else mask_prompt[None, None])
  return low[0, 0, 0], iou[0, 0, 0]


def start_state(model: Sam, embedding: jax.Array, box: jax.Array, ground_truth: jax.Array,
                info: processing.ImageInfo, config: InteractiveConfig, start: str,
                key: jax.Array):
  """Round 0 of `start`: (carry, box in the model frame or None for rounds).

  carry = (clicks (R, 2) int32 all -1, labels (R,) int32 all -1, low-res
  logits (M, M) float32, prediction (H, W) bool).
  """
  m = model.config.mask_input_size
  n = config.num_rounds
  box_model = pipeline.to_model_frame(box.reshape(2, 2), info).reshape(4)
  if start == "box":
    low, _ = pipeline.first_decode(model, embedding, box_model)
    pred = pipeline.low_res_to_original(low, info, m) > 0
  elif start == "simsam":
    out = pipeline.simsam_from_embedding(model, embedding, box, info, config.simsam, key,
                                         ground_truth)
    low, pred = out.low_res_logits, out.mask
  else:  # clicks_only
    # The barrier keeps XLA from constant-folding the first round's distance
    # transform of this constant prediction (minutes of compilation).
    low, pred = jax.lax.optimization_barrier(
        (jnp.zeros((m, m), jnp.float32), jnp.zeros(ground_truth.shape, bool)))
  carry = (jnp.full((n, 2), -1, jnp.int32), jnp.full((n,), -1, jnp.int32), low, pred)
  round_box = box_model if (start != "clicks_only" and config.keep_box) else None
  return carry, round_box


def click_round(model: Sam, embedding: jax.Array, ground_truth: jax.Array,
                box_model: Optional[jax.Array], info: processing.ImageInfo,
                mask_prompt: str, carry, r, use_mask: bool = True):
  """Round r (0-based index of the click): click, decode, keep.

  Returns (carry, (xy (2,), label (), iou (), dsc (), prediction (H, W))).
  `use_mask=False` decodes without a mask prompt (first click of
  `clicks_only`).
  """
  clicks, labels, low, pred = carry
  xy, label = ritm_click(pred, ground_truth)
  clicks = clicks.at[r].set(xy)
  labels = labels.at[r].set(label)
  m = low.shape[-1]
  prompt = (MASK_PROMPTS.get(mask_prompt)(low, pipeline.binary_in_low_res_frame(pred, info, m))
            if use_mask else None)
  new_low, _ = decode_round(model, embedding, box_model, clicks, labels, prompt, info)
  new_pred = pipeline.low_res_to_original(new_low, info, m) > 0
  clicked = label >= 0  # no error: no click, the prediction stays
  low = jnp.where(clicked, new_low, low)
  pred = jnp.where(clicked, new_pred, pred)
  carry = (clicks, labels, low, pred)
  return carry, (xy, label, mask_iou(pred, ground_truth), mask_dice(pred, ground_truth), pred)


def run_start(model: Sam, embedding: jax.Array, box: jax.Array, ground_truth: jax.Array,
              info: processing.ImageInfo, config: InteractiveConfig, start: str,
              key: jax.Array) -> InteractiveOutput:
  """The N rounds of one start on one embedding (jit/vmap-safe).

  Args:
    embedding: (G, G, C) float32 image embedding.
    box: (4,) float32 (x0, y0, x1, y1) original pixels (unused by
      `clicks_only`).
    ground_truth: (H, W) bool.
    info: static image sizes; config, start: static.
    key: key of the `simsam` start's click strategy.
  """
  gt = ground_truth.astype(bool)
  carry, round_box = start_state(model, embedding, box, gt, info, config, start, key)
  pred0 = carry[3]
  step = functools.partial(click_round, model, embedding, gt, round_box, info,
                           config.mask_prompt)
  n = config.num_rounds
  if start == "clicks_only":
    carry, first = step(carry, 0, use_mask=False)
    carry, rest = jax.lax.scan(step, carry, jnp.arange(1, n))
    outs = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], 0), first, rest)
  else:
    carry, outs = jax.lax.scan(step, carry, jnp.arange(n))
  xy, labels, iou, dsc, preds = outs
  return InteractiveOutput(
      clicks=xy, labels=labels,
      iou=jnp.concatenate([mask_iou(pred0, gt)[None], iou]),
      dsc=jnp.concatenate([mask_dice(pred0, gt)[None], dsc]),
      masks=jnp.concatenate([pred0[None], preds]), low_res_logits=carry[2])


class InteractiveSam:
  """The click protocol bound to one SAM model; one jit per image size."""

  def __init__(self, model: Sam, config: InteractiveConfig):
    self.config = config.validate()
    self.graphdef, self.state = nnx.split(model)
    self.model_config = model.config
    graphdef = self.graphdef

    def from_embedding(state, embedding, box, ground_truth, key, info):
      model = nnx.merge(graphdef, state)
      return {s: run_start(model, embedding, box, ground_truth, info, self.config, s, key)
              for s in self.config.starts}

    def full(state, pixels, box, ground_truth, key, info):
      embedding = nnx.merge(graphdef, state).encode_image(pixels[None])[0]  # once per image
      return from_embedding(state, embedding, box, ground_truth, key, info)

    def batch(state, pixels, boxes, ground_truths, keys, info):
      return jax.vmap(lambda p, b, g, k: full(state, p, b, g, k, info))(
          pixels, boxes, ground_truths, keys)

    self._full = jax.jit(full, static_argnames=("info",))
    self._from_embedding = jax.jit(from_embedding, static_argnames=("info",))
    self.encode = jax.jit(lambda state, pixels: nnx.merge(graphdef, state).encode_image(
        pixels[None])[0])
    self._batch = jax.jit(batch, static_argnames=("info",))
    self.replicas = StateReplicas()  # `run_batch`'s replicated state

  def check(self, info: processing.ImageInfo, box, ground_truth) -> None:
    """ValueError naming the problem (sizes, box, ground truth)."""
    h, w = info.original_size
    self.config.simsam.validate(num_pixels=h * w)
    if info.image_size != self.model_config.image_size:
      raise ValueError(f"image was preprocessed for {info.image_size}, the model "
                       f"takes {self.model_config.image_size}")
    if ground_truth is None:
      raise ValueError("the click protocol needs the ground-truth mask")
    if tuple(np.shape(ground_truth)[-2:]) != (h, w):
      raise ValueError(f"ground truth has shape {np.shape(ground_truth)}, "
                       f"the image is {h}x{w}")
    if any(s != "clicks_only" for s in self.config.starts):
      check_box(box, info.original_size)

  def run(self, pixels, box, ground_truth, info: processing.ImageInfo,
          key=None) -> dict:
    """One image -> {start: InteractiveOutput}.

    pixels: (S, S, 3) float32 (`processing.preprocess`); box: (4,) original
    pixels; ground_truth: (H, W) bool; key: the simsam start's key (default
    `jax.random.key(config.simsam.seed)`).
    """
    self.check(info, box, ground_truth)
    key = jax.random.key(self.config.simsam.seed) if key is None else key
    return self._full(self.state, jnp.asarray(pixels, jnp.float32),
                      jnp.asarray(box, jnp.float32), jnp.asarray(ground_truth, bool), key,
                      info)

  def run_from_embedding(self, embedding, box, ground_truth, info: processing.ImageInfo,
                         key=None) -> dict:
    """`run` from a (G, G, C) embedding (`self.encode(self.state, pixels)`)."""
    self.check(info, box, ground_truth)
    key = jax.random.key(self.config.simsam.seed) if key is None else key
    return self._from_embedding(self.state, embedding, jnp.asarray(box, jnp.float32),
                                jnp.asarray(ground_truth, bool), key, info)

  def run_batch(self, pixels, boxes, ground_truths, info: processing.ImageInfo,
                keys=None, devices=None) -> dict:
    """B images of one size, data-parallel over `devices` (default: all).

    pixels: (B, S, S, 3) float32; boxes: (B, 4); ground_truths: (B, H, W)
    bool; keys: (B,) keys. Returns {start: InteractiveOutput} with a leading
    B axis, equal to B calls of `run`.
    """
    pixels = np.asarray(pixels, np.float32)
    boxes = np.asarray(boxes, np.float32)
    ground_truths = np.asarray(ground_truths, bool)
    b = pixels.shape[0]
    for i in range(b):
      self.check(info, boxes[i], ground_truths[i])
    if keys is None:
      keys = jnp.stack([jax.random.key(self.config.simsam.seed)] * b)
    return data_parallel(self._batch, self.state,
                         (jnp.asarray(pixels), jnp.asarray(boxes),
                          jnp.asarray(ground_truths), keys), devices,
                         replicas=self.replicas, info=info)

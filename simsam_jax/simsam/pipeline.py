"""SimSAM as pure JAX: box -> clicks -> one K-prompt decode -> aggregation.

Data flow for one image (paper Sec. 2; SPEC "published protocol"):

1. `first_decode`: SAM with the box only, single-mask output -> low-res logits
   (M x M, M = 256) and SAM's IoU prediction. This is also the SAM baseline.
2. `first_probabilities`: logits -> bilinear M -> S (1024) -> crop -> original
   size (H x W), no antialiasing (as the published post-processing), then
   sigmoid. `binary = p > 0.5`.
3. `simulate_clicks`: a registered click strategy picks K pixels and labels
   (paper: top-K of the error map 0.5 - |p - 0.5| over the whole image,
   label = 1 - binary at the pixel).
4. `decode_clicks`: ONE decoder call over K prompt sets {box, click, dense mask
   prompt} sharing the image embedding (the mask prompt is embedded once).
5. `aggregate`: a registered aggregation over the K candidates' raw low-res
   logits (paper: medoid by mean pairwise IoU, NaN IoU -> 0, first index on
   ties); plus the agreement map and the confidence.

Precision: SAM's decoder returns float32 low-resolution logits and IoU
predictions whatever the model's compute precision (`modeling.policy`), so
every step here (round trip, sigmoid, error map, top-K, aggregation, maps)
runs in float32 in every precision.

Every function is jit- and vmap-safe with static shapes per (image size, K);
nothing leaves the device between stages. `SimSamConfig` names the
strategies; the defaults are the paper's.

Deviations from the published PyTorch data flow, each deliberate:
  * The decoder runs once over the K prompts against one embedding instead of
    repeating the embedding K times.
  * For images whose size is not the low-res grid (the published code always
    works at 256 x 256, where no mapping is needed), the binary first
    prediction is placed into the low-res frame by nearest-neighbour resizing
    of the unpadded region and zero padding, and the returned masks are the
    low-res logits brought to the original size by SAM's bilinear round trip
    (`low_res_to_original`). At 256 x 256 both are exactly the published
    behaviour: masks are the raw low-res logits > 0.
  * Under another preprocessing profile (`info.profile`, see
    `simsam_jax.profiles`; e.g. MedSAM's square resize), boxes, clicks and
    the mask prompt go through that profile's geometry (`resized_size`) and
    logits come back by its resampling and decision (`low_res_scores`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from simsam_jax import processing
from simsam_jax import profiles
from simsam_jax.modeling.sam import Sam
from simsam_jax.simsam.aggregation import AGGREGATIONS, Aggregation, mean_pairwise_iou
from simsam_jax.simsam.clicks import CLICK_STRATEGIES
from simsam_jax.simsam.mask_prompts import MASK_PROMPTS


@dataclasses.dataclass(frozen=True)
class SimSamConfig:
  """What SimSAM does; the defaults reproduce the paper (faithful mode).

  Attributes:
    k: number of simulated clicks / candidates (paper: 50; K = 1 is an
      ablation).
    clicks: click strategy (`topk` paper, `random`, `oracle`, or registered).
    aggregation: `iou_medoid` (paper), `pixel_mean`, `iou_head`,
      `majority_vote`, or registered.
    mask_prompt: `binary` (paper), `logits`, `none`, or registered.
    clicks_in_box: restrict clicks to the box (paper: False, whole image).
    include_box_only_mask: add the box-only mask as candidate 0 (paper: False).
    seed: default seed of the `random` strategy's key.
  """
  k: int = 50
  clicks: str = "topk"
  aggregation: str = "iou_medoid"
  mask_prompt: str = "binary"
  clicks_in_box: bool = False
  include_box_only_mask: bool = False
  seed: int = 0

  def validate(self, num_pixels: Optional[int] = None) -> "SimSamConfig":
    """Raises ValueError naming the bad field; returns self."""
    if isinstance(self.k, bool) or not isinstance(self.k, numbers.Integral) or self.k <= 0:
      raise ValueError(f"k must be a positive integer, got k={self.k!r}")
    if (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)
        or not 0 <= self.seed < 2**31):
      raise ValueError(f"seed must be an integer in [0, 2**31), got seed={self.seed!r}")
    if num_pixels is not None and self.k > num_pixels:
      raise ValueError(f"k={self.k} exceeds the number of pixels ({num_pixels})")
    CLICK_STRATEGIES.get(self.clicks)
    AGGREGATIONS.get(self.aggregation)
    MASK_PROMPTS.get(self.mask_prompt)
    return self

  @property
  def needs_ground_truth(self) -> bool:
    """Whether the click strategy or the aggregation declared (at
    registration) that it reads the ground-truth mask."""
    return bool(CLICK_STRATEGIES.declared(self.clicks, "needs_ground_truth")
                or AGGREGATIONS.declared(self.aggregation, "needs_ground_truth"))

  @property
  def num_candidates(self) -> int:
    return self.k + int(self.include_box_only_mask)


@flax.struct.dataclass
class SimSamOutput:
  """Everything SimSAM computed for one image (arrays on device).

  H x W is the original image, M x M the low-res decoder grid (256),
  K' = K (+1 when the box-only mask is a candidate).
  """
  mask: jax.Array  # (H, W) bool, the returned segmentation
  low_res_logits: jax.Array  # (M, M) float32 final logits
  chosen: jax.Array  # () int32 chosen candidate, -1 if synthesised
  scores: jax.Array  # (K',) float32 per-candidate aggregation score
  clicks: jax.Array  # (K, 2) int32 (x, y) original-image pixels
  labels: jax.Array  # (K,) int32, 1 positive / 0 negative
  candidate_logits: jax.Array  # (K', M, M) float32 raw decoder logits
  candidate_iou: jax.Array  # (K',) float32 SAM IoU predictions
  agreement: jax.Array  # (H, W) float32 fraction of candidates covering it
  confidence: jax.Array  # () float32 mean pairwise IoU of candidates
  first_low_res_logits: jax.Array  # (M, M) float32 box-only logits (SAM)
  first_iou: jax.Array  # () float32 SAM IoU prediction of the first mask
  sam_mask: jax.Array  # (H, W) bool SAM baseline mask (box only)


def to_model_frame(xy: jax.Array, info: processing.ImageInfo) -> jax.Array:
  """(..., 2) (x, y) original pixels -> model-input pixels (apply_coords)."""
  (h, w), (rh, rw) = info.original_size, info.resized_size
  scale = jnp.array([rw / w, rh / h], jnp.float32)
  return xy.astype(jnp.float32) * scale


def first_decode(model: Sam, embedding: jax.Array, box_model: jax.Array):
  """Box-only, single-mask SAM.

  Args:
    embedding: (G, G, C) float32 image embedding.
    box_model: (4,) float32 box in the model frame.
  Returns:
    low-res logits (M, M) float32 and the IoU prediction () float32.
  """
  low, iou = model.decode(embedding[None], boxes=box_model[None, None])
  return low[0, 0, 0], iou[0, 0, 0]


def low_res_to_original(low_res: jax.Array, info: processing.ImageInfo,
                        m: int) -> jax.Array:
  """(..., M, M) low-res maps -> (..., H, W) at the original resolution.

  When the image is the low-res grid itself (a square M x M image, e.g. the
  paper's 256 x 256 protocol, where low-res logits "line up pixel-for-pixel
  with the labels"), the raw low-res values are returned unchanged, as the
  published code does for its masks; otherwise the profile's resampling
  (`info.profile`; SAM's bilinear round trip for "sam").
  """
  if (tuple(info.original_size) == (m, m)
      and tuple(info.resized_size) == (info.image_size, info.image_size)):
    return low_res
  return profiles.get(info.profile).to_original(low_res, info)


def low_res_masks(low_res_logits: jax.Array, info: processing.ImageInfo,
                  m: int) -> jax.Array:
  """(..., M, M) logits -> (..., H, W) bool masks under `info.profile`
  (`low_res_to_original` of the profile's scores, > 0; "sam": logits > 0)."""
  scores = profiles.get(info.profile).low_res_scores(low_res_logits)
  return low_res_to_original(scores, info, m) > 0


def first_probabilities(first_low_res_logits: jax.Array,
                        info: processing.ImageInfo) -> jax.Array:
  """(M, M) logits -> (H, W) probabilities via the profile's round trip
  (`info.profile`; "sam": the published one, sigmoid after resampling)."""
  return profiles.get(info.profile).probabilities(first_low_res_logits, info)


def binary_in_low_res_frame(binary: jax.Array, info: processing.ImageInfo,
                            m: int) -> jax.Array:
  """(H, W) bool -> (M, M) float32 0/1 in the low-res (padded) frame.

  Identity when the image is already the low-res grid (the paper's 256 x 256
  protocol); otherwise nearest-neighbour resize of the unpadded region.
  """
  s = info.image_size
  lh = math.ceil(info.resized_size[0] * m / s)
  lw = math.ceil(info.resized_size[1] * m / s)
  x = binary.astype(jnp.float32)
  if x.shape != (lh, lw):
    x = jax.image.resize(x, (lh, lw), method="nearest")
  return jnp.pad(x, ((0, m - lh), (0, m - lw)))


def simulate_clicks(probs: jax.Array, config: SimSamConfig, key: jax.Array,
                    ground_truth: Optional[jax.Array], box: jax.Array):
  """Runs the configured click strategy; see `clicks` for the contract."""
  strategy = CLICK_STRATEGIES.get(config.clicks)
  return strategy(probs, config.k, key, ground_truth,
                  box if config.clicks_in_box else None)


def decode_clicks(model: Sam, embedding: jax.Array, box_model: jax.Array,
                  clicks: jax.Array, labels: jax.Array,
                  mask_prompt: Optional[jax.Array], info: processing.ImageInfo):
  """ONE decoder call over K prompt sets {box, click, mask prompt}.

  Args:
    embedding: (G, G, C) image embedding, shared by all K prompt sets.
    box_model: (4,) box in the model frame.
    clicks: (K, 2) int32 (x, y) original pixels; labels: (K,) int32.
    mask_prompt: (M, M) float32 or None.
  Returns:
    candidate logits (K, M, M) float32 and IoU predictions (K,) float32.
  """
  k = clicks.shape[0]
  points = to_model_frame(clicks, info)[:, None, :]  # (K, 1, 2)
  boxes = jnp.broadcast_to(box_model, (k, 4))
  masks = None if mask_prompt is None else mask_prompt[None, None]  # shared
  low, iou = model.decode(embedding[None], points[None], labels[None, :, None],
                          boxes[None], masks)
  return low[0, :, 0], iou[0, :, 0]


def aggregate(candidate_logits: jax.Array, candidate_iou: jax.Array,
              config: SimSamConfig, ground_truth: Optional[jax.Array] = None
              ) -> tuple[Aggregation, jax.Array, jax.Array]:
  """Configured aggregation, plus low-res agreement map and confidence.

  `ground_truth` ((H, W) bool) is passed only to an aggregation registered
  with `needs_ground_truth=True`.
  """
  fn = AGGREGATIONS.get(config.aggregation)
  if AGGREGATIONS.declared(config.aggregation, "needs_ground_truth"):
    result = fn(candidate_logits, candidate_iou, ground_truth=ground_truth)
  else:
    result = fn(candidate_logits, candidate_iou)
  binary = candidate_logits > 0
  agreement = binary.astype(jnp.float32).mean(axis=0)
  return result, agreement, mean_pairwise_iou(binary)


def simsam_from_embedding(model: Sam, embedding: jax.Array, box: jax.Array,
                          info: processing.ImageInfo, config: SimSamConfig,
                          key: jax.Array,
                          ground_truth: Optional[jax.Array] = None) -> SimSamOutput:
  """The whole method on one image embedding (jit/vmap-safe).

  Args:
    model: SAM (merged inside the caller's jit).
    embedding: (G, G, C) float32 image embedding.
    box: (4,) float32 (x0, y0, x1, y1) in original-image pixels.
    info: static sizes of the image (`processing.ImageInfo`).
    config: static `SimSamConfig`.
    key: `jax.random` key for stochastic strategies.
    ground_truth: (H, W) bool, for strategies registered with
      `needs_ground_truth=True` (e.g. the `oracle` clicks).
  """
  first_low, first_iou = box_only(model, embedding, box, info)
  return simsam_after_first(model, embedding, box, info, config, key, first_low,
                            first_iou, ground_truth)


def box_only(model: Sam, embedding: jax.Array, box: jax.Array,
             info: processing.ImageInfo):
  """The SAM baseline (first stage): box in original pixels -> `first_decode`.

  Args:
    embedding: (G, G, C) float32; box: (4,) float32 (x0, y0, x1, y1) original
      pixels.
  Returns:
    low-res logits (M, M) float32 and the IoU prediction () float32.
  """
  box_model = to_model_frame(box.reshape(2, 2), info).reshape(4)
  return first_decode(model, embedding, box_model)


def simsam_after_first(model: Sam, embedding: jax.Array, box: jax.Array,
                       info: processing.ImageInfo, config: SimSamConfig,
                       key: jax.Array, first_low: jax.Array, first_iou: jax.Array,
                       ground_truth: Optional[jax.Array] = None) -> SimSamOutput:
  """`simsam_from_embedding` after the first stage (`box_only`), so that
  several SimSAM variants on one image share one box-only decode.

  Args: as `simsam_from_embedding`, plus first_low (M, M) float32 and
    first_iou () float32 from `box_only`.
  """
  m = model.config.mask_input_size
  box_model = to_model_frame(box.reshape(2, 2), info).reshape(4)
  probs = first_probabilities(first_low, info)
  binary = probs > 0.5
  clicks, labels = simulate_clicks(probs, config, key, ground_truth, box)
  mask_prompt = MASK_PROMPTS.get(config.mask_prompt)(
      first_low, binary_in_low_res_frame(binary, info, m))
  cand, cand_iou = decode_clicks(model, embedding, box_model, clicks, labels,
                                 mask_prompt, info)
  return finalize(cand, cand_iou, first_low, first_iou, clicks, labels, info, config,
                  ground_truth)


def finalize(cand: jax.Array, cand_iou: jax.Array, first_low: jax.Array,
             first_iou: jax.Array, clicks: jax.Array, labels: jax.Array,
             info: processing.ImageInfo, config: SimSamConfig,
             ground_truth: Optional[jax.Array] = None) -> SimSamOutput:
  """Aggregation and the maps at the original resolution.

  Args:
    cand: (K, M, M) decoded candidate logits; cand_iou: (K,). With
      `config.include_box_only_mask` the box-only mask is prepended here.
    first_low: (M, M) box-only logits; first_iou: ().
    clicks: (K, 2) int32; labels: (K,) int32.
    ground_truth: (H, W) bool or None, for an aggregation that needs it.
  """
  m = cand.shape[-1]
  if config.include_box_only_mask:
    cand = jnp.concatenate([first_low[None], cand], 0)
    cand_iou = jnp.concatenate([first_iou[None], cand_iou], 0)
  result, agreement, confidence = aggregate(cand, cand_iou, config, ground_truth)
  # Agreement is resampled like logits, then clipped back into [0, 1]; the
  # masks are the profile's scores (the logits for "sam") resampled, > 0.
  scores = profiles.get(info.profile).low_res_scores
  final, agreement_hw, sam = low_res_to_original(
      jnp.stack([scores(result.logits), agreement - 0.5, scores(first_low)]),
      info, m)
  return SimSamOutput(
      mask=final > 0, low_res_logits=result.logits, chosen=result.chosen,
      scores=result.scores, clicks=clicks, labels=labels, candidate_logits=cand,
      candidate_iou=cand_iou, agreement=jnp.clip(agreement_hw + 0.5, 0.0, 1.0),
      confidence=confidence, first_low_res_logits=first_low, first_iou=first_iou,
      sam_mask=sam > 0)

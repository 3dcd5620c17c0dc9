"""Per-image segmentation metrics: DSC, IoU and NSD (surface Dice).

The paper (Sec. 3) reports the Dice similarity coefficient (DSC) and the
normalised surface distance (NSD), both at 256 x 256, as the authors' code
computes them:

* DSC = 2|A n B| / (|A| + |B|) of the binarised masks.
* NSD = surface Dice at tolerance 2.0 with spacing (1, 1), i.e. 2 PIXELS at
  256 x 256, from DeepMind's `surface-distance` package (PyPI
  `surface-distance`, import `surface_distance`):
  `compute_surface_dice_at_tolerance(compute_surface_distances(gt, pred,
  spacing), tolerance)`. `nsd` calls exactly those two functions; there is
  no reimplementation of the algorithm here.
* IoU = |A n B| / |A u B| is not in the paper's table; it is reported
  alongside because it is the quantity SimSAM's aggregation ranks by.

How `surface_distance` defines the surface, which `nsd` inherits: the contour
lives on the grid of pixel CORNERS. A corner is a surface element when its
2 x 2 pixel neighbourhood is mixed; its length is looked up from that
neighbourhood (a straight edge counts one pixel side, a convex or concave
corner half a pixel diagonal, a saddle a full diagonal). Distances are
Euclidean between corners (`distance_transform_edt` with `sampling=spacing`)
and an element counts as overlapping when its distance to the other contour
is <= tolerance. Outside the image everything is background, so a mask that
touches the image border has a contour along that border.

Empty masks, what the published pipeline gives and what we do
(`EmptyMaskPolicy`):

* Both masks empty. DSC is 0/0; the published DSC formula gives NaN, and
  `surface_distance` gives NaN too (both surfaces are empty, so
  `compute_surface_dice_at_tolerance` divides 0.0 by 0.0, with a numpy
  "invalid value" RuntimeWarning). The default policy (`"nan"`,
  `PUBLISHED_POLICY`) returns NaN for DSC, IoU and NSD, and
  `simsam_jax.evaluation.statistics.summarize` leaves such images out of the
  mean and std (nan-aware) and counts them in `n_nan`. Policy `"one"` scores
  the agreement on "nothing there" as a perfect 1.0 for all three metrics.
* Exactly one mask empty. DSC and IoU are exactly 0 by their formulas. With
  numpy 1.x, `surface_distance` gives NSD 0.0 (the empty side has no
  surface; every element of the other is at infinite distance). With the
  numpy 2 installed here it raises instead: `compute_surface_distances`
  builds the infinite distance map with `np.Inf`, an alias removed in
  numpy 2.0, so the call dies with "AttributeError: `np.Inf` was removed in
  the NumPy 2.0 release. Use `np.inf` instead." (numpy 2.4 here). That code
  path is reached ONLY when one mask is empty (any non-empty mask has a
  contour). We therefore never call `surface_distance` with an empty mask:
  the policy returns 0.0 for all three metrics, which is exactly the
  numpy-1.x library value (tested with a scoped `np.Inf` shim in
  `tests/test_metrics.py`). No monkeypatching of numpy or of
  `surface_distance` happens at run time.

Deliberate deviations and choices, with their reasons:

* Inputs must be bool numpy arrays of the same 2-D shape; anything else raises
  `ValueError` naming the shapes (or dtype). Binarisation (`> 0`, `> 127`,
  logits `> 0`) is the caller's business and differs between protocol modes,
  so it is not guessed here.
* `surface_distance` reaches `correlate` and `distance_transform_edt` through
  the deprecated `scipy.ndimage.filters` / `scipy.ndimage.morphology`
  namespaces; scipy (1.17 here) still serves them but emits a
  DeprecationWarning on every call. `nsd` silences exactly those two warnings
  (and nothing else) so that evaluation logs stay readable. Both namespaces
  are slated for removal in SciPy 2.0; `surface_distance` will then fail on
  import of those attributes and needs a version pin or a patch.
* All metrics are returned as Python floats in [0, 1] (or NaN), never
  percent; the paper's tables are in percent (multiply by 100 when printing).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import surface_distance

# The paper's NSD settings: 2 pixels at 256 x 256 (spacing (1, 1)).
DEFAULT_TOLERANCE = 2.0
DEFAULT_SPACING = (1.0, 1.0)

METRIC_NAMES = ("dsc", "iou", "nsd")

_BOTH_EMPTY_OPTIONS = {
    "nan": ("NaN: the image is undefined for the metric (published DSC formula "
            "and surface_distance both give 0/0 = NaN); nan-aware summaries "
            "exclude it and count it in n_nan"),
    "one": ("1.0: two empty masks agree perfectly (no structure predicted "
            "where there is none)"),
}

# Value of DSC, IoU and NSD when exactly one of the two masks is empty.
ONE_EMPTY_VALUE = 0.0


@dataclasses.dataclass(frozen=True)
class EmptyMaskPolicy:
  """What DSC, IoU and NSD return when one or both masks are empty.

  Attributes:
    both_empty: `"nan"` (default, as published: 0/0 is NaN, excluded by
      nan-aware averaging) or `"one"` (perfect agreement, 1.0). Applies to
      DSC, IoU and NSD alike.

  When exactly one mask is empty every metric is 0.0 (`one_empty`), which is
  what the formulas (DSC, IoU) and `surface_distance` under numpy 1.x (NSD)
  give; it is not configurable.
  """

  both_empty: str = "nan"

  def __post_init__(self):
    value = str(self.both_empty).lower()
    if value not in _BOTH_EMPTY_OPTIONS:
      raise ValueError(f"both_empty must be one of {sorted(_BOTH_EMPTY_OPTIONS)}"
                       f", got {self.both_empty!r}")
    object.__setattr__(self, "both_empty", value)

  @property
  def name(self) -> str:
    """Short name, the `both_empty` option (`"nan"` or `"one"`)."""
    return self.both_empty

  @property
  def both_empty_value(self) -> float:
    """Metric value when both masks are empty: NaN or 1.0."""
    return math.nan if self.both_empty == "nan" else 1.0

  @property
  def one_empty(self) -> float:
    """Metric value when exactly one mask is empty: always 0.0."""
    return ONE_EMPTY_VALUE


# The published behaviour, and the default everywhere.
PUBLISHED_POLICY = EmptyMaskPolicy("nan")
BOTH_EMPTY_IS_ONE = EmptyMaskPolicy("one")
DEFAULT_POLICY = PUBLISHED_POLICY

PolicyLike = Union[EmptyMaskPolicy, str]


def as_policy(policy: PolicyLike) -> EmptyMaskPolicy:
  """Returns `policy` as an `EmptyMaskPolicy`; strings name `both_empty`.

  Args:
    policy: an `EmptyMaskPolicy`, or `"nan"` / `"one"`.

  Raises:
    ValueError: on an unknown name or type.
  """
  if isinstance(policy, EmptyMaskPolicy):
    return policy
  if isinstance(policy, str):
    return EmptyMaskPolicy(policy)
  raise ValueError(f"policy must be an EmptyMaskPolicy or one of "
                   f"{sorted(_BOTH_EMPTY_OPTIONS)}, got {policy!r}")


def policy_description(policy: PolicyLike = DEFAULT_POLICY) -> Dict[str, object]:
  """JSON-serialisable description of an empty-mask policy for results.json.

  Args:
    policy: an `EmptyMaskPolicy` or its name.

  Returns:
    A dict of plain Python values (NaN is written as the string "nan", which
    strict JSON accepts): `name`, `both_empty` (value as a string),
    `both_empty_meaning`, `exactly_one_empty` (0.0), `metrics` (the metrics it
    applies to), `is_published` (whether it is the published behaviour) and
    `aggregation` (how summaries treat NaN).
  """
  policy = as_policy(policy)
  return {
      "name": policy.name,
      "both_empty": "nan" if policy.both_empty == "nan" else 1.0,
      "both_empty_meaning": _BOTH_EMPTY_OPTIONS[policy.both_empty],
      "exactly_one_empty": ONE_EMPTY_VALUE,
      "exactly_one_empty_meaning": (
          "0.0 for DSC and IoU (exact by their formulas) and NSD (the value "
          "surface_distance returns under numpy 1.x; it is not called on empty "
          "masks because it raises AttributeError on np.Inf under numpy 2)"),
      "metrics": list(METRIC_NAMES),
      "is_published": policy == PUBLISHED_POLICY,
      "aggregation": ("mean and population std (ddof=0) over images, "
                      "nan-aware: NaN images are excluded and counted as "
                      "n_nan"),
  }


# ----------------------------------------------------------------------------
# Input checks.
# ----------------------------------------------------------------------------


def _check_masks(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Checks that `pred` and `gt` are bool numpy arrays of one 2-D shape."""
  for name, mask in (("pred", pred), ("gt", gt)):
    if not isinstance(mask, np.ndarray):
      raise ValueError(f"{name} must be a numpy array, got {type(mask)}")
  if pred.ndim != 2 or gt.ndim != 2:
    raise ValueError(f"pred and gt must be 2-D (H, W) masks, got shapes "
                     f"pred {pred.shape} and gt {gt.shape}")
  if pred.shape != gt.shape:
    raise ValueError(f"pred and gt must have the same shape, got pred "
                     f"{pred.shape} and gt {gt.shape}")
  for name, mask in (("pred", pred), ("gt", gt)):
    if mask.dtype != np.bool_:
      raise ValueError(f"{name} must be a bool mask (binarise first), got dtype "
                       f"{mask.dtype} (shape {mask.shape})")
  return pred, gt


def _check_spacing(spacing: Sequence[float]) -> Tuple[float, float]:
  """Returns `spacing` as two positive finite floats (row, column)."""
  try:
    row, col = (float(value) for value in spacing)
  except (TypeError, ValueError) as error:
    raise ValueError(f"spacing must be a (row, column) pair of numbers, got "
                     f"{spacing!r}") from error
  if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
    raise ValueError(f"spacing must be positive and finite, got {(row, col)}")
  return row, col


def _check_tolerance(tolerance: float) -> float:
  """Returns `tolerance` as a finite float >= 0."""
  tolerance = float(tolerance)
  if not (math.isfinite(tolerance) and tolerance >= 0):
    raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
  return tolerance


def _empty_value(pred: np.ndarray, gt: np.ndarray,
                 policy: EmptyMaskPolicy) -> Union[float, None]:
  """The policy value when a mask is empty, else None."""
  pred_empty = not pred.any()
  gt_empty = not gt.any()
  if pred_empty and gt_empty:
    return policy.both_empty_value
  if pred_empty or gt_empty:
    return policy.one_empty
  return None


# ----------------------------------------------------------------------------
# Metrics.
# ----------------------------------------------------------------------------


def dice(pred: np.ndarray, gt: np.ndarray,
         policy: PolicyLike = DEFAULT_POLICY) -> float:
  """Dice similarity coefficient 2|A n B| / (|A| + |B|).

  Args:
    pred: (H, W) bool predicted mask.
    gt: (H, W) bool ground-truth mask, same shape.
    policy: empty-mask policy (`EmptyMaskPolicy` or `"nan"` / `"one"`).

  Returns:
    DSC in [0, 1] as a Python float; NaN or 1.0 when both masks are empty
    (per `policy`), 0.0 when exactly one is.

  Raises:
    ValueError: if the masks are not bool numpy arrays of one 2-D shape.
  """
  pred, gt = _check_masks(pred, gt)
  empty = _empty_value(pred, gt, as_policy(policy))
  if empty is not None:
    return empty
  intersection = int(np.count_nonzero(pred & gt))
  total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
  return 2.0 * intersection / total


def iou(pred: np.ndarray, gt: np.ndarray,
        policy: PolicyLike = DEFAULT_POLICY) -> float:
  """Intersection over union |A n B| / |A u B| (Jaccard index).

  Args:
    pred: (H, W) bool predicted mask.
    gt: (H, W) bool ground-truth mask, same shape.
    policy: empty-mask policy (`EmptyMaskPolicy` or `"nan"` / `"one"`).

  Returns:
    IoU in [0, 1] as a Python float; NaN or 1.0 when both masks are empty
    (per `policy`), 0.0 when exactly one is.

  Raises:
    ValueError: if the masks are not bool numpy arrays of one 2-D shape.
  """
  pred, gt = _check_masks(pred, gt)
  empty = _empty_value(pred, gt, as_policy(policy))
  if empty is not None:
    return empty
  intersection = int(np.count_nonzero(pred & gt))
  union = int(np.count_nonzero(pred | gt))
  return intersection / union


def nsd(pred: np.ndarray, gt: np.ndarray,
        tolerance: float = DEFAULT_TOLERANCE,
        spacing: Sequence[float] = DEFAULT_SPACING,
        policy: PolicyLike = DEFAULT_POLICY) -> float:
  """Normalised surface distance (surface Dice at `tolerance`).

  Calls DeepMind's `surface_distance.compute_surface_distances(gt, pred,
  spacing)` then `compute_surface_dice_at_tolerance(..., tolerance)`, as the
  paper does (tolerance 2.0, spacing (1, 1) at 256 x 256). Empty masks never
  reach `surface_distance`; they get the policy value (see the module
  docstring).

  Args:
    pred: (H, W) bool predicted mask.
    gt: (H, W) bool ground-truth mask, same shape.
    tolerance: largest contour-to-contour distance that counts as overlap, in
      the units of `spacing` (pixels for (1, 1), mm for a spacing in mm);
      finite, >= 0. Distances equal to the tolerance count.
    spacing: (row, column) pixel size, i.e. (dy, dx), both > 0.
      Tolerance 2 with spacing (0.5, 0.5) is tolerance 4 with (1, 1).
    policy: empty-mask policy (`EmptyMaskPolicy` or `"nan"` / `"one"`).

  Returns:
    NSD in [0, 1] as a Python float; NaN or 1.0 when both masks are empty
    (per `policy`), 0.0 when exactly one is.

  Raises:
    ValueError: on masks that are not bool numpy arrays of one 2-D shape, a
      negative or non-finite tolerance, or a bad spacing.
  """
  pred, gt = _check_masks(pred, gt)
  tolerance = _check_tolerance(tolerance)
  spacing = _check_spacing(spacing)
  empty = _empty_value(pred, gt, as_policy(policy))
  if empty is not None:
    return empty
  with warnings.catch_warnings():
    # surface_distance uses scipy.ndimage.filters.correlate and
    # scipy.ndimage.morphology.distance_transform_edt (deprecated namespaces).
    warnings.filterwarnings(
        "ignore", category=DeprecationWarning,
        message=r"Please import `(correlate|distance_transform_edt)` from the "
        r"`scipy\.ndimage` namespace")
    distances = surface_distance.compute_surface_distances(gt, pred, spacing)
  return float(surface_distance.compute_surface_dice_at_tolerance(
      distances, tolerance))


def compute_metrics(pred: np.ndarray, gt: np.ndarray,
                    tolerance: float = DEFAULT_TOLERANCE,
                    spacing: Sequence[float] = DEFAULT_SPACING,
                    policy: PolicyLike = DEFAULT_POLICY) -> Dict[str, float]:
  """DSC, IoU and NSD of one predicted mask against its ground truth.

  Args:
    pred: (H, W) bool predicted mask (256 x 256 in the published protocol).
    gt: (H, W) bool ground-truth mask, same shape.
    tolerance: NSD tolerance in the units of `spacing` (paper: 2.0 pixels).
    spacing: (row, column) pixel size for NSD (paper: (1, 1)).
    policy: empty-mask policy (`EmptyMaskPolicy` or `"nan"` / `"one"`).

  Returns:
    {"dsc": float, "iou": float, "nsd": float}, each in [0, 1] or NaN.

  Raises:
    ValueError: as `dice` and `nsd`.
  """
  policy = as_policy(policy)
  return {
      "dsc": dice(pred, gt, policy),
      "iou": iou(pred, gt, policy),
      "nsd": nsd(pred, gt, tolerance, spacing, policy),
  }

"""Tests of simsam_jax.evaluation.metrics.

References:
* DeepMind's `surface_distance` itself (what the paper computes NSD with),
  called directly.
* A slow brute-force surface Dice written here from `surface_distance`'s own
  definition (surface elements on the grid of pixel corners, contour lengths
  from the 2 x 2 neighbourhood, all-pairs Euclidean distances instead of a
  distance transform), so the metric is also checked against an independent
  implementation of the same definition.
* Cases computed by hand (squares shifted by 1 and 5 pixels, disjoint squares).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import surface_distance
from scipy import ndimage, spatial

from simsam_jax.evaluation import metrics
from simsam_jax.evaluation.metrics import (BOTH_EMPTY_IS_ONE, PUBLISHED_POLICY,
                                           EmptyMaskPolicy, compute_metrics, dice,
                                           iou, nsd, policy_description)


# ----------------------------------------------------------------------------
# References.
# ----------------------------------------------------------------------------


def _library_nsd(pred, gt, tolerance, spacing):
  """NSD exactly as the paper's code calls `surface_distance`."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    distances = surface_distance.compute_surface_distances(gt, pred, spacing)
  return float(surface_distance.compute_surface_dice_at_tolerance(distances,
                                                                 tolerance))


def _surfels(mask, spacing):
  """Surface elements of `mask`: corner positions (in spacing units), lengths.

  Corner (i, j), i in [0, H], j in [0, W], is the top-left corner of pixel
  (i, j); its neighbourhood is pixels (i-1, j-1), (i-1, j), (i, j-1), (i, j),
  background outside the image. Lengths: one inside or three inside -> half a
  pixel diagonal; two side by side in a row -> one pixel width; two one above
  the other -> one pixel height; two on a diagonal -> a full diagonal.
  """
  row_spacing, col_spacing = spacing
  padded = np.pad(mask, 1)
  top_left, top_right = padded[:-1, :-1], padded[:-1, 1:]
  bottom_left, bottom_right = padded[1:, :-1], padded[1:, 1:]
  count = (top_left.astype(int) + top_right + bottom_left + bottom_right)
  half_diagonal = 0.5 * math.hypot(row_spacing, col_spacing)
  lengths = np.zeros(count.shape)
  lengths[(count == 1) | (count == 3)] = half_diagonal
  two = count == 2
  lengths[two & ((top_left & top_right) | (bottom_left & bottom_right))] = col_spacing
  lengths[two & ((top_left & bottom_left) | (top_right & bottom_right))] = row_spacing
  lengths[two & ((top_left & bottom_right) | (top_right & bottom_left))] = (
      2 * half_diagonal)
  border = (count > 0) & (count < 4)
  rows, cols = np.nonzero(border)
  points = np.stack([rows * row_spacing, cols * col_spacing], axis=-1)
  return points, lengths[border]


def _brute_force_nsd(pred, gt, tolerance, spacing=(1.0, 1.0)):
  """Surface Dice from the definition, with all-pairs distances."""
  points_pred, lengths_pred = _surfels(pred, spacing)
  points_gt, lengths_gt = _surfels(gt, spacing)
  distances = spatial.distance.cdist(points_gt, points_pred)
  gt_to_pred = distances.min(axis=1)
  pred_to_gt = distances.min(axis=0)
  overlap = (lengths_gt[gt_to_pred <= tolerance].sum()
             + lengths_pred[pred_to_gt <= tolerance].sum())
  return overlap / (lengths_gt.sum() + lengths_pred.sum())


def _square(shape, top, left, side):
  mask = np.zeros(shape, dtype=bool)
  mask[top:top + side, left:left + side] = True
  return mask


def _blob(rng, shape, sigma, threshold=0.0):
  """A random smooth blob mask (non-empty, may touch the image border)."""
  while True:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    mask = field > threshold
    if mask.any():
      return mask


# ----------------------------------------------------------------------------
# Hand-computed cases.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,top,left,side", [((16, 16), 3, 4, 5),
                                                  ((256, 256), 40, 60, 100),
                                                  ((8, 8), 0, 0, 8)])
def test_identical_masks_score_one(shape, top, left, side):
  mask = _square(shape, top, left, side)
  assert compute_metrics(mask, mask.copy()) == {"dsc": 1.0, "iou": 1.0, "nsd": 1.0}


def test_square_shifted_by_one_pixel():
  gt = _square((40, 40), 10, 10, 10)
  pred = _square((40, 40), 10, 11, 10)
  # Every contour element is within 1 pixel of the other contour.
  assert nsd(pred, gt, tolerance=2.0) == 1.0
  assert dice(pred, gt) == pytest.approx(2 * 90 / 200, abs=1e-15)
  assert iou(pred, gt) == pytest.approx(90 / 110, abs=1e-15)
  # At tolerance 0 only the shared top and bottom edges count.
  assert nsd(pred, gt, tolerance=0.0) == pytest.approx(
      _brute_force_nsd(pred, gt, 0.0), abs=1e-12)


def test_square_shifted_by_five_pixels_hand_computed():
  """10 x 10 square shifted right by 5, tolerance 2: NSD is exactly 1/2.

  Contour of A on the corner grid: rows 10 and 20, columns 10..20; 36 straight
  elements of length 1 and 4 corners of length sqrt(2)/2, total 36 + 2 sqrt(2).
  Within 2 pixels of B's contour (columns 15..25): the top and bottom edges at
  columns 13..19 (7 + 7, length 1) plus the corners at column 20 (2 x
  sqrt(2)/2), and the right edge at rows 11, 12, 18, 19 (4); the left edge is
  5 away. That is 18 + sqrt(2), half of the total, and B is A's mirror image.
  """
  gt = _square((40, 40), 10, 10, 10)
  pred = _square((40, 40), 10, 15, 10)
  expected = (18 + math.sqrt(2)) / (36 + 2 * math.sqrt(2))
  assert expected == pytest.approx(0.5, abs=1e-15)
  assert nsd(pred, gt, tolerance=2.0) == pytest.approx(expected, abs=1e-12)
  assert _brute_force_nsd(pred, gt, 2.0) == pytest.approx(expected, abs=1e-12)
  assert dice(pred, gt) == pytest.approx(0.5, abs=1e-15)
  assert iou(pred, gt) == pytest.approx(1 / 3, abs=1e-15)


def test_disjoint_far_masks_score_zero():
  gt = _square((64, 64), 2, 2, 10)
  pred = _square((64, 64), 50, 50, 10)
  assert compute_metrics(pred, gt) == {"dsc": 0.0, "iou": 0.0, "nsd": 0.0}


def test_dice_and_iou_hand_cases():
  gt = np.zeros((4, 4), dtype=bool)
  gt[0, :3] = True          # 3 pixels
  pred = np.zeros((4, 4), dtype=bool)
  pred[0, 1:] = True        # 3 pixels, 2 shared
  assert dice(pred, gt) == pytest.approx(4 / 6, abs=1e-15)
  assert iou(pred, gt) == pytest.approx(2 / 4, abs=1e-15)
  whole = np.ones((4, 4), dtype=bool)
  assert dice(gt, whole) == pytest.approx(2 * 3 / 19, abs=1e-15)
  assert iou(gt, whole) == pytest.approx(3 / 16, abs=1e-15)
  assert isinstance(dice(pred, gt), float) and isinstance(iou(pred, gt), float)


# ----------------------------------------------------------------------------
# Against surface_distance and the brute force.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_nsd_matches_surface_distance_and_brute_force_on_random_masks(seed):
  rng = np.random.default_rng(seed)
  shape = (48, 40)
  gt = _blob(rng, shape, sigma=3.0)
  pred = _blob(rng, shape, sigma=3.0) if seed % 2 else ndimage.binary_dilation(gt)
  for tolerance in (0.0, 1.0, 2.0, 3.5):
    value = nsd(pred, gt, tolerance=tolerance)
    assert value == _library_nsd(pred, gt, tolerance, (1.0, 1.0))
    assert value == pytest.approx(_brute_force_nsd(pred, gt, tolerance), abs=1e-12)
    assert value == pytest.approx(nsd(gt, pred, tolerance=tolerance), abs=1e-12)
    assert isinstance(value, float) and 0.0 <= value <= 1.0
  assert dice(pred, gt) == pytest.approx(
      surface_distance.compute_dice_coefficient(gt, pred), abs=1e-15)
  union = np.count_nonzero(pred | gt)
  assert iou(pred, gt) == pytest.approx(np.count_nonzero(pred & gt) / union,
                                        abs=1e-15)


def test_nsd_on_noisy_masks_matches_brute_force():
  """Salt-and-pepper masks: every neighbourhood code, many saddles."""
  rng = np.random.default_rng(7)
  gt = rng.random((24, 24)) < 0.5
  pred = rng.random((24, 24)) < 0.3
  for tolerance in (0.0, 1.0, 2.0):
    assert nsd(pred, gt, tolerance) == pytest.approx(
        _brute_force_nsd(pred, gt, tolerance), abs=1e-12)


def test_nsd_at_paper_resolution():
  rng = np.random.default_rng(3)
  gt = _blob(rng, (256, 256), sigma=12.0)
  pred = ndimage.binary_erosion(gt, iterations=2) | _square((256, 256), 0, 0, 20)
  value = nsd(pred, gt)
  assert value == _library_nsd(pred, gt, 2.0, (1.0, 1.0))
  assert value == pytest.approx(_brute_force_nsd(pred, gt, 2.0), abs=1e-12)


def test_border_touching_masks():
  """Outside the image is background: a mask on the border has a contour there."""
  shape = (30, 30)
  gt = _square(shape, 0, 0, 12)              # touches top and left borders
  pred = _square(shape, 0, 3, 12)
  pred[18:, 20:] = True                      # touches bottom and right borders
  for tolerance in (1.0, 2.0, 4.0):
    value = nsd(pred, gt, tolerance)
    assert value == pytest.approx(_brute_force_nsd(pred, gt, tolerance), abs=1e-12)
    # Embedding in a larger, empty canvas changes nothing.
    embedded_gt = np.pad(gt, 5)
    embedded_pred = np.pad(pred, 5)
    assert nsd(embedded_pred, embedded_gt, tolerance) == pytest.approx(value,
                                                                       abs=1e-12)
  whole = np.ones(shape, dtype=bool)
  assert nsd(whole, whole) == 1.0
  without_top_rows = whole.copy()
  without_top_rows[:3] = False
  # The top edge of each is 3 pixels from the other's; sides and bottom agree.
  assert nsd(without_top_rows, whole) == pytest.approx(
      _brute_force_nsd(without_top_rows, whole, 2.0), abs=1e-12)
  assert 0.0 < nsd(without_top_rows, whole) < 1.0


def test_spacing_in_mm():
  rng = np.random.default_rng(11)
  gt = _blob(rng, (40, 40), sigma=3.0)
  pred = _blob(rng, (40, 40), sigma=3.0)
  in_mm = nsd(pred, gt, tolerance=2.0, spacing=(0.5, 0.5))
  in_pixels = nsd(pred, gt, tolerance=4.0, spacing=(1.0, 1.0))
  assert in_mm == pytest.approx(in_pixels, abs=1e-12)
  assert in_mm == _library_nsd(pred, gt, 2.0, (0.5, 0.5))
  # Anisotropic spacing: (row, column) order as surface_distance.
  anisotropic = nsd(pred, gt, tolerance=2.5, spacing=(0.7, 1.3))
  assert anisotropic == pytest.approx(
      _brute_force_nsd(pred, gt, 2.5, spacing=(0.7, 1.3)), abs=1e-12)
  assert anisotropic == _library_nsd(pred, gt, 2.5, (0.7, 1.3))
  assert anisotropic != pytest.approx(nsd(pred, gt, 2.5, spacing=(1.3, 0.7)),
                                      abs=1e-6)


def test_nsd_lets_no_scipy_deprecation_warning_through():
  gt = _square((20, 20), 3, 3, 8)
  pred = _square((20, 20), 4, 3, 8)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert nsd(pred, gt) == 1.0


# ----------------------------------------------------------------------------
# Empty masks.
# ----------------------------------------------------------------------------


def test_default_policy_is_published_nan():
  assert metrics.DEFAULT_POLICY == PUBLISHED_POLICY == EmptyMaskPolicy("nan")
  empty = np.zeros((16, 16), dtype=bool)
  values = compute_metrics(empty, empty.copy())
  assert set(values) == {"dsc", "iou", "nsd"}
  assert all(math.isnan(v) for v in values.values())


@pytest.mark.parametrize("policy", [PUBLISHED_POLICY, BOTH_EMPTY_IS_ONE, "nan", "one",
                                    "NaN"])
def test_empty_mask_policies(policy):
  empty = np.zeros((16, 16), dtype=bool)
  square = _square((16, 16), 4, 4, 5)
  both = compute_metrics(empty, empty, policy=policy)
  if metrics.as_policy(policy).both_empty == "one":
    assert both == {"dsc": 1.0, "iou": 1.0, "nsd": 1.0}
  else:
    assert all(math.isnan(value) for value in both.values())
  # Exactly one empty: 0 for every metric, whatever the policy.
  assert compute_metrics(empty, square, policy=policy) == {
      "dsc": 0.0, "iou": 0.0, "nsd": 0.0}
  assert compute_metrics(square, empty, policy=policy) == {
      "dsc": 0.0, "iou": 0.0, "nsd": 0.0}


def test_surface_distance_on_empty_masks(monkeypatch):
  """What the library does, and that our policy values equal it."""
  empty = np.zeros((16, 16), dtype=bool)
  square = _square((16, 16), 4, 4, 5)
  # Both empty: 0/0 -> NaN (numpy warns about the invalid division).
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    assert math.isnan(_library_nsd(empty, empty, 2.0, (1.0, 1.0)))
  # Exactly one empty: numpy 2 removed `np.Inf`, which the library needs here.
  if not hasattr(np, "Inf"):
    with pytest.raises(AttributeError, match="Inf"):
      _library_nsd(square, empty, 2.0, (1.0, 1.0))

  class NumpyWithInf:
    """numpy with the removed alias, seen only by surface_distance.metrics."""
    Inf = np.inf

    def __getattr__(self, name):
      return getattr(np, name)

  monkeypatch.setattr(surface_distance.metrics, "np", NumpyWithInf())
  assert _library_nsd(square, empty, 2.0, (1.0, 1.0)) == PUBLISHED_POLICY.one_empty
  assert _library_nsd(empty, square, 2.0, (1.0, 1.0)) == 0.0


def test_policy_description_is_json_ready():
  for policy, both in ((PUBLISHED_POLICY, "nan"), (BOTH_EMPTY_IS_ONE, 1.0)):
    description = policy_description(policy)
    json.dumps(description, allow_nan=False)
    assert description["name"] == policy.name
    assert description["both_empty"] == both
    assert description["exactly_one_empty"] == 0.0
    assert description["metrics"] == ["dsc", "iou", "nsd"]
    assert description["is_published"] == (policy == PUBLISHED_POLICY)
  assert policy_description("one") == policy_description(BOTH_EMPTY_IS_ONE)
  assert policy_description() == policy_description(PUBLISHED_POLICY)


def test_bad_policy():
  with pytest.raises(ValueError, match="both_empty"):
    EmptyMaskPolicy("zero")
  with pytest.raises(ValueError):
    metrics.as_policy(1.0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    PUBLISHED_POLICY.both_empty = "one"


# ----------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("function", [dice, iou, nsd, compute_metrics])
def test_bad_shapes_raise(function):
  a = np.zeros((8, 8), dtype=bool)
  with pytest.raises(ValueError, match=r"\(8, 8\).*\(8, 9\)"):
    function(a, np.zeros((8, 9), dtype=bool))
  with pytest.raises(ValueError, match=r"\(2, 8, 8\)"):
    function(np.zeros((2, 8, 8), dtype=bool), np.zeros((2, 8, 8), dtype=bool))
  with pytest.raises(ValueError, match=r"\(8,\)"):
    function(np.zeros(8, dtype=bool), a)
  with pytest.raises(ValueError, match="bool"):
    function(a.astype(np.uint8), a)
  with pytest.raises(ValueError, match="numpy array"):
    function(a.tolist(), a)


def test_bad_tolerance_and_spacing_raise():
  a = _square((8, 8), 2, 2, 3)
  for tolerance in (-1.0, math.nan, math.inf):
    with pytest.raises(ValueError, match="tolerance"):
      nsd(a, a, tolerance=tolerance)
  for spacing in ((1.0,), (1.0, 0.0), (1.0, -2.0), (1.0, math.nan), "ab"):
    with pytest.raises(ValueError, match="spacing"):
      nsd(a, a, spacing=spacing)

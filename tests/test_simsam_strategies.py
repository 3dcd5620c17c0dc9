"""Known-answer tests of the SimSAM strategies (clicks, aggregations, mask
prompts), their registries and `SimSamConfig.validate`.

Everything but one test runs the pure strategy functions on hand-made inputs
whose answer is known (or computed by a brute-force numpy reference). The
registry test registers a new click strategy and runs it end to end through
`SimSam` on a random `tiny` model, then unregisters it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from simsam_jax import processing, synthetic
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import (AGGREGATIONS, CLICK_STRATEGIES, MASK_PROMPTS, SimSam,
                               SimSamConfig, mean_pairwise_iou, pairwise_iou)
from simsam_jax.simsam import aggregation as agg
from simsam_jax.simsam import clicks as clk
from simsam_jax.simsam import mask_prompts as mp
from simsam_jax.simsam.registry import Registry

KEY = jax.random.key(0)
H, W = 7, 9  # odd, non-square

distance_to_outside = jax.jit(clk._distance_to_outside)


def _reference_topk(probs: np.ndarray, k: int, allowed=None):
  """Brute force: sort by error descending, then by flat index ascending."""
  err = (0.5 - np.abs(probs.astype(np.float64) - 0.5)).reshape(-1)
  idx = np.arange(err.size)
  if allowed is not None:
    keep = allowed.reshape(-1)
    err, idx = err[keep], idx[keep]
  order = np.lexsort((idx, -err))[:k]
  flat = idx[order]
  w = probs.shape[1]
  xy = np.stack([flat % w, flat // w], -1)
  labels = 1 - (probs.reshape(-1)[flat] > 0.5).astype(np.int64)
  return xy, labels


def _np_box_mask(shape, box):
  ys, xs = np.mgrid[:shape[0], :shape[1]]
  x0, y0, x1, y1 = box
  return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def _np_iou(a: np.ndarray, b: np.ndarray) -> float:
  union = np.logical_or(a, b).sum()
  return 0.0 if union == 0 else np.logical_and(a, b).sum() / union


def _brute_pairwise(masks: np.ndarray) -> np.ndarray:
  k = masks.shape[0]
  out = np.zeros((k, k))
  for i in range(k):
    for j in range(k):
      out[i, j] = _np_iou(masks[i], masks[j])
  return out


def _logits_of(masks: np.ndarray, seed: int = 0) -> np.ndarray:
  """Float logits whose > 0 is `masks`, with varied magnitudes."""
  rng = np.random.default_rng(seed)
  mag = rng.uniform(0.1, 5.0, masks.shape).astype(np.float32)
  return np.where(masks, mag, -mag).astype(np.float32)


# -- error map and top-k -------------------------------------------------------


def test_error_map_formula():
  p = np.array([0.0, 0.1, 0.25, 0.5, 0.625, 0.9, 1.0], np.float32)
  want = np.array([0.0, 0.1, 0.25, 0.5, 0.375, 0.1, 0.0], np.float32)
  np.testing.assert_allclose(np.asarray(clk.error_map(jnp.asarray(p))), want, atol=1e-7)
  rng = np.random.default_rng(0)
  p = rng.uniform(0, 1, (H, W)).astype(np.float32)
  e = np.asarray(clk.error_map(jnp.asarray(p)))
  assert e.shape == (H, W)
  np.testing.assert_allclose(e, np.where(p > 0.5, 1 - p, p), atol=1e-6)
  assert e.min() >= 0 and e.max() <= 0.5


def _designed_map() -> np.ndarray:
  """7 x 9 map of confident pixels with six known uncertain ones."""
  p = np.where(np.indices((H, W)).sum(0) % 2 == 0, 0.03125, 0.96875).astype(np.float32)
  # (row, col): p  -> error; all dyadic, so the errors are exact.
  p[4, 7] = 0.5  # e 0.5, p > 0.5 False -> label 1    flat 43
  p[6, 0] = 0.5625  # e 0.4375 -> label 0    flat 54
  p[0, 8] = 0.375  # e 0.375 -> label 1    flat 8  (tie, lower index first)
  p[5, 3] = 0.625  # e 0.375 -> label 0    flat 48
  p[2, 2] = 0.75  # e 0.25 -> label 0     flat 20 (tie with flat 56)
  p[6, 2] = 0.25  # e 0.25 -> label 1     flat 56
  return p


def test_topk_known_answer():
  p = _designed_map()
  xy, labels = clk.topk_clicks(jnp.asarray(p), 6, KEY)
  assert xy.shape == (6, 2) and xy.dtype == jnp.int32
  assert labels.shape == (6,) and labels.dtype == jnp.int32
  # (x, y) = (col, row); order: error descending, ties by lower flat index.
  want_xy = [(7, 4), (0, 6), (8, 0), (3, 5), (2, 2), (2, 6)]
  np.testing.assert_array_equal(np.asarray(xy), want_xy)
  np.testing.assert_array_equal(np.asarray(labels), [1, 0, 1, 0, 0, 1])
  # x, y = idx % W, idx // W.
  flat = np.asarray(xy)[:, 1] * W + np.asarray(xy)[:, 0]
  np.testing.assert_array_equal(flat, [43, 54, 8, 48, 20, 56])


def test_topk_ties_by_lower_flat_index_matches_brute_force():
  rng = np.random.default_rng(1)
  # Quantised probabilities: many exact ties of the error.
  p = (rng.integers(0, 9, (H, W)) / 8.0).astype(np.float32)
  for k in (1, 5, 17, H * W):
    xy, labels = clk.topk_clicks(jnp.asarray(p), k, KEY)
    want_xy, want_labels = _reference_topk(p, k)
    np.testing.assert_array_equal(np.asarray(xy), want_xy)
    np.testing.assert_array_equal(np.asarray(labels), want_labels)
  # All equal: the first k pixels in row-major order.
  xy, labels = clk.topk_clicks(jnp.full((H, W), 0.25, jnp.float32), 11, KEY)
  np.testing.assert_array_equal(np.asarray(xy)[:, 0], np.arange(11) % W)
  np.testing.assert_array_equal(np.asarray(xy)[:, 1], np.arange(11) // W)
  np.testing.assert_array_equal(np.asarray(labels), np.ones(11))


def test_topk_jits():
  p = _designed_map()
  f = jax.jit(clk.topk_clicks, static_argnums=1)
  xy, labels = f(jnp.asarray(p), 6, KEY)
  want_xy, want_labels = _reference_topk(p, 6)
  np.testing.assert_array_equal(np.asarray(xy), want_xy)
  np.testing.assert_array_equal(np.asarray(labels), want_labels)


@pytest.mark.parametrize("box", [(1, 1, 5, 4), (1.5, 0.5, 4.5, 3.5), (8, 6, 8, 6)])
def test_topk_box_restriction(box):
  p = _designed_map()  # the two most uncertain pixels lie outside every box
  inside = _np_box_mask((H, W), box)
  k = min(4, int(inside.sum()))
  xy, labels = clk.topk_clicks(jnp.asarray(p), k, KEY,
                               box=jnp.asarray(box, jnp.float32))
  xy = np.asarray(xy)
  assert inside[xy[:, 1], xy[:, 0]].all()
  want_xy, want_labels = _reference_topk(p, k, allowed=inside)
  np.testing.assert_array_equal(xy, want_xy)
  np.testing.assert_array_equal(np.asarray(labels), want_labels)


def test_topk_box_smaller_than_k_stays_inside():
  # 2 pixels in the box, 5 clicks: the in-box ranking repeats, never outside.
  p = _designed_map()
  box = (2, 2, 3, 2)
  xy, labels = clk.topk_clicks(jnp.asarray(p), 5, KEY, box=jnp.asarray(box, jnp.float32))
  want_xy, want_labels = _reference_topk(p, 2, allowed=_np_box_mask((H, W), box))
  np.testing.assert_array_equal(np.asarray(xy), np.concatenate([want_xy] * 3)[:5])
  np.testing.assert_array_equal(np.asarray(labels), np.concatenate([want_labels] * 3)[:5])


def test_box_mask_is_inclusive():
  m = np.asarray(clk.box_mask((H, W), jnp.asarray([2, 1, 4, 3], jnp.float32)))
  want = np.zeros((H, W), bool)
  want[1:4, 2:5] = True
  np.testing.assert_array_equal(m, want)


# -- random --------------------------------------------------------------------


def test_random_deterministic_and_key_dependent():
  rng = np.random.default_rng(2)
  p = rng.uniform(0, 1, (H, W)).astype(np.float32)
  a = clk.random_clicks(jnp.asarray(p), 20, jax.random.key(3))
  b = clk.random_clicks(jnp.asarray(p), 20, jax.random.key(3))
  c = clk.random_clicks(jnp.asarray(p), 20, jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
  np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))
  assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
  for xy, labels in (a, c):
    xy = np.asarray(xy)
    assert xy.dtype == np.int32 and labels.dtype == jnp.int32
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] < W).all()
    assert (xy[:, 1] >= 0).all() and (xy[:, 1] < H).all()
    np.testing.assert_array_equal(np.asarray(labels), 1 - (p[xy[:, 1], xy[:, 0]] > 0.5))


def _chi_square(counts: np.ndarray) -> float:
  expected = counts.sum() / counts.size
  return float(((counts - expected) ** 2 / expected).sum())


def test_random_with_replacement_and_uniform_on_tiny_map():
  p = np.array([[0.1, 0.6, 0.5], [0.9, 0.25, 0.75]], np.float32)  # 2 x 3
  xy, labels = clk.random_clicks(jnp.asarray(p), 50, jax.random.key(5))
  xy = np.asarray(xy)
  assert xy.shape == (50, 2)
  flat = xy[:, 1] * 3 + xy[:, 0]
  assert ((flat >= 0) & (flat < 6)).all()
  assert len(np.unique(flat)) <= 6  # k > pixels: repeats
  np.testing.assert_array_equal(np.asarray(labels), 1 - (p.reshape(-1)[flat] > 0.5))
  # Uniform: chi-square with 5 degrees of freedom (p = 1e-6 at 35.9).
  xy, _ = clk.random_clicks(jnp.asarray(p), 60000, jax.random.key(6))
  xy = np.asarray(xy)
  counts = np.bincount(xy[:, 1] * 3 + xy[:, 0], minlength=6)
  assert counts.size == 6 and (counts > 0).all()
  assert _chi_square(counts) < 35.9, counts


def test_random_box_restriction_uniform_inside():
  p = _designed_map()
  box = (2, 1, 6, 3)  # inclusive: 5 x 3 = 15 pixels
  inside = _np_box_mask((H, W), box)
  xy, labels = clk.random_clicks(jnp.asarray(p), 30000, jax.random.key(7),
                                 box=jnp.asarray(box, jnp.float32))
  xy = np.asarray(xy)
  assert inside[xy[:, 1], xy[:, 0]].all()
  np.testing.assert_array_equal(np.asarray(labels), 1 - (p[xy[:, 1], xy[:, 0]] > 0.5))
  counts = np.bincount(xy[:, 1] * W + xy[:, 0], minlength=H * W)[inside.reshape(-1)]
  assert counts.size == 15 and (counts > 0).all()
  assert _chi_square(counts) < 50.0, counts  # 14 dof, p ~ 1e-5


# -- oracle --------------------------------------------------------------------


def _reference_distance(mask: np.ndarray) -> np.ndarray:
  return ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


@pytest.mark.parametrize("shape", [(7, 9), (13, 5)])
def test_distance_to_outside_matches_scipy(shape):
  rng = np.random.default_rng(shape[0])
  masks = [rng.uniform(size=shape) < q for q in (0.3, 0.6, 0.9)]
  masks.append(ndimage.binary_dilation(rng.uniform(size=shape) < 0.1, iterations=2))
  masks.append(np.zeros(shape, bool))
  masks.append(np.ones(shape, bool))
  border = np.zeros(shape, bool)
  border[:, : shape[1] // 2 + 1] = True  # touches top, bottom and left
  masks.append(border)
  corner = np.zeros(shape, bool)
  corner[-3:, -4:] = True
  masks.append(corner)
  for m in masks:
    got = np.asarray(distance_to_outside(jnp.asarray(m)))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _reference_distance(m), atol=1e-5, rtol=0)


def _blob_case():
  """GT / prediction with a big false-negative blob and a small false-positive one."""
  h, w = 21, 23
  gt = np.zeros((h, w), bool)
  gt[2:19, 2:21] = True
  pred = gt.copy()
  pred[4:11, 5:12] = False  # false negative: 7 x 7, centre (row 7, col 8), distance 4
  gt[14:17, 15:18] = False  # false positive: 3 x 3, centre distance 2
  return gt, pred


def _probs(pred: np.ndarray) -> jax.Array:
  return jnp.asarray(np.where(pred, 0.875, 0.125), jnp.float32)


@pytest.mark.parametrize("swap", [False, True])
def test_oracle_clicks_interior_of_larger_error(swap):
  gt, pred = _blob_case()
  if swap:  # the big blob becomes a false positive, the small one a false negative
    gt, pred = pred, gt
  xy, labels = clk.oracle_clicks(_probs(pred), 1, KEY, jnp.asarray(gt))
  np.testing.assert_array_equal(np.asarray(xy), [[8, 7]])
  np.testing.assert_array_equal(np.asarray(labels), [0 if swap else 1])
  # k clicks: the k most interior pixels of that blob, ties by lower flat index.
  big = (pred & ~gt) if swap else (gt & ~pred)
  dist = _reference_distance(big).reshape(-1)
  order = np.lexsort((np.arange(dist.size), -dist))[:9]
  xy, labels = clk.oracle_clicks(_probs(pred), 9, KEY, jnp.asarray(gt))
  xy = np.asarray(xy)
  np.testing.assert_array_equal(xy[:, 1] * gt.shape[1] + xy[:, 0], order)
  assert big[xy[:, 1], xy[:, 0]].all()
  np.testing.assert_array_equal(np.asarray(labels), np.full(9, 0 if swap else 1))


def test_oracle_without_error_and_without_ground_truth():
  gt, _ = _blob_case()
  xy, labels = clk.oracle_clicks(_probs(gt), 3, KEY, jnp.asarray(gt))
  np.testing.assert_array_equal(np.asarray(xy), [[0, 0], [1, 0], [2, 0]])
  np.testing.assert_array_equal(np.asarray(labels), [1, 1, 1])  # predicted background
  with pytest.raises(ValueError, match="ground.truth"):
    clk.oracle_clicks(_probs(gt), 1, KEY, None)


# -- aggregations --------------------------------------------------------------


def _random_masks(k=7, m=8, seed=0):
  rng = np.random.default_rng(seed)
  masks = rng.uniform(size=(k, m, m)) < rng.uniform(0.1, 0.8, (k, 1, 1))
  masks[[2, k - 2]] = False  # two empty masks
  return masks


def test_pairwise_iou_matches_brute_force():
  masks = _random_masks()
  got = np.asarray(pairwise_iou(jnp.asarray(masks)))
  assert got.shape == (7, 7) and got.dtype == np.float32
  np.testing.assert_allclose(got, _brute_pairwise(masks), atol=1e-6)
  assert got[2, 5] == 0 and got[2, 2] == 0 and got[5, 5] == 0  # 2 and 5 empty  # empty / empty
  assert got[0, 0] == 1
  assert not np.isnan(got).any()


def test_mean_pairwise_iou():
  masks = _random_masks()
  ref = _brute_pairwise(masks)
  want = (ref.sum() - np.trace(ref)) / (7 * 6)
  np.testing.assert_allclose(float(mean_pairwise_iou(jnp.asarray(masks))), want, atol=1e-6)
  assert float(mean_pairwise_iou(jnp.asarray(masks[:1]))) == 1.0
  assert float(mean_pairwise_iou(jnp.asarray(masks[2:3]))) == 1.0  # K = 1, even empty
  assert float(mean_pairwise_iou(jnp.zeros((3, 4, 4), bool))) == 0.0


def _square(m, r0, r1, c0, c1):
  x = np.zeros((m, m), bool)
  x[r0:r1, c0:c1] = True
  return x


def test_iou_medoid_known_medoid():
  m = 10
  a = _square(m, 2, 7, 2, 7)  # 25 pixels
  a_plus = a.copy()
  a_plus[7, 2] = True  # 26
  a_minus = a.copy()
  a_minus[2, 2] = False  # 24
  outlier = _square(m, 8, 10, 7, 10)
  empty = np.zeros((m, m), bool)
  masks = np.stack([a_plus, a, outlier, a_minus, empty])
  logits = _logits_of(masks)
  out = agg.iou_medoid(jnp.asarray(logits), jnp.asarray([0.9, 0.1, 0.8, 0.7, 0.99]))
  assert int(out.chosen) == 1 and out.chosen.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out.logits), logits[1])
  want = _brute_pairwise(masks).mean(axis=1)  # mean over K, itself included
  np.testing.assert_allclose(np.asarray(out.scores), want, atol=1e-6)
  np.testing.assert_allclose(float(out.scores[1]), (1 + 25 / 26 + 24 / 25) / 5, atol=1e-6)
  assert float(out.scores[4]) == 0.0


def test_iou_medoid_first_index_on_exact_ties():
  m = 6
  a = _square(m, 0, 3, 0, 3)
  b = _square(m, 3, 6, 3, 6)
  # All four score exactly 0.5 -> index 0.
  out = agg.iou_medoid(jnp.asarray(_logits_of(np.stack([b, a, a, b]))), jnp.zeros(4))
  np.testing.assert_array_equal(np.asarray(out.scores), [0.5] * 4)
  assert int(out.chosen) == 0
  # Two identical best candidates at 1 and 2 -> 1 (logits differ, masks equal).
  logits = _logits_of(np.stack([b, a, a]), seed=3)
  out = agg.iou_medoid(jnp.asarray(logits), jnp.zeros(3))
  assert float(out.scores[1]) == float(out.scores[2])
  assert int(out.chosen) == 1
  np.testing.assert_array_equal(np.asarray(out.logits), logits[1])
  # All empty: every score 0 -> index 0.
  out = agg.iou_medoid(-jnp.ones((3, m, m)), jnp.zeros(3))
  assert int(out.chosen) == 0 and not np.isnan(np.asarray(out.scores)).any()


def test_pixel_mean():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(5, 8, 8)).astype(np.float32)
  out = agg.pixel_mean(jnp.asarray(logits), jnp.zeros(5))
  np.testing.assert_allclose(np.asarray(out.logits), logits.mean(0), atol=1e-6)
  assert int(out.chosen) == -1 and out.chosen.dtype == jnp.int32
  final = logits.mean(0) > 0
  want = [_np_iou(c > 0, final) for c in logits]
  np.testing.assert_allclose(np.asarray(out.scores), want, atol=1e-6)


def test_majority_vote():
  m = 4
  cover = np.zeros((4, m, m), bool)
  cover[:3, 0, 0] = True  # 3 of 4 -> in
  cover[:2, 0, 1] = True  # exactly half -> out
  cover[1:, 1, 1] = True  # 3 of 4 -> in
  cover[:, 2, 2] = True  # all -> in
  cover[3, 3, 3] = True  # 1 of 4 -> out
  out = agg.majority_vote(jnp.asarray(_logits_of(cover)), jnp.zeros(4))
  want = np.zeros((m, m), bool)
  want[0, 0] = want[1, 1] = want[2, 2] = True
  np.testing.assert_array_equal(np.asarray(out.logits) > 0, want)
  np.testing.assert_allclose(np.asarray(out.logits), cover.mean(0) - 0.5, atol=1e-7)
  assert int(out.chosen) == -1
  np.testing.assert_allclose(np.asarray(out.scores), [_np_iou(c, want) for c in cover],
                             atol=1e-6)
  # Odd K: 2 of 3 is a majority.
  out = agg.majority_vote(jnp.asarray(_logits_of(cover[1:])), jnp.zeros(3))
  np.testing.assert_array_equal(np.asarray(out.logits) > 0, cover[1:].sum(0) >= 2)


def test_iou_head():
  logits = _logits_of(_random_masks(4, 5, seed=5))
  ious = jnp.asarray([0.2, 0.9, 0.9, 0.1], jnp.float32)
  out = agg.iou_head(jnp.asarray(logits), ious)
  assert int(out.chosen) == 1  # first of the tied maxima
  np.testing.assert_array_equal(np.asarray(out.logits), logits[1])
  np.testing.assert_array_equal(np.asarray(out.scores), np.asarray(ious))
  out = agg.iou_head(jnp.asarray(logits), jnp.asarray([0.1, 0.2, 0.3, 0.4]))
  assert int(out.chosen) == 3


def test_aggregations_registered_and_jit():
  assert {"iou_medoid", "pixel_mean", "majority_vote", "iou_head"} <= set(AGGREGATIONS.names())
  logits = jnp.asarray(_logits_of(_random_masks()))
  ious = jnp.linspace(0, 1, 7)
  for name in AGGREGATIONS.names():
    fn = AGGREGATIONS.get(name)
    eager, jitted = fn(logits, ious), jax.jit(fn)(logits, ious)
    assert eager.logits.shape == (8, 8) and eager.scores.shape == (7,)
    assert eager.chosen.shape == ()
    assert int(eager.chosen) == int(jitted.chosen)
    np.testing.assert_allclose(np.asarray(eager.logits), np.asarray(jitted.logits), atol=1e-6)


# -- mask prompts --------------------------------------------------------------


def test_mask_prompts():
  logits = jnp.asarray(np.random.default_rng(6).normal(size=(8, 8)), jnp.float32)
  binary = (logits > 0).astype(jnp.float32)
  assert MASK_PROMPTS.get("binary")(logits, binary) is binary
  assert MASK_PROMPTS.get("logits")(logits, binary) is logits
  assert MASK_PROMPTS.get("none")(logits, binary) is None
  assert mp.binary is MASK_PROMPTS.get("binary")


# -- registry ------------------------------------------------------------------


@pytest.mark.parametrize("registry,known", [
    (CLICK_STRATEGIES, ("oracle", "random", "topk")),
    (AGGREGATIONS, ("iou_head", "iou_medoid", "majority_vote", "pixel_mean")),
    (MASK_PROMPTS, ("binary", "logits", "none")),
])
def test_registry_unknown_name_lists_known(registry, known):
  with pytest.raises(ValueError, match="no_such_strategy") as info:
    registry.get("no_such_strategy")
  for name in known:
    assert name in str(info.value)
    assert name in registry
  assert registry.kind in str(info.value)


def test_registry_duplicate_raises():
  with pytest.raises(ValueError, match="already registered"):
    CLICK_STRATEGIES.register("topk")(lambda *a: None)
  assert CLICK_STRATEGIES.get("topk") is clk.topk_clicks  # unchanged
  reg = Registry("thing")
  reg.register("a")(len)
  with pytest.raises(ValueError, match="'a' is already"):
    reg.register("a")(abs)
  assert reg.get("a") is len and reg.names() == ["a"]


def _center_clicks(probs, k, key, ground_truth=None, box=None):
  """One positive click at the box centre (image centre without a box), k times."""
  del key, ground_truth
  h, w = probs.shape
  if box is None:
    box = jnp.asarray([0, 0, w - 1, h - 1], jnp.float32)
  centre = jnp.round(jnp.stack([box[0] + box[2], box[1] + box[3]]) / 2).astype(jnp.int32)
  return jnp.tile(centre[None], (k, 1)), jnp.ones((k,), jnp.int32)


def test_registered_click_strategy_runs_end_to_end():
  assert "center" not in CLICK_STRATEGIES
  with pytest.raises(ValueError, match="center"):
    SimSamConfig(clicks="center").validate()
  CLICK_STRATEGIES.register("center")(_center_clicks)
  try:
    config = SimSamConfig(k=3, clicks="center", clicks_in_box=True)
    assert config.validate() is config
    model = build_sam(get_preset("tiny"), 11)
    image, _, box = synthetic.phantom(45, 37, seed=2)
    pixels, info = processing.preprocess(image, model.config.image_size)
    out = SimSam(model, config).run(pixels, box, info)
    want = [round((box[0] + box[2]) / 2), round((box[1] + box[3]) / 2)]
    np.testing.assert_array_equal(np.asarray(out.clicks), [want] * 3)
    np.testing.assert_array_equal(np.asarray(out.labels), [1, 1, 1])
    m = model.config.mask_input_size
    assert out.candidate_logits.shape == (3, m, m)
    # Three identical prompts -> identical candidates -> medoid 0.
    np.testing.assert_allclose(np.asarray(out.candidate_logits[1]),
                               np.asarray(out.candidate_logits[0]), atol=1e-5)
    assert int(out.chosen) == 0
    assert out.mask.shape == (45, 37)
  finally:
    del CLICK_STRATEGIES._entries["center"]
  assert "center" not in CLICK_STRATEGIES


# -- SimSamConfig.validate -----------------------------------------------------


@pytest.mark.parametrize("k", [0, -3, 2.5, "3", None])
def test_validate_bad_k(k):
  with pytest.raises(ValueError, match=r"\bk\b"):
    SimSamConfig(k=k).validate()


def test_validate_k_against_pixels():
  assert SimSamConfig(k=6).validate(num_pixels=6).k == 6
  with pytest.raises(ValueError, match=r"k=7.*pixels"):
    SimSamConfig(k=7).validate(num_pixels=6)


@pytest.mark.parametrize("field,pattern", [
    ("clicks", "click strategy"),
    ("aggregation", "aggregation"),
    ("mask_prompt", "mask prompt"),
])
def test_validate_unknown_names(field, pattern):
  with pytest.raises(ValueError, match=f"{pattern} 'bogus'"):
    SimSamConfig(**{field: "bogus"}).validate()


def test_validate_defaults_are_the_paper():
  c = SimSamConfig().validate()
  assert (c.k, c.clicks, c.aggregation, c.mask_prompt) == (50, "topk", "iou_medoid", "binary")
  assert not c.clicks_in_box and not c.include_box_only_mask
  assert c.num_candidates == 50
  assert SimSamConfig(k=4, include_box_only_mask=True).num_candidates == 5


def _truth_centre_clicks(probs, k, key, ground_truth=None, box=None):
  """k positive clicks at the first foreground pixel of the ground truth."""
  del probs, key, box
  flat = jnp.argmax(ground_truth.reshape(-1)).astype(jnp.int32)
  xy = jnp.stack([flat % ground_truth.shape[1], flat // ground_truth.shape[1]])
  return jnp.tile(xy[None], (k, 1)), jnp.ones((k,), jnp.int32)


def _truth_count_aggregation(candidate_logits, iou_predictions, ground_truth=None):
  """Picks candidate (number of foreground pixels of the truth) mod K."""
  del iou_predictions
  chosen = (jnp.sum(ground_truth, dtype=jnp.int32) % candidate_logits.shape[0]).astype(jnp.int32)
  return agg.Aggregation(candidate_logits[chosen], chosen,
                         jnp.zeros(candidate_logits.shape[:1], jnp.float32))


def test_strategies_declare_ground_truth_at_registration():
  assert CLICK_STRATEGIES.declared("oracle", "needs_ground_truth") is True
  assert not CLICK_STRATEGIES.declared("topk", "needs_ground_truth")
  assert not any(AGGREGATIONS.declared(n, "needs_ground_truth") for n in AGGREGATIONS.names())
  assert SimSamConfig(clicks="oracle").needs_ground_truth
  assert not SimSamConfig().needs_ground_truth
  with pytest.raises(TypeError, match="unknown declarations"):
    CLICK_STRATEGIES.register("x", needs_truth=True)
  CLICK_STRATEGIES.register("truth_first", needs_ground_truth=True)(_truth_centre_clicks)
  AGGREGATIONS.register("truth_count", needs_ground_truth=True)(_truth_count_aggregation)
  try:
    model = build_sam(get_preset("tiny"), 11)
    image, truth, box = synthetic.phantom(45, 37, seed=2)
    pixels, info = processing.preprocess(image, model.config.image_size)
    for config in (SimSamConfig(k=3, clicks="truth_first"),
                   SimSamConfig(k=3, aggregation="truth_count")):
      assert config.needs_ground_truth
      engine = SimSam(model, config)
      with pytest.raises(ValueError, match="needs the ground-truth mask"):
        engine.run(pixels, box, info)
    config = SimSamConfig(k=3, clicks="truth_first", aggregation="truth_count")
    out = SimSam(model, config).run(pixels, box, info, ground_truth=truth)
    flat = int(np.argmax(np.asarray(truth).reshape(-1)))
    np.testing.assert_array_equal(np.asarray(out.clicks), [[flat % 37, flat // 37]] * 3)
    assert int(out.chosen) == int(np.asarray(truth).sum()) % 3
    # segment's path: the separately compiled stages pass the ground truth on too
    from simsam_jax import predictor
    loaded = predictor.Predictor(predictor.load_sam("random:tiny:11"))
    staged = loaded.simsam_timed(image, tuple(int(v) for v in box), config, truth)
    np.testing.assert_array_equal(np.asarray(staged.output.clicks), np.asarray(out.clicks))
    assert int(staged.output.chosen) == int(out.chosen)
  finally:
    CLICK_STRATEGIES.unregister("truth_first")
    AGGREGATIONS.unregister("truth_count")
  assert "truth_first" not in CLICK_STRATEGIES and "truth_count" not in AGGREGATIONS

"""The click protocol (`simsam_jax.simsam.interactive`).

* `ritm_click` on hand-made masks with known answers, and against a
  transcription of RITM's evaluation clicker (`isegm/inference/clicker.py`,
  OpenCV's exact distance transform) on random masks.
* The compiled N-round program on phantoms with a random `tiny` SAM: every
  click lies in the previous prediction's error region with the right label;
  the jitted `lax.scan` equals a plain Python loop over the same model calls
  (clicks, labels, masks, IoUs bit for bit; fp32 logits to 1e-5); the
  vmapped batch equals per-image runs.
"""

from __future__ import annotations

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simsam_jax import processing, synthetic
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import SimSamConfig
from simsam_jax.simsam import interactive as inter

TINY = get_preset("tiny")
HEIGHT, WIDTH = 61, 83
ROUNDS = 4
# The simsam start is SimSAM's own program (tested in test_simsam_engine.py;
# the launcher test checks it is the evaluation's mask): left out here to
# keep compilation short.
CONFIG = inter.InteractiveConfig(num_rounds=ROUNDS, starts=("box", "clicks_only"),
                                 simsam=SimSamConfig(k=3))

click = jax.jit(inter.ritm_click)


def ritm_reference(pred: np.ndarray, gt: np.ndarray):
  """RITM's `Clicker._get_next_click` (padding=True), transcribed."""
  fn_mask = np.logical_and(gt, np.logical_not(pred))
  fp_mask = np.logical_and(np.logical_not(gt), pred)
  fn_mask = np.pad(fn_mask, ((1, 1), (1, 1)), "constant")
  fp_mask = np.pad(fp_mask, ((1, 1), (1, 1)), "constant")
  fn_dt = cv2.distanceTransform(fn_mask.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1]
  fp_dt = cv2.distanceTransform(fp_mask.astype(np.uint8), cv2.DIST_L2, 0)[1:-1, 1:-1]
  fn_max, fp_max = np.max(fn_dt), np.max(fp_dt)
  is_positive = fn_max > fp_max
  ys, xs = np.where((fn_dt == fn_max) if is_positive else (fp_dt == fp_max))
  return (int(xs[0]), int(ys[0])), int(is_positive)


def _click(pred, gt):
  xy, label = click(jnp.asarray(pred, bool), jnp.asarray(gt, bool))
  return tuple(int(v) for v in np.asarray(xy)), int(label)


def test_single_false_negative_blob():
  gt = np.zeros((20, 30), bool)
  gt[4:11, 10:17] = True  # 7 x 7 square, centre (13, 7)
  assert _click(np.zeros_like(gt), gt) == ((13, 7), 1)


def test_false_positive_ring():
  pred = np.zeros((31, 31), bool)
  pred[5:26, 5:26] = True
  pred[9:22, 9:22] = False  # a ring 4 pixels thick
  gt = np.zeros_like(pred)
  gt[12:19, 12:19] = True  # a small object inside the ring, not predicted
  # The ring's interior-most pixels are 2 pixels in; the FN square's centre
  # is 4 pixels in: the larger error wins, a positive click.
  assert _click(pred, gt) == ((15, 15), 1)
  gt[:] = False  # only the ring is wrong: a negative click on its first
  (x, y), label = _click(pred, gt)  # interior-most pixel in raster order
  # Corner pixels lie deepest (2.83 px from the hole's corner, 3 px from the
  # outside); the first in raster order is (7, 7).
  assert label == 0 and pred[y, x] and (x, y) == ritm_reference(pred, gt)[0] == (7, 7)


def test_ties():
  gt = np.zeros((12, 24), bool)
  gt[2:7, 2:7] = True
  gt[2:7, 14:19] = True  # two equal blobs: the lower flat index wins
  assert _click(np.zeros_like(gt), gt) == ((4, 4), 1)
  # A false negative and a false positive of equal size: RITM clicks the
  # false positive (fn_max > fp_max is False on a tie).
  pred = np.zeros_like(gt)
  pred[2:7, 14:19] = True
  gt[2:7, 14:19] = False
  assert _click(pred, gt) == ((16, 4), 0)


def test_perfect_prediction_gets_no_click():
  gt = np.zeros((9, 9), bool)
  gt[3:6, 3:6] = True
  assert _click(gt, gt) == ((-1, -1), -1)
  empty = np.zeros((9, 9), bool)
  assert _click(empty, empty) == ((-1, -1), -1)


def test_clicker_matches_ritm_on_random_masks():
  rng = np.random.default_rng(0)
  for _ in range(12):
    gt = cv2.GaussianBlur(rng.random((23, 37)), (0, 0), 3) > 0.5
    pred = cv2.GaussianBlur(rng.random((23, 37)), (0, 0), 3) > 0.5
    if (pred == gt).all():
      continue
    assert _click(pred, gt) == ritm_reference(pred, gt)


def test_bad_config():
  with pytest.raises(ValueError, match="num_rounds"):
    inter.InteractiveConfig(num_rounds=0).validate()
  with pytest.raises(ValueError, match="start"):
    inter.InteractiveConfig(starts=("box", "nope")).validate()
  with pytest.raises(ValueError, match="mask_prompt"):
    inter.InteractiveConfig(mask_prompt="nope").validate()


# ----------------------------------------------------------------------------
# The compiled program.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
  out = []
  for seed in (1, 2):
    image, mask, box = synthetic.phantom(HEIGHT, WIDTH, seed=seed)
    pixels, info = processing.preprocess(image, TINY.image_size)
    out.append((pixels, np.asarray(box, np.float32), mask, info))
  return out


@pytest.fixture(scope="module")
def engine():
  return inter.InteractiveSam(build_sam(TINY, 3), CONFIG)


@pytest.fixture(scope="module")
def embeddings(engine, images):
  return [engine.encode(engine.state, jnp.asarray(p)) for p, _, _, _ in images]


@pytest.fixture(scope="module")
def single(engine, images, embeddings):
  """Per-image runs of the N-round program (from each image's embedding)."""
  return [jax.tree.map(np.asarray, engine.run_from_embedding(e, b, g, info,
                                                             key=jax.random.key(7)))
          for e, (_, b, g, info) in zip(embeddings, images)]


def test_masks_are_decisive(single, images):
  # Random weights must still give masks that are neither empty nor full,
  # or the clicks would be trivial.
  for out in single:
    assert 0.05 < out["box"].masks[0].mean() < 0.95


def test_clicks_lie_in_the_error_region(single, images):
  for out, (_, _, gt, _) in zip(single, images):
    for start, o in out.items():
      assert o.masks.shape == (ROUNDS + 1, HEIGHT, WIDTH)
      for r in range(ROUNDS):
        prev = o.masks[r]
        (x, y), label = o.clicks[r], o.labels[r]
        if (prev == gt).all():
          assert label == -1 and (x, y) == (-1, -1)
          continue
        assert prev[y, x] != gt[y, x], (start, r)
        assert label == int(gt[y, x]), (start, r)
        assert ((x, y), label) == ritm_reference(prev, gt), (start, r)
        inter_ = (o.masks[r + 1] & gt).sum()
        union = (o.masks[r + 1] | gt).sum()
        assert o.iou[r + 1] == pytest.approx(inter_ / union, abs=1e-6)
      assert o.iou[0] == pytest.approx((o.masks[0] & gt).sum() / (o.masks[0] | gt).sum(),
                                       abs=1e-6)
    assert out["clicks_only"].masks[0].sum() == 0 and out["clicks_only"].iou[0] == 0


def test_scan_equals_python_loop(engine, single, images, embeddings):
  """Same model calls, one round per jit call from Python: the same clicks,
  labels, masks and IoUs bit for bit. The fp32 logits agree to ~1e-6, not
  bit for bit: XLA:CPU compiles the decoder inside the scan's loop body
  with another summation order than a standalone call."""
  graphdef, state = engine.graphdef, engine.state
  pixels, box, gt, info = images[0]

  def start_fn(state, embedding, start):
    model = nnx.merge(graphdef, state)
    return inter.start_state(model, embedding, jnp.asarray(box), jnp.asarray(gt), info,
                             CONFIG, start, jax.random.key(7))

  def round_fn(state, embedding, carry, r, start, use_mask):
    model = nnx.merge(graphdef, state)
    _, round_box = start_fn(state, embedding, start)
    return inter.click_round(model, embedding, jnp.asarray(gt), round_box, info,
                             CONFIG.mask_prompt, carry, r, use_mask=use_mask)

  start_jit = jax.jit(start_fn, static_argnames=("start",))
  round_jit = jax.jit(round_fn, static_argnames=("start", "use_mask"))
  embedding = embeddings[0]
  for start in ("box", "clicks_only"):
    carry, _ = start_jit(state, embedding, start)
    masks, clicks, labels = [np.asarray(carry[3])], [], []
    for r in range(ROUNDS):
      carry, (xy, label, _, _, pred) = round_jit(
          state, embedding, carry, r, start, not (start == "clicks_only" and r == 0))
      masks.append(np.asarray(pred))
      clicks.append(np.asarray(xy))
      labels.append(int(label))
    expected = single[0][start]
    np.testing.assert_array_equal(np.stack(clicks), expected.clicks)
    np.testing.assert_array_equal(np.array(labels), expected.labels)
    np.testing.assert_array_equal(np.stack(masks), expected.masks)
    np.testing.assert_allclose(np.asarray(carry[2]), expected.low_res_logits, atol=1e-5)


def test_batch_equals_per_image(engine, single, images):
  """The vmapped program with the encoder fused in vs per-image runs."""
  info = images[0][3]
  batched = engine.run_batch(np.stack([i[0] for i in images]), np.stack([i[1] for i in images]),
                             np.stack([i[2] for i in images]), info,
                             keys=jnp.stack([jax.random.key(7)] * 2),
                             devices=jax.devices()[:1])
  for i, out in enumerate(single):
    for start, o in out.items():
      b = jax.tree.map(lambda x: np.asarray(x[i]), batched[start])
      for name in ("clicks", "labels", "masks", "iou", "dsc"):
        np.testing.assert_array_equal(getattr(b, name), getattr(o, name), err_msg=name)
      np.testing.assert_allclose(b.low_res_logits, o.low_res_logits, atol=1e-4)


def test_check_errors(engine, images):
  pixels, box, gt, info = images[0]
  with pytest.raises(ValueError, match="ground-truth"):
    engine.check(info, box, None)
  with pytest.raises(ValueError, match="shape"):
    engine.check(info, box, gt[:-1])
  with pytest.raises(ValueError, match="box"):
    engine.check(info, [0, 0, 500, 10], gt)

"""Click simulation: where SimSAM "clicks", and with which label.

Every strategy has the signature

  strategy(probs, k, key, ground_truth, box) -> (clicks, labels)

  probs: (H, W) float32 in [0, 1], SAM's foreground probability at the
    original image resolution (first, box-only prediction).
  k: static int >= 1, number of clicks.
  key: a `jax.random` key (used by stochastic strategies).
  ground_truth: (H, W) bool or None (given to every strategy when the caller
    has it; a strategy that cannot work without it declares so).
  box: (4,) float32 (x0, y0, x1, y1) in original pixels, or None when clicks
    may fall anywhere.
  returns clicks (k, 2) int32 (x, y) pixel indices in the original image and
    labels (k,) int32, 1 positive (add foreground), 0 negative.

All are pure JAX with static shapes (jit/vmap-safe). Register a new one with
`@CLICK_STRATEGIES.register("name")`; a strategy that reads the ground truth
registers with `needs_ground_truth=True` (as `oracle` does): the engine,
`segment` and the evaluation then refuse to run it without a ground-truth
mask (`SimSamConfig.needs_ground_truth`).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from simsam_jax.simsam.registry import Registry

CLICK_STRATEGIES = Registry("click strategy", needs_ground_truth=False)


def error_map(probs: jax.Array) -> jax.Array:
  """Paper eq. 2: e = 0.5 - |p - 0.5|; (H, W) in [0, 0.5]."""
  return 0.5 - jnp.abs(probs - 0.5)


def opposite_labels(probs: jax.Array, flat_index: jax.Array) -> jax.Array:
  """Label = 1 - (p > 0.5) at each clicked pixel (the paper's rule)."""
  binary = (probs > 0.5).reshape(-1)
  return 1 - binary[flat_index].astype(jnp.int32)


def flat_to_xy(flat_index: jax.Array, width: int) -> jax.Array:
  """Row-major flat indices -> (k, 2) int32 (x, y) = (idx % W, idx // W)."""
  flat_index = flat_index.astype(jnp.int32)
  return jnp.stack([flat_index % width, flat_index // width], axis=-1)


def box_mask(shape: tuple[int, int], box: jax.Array) -> jax.Array:
  """(H, W) bool: pixel centres inside the inclusive box (x0, y0, x1, y1)."""
  ys = jnp.arange(shape[0])[:, None]
  xs = jnp.arange(shape[1])[None, :]
  return (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])


@CLICK_STRATEGIES.register("topk")
def topk_clicks(probs, k: int, key, ground_truth=None, box=None):
  """The paper's clicks: the k pixels of largest error (eq. 3).

  Over the whole image unless `box` is given. Ties go to the lower flat
  index (`jax.lax.top_k` is stable).
  """
  del key, ground_truth
  err = error_map(probs)
  if box is not None:
    err = jnp.where(box_mask(probs.shape, box), err, -jnp.inf)
  vals, idx = jax.lax.top_k(err.reshape(-1), k)
  if box is not None:
    # Fewer than k pixels in the box: repeat the in-box ranking cyclically
    # rather than clicking outside the box.
    idx = idx[jnp.arange(k) % jnp.maximum(jnp.sum(vals > -jnp.inf), 1)]
  return flat_to_xy(idx, probs.shape[1]), opposite_labels(probs, idx)


@CLICK_STRATEGIES.register("random")
def random_clicks(probs, k: int, key, ground_truth=None, box=None):
  """Ablation (Table 1C): k pixels uniform over the image, with replacement.

  Seeded by `key`; labels by the paper's rule. With `box`, uniform over the
  box's pixels instead.
  """
  del ground_truth
  h, w = probs.shape
  if box is None:
    idx = jax.random.randint(key, (k,), 0, h * w)
  else:
    inside = box_mask((h, w), box).reshape(-1)
    logits = jnp.where(inside, 0.0, -jnp.inf)
    idx = jax.random.categorical(key, logits, shape=(k,))
  return flat_to_xy(idx, w), opposite_labels(probs, idx)


def _distance_to_outside(region: jax.Array) -> jax.Array:
  """Exact Euclidean distance of each pixel to the nearest non-region pixel.

  The image is treated as surrounded by non-region pixels (RITM pads the
  error mask by one pixel before its distance transform), so the value at a
  region pixel is its distance to the region's border or to the image border,
  and 0 outside the region. Separable exact EDT: a column pass by two scans,
  then a row pass by a brute-force minimum over columns (W^2 per row, mapped
  row by row to bound memory).

  Args:
    region: (H, W) bool.
  Returns:
    (H, W) float32 distances in pixels.
  """
  h, w = region.shape
  big = jnp.float32(h + w + 1)

  def run(carry, inside):
    carry = jnp.where(inside, carry + 1.0, 0.0)
    return carry, carry

  # Distance along the column to the nearest outside pixel, padding included.
  _, down = jax.lax.scan(run, jnp.zeros((w,), jnp.float32), region)
  _, up = jax.lax.scan(run, jnp.zeros((w,), jnp.float32), region[::-1])
  col = jnp.minimum(down, up[::-1])  # 0 outside, >= 1 inside
  col = jnp.where(region, col, 0.0)
  xs = jnp.arange(w, dtype=jnp.float32)
  dx2 = (xs[:, None] - xs[None, :]) ** 2

  def row_pass(g_row):
    # Candidates: any column x' at vertical distance g(x'), or the left/right
    # padding at horizontal distance x + 1 / W - x.
    d2 = jnp.min(dx2 + (g_row ** 2)[None, :], axis=1)
    pad = jnp.minimum(xs + 1.0, w - xs) ** 2
    return jnp.minimum(d2, pad)

  d2 = jax.lax.map(row_pass, col)
  return jnp.where(region, jnp.sqrt(jnp.minimum(d2, big ** 2)), 0.0)


def error_distances(prediction: jax.Array, ground_truth: jax.Array):
  """Distance maps of the false-negative and false-positive regions.

  Args:
    prediction: (H, W) bool current prediction.
    ground_truth: (H, W) bool (any dtype; nonzero is foreground).
  Returns:
    (fn_dist, fp_dist), each (H, W) float32: `_distance_to_outside` of
    `gt & ~prediction` and of `prediction & ~gt` (0 outside the region).
  """
  gt = ground_truth.astype(bool)
  return (_distance_to_outside(gt & ~prediction),
          _distance_to_outside(prediction & ~gt))


@CLICK_STRATEGIES.register("oracle", needs_ground_truth=True)
def oracle_clicks(probs, k: int, key, ground_truth=None, box=None):
  """Upper bound: clicks a perfect user would make (needs ground truth).

  As interactive-segmentation benchmarks (RITM's clicker) do: distance
  transforms of the false-negative and false-positive regions (image border
  counts as region border); the error type whose region holds the larger
  inscribed distance is clicked (positive for false negatives, negative for
  false positives), at its k most interior pixels (ties: lower flat index).
  With no error at all, the k clicks are the pixels of largest distance (0),
  i.e. the first k pixels, labelled as the current prediction's opposite.
  """
  del key, box
  if ground_truth is None:
    raise ValueError("the 'oracle' click strategy needs the ground-truth mask")
  fn_dist, fp_dist = error_distances(probs > 0.5, ground_truth)
  positive = fn_dist.max() > fp_dist.max()
  dist = jnp.where(positive, fn_dist, fp_dist)
  _, idx = jax.lax.top_k(dist.reshape(-1), k)
  any_error = jnp.maximum(fn_dist.max(), fp_dist.max()) > 0
  labels = jnp.where(any_error, jnp.where(positive, 1, 0) * jnp.ones((k,), jnp.int32),
                     opposite_labels(probs, idx))
  return flat_to_xy(idx, probs.shape[1]), labels.astype(jnp.int32)

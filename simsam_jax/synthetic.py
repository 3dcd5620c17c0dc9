"""A deterministic synthetic ultrasound-like test image ("phantom").

Lets the command-line tools and tests run without downloading any data:
`phantom(seed=...)` draws a grey speckle background with a darker, roughly
elliptical "lesion" whose boundary is irregular and, like a real lesion's in
ultrasound, soft and noisy: the echo level blends from lesion to tissue over
a few pixels (a width drawn per seed) and the blend is perturbed by speckle,
so the ground-truth contour is not an intensity edge. It returns the image
together with the lesion's ground-truth mask and bounding box. The `phantom`
TFDS dataset (`simsam_jax.data.phantom`) is a set of these.

`parse_image_spec` turns the `--image` values `synthetic`,
`synthetic:SEED` and `synthetic:SEED:HxW` into a phantom.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

DEFAULT_HEIGHT = 300
DEFAULT_WIDTH = 400
# Smallest supported side: the lesion must stay a few pixels wide.
MIN_SIDE = 16
SYNTHETIC_PREFIX = "synthetic"

Box = Tuple[int, int, int, int]
Phantom = Tuple[np.ndarray, np.ndarray, Box]

_SPEC_PATTERN = re.compile(
    r"^synthetic(?::(?P<seed>\d+)(?::(?P<height>\d+)x(?P<width>\d+))?)?$")


def _speckle(rng: np.random.Generator, shape: Tuple[int, int],
             scale: float) -> np.ndarray:
  """Multiplicative Rayleigh speckle with mean 1, lightly correlated.

  Returns:
    `shape` float64 array of positive values with mean about 1.
  """
  noise = rng.rayleigh(scale=scale, size=shape)
  noise = ndimage.gaussian_filter(noise, sigma=0.8)
  return noise / noise.mean()


def phantom(height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH,
            seed: int = 0) -> Phantom:
  """An ultrasound-like grey image with one dark, irregular elliptical lesion.

  The same `(height, width, seed)` always gives the same arrays.

  Args:
    height: image height in pixels, >= 16.
    width: image width in pixels, >= 16.
    seed: non-negative int seeding the speckle and the lesion's position,
      size, orientation and boundary.

  Returns:
    image: (height, width, 3) uint8 RGB, values 0-255, the three channels
      equal (grayscale).
    mask: (height, width) bool, True inside the lesion (never empty).
    box: (x0, y0, x1, y1) Python ints, the mask's extreme pixel columns and
      rows, inclusive (x1 - x0 + 1 is the lesion's width in pixels).

  Raises:
    ValueError: on a side below 16 pixels or a negative seed.
  """
  height, width, seed = int(height), int(width), int(seed)
  if height < MIN_SIDE or width < MIN_SIDE:
    raise ValueError(f"phantom sides must be >= {MIN_SIDE} pixels, got "
                     f"{height}x{width}")
  if seed < 0:
    raise ValueError(f"phantom seed must be >= 0, got {seed}")
  rng = np.random.default_rng(seed)

  # Lesion geometry: an ellipse near the centre, rotated, with a boundary
  # radius modulated by a few low-frequency harmonics.
  centre_x = width * rng.uniform(0.4, 0.6)
  centre_y = height * rng.uniform(0.4, 0.6)
  semi_axis_x = width * rng.uniform(0.14, 0.22)
  semi_axis_y = height * rng.uniform(0.12, 0.2)
  angle = rng.uniform(0.0, np.pi)
  harmonics = np.arange(2, 6)
  amplitudes = rng.uniform(0.01, 0.05, size=harmonics.size)
  phases = rng.uniform(0.0, 2 * np.pi, size=harmonics.size)

  rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
  dx, dy = cols - centre_x, rows - centre_y
  cos_a, sin_a = np.cos(angle), np.sin(angle)
  u = (dx * cos_a + dy * sin_a) / semi_axis_x
  v = (-dx * sin_a + dy * cos_a) / semi_axis_y
  theta = np.arctan2(v, u)
  boundary = 1.0 + np.sum(
      amplitudes[:, None, None] * np.cos(
          harmonics[:, None, None] * theta[None] + phases[:, None, None]),
      axis=0)
  mask = np.hypot(u, v) <= boundary
  if not mask.any():  # Unreachable for sides >= MIN_SIDE; kept as a guard.
    mask[int(centre_y), int(centre_x)] = True

  # Tissue: brightness fading with depth, speckle, a darker lesion with a
  # slightly brighter band beneath it (posterior acoustic enhancement).
  depth_gain = 1.0 - 0.35 * rows / max(height - 1, 1)
  tissue = 120.0 * depth_gain * _speckle(rng, (height, width), 1.0)
  lesion_level = rng.uniform(30.0, 60.0)
  lesion = lesion_level * _speckle(rng, (height, width), 1.0)
  below = (rows > centre_y) & (np.abs(dx) < 0.8 * semi_axis_x)
  tissue = np.where(below & ~mask, tissue * 1.15, tissue)
  # Soft, noisy boundary: a logistic blend across the signed distance to the
  # contour (positive inside), its width drawn per seed, perturbed by smooth
  # noise so that the visible edge wanders around the true one.
  edge_width = rng.uniform(0.5, 2.5)
  signed = (ndimage.distance_transform_edt(mask)
            - ndimage.distance_transform_edt(~mask))
  wander = ndimage.gaussian_filter(rng.normal(size=(height, width)), sigma=3.0)
  wander *= 1.5 / max(float(np.abs(wander).max()), 1e-6)
  inside = 1.0 / (1.0 + np.exp(-(signed + wander) / edge_width))
  grey = inside * lesion + (1.0 - inside) * tissue
  grey = ndimage.gaussian_filter(grey, sigma=1.2)
  grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)

  ys, xs = np.nonzero(mask)
  box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
  image = np.repeat(grey[..., None], 3, axis=-1)
  return image, mask, box


def is_synthetic_spec(spec: str) -> bool:
  """True for `synthetic` and any `synthetic:...` string (a phantom)."""
  return spec == SYNTHETIC_PREFIX or spec.startswith(SYNTHETIC_PREFIX + ":")


def parse_image_spec(spec: str) -> Optional[Phantom]:
  """The phantom named by an `--image` value, or None for a file path.

  Accepted forms: `synthetic` (seed 0, 300x400), `synthetic:SEED` and
  `synthetic:SEED:HxW` (height x width in pixels). Any string that neither
  is `synthetic` nor starts with `synthetic:` is a file path: None is
  returned and the caller loads the file.

  Args:
    spec: the `--image` value.

  Returns:
    `phantom(...)`'s (image, mask, box), or None.

  Raises:
    ValueError: for a malformed `synthetic:...` string (such as
      `synthetic:abc` or `synthetic:1:300`) or a size below 16 pixels.
  """
  if not is_synthetic_spec(spec):
    return None
  match = _SPEC_PATTERN.match(spec)
  if match is None:
    raise ValueError(
        f"malformed synthetic image {spec!r}; expected 'synthetic', "
        "'synthetic:SEED' or 'synthetic:SEED:HxW' (e.g. synthetic:3:300x400)")
  seed = int(match["seed"] or 0)
  if match["height"] is None:
    return phantom(seed=seed)
  return phantom(int(match["height"]), int(match["width"]), seed)

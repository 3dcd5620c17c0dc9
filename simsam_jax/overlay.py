"""Draws a segmentation over its image: prompt box, clicks, mask contour.

`draw_overlay` is what `python -m simsam_jax.segment --overlay=...` writes:
the input image with

* the mask's contour (its one-pixel inner boundary: the mask minus its
  binary erosion, the image border counting as background) painted yellow;
* the box prompt as a cyan rectangle outline;
* each click (or SAM point prompt) as a small filled disc with a dark rim,
  green for positive (label 1) and red for negative (label 0) clicks.

Drawing is pure PIL / numpy / scipy, so the same inputs always give the same
pixels.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

CONTOUR_COLOR = (255, 255, 0)  # Yellow.
BOX_COLOR = (0, 255, 255)  # Cyan.
POSITIVE_COLOR = (0, 255, 0)  # Green.
NEGATIVE_COLOR = (255, 0, 0)  # Red.
MARKER_RIM_COLOR = (0, 0, 0)

Color = Tuple[int, int, int]


def mask_contour(mask: np.ndarray) -> np.ndarray:
  """The inner boundary pixels of a binary mask.

  A mask pixel is on the contour when one of its 4-neighbours is background
  or lies outside the image.

  Args:
    mask: (H, W) bool (any dtype; nonzero is foreground).

  Returns:
    (H, W) bool, True on the contour; all False for an empty mask.
  """
  mask = np.asarray(mask, bool)
  eroded = ndimage.binary_erosion(mask, border_value=0)
  return mask & ~eroded


def marker_radius(height: int, width: int) -> int:
  """Radius in pixels of a click marker for an image of this size (>= 2)."""
  return max(2, round(min(height, width) / 80))


def draw_overlay(image: np.ndarray, mask: np.ndarray,
                 box: Optional[Sequence[float]] = None,
                 clicks: Optional[np.ndarray] = None,
                 labels: Optional[np.ndarray] = None) -> np.ndarray:
  """The image with the mask contour, the box and the clicks drawn on it.

  Args:
    image: (H, W, 3) uint8 RGB, values 0-255 (the input image).
    mask: (H, W) bool, the segmentation at the image's resolution.
    box: (x0, y0, x1, y1) in input-image pixels (floats allowed), or None.
    clicks: (K, 2) (x, y) in input-image pixels (ints or floats), or None.
    labels: (K,) ints, 1 positive (green) / 0 negative (red); required
      with `clicks`.

  Returns:
    (H, W, 3) uint8 RGB, a new array (the inputs are not modified).

  Raises:
    ValueError: on mismatched shapes.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} "
                     f"{image.dtype}")
  height, width = image.shape[:2]
  mask = np.asarray(mask, bool)
  if mask.shape != (height, width):
    raise ValueError(f"mask has shape {mask.shape}, the image is "
                     f"{height}x{width}")
  canvas = image.copy()
  canvas[mask_contour(mask)] = CONTOUR_COLOR

  picture = Image.fromarray(canvas)
  draw = ImageDraw.Draw(picture)
  if box is not None:
    x0, y0, x1, y1 = (float(value) for value in box)
    draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOR,
                   width=max(1, marker_radius(height, width) // 2))
  if clicks is not None:
    clicks = np.asarray(clicks, np.float64).reshape(-1, 2)
    if labels is None:
      raise ValueError("clicks need labels")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != clicks.shape[0]:
      raise ValueError(f"{clicks.shape[0]} clicks but {labels.shape[0]} "
                       "labels")
    radius = marker_radius(height, width)
    for (x, y), label in zip(clicks, labels):
      color = POSITIVE_COLOR if int(label) == 1 else NEGATIVE_COLOR
      draw.ellipse((x - radius, y - radius, x + radius, y + radius),
                   fill=color, outline=MARKER_RIM_COLOR)
  return np.asarray(picture, dtype=np.uint8).copy()

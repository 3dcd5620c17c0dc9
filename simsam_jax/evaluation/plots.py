"""Small, dependency-free figures (PIL + numpy): line charts and colour maps.

* `line_chart`: curves on labelled axes with a legend (mIoU vs clicks,
  risk-coverage).
* `colormap`: values in [0, 1] -> RGB through viridis' key colours.
* `agreement_image`: SimSAM's agreement map (fraction of the K candidates
  covering each pixel) colour-mapped, with a colour bar legend.

The same inputs always give the same pixels (PIL's default bitmap font).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

# Viridis at 0, 0.25, 0.5, 0.75, 1 (matplotlib's table, rounded).
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                     [253, 231, 37]], np.float64)
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
           (148, 103, 189), (140, 86, 75), (127, 127, 127))


def colormap(values: np.ndarray) -> np.ndarray:
  """(...,) floats in [0, 1] (clipped; NaN -> 0) -> (..., 3) uint8 viridis."""
  v = np.nan_to_num(np.clip(np.asarray(values, np.float64), 0.0, 1.0))
  stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
  rgb = np.stack([np.interp(v, stops, _VIRIDIS[:, c]) for c in range(3)], -1)
  return np.round(rgb).astype(np.uint8)


def agreement_image(agreement: np.ndarray, title: str = "agreement") -> Image.Image:
  """The agreement map colour-mapped, with a colour bar legend on the right.

  Args:
    agreement: (H, W) float in [0, 1], the fraction of SimSAM's candidates
      that cover each pixel (1: all agree on foreground, 0: all on
      background, 0.5: maximal disagreement).
    title: text above the colour bar.
  Returns:
    RGB image of size (W + 70, max(H, 120)): the map, then a vertical bar
    from 0 (bottom) to 1 (top) with ticks 0, 0.5, 1.
  """
  a = np.asarray(agreement, np.float64)
  h, w = a.shape
  height = max(h, 120)
  sheet = Image.new("RGB", (w + 70, height), (255, 255, 255))
  sheet.paste(Image.fromarray(colormap(a)), (0, 0))
  draw = ImageDraw.Draw(sheet)
  top, bottom, x0 = 16, height - 8, w + 8
  ramp = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(12, 1)
  sheet.paste(Image.fromarray(colormap(ramp)), (x0, top))
  draw.rectangle([x0, top, x0 + 11, bottom - 1], outline=(0, 0, 0))
  draw.text((w + 4, 2), title, fill=(0, 0, 0))
  for value in (0.0, 0.5, 1.0):
    y = bottom - 1 - value * (bottom - top - 1)
    draw.line([x0 + 12, y, x0 + 15, y], fill=(0, 0, 0))
    draw.text((x0 + 18, y - 5), f"{value:g}", fill=(0, 0, 0))
  return sheet


def line_chart(series: Sequence[Tuple[str, Sequence[float], Sequence[float]]],
               title: str, xlabel: str, ylabel: str,
               xlim: Optional[Tuple[float, float]] = None,
               ylim: Tuple[float, float] = (0.0, 1.0),
               size: Tuple[int, int] = (560, 380),
               hlines: Sequence[float] = ()) -> Image.Image:
  """Curves on one pair of axes, legend in the lower right.

  Args:
    series: (label, xs, ys) per curve; NaN points are skipped.
    title, xlabel, ylabel: texts.
    xlim: x range (default: the data's); ylim: y range.
    size: (width, height) in pixels.
    hlines: y values drawn as dotted grey reference lines (e.g. 0.85, 0.9).
  """
  width, height = size
  left, right, top, bottom = 56, 16, 28, 44
  img = Image.new("RGB", size, (255, 255, 255))
  draw = ImageDraw.Draw(img)
  xs_all = [float(x) for _, xs, _ in series for x in xs]
  if xlim is None:
    xlim = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
  if xlim[1] == xlim[0]:
    xlim = (xlim[0], xlim[0] + 1.0)
  pw, ph = width - left - right, height - top - bottom
  to_px = lambda x, y: (left + (x - xlim[0]) / (xlim[1] - xlim[0]) * pw,
                        top + (1.0 - (y - ylim[0]) / (ylim[1] - ylim[0])) * ph)
  draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
  for i in range(6):
    yv = ylim[0] + i * (ylim[1] - ylim[0]) / 5
    _, y = to_px(xlim[0], yv)
    draw.line([left - 4, y, left, y], fill=(0, 0, 0))
    draw.text((4, y - 5), f"{yv:.2f}", fill=(0, 0, 0))
    xv = xlim[0] + i * (xlim[1] - xlim[0]) / 5
    x, _ = to_px(xv, ylim[0])
    draw.line([x, top + ph, x, top + ph + 4], fill=(0, 0, 0))
    draw.text((x - 10, top + ph + 6), f"{xv:g}", fill=(0, 0, 0))
  for yv in hlines:
    _, y = to_px(xlim[0], yv)
    for x in range(left, left + pw, 6):
      draw.line([x, y, x + 2, y], fill=(160, 160, 160))
  draw.text((left, 8), title, fill=(0, 0, 0))
  draw.text((left + pw // 2 - 3 * len(xlabel), height - 16), xlabel, fill=(0, 0, 0))
  draw.text((4, top - 16), ylabel, fill=(0, 0, 0))
  for i, (label, xs, ys) in enumerate(series):
    color = PALETTE[i % len(PALETTE)]
    points = [to_px(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(y)]
    if len(points) > 1:
      draw.line(points, fill=color, width=2)
    for x, y in points if len(points) <= 40 else ():
      draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    ly = top + ph - 16 * (len(series) - i)
    draw.line([left + pw - 150, ly + 5, left + pw - 132, ly + 5], fill=color, width=3)
    draw.text((left + pw - 128, ly), label, fill=(0, 0, 0))
  return img

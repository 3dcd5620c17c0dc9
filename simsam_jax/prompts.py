"""Prompts and SimSAM settings from user values, checked before any work.

Used by `simsam_jax.Predictor` and the `segment` command alike, so both
refuse the same inputs with the same messages (which name the command's
flags: `--box`, `--point`, `--k`, ...). Expected errors raise
`PredictorError` (a ValueError).

* `parse_box("x0,y0,x1,y1")`, `parse_point("x,y,label")`: strings -> tuples.
* `as_box(value)`, `as_points(points, labels)`: arrays -> the same tuples.
* `check_prompts(box, points, (H, W))`: a prompt is given and lies on the image.
* `check_simsam_box(box)`: SimSAM's box has an area.
* `parse_simsam_config(k, clicks, aggregation, mask_prompt, seed)`: a
  validated `SimSamConfig`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

from simsam_jax.simsam import AGGREGATIONS, CLICK_STRATEGIES, MASK_PROMPTS, SimSamConfig

# The `random` click strategy's key is `jax.random.key(seed)`, which keeps
# only 32 bits (and wraps larger values) without x64: seeds stay in int32.
MAX_SEED = 2**31 - 1

Box = Tuple[float, float, float, float]
Point = Tuple[float, float, int]  # (x, y, label)


class PredictorError(ValueError):
  """An expected user error; the message names the flag or file at fault."""


def _parse_floats(text: str, count: int, flag: str, form: str) -> list[float]:
  """`count` comma-separated finite floats, or PredictorError naming `flag`."""
  parts = [part.strip() for part in text.split(",")]
  if len(parts) != count:
    raise PredictorError(f"--{flag}={text!r}: expected {form} "
                         f"({count} comma-separated numbers)")
  try:
    values = [float(part) for part in parts]
  except ValueError:
    raise PredictorError(f"--{flag}={text!r}: expected {form} with numeric "
                         "values") from None
  if not all(math.isfinite(value) for value in values):
    raise PredictorError(f"--{flag}={text!r}: values must be finite")
  return values


def parse_box(text: str) -> Box:
  """Parses `--box=x0,y0,x1,y1` (input-image pixels).

  Args:
    text: four comma-separated numbers.

  Returns:
    (x0, y0, x1, y1) floats with x0 <= x1 and y0 <= y1.

  Raises:
    PredictorError: on a malformed string or an inverted box.
  """
  x0, y0, x1, y1 = _parse_floats(text, 4, "box", "x0,y0,x1,y1")
  if x1 < x0 or y1 < y0:
    raise PredictorError(f"--box={text!r}: needs x0 <= x1 and y0 <= y1")
  return x0, y0, x1, y1


def parse_point(text: str) -> Point:
  """Parses `--point=x,y,label` (input-image pixels; label 1 or 0).

  Args:
    text: `x,y,label`; label 1 marks foreground, 0 background.

  Returns:
    (x, y, label) with float x, y and int label in {0, 1}.

  Raises:
    PredictorError: on a malformed string or another label.
  """
  parts = text.split(",")
  if len(parts) != 3:
    raise PredictorError(f"--point={text!r}: expected x,y,label "
                         "(label 1 positive, 0 negative)")
  x, y = _parse_floats(",".join(parts[:2]), 2, "point", "x,y,label")
  label = parts[2].strip()
  if label not in ("0", "1"):
    raise PredictorError(f"--point={text!r}: label must be 1 (positive) or 0 "
                         f"(negative), got {label!r}")
  return x, y, int(label)


def check_prompts(box: Optional[Box], points: Sequence[Point],
                  image_size: Tuple[int, int]) -> None:
  """Checks that there is a prompt and that it lies on the image.

  Coordinates may touch the far edges: x in [0, W], y in [0, H].

  Args:
    box: (x0, y0, x1, y1) input-image pixels, or None.
    points: (x, y, label) tuples in input-image pixels.
    image_size: (H, W) of the input image.

  Raises:
    PredictorError: without any prompt, or for one outside the image.
  """
  height, width = image_size
  if box is None and not points:
    raise PredictorError("give a prompt: --box=x0,y0,x1,y1 and/or "
                         "--point=x,y,label")

  def inside(x, y):
    return 0 <= x <= width and 0 <= y <= height

  if box is not None and not (inside(box[0], box[1]) and
                              inside(box[2], box[3])):
    raise PredictorError(
        f"--box={_format_numbers(box)} lies outside the {width}x{height} "
        f"(WxH) image; coordinates must be in [0, {width}] x [0, {height}]")
  for point in points:
    if not inside(point[0], point[1]):
      raise PredictorError(
          f"--point={_format_numbers(point)} lies outside the {width}x{height} "
          f"(WxH) image; coordinates must be in [0, {width}] x [0, {height}]")


def _format_numbers(values: Sequence[float]) -> str:
  return ",".join(f"{value:g}" for value in values)


def parse_simsam_config(k: Optional[int] = None, clicks: Optional[str] = None,
                        aggregation: Optional[str] = None,
                        mask_prompt: Optional[str] = None,
                        seed: Optional[int] = None) -> SimSamConfig:
  """Builds the SimSAM configuration from flag values.

  Args:
    k: `--k`, the number of simulated clicks (>= 1); None for the default.
    clicks: `--clicks`, a `CLICK_STRATEGIES` name; None for the default.
    aggregation: `--aggregation`, an `AGGREGATIONS` name; None: default.
    mask_prompt: `--mask_prompt`, a `MASK_PROMPTS` name; None: default.
    seed: `--seed` in [0, 2^31 - 1], the `random` strategy's key; None:
      default.

  Returns:
    A validated `SimSamConfig` (the paper's defaults where None).

  Raises:
    PredictorError: naming the flag of a bad value or unknown name.
  """
  defaults = SimSamConfig()
  k = defaults.k if k is None else k
  seed = defaults.seed if seed is None else seed
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
    raise PredictorError(f"--k={k!r}: the number of clicks must be a positive "
                         "integer")
  if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
      or not 0 <= seed <= MAX_SEED):
    raise PredictorError(f"--seed={seed!r}: must be an integer in "
                         f"[0, {MAX_SEED}]")
  names = {}
  for flag, value, registry in (("clicks", clicks, CLICK_STRATEGIES),
                                ("aggregation", aggregation, AGGREGATIONS),
                                ("mask_prompt", mask_prompt, MASK_PROMPTS)):
    value = getattr(defaults, flag) if value is None else value
    if value not in registry:
      raise PredictorError(f"--{flag}={value!r}: unknown {registry.kind}; "
                           f"known: {', '.join(registry.names())}")
    names[flag] = value
  return SimSamConfig(k=int(k), seed=int(seed), **names).validate()


def check_simsam_box(box: Box) -> None:
  """SimSAM's prompt is the box: it must have an area.

  Args:
    box: (x0, y0, x1, y1) input-image pixels with x0 <= x1, y0 <= y1.

  Raises:
    PredictorError: when x1 == x0 or y1 == y0.
  """
  if box[2] == box[0] or box[3] == box[1]:
    raise PredictorError(f"--box={_format_numbers(box)} is empty (zero width "
                         "or height); SimSAM needs a box with an area")


def _number(value: float) -> str:
  """A float as a flag would spell it: `9` for 9.0, full precision else."""
  return str(int(value)) if value.is_integer() else repr(value)


def _as_floats(value, flag: str) -> np.ndarray:
  try:
    return np.asarray(value, np.float64).reshape(-1)
  except (TypeError, ValueError):
    raise PredictorError(f"--{flag}={value!r}: expected numbers") from None


def as_box(value) -> Optional[Box]:
  """A box given as numbers -> `parse_box`'s tuple (same checks, messages).

  Args:
    value: None, or 4 numbers (x0, y0, x1, y1) in input-image pixels (a
      list, tuple or array of shape (4,) or (1, 4)).
  """
  if value is None:
    return None
  return parse_box(",".join(_number(float(v)) for v in _as_floats(value, "box")))


def as_points(points, point_labels) -> list[Point]:
  """Point prompts given as arrays -> `parse_point`'s tuples.

  Args:
    points: None or (N, 2) (x, y) input-image pixels.
    point_labels: None or (N,) ints, 1 positive / 0 negative; required with
      `points`.

  Raises:
    PredictorError: for mismatched shapes or labels other than 0 / 1 (as
      `parse_point`).
  """
  if points is None and point_labels is None:
    return []
  if points is None or point_labels is None:
    raise PredictorError("--point: points and point_labels must be given "
                         "together")
  xy = _as_floats(points, "point").reshape(-1, 2) if np.size(points) % 2 == 0 \
      else None
  labels = np.asarray(point_labels).reshape(-1)
  if xy is None or xy.shape[0] != labels.shape[0]:
    raise PredictorError(f"--point: expected (N, 2) points and (N,) labels, "
                         f"got shapes {np.shape(points)} and "
                         f"{np.shape(point_labels)}")
  return [parse_point(f"{_number(x)},{_number(y)},{label}") for (x, y), label
          in zip(xy.tolist(), labels.tolist())]


def check_simsam_prompt(config: SimSamConfig, box: Box,
                        image_size: Tuple[int, int]) -> None:
  """SimSAM's box lies on the image and has an area; K fits the image.

  Raises:
    PredictorError: naming --box or --k.
  """
  check_prompts(box, [], image_size)
  check_simsam_box(box)
  num_pixels = image_size[0] * image_size[1]
  if config.k > num_pixels:
    raise PredictorError(f"--k={config.k} exceeds the number of pixels of "
                         f"the {image_size[1]}x{image_size[0]} (WxH) image "
                         f"({num_pixels})")


def check_ground_truth_need(config: SimSamConfig, ground_truth) -> None:
  """A strategy that declared `needs_ground_truth` at registration (`oracle`)
  gets a ground truth.

  Raises:
    PredictorError: naming the strategy flags.
  """
  if config.needs_ground_truth and ground_truth is None:
    raise PredictorError(f"--clicks={config.clicks} --aggregation={config.aggregation} "
                         "needs a ground truth: give --ground_truth=MASK or a "
                         "synthetic --image")

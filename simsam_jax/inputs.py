"""The image and ground truth to segment, from user values (`--image`, ...).

* `load_input_image(spec, intensity, slice_index, axis)`: a file
  (`processing.read_image`, the one reader `read_file` under `CLI_IMAGE`:
  PNG/JPEG/TIFF, NIfTI slice, DICOM) or a phantom
  (`synthetic[:SEED[:HxW]]`) -> `InputImage`.
* `load_ground_truth(path, (H, W))`: a mask file (`processing.read_file`,
  `CLI_MASK`) -> (H, W) bool, checked against the image size.

Errors are `PredictorError` naming the flag and the file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple

import numpy as np

from simsam_jax import processing, synthetic
from simsam_jax.prompts import PredictorError


@dataclasses.dataclass(frozen=True)
class InputImage:
  """The image to segment.

  Attributes:
    pixels: (H, W, 3) uint8 RGB, values 0-255.
    spec: the `--image` value (path or synthetic spec).
    synthetic_box: for a synthetic image, the ground-truth box (x0, y0, x1,
      y1) inclusive ints; None for a file.
    synthetic_mask: for a synthetic image, the (H, W) bool ground-truth
      mask; None for a file.
    loaded: for a file, what `processing.read_image` learnt (intensity
      policy, source dtype, spacing, NIfTI volume); None for a phantom.
  """
  pixels: np.ndarray
  spec: str
  synthetic_box: Optional[Tuple[int, int, int, int]] = None
  synthetic_mask: Optional[np.ndarray] = None
  loaded: Optional[processing.LoadedImage] = None


def load_input_image(spec: str, intensity: Optional[str] = None,
                     slice_index: Optional[int] = None,
                     axis: int = 2) -> InputImage:
  """Loads `--image`: a file (`processing.read_image`) or a phantom.

  Args:
    spec: the `--image` value.
    intensity: `--intensity` (`processing.parse_intensity`), or None.
    slice_index, axis: `--slice` and `--axis` for a NIfTI volume.

  Raises:
    PredictorError: for a missing or unreadable file, a malformed synthetic
      spec or intensity policy, non-finite or constant pixels, or a bad
      slice; the message names the flag and the file.
  """
  try:
    policy = processing.parse_intensity(intensity)
  except ValueError as error:
    raise PredictorError(str(error)) from None
  try:
    generated = synthetic.parse_image_spec(spec)
    if generated is not None:
      if slice_index is not None:
        raise PredictorError("--slice only applies to a NIfTI --image")
      image, mask, box = generated
      if policy is not None:
        image = processing.apply_intensity(image, policy, spec)[0]
      return InputImage(pixels=image, spec=spec, synthetic_box=box,
                        synthetic_mask=mask)
    loaded = processing.read_image(spec, policy, slice_index, axis)
    return InputImage(pixels=loaded.pixels, spec=spec, loaded=loaded)
  except PredictorError:
    raise
  except (OSError, ValueError) as error:
    raise PredictorError(f"--image={spec!r}: {error}") from None


def load_ground_truth(path: str, image_size: Tuple[int, int]) -> np.ndarray:
  """Reads `--ground_truth`, a mask image of the input image's size.

  Decoded by `processing.read_file` under `CLI_MASK` (foreground is value
  > 0 after conversion to grayscale).

  Args:
    path: the mask file.
    image_size: (H, W) of the input image.

  Returns:
    (H, W) bool, True on the foreground.

  Raises:
    PredictorError: naming --ground_truth and the file when it is missing,
      unreadable, not a single 2-D image, or not of size (H, W).
  """
  flag = f"--ground_truth={path!r}"
  if not os.path.exists(path):
    raise PredictorError(f"{flag}: mask file not found")
  if not os.path.isfile(path):
    raise PredictorError(f"{flag}: not a file")
  try:
    gray = processing.read_file(path, processing.CLI_MASK).pixels
  except ValueError as error:  # the decoder's own words, or not one 2-D image
    detail = getattr(error, "cause", None) or error
    raise PredictorError(f"{flag}: cannot read the mask: {detail}") from None
  height, width = image_size
  if gray.shape != (height, width):
    raise PredictorError(
        f"{flag}: the mask is {gray.shape[1]}x{gray.shape[0]} (WxH) but the "
        f"image is {width}x{height}; the ground truth must have the image's "
        "size")
  return gray > 0

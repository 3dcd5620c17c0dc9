"""SAM's pre- and post-processing: resize, normalise, pad; logits back out.

Mirrors the official `segment_anything` predictor (`ResizeLongestSide`,
`Sam.preprocess`, `Sam.postprocess_masks`) and the Hugging Face
`SamImageProcessor` (`preprocess`, `post_process_masks`):

1. `resize_longest_side`: the longer image side becomes `image_size` (1024),
   the other keeps the aspect ratio (rounded half up), PIL bilinear resampling
   of the uint8 image.
2. `normalize_and_pad`: `(pixel - PIXEL_MEAN) / PIXEL_STD` on the 0-255 scale,
   then zero padding at the bottom and right to `image_size` x `image_size`.
3. The model predicts low-resolution logits (`image_size / 4` square, 256).
   `upscale_logits` undoes steps 2 and 1 on them: bilinear upsampling to the
   padded square, crop of the padding, bilinear resize to the original size.

Conventions: images are HWC (or NHWC) numpy uint8 RGB; coordinates are
`(x, y)` in pixels; sizes are `(height, width)`. Pre-processing is host-side
numpy (it needs PIL); post-processing is pure JAX and jittable, with every
shape static (taken from `ImageInfo` or plain ints).

Deliberate deviations from the PyTorch references, with their reasons:

* Channels last. Pixels come out as (S, S, 3) and not (3, S, S) because the
  Flax model is NHWC; the values are the same (transpose to compare).
* Resizing uses PIL's bilinear filter on the uint8 image, exactly what both
  references do (torchvision's `resize` of a PIL image calls
  `PIL.Image.resize(..., BILINEAR)`; HF's PIL backend does the same), but
  without torchvision, which is not a dependency. PIL's bilinear filter
  antialiases when it shrinks, so the result is *not* equal to
  `F.interpolate(..., antialias=False)`; `ResizeLongestSide.apply_image_torch`
  is the official code's own approximate variant and is not reproduced.
* `preprocess_shape` raises `ValueError` when a side would round to 0 pixels
  (an extreme aspect ratio such as 1 x 3000), where the references return 0 and
  fail later inside the resize.
* `apply_boxes` keeps the leading shape of its input, (..., 4) -> (..., 4);
  the official `apply_boxes` flattens to (N, 4). Values are identical.
* Coordinates are computed in float64 like the references and returned as
  float32, the dtype the official predictor casts them to before the prompt
  encoder. HF keeps float64 (and casts boxes to float32 *before* scaling), so
  HF values can differ from ours in the last float32 bit for non-integral
  boxes.
* `normalize_and_pad` computes in float32 with float32 constants, the same IEEE
  operations as the official `Sam.preprocess` (bit-identical); HF first
  rescales to [0, 1] and normalises with ImageNet mean/std, algebraically the
  same, within 1e-6 of ours.
* Logit resizing uses `jax.image.resize(method="linear", antialias=False)`,
  which equals `F.interpolate(mode="bilinear", align_corners=False)` (half-pixel
  centres, edge samples clamped) up to float32 rounding (~1e-6).
* `read_file` is the one image and mask reader (the command line,
  `Predictor` and the dataset builders), its `ReadPolicy` saying what each
  needs: `CLI_IMAGE`, `CLI_MASK`, `DATASET_IMAGE`, `DATASET_MASK`.
* `load_image` drops an alpha channel (the pixel values under it are kept, as
  OpenCV's `imread` does for the official demo); HF's `convert_to_rgb`
  composites RGBA onto white instead. EXIF orientation is *not* applied, so
  images stay aligned with ground-truth masks stored without it. Pixels of
  more than 8 bits, signed or float are scaled to 8 bits by an explicit,
  recorded intensity policy (`apply_intensity`, default `minmax`) and
  truncated as MedSAM's CT/MR pre-processing does; 8-bit pixels are kept.
  Pillow reads 16-bit RGB PNGs as 8-bit RGB (its own reduction); 16-bit
  colour is kept only from TIFFs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

DEFAULT_IMAGE_SIZE = 1024
# Ratio between the padded model input side and the low-resolution logits side.
LOW_RES_DOWNSCALE = 4

_TIFF_SUFFIXES = (".tif", ".tiff")

Size = Tuple[int, int]
PathLike = Union[str, os.PathLike]


def as_size(size: Sequence[int], name: str) -> Size:
  """Returns `size` as a `(height, width)` tuple of positive Python ints."""
  try:
    height, width = (int(dim) for dim in size)
  except (TypeError, ValueError) as error:
    raise ValueError(
        f"{name} must be a (height, width) pair of ints, got {size!r}"
    ) from error
  if height <= 0 or width <= 0:
    raise ValueError(f"{name} must be positive, got {(height, width)}")
  return height, width


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """Sizes that link an input image to the padded model input.

  Hashable, so it can be a static argument of `jax.jit`.

  Attributes:
    original_size: (height, width) of the image as loaded.
    resized_size: (height, width) after `resize_longest_side`; the valid,
      unpadded top-left corner of the model input.
    image_size: side of the square, padded model input (1024).
    profile: name of the `simsam_jax.profiles` profile that made the model
      input ("sam": this module's pre- and post-processing); jitted code
      maps coordinates and logits through that profile's geometry.
  """

  original_size: Size
  resized_size: Size
  image_size: int = DEFAULT_IMAGE_SIZE
  profile: str = "sam"

  def __post_init__(self):
    object.__setattr__(self, "original_size",
                       as_size(self.original_size, "original_size"))
    object.__setattr__(self, "resized_size",
                       as_size(self.resized_size, "resized_size"))
    object.__setattr__(self, "image_size", int(self.image_size))
    if max(self.resized_size) > self.image_size:
      raise ValueError(f"resized_size={self.resized_size} does not fit in "
                       f"image_size={self.image_size}")

  @property
  def low_res_size(self) -> int:
    """Side of the square low-resolution logits of the mask decoder (256)."""
    return self.image_size // LOW_RES_DOWNSCALE


# ----------------------------------------------------------------------------
# Pre-processing (numpy, host side).
# ----------------------------------------------------------------------------


def preprocess_shape(height: int, width: int,
                     long_side: int = DEFAULT_IMAGE_SIZE) -> Size:
  """Size of an image after resizing its longest side to `long_side`.

  Same arithmetic as the official `ResizeLongestSide.get_preprocess_shape`
  and HF `SamImageProcessor._get_preprocess_shape`: each side is scaled by
  `long_side / max(height, width)` and rounded half up.

  Args:
    height: image height in pixels, > 0.
    width: image width in pixels, > 0.
    long_side: target length of the longest side in pixels, > 0.

  Returns:
    (new_height, new_width), both in [1, long_side].

  Raises:
    ValueError: on non-positive sizes, or when a side would round to 0.
  """
  height, width = as_size((height, width), "(height, width)")
  if int(long_side) <= 0:
    raise ValueError(f"long_side must be positive, got {long_side}")
  scale = int(long_side) * 1.0 / max(height, width)
  new_height = int(height * scale + 0.5)
  new_width = int(width * scale + 0.5)
  if new_height == 0 or new_width == 0:
    raise ValueError(
        f"an image of size {(height, width)} resized to long side {long_side} "
        f"has a side of 0 pixels ({(new_height, new_width)})")
  return new_height, new_width


def _grey_to_three_channels(array: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, 1) -> (H, W, 3) by repeating the channel; other shapes
  unchanged (the caller checks them with its own message)."""
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  return array


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
  """Checks a uint8 image and returns it as a contiguous HxWx3 array.

  Args:
    image: (H, W), (H, W, 1) or (H, W, 3) uint8, values 0-255.
    name: how to call the argument in error messages.
  """
  if not isinstance(image, np.ndarray):
    raise ValueError(f"{name} must be a numpy array, got {type(image)}")
  if image.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8 (values 0-255), got dtype "
                     f"{image.dtype}")
  image = _grey_to_three_channels(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"{name} must be HxW, HxWx1 or HxWx3 (RGB), got shape "
                     f"{image.shape}")
  if image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f"{name} is empty, shape {image.shape}")
  return np.ascontiguousarray(image)


def resize_longest_side(image: np.ndarray,
                        long_side: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
  """Resizes an image so that its longest side is `long_side` pixels.

  PIL bilinear resampling of the uint8 image (antialiased when shrinking), as
  the official `ResizeLongestSide.apply_image` and HF `SamImageProcessor`;
  equal to HF's resized image bit for bit.

  Args:
    image: (H, W, 3) uint8 RGB, values 0-255. Grayscale (H, W) or (H, W, 1)
      is replicated to 3 channels.
    long_side: length in pixels of the longest output side, > 0.

  Returns:
    (new_H, new_W, 3) uint8 RGB with `(new_H, new_W) = preprocess_shape(H, W,
    long_side)`.

  Raises:
    ValueError: on another dtype or shape.
  """
  image = as_rgb_uint8(image)
  new_height, new_width = preprocess_shape(image.shape[0], image.shape[1],
                                           long_side)
  resized = Image.fromarray(image).resize((new_width, new_height),
                                          Image.BILINEAR)
  return np.asarray(resized)


def normalize_and_pad(resized_image: np.ndarray,
                      image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
  """Normalises pixel values and zero-pads to a square model input.

  `(pixel - PIXEL_MEAN) / PIXEL_STD` in float32 (the official `Sam.preprocess`
  arithmetic), then zeros below and to the right.

  Args:
    resized_image: (h, w, 3) uint8 RGB, values 0-255, h and w <= image_size
      (the output of `resize_longest_side`). Grayscale (h, w) or (h, w, 1) is
      replicated to 3 channels.
    image_size: side of the padded output.

  Returns:
    (image_size, image_size, 3) float32, roughly in [-2.2, 2.7] inside the
    top-left (h, w) corner and 0 in the padding.
  """
  resized_image = as_rgb_uint8(resized_image, "resized_image")
  height, width = resized_image.shape[:2]
  if height > image_size or width > image_size:
    raise ValueError(f"resized_image of size {(height, width)} does not fit in "
                     f"image_size={image_size}")
  mean = np.asarray(PIXEL_MEAN, dtype=np.float32)
  std = np.asarray(PIXEL_STD, dtype=np.float32)
  padded = np.zeros((image_size, image_size, 3), dtype=np.float32)
  padded[:height, :width] = (resized_image.astype(np.float32) - mean) / std
  return padded


def preprocess(image: np.ndarray, image_size: int = DEFAULT_IMAGE_SIZE
               ) -> Tuple[np.ndarray, ImageInfo]:
  """Turns an image into SAM's model input.

  Args:
    image: (H, W, 3) uint8 RGB, values 0-255 (or grayscale (H, W) /
      (H, W, 1)).
    image_size: side of the square model input (1024 for the released SAM).

  Returns:
    pixels: (image_size, image_size, 3) float32, normalised and zero-padded.
    info: the original and resized sizes, for `apply_coords`,
      `apply_boxes` and `postprocess_logits`.
  """
  image = as_rgb_uint8(image)
  resized = resize_longest_side(image, image_size)
  info = ImageInfo(original_size=image.shape[:2],
                   resized_size=resized.shape[:2], image_size=image_size)
  return normalize_and_pad(resized, image_size), info


def apply_coords(coords: np.ndarray, original_size: Sequence[int],
                 resized_size: Sequence[int]) -> np.ndarray:
  """Maps point coordinates from the original image to the model input.

  `x * new_w / old_w`, `y * new_h / old_h` in float64 as the official
  `ResizeLongestSide.apply_coords`, then cast to float32.

  Args:
    coords: (..., 2) array-like of (x, y) pixel coordinates in the original
      image, any real dtype, values usually in [0, W] x [0, H].
    original_size: (H, W) of the original image.
    resized_size: (new_H, new_W) of the resized image (`ImageInfo`).

  Returns:
    (..., 2) float32 (x, y) in model-input pixels.
  """
  old_height, old_width = as_size(original_size, "original_size")
  new_height, new_width = as_size(resized_size, "resized_size")
  coords = np.array(coords, dtype=np.float64)
  if coords.ndim == 0 or coords.shape[-1] != 2:
    raise ValueError(f"coords must have shape (..., 2), got {coords.shape}")
  coords[..., 0] = coords[..., 0] * (new_width / old_width)
  coords[..., 1] = coords[..., 1] * (new_height / old_height)
  return coords.astype(np.float32)


def apply_boxes(boxes: np.ndarray, original_size: Sequence[int],
                resized_size: Sequence[int]) -> np.ndarray:
  """Maps boxes from the original image to the model input.

  Args:
    boxes: (..., 4) array-like of (x0, y0, x1, y1) pixel boxes in the
      original image, any real dtype.
    original_size: (H, W) of the original image.
    resized_size: (new_H, new_W) of the resized image (`ImageInfo`).

  Returns:
    (..., 4) float32 boxes in model-input pixels (leading shape kept).
  """
  boxes = np.asarray(boxes)
  if boxes.ndim == 0 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must have shape (..., 4), got {boxes.shape}")
  corners = apply_coords(boxes.reshape(boxes.shape[:-1] + (2, 2)),
                         original_size, resized_size)
  return corners.reshape(boxes.shape)


# ----------------------------------------------------------------------------
# Post-processing (pure JAX, jittable).
# ----------------------------------------------------------------------------


def resize_logits_to(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of the last two axes, without antialiasing.

  Equals `torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)` (half-pixel centres, clamped edges) up to float32
  rounding, also when shrinking.

  Args:
    logits: (..., h, w) float logits (any real dtype; integers become
      float32).
    size: (new_h, new_w) static output size.

  Returns:
    (..., new_h, new_w), float32 or wider.
  """
  logits = jnp.asarray(logits)
  if logits.ndim < 2:
    raise ValueError(f"logits must have shape (..., h, w), got {logits.shape}")
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  size = as_size(size, "size")
  return jax.image.resize(logits.astype(dtype), logits.shape[:-2] + size,
                          method="linear", antialias=False)


@functools.partial(jax.jit, static_argnames=("image_size", "resized_size",
                                             "original_size"))
def _upscale_logits(low_res_logits: jax.Array, image_size: int,
                    resized_size: Size, original_size: Size) -> jax.Array:
  padded = resize_logits_to(low_res_logits, (image_size, image_size))
  cropped = padded[..., :resized_size[0], :resized_size[1]]
  return resize_logits_to(cropped, original_size)


def upscale_logits(low_res_logits: jax.Array, image_size: int,
                   resized_size: Sequence[int],
                   original_size: Sequence[int]) -> jax.Array:
  """Low-resolution logits back to the original image, as SAM does.

  Bilinear (no antialias) upsampling to (image_size, image_size), crop of the
  padding to `resized_size`, bilinear resize to `original_size`: the official
  `Sam.postprocess_masks` and HF `post_process_masks(binarize=False)`.
  Jitted per (input shape, sizes); usable inside other jitted functions.

  Args:
    low_res_logits: (..., M, M) float logits, normally M = image_size / 4
      (256); any (..., h, w) works.
    image_size: side of the padded model input (1024).
    resized_size: (new_H, new_W), the unpadded part of the model input.
    original_size: (H, W) of the original image.

  Returns:
    (..., H, W) float32 logits (> 0 is foreground).
  """
  resized_size = as_size(resized_size, "resized_size")
  original_size = as_size(original_size, "original_size")
  image_size = int(image_size)
  if max(resized_size) > image_size:
    raise ValueError(f"resized_size={resized_size} does not fit in "
                     f"image_size={image_size}")
  return _upscale_logits(low_res_logits, image_size=image_size,
                         resized_size=resized_size,
                         original_size=original_size)


def postprocess_logits(low_res_logits: jax.Array,
                       info: ImageInfo) -> jax.Array:
  """`upscale_logits` with the sizes of `info`.

  Args:
    low_res_logits: (..., M, M) float logits of the mask decoder,
      M = info.image_size / 4 (256).
    info: sizes from `preprocess`.

  Returns:
    (..., H, W) float32 logits at `info.original_size`.
  """
  return upscale_logits(low_res_logits, info.image_size, info.resized_size,
                        info.original_size)


def postprocess_masks(low_res_logits: jax.Array, info: ImageInfo,
                      mask_threshold: float = 0.0) -> jax.Array:
  """Binary masks at the original image size.

  Args:
    low_res_logits: (..., M, M) float logits of the mask decoder.
    info: sizes from `preprocess`.
    mask_threshold: logit threshold (SAM uses 0.0).

  Returns:
    (..., H, W) bool, True for `logits > mask_threshold`.
  """
  return postprocess_logits(low_res_logits, info) > mask_threshold


# ----------------------------------------------------------------------------
# Intensities.
# ----------------------------------------------------------------------------

INTENSITY_NONE = "none"
INTENSITY_FORMS = ("minmax", "window:LO,HI", "percentile:P_LO,P_HI")


@dataclasses.dataclass(frozen=True)
class IntensityPolicy:
  """How pixel values of any depth become 0-255.

  Attributes:
    kind: "minmax" (the image's min -> 0, max -> 255), "window" (`low` -> 0,
      `high` -> 255, clipped outside: CT-style windows in the file's units,
      e.g. Hounsfield), "percentile" (the `low`-th and `high`-th percentiles
      -> 0 and 255, clipped), or "none" (8-bit pixels kept as they are).
    low, high: the window bounds or percentiles (None for minmax / none).
  """
  kind: str
  low: Optional[float] = None
  high: Optional[float] = None

  def __str__(self) -> str:
    if self.low is None:
      return self.kind
    return f"{self.kind}:{self.low:g},{self.high:g}"


def parse_intensity(text: Optional[str],
                    flag: str = "--intensity") -> Optional[IntensityPolicy]:
  """Parses `minmax`, `window:LO,HI` or `percentile:P_LO,P_HI` (None: None).

  Raises:
    ValueError: naming `flag` for an unknown policy or bad bounds.
  """
  if text is None:
    return None
  kind, _, bounds = text.strip().partition(":")
  if kind == "minmax" and not bounds:
    return IntensityPolicy("minmax")
  if kind in ("window", "percentile") and bounds:
    parts = bounds.split(",")
    try:
      low, high = (float(part) for part in parts)
    except ValueError:
      low = high = float("nan")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
      raise ValueError(f"{flag}={text!r}: expected {kind}:LO,HI with finite "
                       "numbers and LO < HI")
    if kind == "percentile" and not 0 <= low < high <= 100:
      raise ValueError(f"{flag}={text!r}: percentiles must satisfy "
                       "0 <= P_LO < P_HI <= 100")
    return IntensityPolicy(kind, low, high)
  raise ValueError(f"{flag}={text!r}: unknown intensity policy; expected one "
                   f"of {', '.join(INTENSITY_FORMS)}")


def apply_intensity(pixels: np.ndarray, policy: Optional[IntensityPolicy],
                    name: str) -> Tuple[np.ndarray, str]:
  """Brings decoded pixels to 8 bits with an intensity policy.

  8-bit pixels stay untouched without a policy; anything else (16-bit,
  signed, float) defaults to `minmax`. Values are scaled to [0, 255] over all
  channels together and truncated to uint8, as MedSAM's own CT/MR
  pre-processing does (`np.uint8(scaled)`).

  Args:
    pixels: (H, W) or (H, W, C) decoded pixels, any real dtype or bool.
    policy: a parsed policy, or None for the default.
    name: the file (or flag) named in error messages.

  Returns:
    (uint8 pixels of the input's shape, the policy applied as a string:
    "none", "minmax", "window:LO,HI" or "percentile:P_LO,P_HI").

  Raises:
    ValueError: naming `name` for non-finite pixels, or for a constant image
      under `minmax` / `percentile` (there is no range to scale).
  """
  if pixels.dtype == np.bool_:
    pixels = pixels.astype(np.uint8) * 255
  if policy is None:
    if pixels.dtype == np.uint8:
      return pixels, INTENSITY_NONE
    policy = IntensityPolicy("minmax")
  if not (np.issubdtype(pixels.dtype, np.integer)
          or np.issubdtype(pixels.dtype, np.floating)):
    raise ValueError(f"{name}: {pixels.dtype} pixels are not supported")
  values = pixels.astype(np.float64)
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{name}: the image holds non-finite pixels (NaN or "
                     "Inf); fix the file or mask them before segmenting")
  if policy.kind == "window":
    low, high = policy.low, policy.high
  elif policy.kind == "percentile":
    low, high = np.percentile(values, [policy.low, policy.high])
  else:
    low, high = values.min(), values.max()
  if not high > low:
    raise ValueError(
        f"{name}: the image is constant ({low:g}) under --intensity="
        f"{policy}; there is no intensity range to scale")
  scaled = (np.clip(values, low, high) - low) / (high - low) * 255.0
  return scaled.astype(np.uint8), str(policy)


# ----------------------------------------------------------------------------
# Image files.
# ----------------------------------------------------------------------------


def decode_tiff(source) -> np.ndarray:
  """The one TIFF decoder (images and masks, files and archive members).

  Reads the first series with tifffile (any bit depth; Pillow cannot open
  CVC-ClinicDB's 3-sample MinIsBlack TIFFs). Planar storage is recognised by
  the series axes (`SYX`: samples first) and moved to (H, W, S).

  Args:
    source: a path or a binary file object.

  Returns:
    (H, W) or (H, W, S) array of the stored dtype.

  Raises:
    ValueError: for no image, no pixel data, or more than one 2-D image.
  """
  import tifffile  # pylint: disable=import-outside-toplevel

  with tifffile.TiffFile(source) as tiff:
    if not tiff.series:
      raise ValueError("no image in the file (truncated or invalid TIFF)")
    series = tiff.series[0]
    image = series.asarray()
    axes = series.axes
  if image.size == 0:
    raise ValueError("no pixel data (truncated or invalid TIFF)")
  if axes == "SYX":  # Planar RGB(A): samples first.
    image = np.moveaxis(image, 0, -1)
  elif axes not in ("YX", "YXS"):
    raise ValueError(f"expected a single 2-D image, got TIFF axes {axes!r} "
                     f"and shape {image.shape}")
  return image


def tiff_size(source) -> Tuple[int, int]:
  """(H, W) of a TIFF's first series from its header (planar-aware)."""
  import tifffile  # pylint: disable=import-outside-toplevel

  with tifffile.TiffFile(source) as tiff:
    series = tiff.series[0]
    shape = dict(zip(series.axes, series.shape))
  return int(shape["Y"]), int(shape["X"])


# One channel of more than 8 bits (or float): read as they are.
_PIL_MODES_DEEP = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")
# ITU-R 601-2 luma, the weights of PIL's `convert("L")`.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


@dataclasses.dataclass(frozen=True)
class ReadPolicy:
  """What `read_file` makes of a file: the needs of one kind of caller.

  Attributes:
    kind: "image" (pixels for the model, (H, W, 3) uint8 RGB) or "mask"
      (one channel, (H, W)).
    deep: samples of more than 8 bits, signed or float (16-bit PNG/TIFF,
      float TIFF, NIfTI/DICOM): "scale" (images: brought to 0-255 by the
      intensity policy, `apply_intensity`; masks: read as they are) or
      "reject" (`ReadError`, never rescaled silently: the dataset protocol).
    mask_channels: for masks, how colour becomes one channel: "luma"
      (ITU-R 601-2 grey as float64: Pillow's `convert("L")` for what Pillow
      reads, rounded; the same weights unrounded for TIFFs; alpha ignored)
      or "max" (uint8, the raw values kept for a protocol's own threshold:
      mode `1` -> {0, 255}, `L`/`P` the stored values (palette indices for
      `P`), `LA` its `L`, colour the maximum over its colour channels).
    medical: whether `.nii`/`.nii.gz` and `.dcm` files are read (through
      `simsam_jax.medical`; paths only).
  """
  kind: str
  deep: str = "scale"
  mask_channels: str = "luma"
  medical: bool = False


# The command line and `Predictor` (`--image`, `--ground_truth`).
CLI_IMAGE = ReadPolicy("image", deep="scale", medical=True)
CLI_MASK = ReadPolicy("mask", deep="scale", mask_channels="luma")
# The dataset builders (`simsam_jax.data.common`): 8-bit only, raw masks.
DATASET_IMAGE = ReadPolicy("image", deep="reject")
DATASET_MASK = ReadPolicy("mask", deep="reject", mask_channels="max")


class ReadError(ValueError):
  """A file `read_file` cannot read; the message names the file.

  Attributes:
    problem: "decode" (the decoder failed: `cause`), "deep" (more than 8
      bits under `deep="reject"`: `mode`, the PIL mode, or `dtype`, the
      decoded TIFF dtype) or "shape" (not one 2-D image: `shape`).
    cause, mode, dtype, shape: as above (None when not concerned).
  """

  def __init__(self, message: str, problem: str, cause: Optional[Exception] = None,
               mode: Optional[str] = None, dtype: Optional[str] = None,
               shape: Optional[Tuple[int, ...]] = None):
    super().__init__(message)
    self.problem, self.cause = problem, cause
    self.mode, self.dtype, self.shape = mode, dtype, shape


def _decode_pil(source, policy: ReadPolicy, name: str) -> Tuple[np.ndarray, str]:
  """Pillow's decoding under `policy`: (array, the file's PIL mode)."""
  with Image.open(source) as image:
    image.load()  # Decodes now, so truncated files fail here.
    mode = image.mode
    if mode in _PIL_MODES_DEEP:
      if policy.deep == "reject":
        raise ReadError(f"{policy.kind} {name} has PIL mode {mode}; only 8-bit "
                        f"{policy.kind}s are supported", "deep", mode=mode)
      return np.asarray(image), mode
    if policy.kind == "image":  # Alpha dropped without compositing.
      return np.asarray(image.convert("RGB")), mode
    if policy.mask_channels == "luma":
      return np.asarray(image if mode in ("1", "L") else image.convert("L")), mode
    if mode == "LA":
      return np.asarray(image.getchannel(0)), mode
    if mode not in ("1", "L", "P", "RGB", "RGBA"):
      image = image.convert("RGB")
    return np.asarray(image), mode


def _as_image(array: np.ndarray, policy: ReadPolicy, intensity: Optional[IntensityPolicy],
              name: str) -> Tuple[np.ndarray, str, str]:
  """Decoded pixels -> ((H, W, 3) uint8 RGB, policy applied, source dtype)."""
  if array.ndim == 3 and array.shape[-1] in (2, 4):  # Drop alpha first.
    array = array[..., :-1]
  dtype = str(array.dtype)
  if policy.deep == "reject":
    if array.dtype == np.bool_:
      array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
      raise ReadError(f"image {name} has {dtype} samples; only 8-bit images are supported "
                      "(no silent rescaling)", "deep", dtype=dtype)
    applied = INTENSITY_NONE
  else:
    array, applied = apply_intensity(array, intensity, name)
  array = _grey_to_three_channels(array)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise ReadError(f"{name}: expected a single 2-D grayscale, RGB or RGBA image, got an "
                    f"array of shape {array.shape}", "shape", shape=array.shape)
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ReadError(f"{name}: the image is empty, shape {array.shape}", "shape",
                    shape=array.shape)
  return np.ascontiguousarray(array), applied, dtype


def _as_mask(array: np.ndarray, mode: Optional[str], policy: ReadPolicy,
             name: str) -> Tuple[np.ndarray, str]:
  """Decoded mask -> ((H, W) float64 grey or uint8 raw, PIL mode)."""
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if mode is None:  # A TIFF: named as Pillow would name it.
    mode = "L" if array.ndim == 2 else "RGB"
  if policy.mask_channels == "luma":
    if array.ndim == 3 and array.shape[-1] in (2, 4):  # Drop the alpha channel.
      array = array[..., :-1]
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 3:
      return array.astype(np.float64) @ _LUMA_WEIGHTS, mode
    if array.ndim != 2:
      raise ReadError(f"expected a single 2-D mask image, got an array of shape "
                      f"{array.shape}", "shape", shape=array.shape)
    return array.astype(np.float64), mode
  if array.dtype == np.bool_:
    array = array.astype(np.uint8) * 255
  elif array.dtype != np.uint8:
    raise ReadError(f"mask {name} has {array.dtype} samples; only 8-bit images are "
                    "supported (no silent rescaling)", "deep", dtype=str(array.dtype))
  if array.ndim == 3:
    array = array[..., :3].max(axis=-1)
  if array.ndim != 2:
    raise ReadError(f"mask {name} has unsupported shape {array.shape}", "shape",
                    shape=array.shape)
  return np.ascontiguousarray(array), mode


@dataclasses.dataclass(frozen=True)
class LoadedImage:
  """An image (or mask) file as `read_file` read it, with what was learnt.

  Attributes:
    pixels: an image: (H, W, 3) uint8 RGB, values 0-255; a mask: (H, W),
      float64 grey ("luma") or uint8 raw ("max"); see `ReadPolicy`.
    intensity: the intensity policy applied ("none" for 8-bit pixels kept
      as they are; see `apply_intensity`).
    dtype: the dtype of the decoded pixels (or voxels) before the policy.
    spacing: (row, column) pixel spacing in mm for NIfTI/DICOM, else None.
    volume: for a NIfTI slice, a `simsam_jax.medical.VolumeSlice` (shape,
      affine, axis and index, to write the mask back); else None.
    mode: the PIL mode of the file (`"1"`, `"L"`, `"P"`, `"RGB"`, ...); for
      a TIFF `"L"` (one sample) or `"RGB"` (several); None for NIfTI/DICOM.
  """
  pixels: np.ndarray
  intensity: str = INTENSITY_NONE
  dtype: str = "uint8"
  spacing: Optional[Tuple[float, float]] = None
  volume: Any = None
  mode: Optional[str] = None


def read_file(source, policy: ReadPolicy, *, name: Optional[str] = None,
              intensity: Optional[IntensityPolicy] = None,
              slice_index: Optional[int] = None, axis: int = 2) -> LoadedImage:
  """The one image and mask reader: a file as `policy` asks for it.

  PNG, JPEG and everything else Pillow reads go through Pillow; `.tif` /
  `.tiff` through `decode_tiff` (tifffile: any bit depth, planar storage;
  Pillow cannot open CVC-ClinicDB's 3-sample MinIsBlack TIFFs); `.nii` /
  `.nii.gz` and `.dcm` through nibabel and pydicom when `policy.medical`
  (`simsam_jax.medical`, the `medical` extra). EXIF orientation is not
  applied, so images stay aligned with masks stored without it. Images drop
  an alpha channel without compositing and replicate grey to 3 channels;
  masks become one channel as `policy.mask_channels` says.

  Args:
    source: a path, or a binary file object (a zip member's bytes).
    policy: `ReadPolicy` (`CLI_IMAGE`, `CLI_MASK`, `DATASET_IMAGE`,
      `DATASET_MASK`).
    name: the file named in messages, whose extension picks the decoder
      (default: `source` as a path).
    intensity: for images under `deep="scale"`, the policy
      (`parse_intensity`), or None for the default (`minmax` for deep
      pixels, 8-bit kept).
    slice_index: for a NIfTI volume, the slice to read (required for 3-D
      volumes); must be None for other files.
    axis: the NIfTI voxel axis `slice_index` runs along (0, 1 or 2).

  Raises:
    ReadError: the decoder failed (truncated or not an image), deep
      samples under `deep="reject"`, or not one 2-D image.
    ValueError: NIfTI/DICOM errors, a slice asked of a 2-D image, non-finite
      or constant deep pixels (`apply_intensity`); messages name the file.
  """
  name = os.fspath(source) if name is None else name
  from simsam_jax import medical  # pylint: disable=import-outside-toplevel
  kind = medical.medical_kind(name) if policy.medical else None
  if kind is None and slice_index is not None:
    raise ValueError(f"{name}: --slice only applies to NIfTI volumes "
                     "(.nii, .nii.gz)")
  suffix = os.path.splitext(name)[1].lower()
  spacing = volume = mode = None
  try:
    if kind == medical.NIFTI:
      volume = medical.read_nifti_slice(source, slice_index, axis)
      array, spacing = volume.pixels, volume.spacing
    elif kind == medical.DICOM:
      array, spacing = medical.read_dicom(source)
    elif suffix in _TIFF_SUFFIXES:
      array = decode_tiff(source)
    else:
      array, mode = _decode_pil(source, policy, name)
  except medical.MedicalFormatError as error:
    raise ValueError(f"{name}: {error}") from error
  except ReadError:
    raise
  # Decoders raise many unrelated types (OSError, SyntaxError, ValueError,
  # zlib.error, struct.error, ...); all mean "cannot read this file".
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise ReadError(f"cannot read {policy.kind} {name}: {error}", "decode",
                    cause=error) from error
  if policy.kind == "mask":
    pixels, mode = _as_mask(array, mode, policy, name)
    return LoadedImage(pixels=pixels, dtype=str(array.dtype), mode=mode)
  pixels, applied, dtype = _as_image(array, policy, intensity, name)
  if mode is None and kind is None:
    mode = "L" if array.ndim == 2 or array.shape[-1] == 1 else "RGB"
  return LoadedImage(pixels=pixels, intensity=applied, dtype=dtype, spacing=spacing,
                     volume=None if volume is None else volume.without_pixels(),
                     mode=mode)


def read_image(path: PathLike, intensity: Optional[IntensityPolicy] = None,
               slice_index: Optional[int] = None,
               axis: int = 2) -> LoadedImage:
  """`--image`: `read_file(path, CLI_IMAGE, ...)` after checking the path.

  Pixels deeper than 8 bits, signed or float are brought to 0-255 by
  `intensity` (`apply_intensity`: `minmax` by default).

  Raises:
    FileNotFoundError: when `path` does not exist.
    ValueError: (`ReadError` among them) when the file is not a readable
      image, is truncated, holds non-finite or constant values, or a slice
      is asked of a 2-D image; the message names the file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"image file not found: {path}")
  if not os.path.isfile(path):
    raise ValueError(f"not a file: {path}")
  return read_file(path, CLI_IMAGE, intensity=intensity, slice_index=slice_index,
                   axis=axis)


def load_image(path: PathLike,
               intensity: Optional[IntensityPolicy] = None) -> np.ndarray:
  """`read_image(path, intensity).pixels`: (H, W, 3) uint8 RGB, 0-255.

  Raises:
    FileNotFoundError, ValueError: as `read_image`; messages name the file.
  """
  return read_image(path, intensity).pixels


def read_mask_gray(path: PathLike) -> np.ndarray:
  """`read_file(path, CLI_MASK).pixels`: a mask file as (H, W) float64
  grayscale (foreground: > 0); one-channel images of any depth are read as
  they are.

  Raises:
    ReadError: when the file cannot be decoded or is not one 2-D image.
  """
  return read_file(path, CLI_MASK).pixels

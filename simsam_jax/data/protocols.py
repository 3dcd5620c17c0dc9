"""Evaluation protocols: how a stored example becomes (image, mask, box).

Two protocols, each quirk a named switch of the frozen `Protocol`:

* `paper` (SPEC section 2, the published code, `src/corpora.py`): image AND
  mask resized to 256x256 before anything else. BUSI and ISIC-2016 through
  `DefaultFileReader`: PIL `Image.open(path).resize((256, 256))` with its
  default filter (bicubic for RGB/L images, nearest for mode `1`/`P`).
  CVC-ClinicDB through `TIFFileReader`: `tifffile.imread(path)` (frames
  (H, W, 3) RGB, masks (H, W) uint8) then `cv2.resize(x, (256, 256))`, its
  default bilinear filter without antialiasing, for frames and masks alike;
  SAM sees the colour frames. Masks are then binarised with `> 0` (a
  3-channel mask: `(mask > 0).max(-1)`; CVC's grey noise thereby counts as
  foreground). Metrics at 256x256.
* `native`: original resolution, no resizing, colour frames; CVC-ClinicDB
  masks thresholded at `> 127`, the others at `> 0`.

In both, the box prompt is `[x_min, y_min, x_max, y_max]` of the foreground
of the binarised mask (inclusive maximum, no +1, no jitter); an empty mask
gives `[0, 0, W, H]` (`empty_box="full_image"`).

The resize filter of a mask follows the PIL mode of its file, which the
builders store as `mask_mode`: `1` -> the mask is rebuilt as a mode-`1`
image and resized with PIL's default (nearest); `P` -> nearest on the stored
indices; every other mode -> PIL's default bicubic on the stored single
channel (equal to PIL's per-channel bicubic of an RGB mask whose channels are
identical, as in every dataset here).

Deliberate deviations from the published code:

* The CVC-ClinicDB PNG repack (not read by the published code, which takes
  the TIFF release) goes through the same `cv2.resize`; its frames equal the
  TIFF frames, so the prepared examples are the same.
* An RGB(A) mask is reduced to one channel (max over the colour channels)
  when the dataset is built, before the resize; the published code resizes
  the colour image and then takes `(mask > 0).max(-1)`. The two agree when
  the channels are identical (true for BUSI and the CVC PNG repack); an alpha
  channel is dropped, never thresholded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image

from simsam_jax.data import registry

# Dataset names, aliases and each dataset's protocol rules (its
# `protocol_hook`) live in `simsam_jax.data.registry`.

RESIZE_FILTERS = ("pil_default", "nearest")
CVC_RESIZE = ("cv2_bilinear", "pil_default")
EMPTY_BOXES = ("full_image", "full_image_inclusive")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How examples are prepared; each field one quirk of the paper protocol.

  Attributes:
    name: protocol name.
    resize_to: side of the square image and mask before anything else
      (256 in the paper), or None to keep the original resolution.
    mask_resize: "pil_default" (nearest for mode `1`/`P` masks, bicubic
      otherwise, as PIL's `Image.resize` without a filter) or "nearest".
      Images always use PIL's default filter (bicubic for RGB).
    cvc_resize: how CVC-ClinicDB is resized: "cv2_bilinear" (the published
      `TIFFileReader`: `cv2.resize`, default INTER_LINEAR, image and mask) or
      "pil_default" (like the other datasets).
    mask_threshold: foreground = raw mask value > this (BUSI, ISIC).
    cvc_mask_threshold: the same for CVC-ClinicDB (0: the paper's `> 0`,
      which counts the grey noise; 127: clean masks).
    empty_box: box of an empty mask: "full_image" -> [0, 0, W, H] (the
      paper) or "full_image_inclusive" -> [0, 0, W - 1, H - 1].
  """

  name: str
  resize_to: Optional[int] = 256
  mask_resize: str = "pil_default"
  cvc_resize: str = "cv2_bilinear"
  mask_threshold: int = 0
  cvc_mask_threshold: int = 0
  empty_box: str = "full_image"

  def __post_init__(self):
    if self.resize_to is not None and int(self.resize_to) <= 0:
      raise ValueError(f"resize_to must be positive or None, got "
                       f"{self.resize_to}")
    for field, allowed in (("mask_resize", RESIZE_FILTERS),
                           ("cvc_resize", CVC_RESIZE),
                           ("empty_box", EMPTY_BOXES)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got "
                         f"{getattr(self, field)!r}")

  def threshold(self, dataset: str) -> int:
    """The mask threshold for `dataset` (its registered protocol hook)."""
    return rules(self, dataset)[1]


PAPER = Protocol(name="paper")
NATIVE = Protocol(name="native", resize_to=None, cvc_mask_threshold=127)
PROTOCOLS = {"paper": PAPER, "native": NATIVE}


@dataclasses.dataclass(frozen=True)
class PreparedExample:
  """An example ready for SAM and the metrics.

  Attributes:
    id: example id.
    image: (H, W, 3) uint8 RGB, values 0-255.
    mask: (H, W) bool ground truth.
    box: (4,) float32 `[x_min, y_min, x_max, y_max]` in pixels of `image`.
    spacing: (row, column) pixel spacing for NSD: (1.0, 1.0) (tolerances
      in pixels), or the example's physical "spacing" (mm, NIfTI) scaled by
      the protocol's resize.
    original_size: (height, width) of the stored image.
    file_names: image file then mask file(s), relative to the manual_dir.
  """

  id: str
  image: np.ndarray
  mask: np.ndarray
  box: np.ndarray
  spacing: Tuple[float, float]
  original_size: Tuple[int, int]
  file_names: Tuple[str, ...]


def default_rules(protocol: Protocol) -> tuple[str, int]:
  """Protocol hook of most datasets: PIL resize, `protocol.mask_threshold`."""
  return "pil_default", protocol.mask_threshold


def cvc_rules(protocol: Protocol) -> tuple[str, int]:
  """Protocol hook of CVC-ClinicDB: `protocol.cvc_resize` (the published
  `TIFFileReader`) and `protocol.cvc_mask_threshold`."""
  return protocol.cvc_resize, protocol.cvc_mask_threshold


def rules(protocol: Protocol, dataset: str) -> tuple[str, int]:
  """(resize, mask threshold) of `dataset` under `protocol`, from the
  dataset's registered `protocol_hook` (ValueError for an unknown name)."""
  hook = registry.get(dataset).protocol_hook or default_rules
  return hook(protocol)


def get_protocol(protocol: Union[str, Protocol]) -> Protocol:
  """A `Protocol` from itself or its name in `PROTOCOLS`."""
  if isinstance(protocol, Protocol):
    return protocol
  try:
    return PROTOCOLS[protocol]
  except KeyError:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of "
                     f"{sorted(PROTOCOLS)} or a Protocol") from None


def box_from_mask(mask: np.ndarray, empty_box: str = "full_image"
                  ) -> np.ndarray:
  """Tight box of the foreground, inclusive maximum.

  Args:
    mask: (H, W) bool (or anything whose non-zero entries are foreground).
    empty_box: "full_image" ([0, 0, W, H]) or "full_image_inclusive"
      ([0, 0, W - 1, H - 1]) for an empty mask.

  Returns:
    (4,) float32 `[x_min, y_min, x_max, y_max]`.
  """
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
  height, width = mask.shape
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    if empty_box == "full_image":
      return np.asarray([0, 0, width, height], dtype=np.float32)
    if empty_box == "full_image_inclusive":
      return np.asarray([0, 0, width - 1, height - 1], dtype=np.float32)
    raise ValueError(f"empty_box must be one of {EMPTY_BOXES}, got "
                     f"{empty_box!r}")
  return np.asarray([xs.min(), ys.min(), xs.max(), ys.max()],
                    dtype=np.float32)


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return _text(value.item())
  return str(value)


def _raw_mask(mask: Any) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.dtype == np.bool_:
    mask = mask.astype(np.uint8) * 255
  if mask.ndim == 3:
    mask = mask[..., :3].max(axis=-1)
  if mask.ndim != 2:
    raise ValueError(f"mask must be (H, W) or (H, W, C), got {mask.shape}")
  if mask.dtype != np.uint8:
    raise ValueError(f"mask must be uint8 (raw values) or bool, got "
                     f"{mask.dtype}")
  return mask


def resize_mask_pil(raw: np.ndarray, mode: str, size: int,
                    mask_resize: str = "pil_default") -> np.ndarray:
  """Resizes a raw single-channel mask as PIL would resize its file.

  Args:
    raw: (H, W) uint8 raw mask (mode `1` stored as {0, 255}).
    mode: PIL mode of the mask file.
    size: output side.
    mask_resize: "pil_default" (nearest for `1`/`P`, bicubic otherwise) or
      "nearest".

  Returns:
    (size, size) uint8 raw values (mode `1`: {0, 255}).
  """
  if mode == "1":
    resized = Image.fromarray(raw > 0).resize((size, size))  # nearest
    return np.asarray(resized).astype(np.uint8) * 255
  image = Image.fromarray(raw)  # (H, W) uint8 -> mode L
  if mode == "P" or mask_resize == "nearest":
    return np.asarray(image.resize((size, size), Image.NEAREST))
  return np.asarray(image.resize((size, size)))  # PIL default: bicubic


def prepare(example: Mapping[str, Any], protocol: Union[str, Protocol],
            dataset: str) -> PreparedExample:
  """Applies a protocol to one stored example.

  Args:
    example: a decoded example (see `loading.load_split`): "id", "image"
      (H, W, 3) uint8, "mask" raw (H, W) uint8 (or bool / (H, W, C)),
      optional "mask_mode" (default "L"), "image_file", "mask_files"
      (other keys, e.g. "source_format", are ignored).
    protocol: a `Protocol` or its name ("paper", "native").
    dataset: a registered dataset name or alias (`simsam_jax.data.registry`).

  Returns:
    The `PreparedExample`: image and mask at `protocol.resize_to` (or the
    original size), the box from the binarised mask.
  """
  protocol = get_protocol(protocol)
  resize, threshold = rules(protocol, dataset)
  image = np.asarray(example["image"])
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} "
                     f"{image.dtype}")
  raw = _raw_mask(example["mask"])
  if raw.shape != image.shape[:2]:
    raise ValueError(f"example {_text(example.get('id'))}: mask size "
                     f"{raw.shape} differs from image size {image.shape[:2]}")
  mode = _text(example.get("mask_mode", "L"))
  original_size = (int(image.shape[0]), int(image.shape[1]))
  size = protocol.resize_to
  if size is not None:
    size = int(size)
    if resize == "cv2_bilinear":
      import cv2  # pylint: disable=import-outside-toplevel
      image = cv2.resize(image, (size, size))  # INTER_LINEAR
      raw = cv2.resize(raw, (size, size))
    else:
      image = np.asarray(Image.fromarray(image).resize((size, size)))
      raw = resize_mask_pil(raw, mode, size, protocol.mask_resize)
  mask = raw > threshold
  box = box_from_mask(mask, protocol.empty_box)
  spacing = (1.0, 1.0)
  if example.get("spacing") is not None:
    row, column = (float(v) for v in np.asarray(example["spacing"]).reshape(2))
    height, width = original_size
    spacing = (row * height / mask.shape[0], column * width / mask.shape[1])
  files = [_text(example.get("image_file", ""))]
  files += [_text(name) for name in np.atleast_1d(
      np.asarray(example.get("mask_files", []), dtype=object))]
  return PreparedExample(
      id=_text(example.get("id", "")),
      image=np.ascontiguousarray(image, dtype=np.uint8),
      mask=np.ascontiguousarray(mask),
      box=box,
      spacing=spacing,
      original_size=original_size,
      file_names=tuple(files),
  )

"""Preprocessing profiles: how an image becomes the model input and back.

A checkpoint is trained with one pre-processing; feeding it another gives
wrong masks without any error. A `Profile` names that contract and owns its
three parts, so every tool (segment, SimSAM, evaluation, SAM-FT) applies the
one its checkpoint was trained with:

* `geometry(original_size, image_size)`: the `processing.ImageInfo` linking
  the image to the model frame. It records the profile's name, so the
  jitted SimSAM pipeline (`simsam_jax.simsam.pipeline`) maps clicks, boxes
  and mask prompts through the profile's geometry: points scale by
  `resized / original` per axis, and the valid region of the model input is
  `resized_size` (the rest is padding).
* `preprocess(image, image_size)`: (H, W, 3) uint8 RGB -> (S, S, 3) float32
  pixels and the `ImageInfo`.
* `to_original(maps, info)`, `probabilities(low_res_logits, info)` and
  `low_res_scores(low_res_logits)`: the decoder's (..., M, M) low-res
  logits back at the image's (H, W); a pixel is foreground where the
  resampled `low_res_scores` are > 0.

Registered profiles (`PROFILES`):

* `sam`: the official SAM predictor (`processing.preprocess`): longest
  side to S, ImageNet mean/std, zeros padded bottom-right; logits go back by
  bilinear upsampling to S, crop of the padding and bilinear resize, then
  `> 0` (probabilities: sigmoid after the round trip).
* `medsam`: `MedSAM_Inference.py` (bowang-lab/MedSAM): the whole image
  resized to S x S without keeping the aspect ratio (`skimage.transform.
  resize(order=3, preserve_range=True, anti_aliasing=True)`, then
  `.astype(np.uint8)` as the script does), min-max to [0, 1] with a 1e-8
  floor, no mean/std, so boxes scale by S/W and S/H; low-res logits ->
  sigmoid -> bilinear to (H, W) -> `> 0.5`.

Adding a profile is a subclass registered under a new name::

  @dataclasses.dataclass(frozen=True)
  class ScaledMedSam(profiles.MedSamProfile):
    name: str = "medsam_x"

  profiles.register(ScaledMedSam())

Deviations from the references, each deliberate:

* `medsam`'s resize is `scipy.ndimage` called exactly as scikit-image 0.26's
  `resize` calls it (Gaussian anti-aliasing with sigma = max(0, (factor -
  1) / 2) in `mirror` mode, `ndimage.zoom(order=3, mode="mirror",
  grid_mode=True)`, clipped to the input's range), so scikit-image is not a
  dependency; tests/test_profiles.py checks it bit for bit against
  `skimage.transform.resize`.
* `medsam`'s foreground test is `bilinear(sigmoid(x) - 0.5) > 0` rather than
  `bilinear(sigmoid(x)) > 0.5`: the same decision (bilinear weights sum to
  one) up to one float32 rounding at the boundary, so that the SimSAM
  pipeline resamples one kind of map for every profile.
* Box coordinates are multiplied by `S / W` in float64 and cast to float32;
  the script computes `box / W * S` in float64: equal up to float rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging
from scipy import ndimage

from simsam_jax import processing
from simsam_jax.simsam.registry import Registry

DEFAULT_PROFILE = "sam"
# MedSAM's min-max normalisation floor (`np.clip(max - min, a_min=1e-8)`).
MEDSAM_RANGE_FLOOR = 1e-8


@dataclasses.dataclass(frozen=True)
class Profile:
  """SAM's profile; subclasses override what their checkpoint does differently.

  Attributes:
    name: registry name, recorded in `ImageInfo.profile`, in the checkpoint
      sidecar and in every output JSON.
  """
  name: str = "sam"

  def resized_size(self, original_size: Sequence[int],
                   image_size: int) -> processing.Size:
    """(h, w): the valid, unpadded top-left region of the model input."""
    return processing.preprocess_shape(*original_size, image_size)

  def geometry(self, original_size: Sequence[int],
               image_size: int) -> processing.ImageInfo:
    """The `ImageInfo` of an (H, W) image for a model of input side S."""
    return processing.ImageInfo(
        original_size=original_size,
        resized_size=self.resized_size(original_size, image_size),
        image_size=image_size, profile=self.name)

  def normalize(self, image: np.ndarray,
                info: processing.ImageInfo) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (S, S, 3) float32 model input."""
    resized = processing.resize_longest_side(image, info.image_size)
    return processing.normalize_and_pad(resized, info.image_size)

  def preprocess(self, image: np.ndarray, image_size: int
                 ) -> Tuple[np.ndarray, processing.ImageInfo]:
    """Model input and geometry of one image.

    Args:
      image: (H, W, 3) uint8 RGB, values 0-255 (grayscale (H, W) or
        (H, W, 1) is replicated to 3 channels).
      image_size: S, the model's input side.

    Returns:
      pixels (S, S, 3) float32 and the `ImageInfo`.
    """
    image = processing.as_rgb_uint8(image)
    info = self.geometry(image.shape[:2], image_size)
    return self.normalize(image, info), info

  def to_original(self, maps: jax.Array,
                  info: processing.ImageInfo) -> jax.Array:
    """(..., M, M) low-res maps -> (..., H, W) float32, linear resampling."""
    return processing.upscale_logits(maps, info.image_size, info.resized_size,
                                     info.original_size)

  def low_res_scores(self, low_res_logits: jax.Array) -> jax.Array:
    """(..., M, M) logits -> maps whose resampled values > 0 are foreground."""
    return low_res_logits

  def probabilities(self, low_res_logits: jax.Array,
                    info: processing.ImageInfo) -> jax.Array:
    """(..., M, M) logits -> (..., H, W) float32 probabilities in [0, 1]."""
    return jax.nn.sigmoid(self.to_original(low_res_logits, info))

  def masks(self, low_res_logits: jax.Array,
            info: processing.ImageInfo) -> jax.Array:
    """(..., M, M) logits -> (..., H, W) bool masks at the image size."""
    return self.to_original(self.low_res_scores(low_res_logits), info) > 0


@dataclasses.dataclass(frozen=True)
class MedSamProfile(Profile):
  """MedSAM (`MedSAM_Inference.py`): square resize, min-max, no padding."""
  name: str = "medsam"

  def resized_size(self, original_size, image_size):
    processing.as_size(original_size, "original_size")
    return int(image_size), int(image_size)

  def normalize(self, image, info):
    resized = medsam_resize(image, info.image_size).astype(np.uint8)
    resized = resized.astype(np.float64)
    low, high = resized.min(), resized.max()
    scaled = (resized - low) / np.clip(high - low, a_min=MEDSAM_RANGE_FLOOR,
                                       a_max=None)
    return scaled.astype(np.float32)

  def to_original(self, maps, info):
    return processing.resize_logits_to(maps, info.original_size)

  def low_res_scores(self, low_res_logits):
    return jax.nn.sigmoid(low_res_logits) - 0.5

  def probabilities(self, low_res_logits, info):
    return self.to_original(jax.nn.sigmoid(low_res_logits), info)


def medsam_resize(image: np.ndarray, size: int) -> np.ndarray:
  """`skimage.transform.resize(image, (size, size), order=3,
  preserve_range=True, anti_aliasing=True)`, with scipy only.

  Args:
    image: (H, W, C) array of any real dtype (integers become float64).
    size: output side.

  Returns:
    (size, size, C) float64 (float32 for float32 input), clipped to the
    input's value range.
  """
  image = np.asarray(image)
  if image.dtype.char not in "df":
    image = image.astype(float)
  output_shape = (size, size) + image.shape[2:]
  factors = np.divide(image.shape, output_shape)
  sigma = np.maximum(0, (factors - 1) / 2)
  filtered = ndimage.gaussian_filter(image, sigma, cval=0, mode="mirror")
  out = ndimage.zoom(filtered, [1 / f for f in factors], order=3,
                     mode="mirror", cval=0, grid_mode=True)
  np.clip(out, np.min(image), np.max(image), out=out)
  return out


PROFILES: Registry = Registry("preprocessing profile")


def register(profile: Profile) -> Profile:
  """Registers `profile` under `profile.name`; returns it."""
  return PROFILES.register(profile.name)(profile)


def get(name: str) -> Profile:
  """The registered profile `name`; ValueError listing the known ones."""
  return PROFILES.get(name)


def names() -> list[str]:
  return PROFILES.names()


def resolve(recorded: str, override: Optional[str] = None,
            flag: str = "--profile") -> Tuple[str, str]:
  """The profile a tool applies: the checkpoint's, or `override`.

  Args:
    recorded: the profile the checkpoint's sidecar records ("sam" for
      random weights and for sidecars written before profiles existed).
    override: the run-time flag value, or None.
    flag: how to name the flag in messages.

  Returns:
    (name, source) with source "checkpoint" or "flag". A flag that differs
    from the recorded profile is logged as a warning: the weights were
    trained with another pre-processing.

  Raises:
    ValueError: naming `flag` (or the checkpoint) for an unregistered name.
  """
  if override is None:
    if recorded not in PROFILES:
      raise ValueError(
          f"the checkpoint records the preprocessing profile {recorded!r}, "
          f"which is not registered (known: {', '.join(names())}); import "
          f"the module that registers it, or pass {flag}")
    return recorded, "checkpoint"
  if override not in PROFILES:
    raise ValueError(f"{flag}={override!r}: unknown preprocessing profile; "
                     f"known: {', '.join(names())}")
  if override != recorded:
    logging.warning(
        "%s=%s overrides the checkpoint's preprocessing profile %r: the "
        "weights were trained with another pre-processing.", flag, override,
        recorded)
  return override, "flag"


register(Profile())
register(MedSamProfile())

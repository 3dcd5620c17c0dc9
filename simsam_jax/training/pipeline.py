"""Image input pipeline for the modes that train the image encoder (`lora`, `full`).

The embedding cache of `decoder` mode cannot serve a changing encoder, so
these modes read images: a `grain.MapDataset` over

  * `tfds.data_source(...)` of a built dataset (`source_from_tfds`), or
  * the endless stream of generated phantoms (`phantom_stream`): example j
    is `simsam_jax.data.phantom.make_example(seed_offset + j, ...)`,

shuffled with a seed, repeated, augmented with `random_map` (a generator
seeded per element index, so the augmentation of an element does not depend
on which process reads it), prepared into the model frame, and batched.

Global batches and processes: global step s takes the global stream's
elements s*B .. s*B + B - 1 (B = global batch); process p of P reads only
its rows p*B/P .. (p+1)*B/P - 1 of each global batch (`local_stream`), so
the concatenation over processes equals the single-process batch, row for
row. The iterator's `get_state()` (a small dict) is saved with the Orbax
checkpoint; `set_state` on resume makes the resumed run see the same
batches.

An element after `prepare_element` (all in the padded, square model frame of
`image_size` S, low-res side M = S / 4):

  pixels (S, S, 3) float32  normalised, zero-padded (`profiles`).
  target (M, M) float32     0/1 ground truth in the low-res frame.
  valid  (M, M) float32     1 inside the resized image, 0 in the padding.
  box    (4,) float32       (x0, y0, x1, y1) model-frame pixels; enlarged
                            by 0-19 px per side in ORIGINAL pixels before the
                            resize when `box_jitter` is on (the authors'
                            `get_bounding_box(add_perturbation=True)`:
                            `x_min = max(0, x_min - randint(0, 20))`, ...,
                            `x_max = min(W, x_max + randint(0, 20))`).

Augmentations (`AugmentConfig`, each a switch; the mask is transformed with
the image, nearest-neighbour): horizontal / vertical flips (p = 0.5 each),
a rotation uniform in +-`rotate_degrees`, a scale uniform in
[1 - `scale`, 1 + `scale`] about the centre (bilinear image, nearest mask,
constant 0 fill), and intensity jitter (contrast x U(1 - j, 1 + j), brightness
+ 255 U(-j, j) / 2, clipped to 0-255). The box is recomputed from the
transformed mask (`protocols.box_from_mask`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import grain
import jax
import numpy as np
from scipy import ndimage

from simsam_jax import profiles, processing
from simsam_jax.data import phantom as phantom_data
from simsam_jax.data import protocols

# The phantom stream's seeds start far above every built split's seeds.
PHANTOM_STREAM_SEED_OFFSET = 10_000_000
BOX_JITTER_MAX = 20  # exclusive upper bound of `randint(0, 20)`
FIELDS = ("pixels", "target", "valid", "box")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation switches (see the module doc); all off by default."""
  hflip: bool = False
  vflip: bool = False
  rotate_degrees: float = 0.0
  scale: float = 0.0
  intensity: float = 0.0

  @classmethod
  def from_config(cls, c: Mapping[str, Any]) -> "AugmentConfig":
    return cls(hflip=bool(c.get("hflip", False)), vflip=bool(c.get("vflip", False)),
               rotate_degrees=float(c.get("rotate_degrees", 0.0)),
               scale=float(c.get("scale", 0.0)), intensity=float(c.get("intensity", 0.0)))

  def validate(self, field: str = "--config.augment") -> "AugmentConfig":
    if not 0.0 <= self.rotate_degrees <= 180.0:
      raise ValueError(f"{field}.rotate_degrees must be in [0, 180]; got {self.rotate_degrees}")
    if not 0.0 <= self.scale < 1.0:
      raise ValueError(f"{field}.scale must be in [0, 1); got {self.scale}")
    if not 0.0 <= self.intensity < 1.0:
      raise ValueError(f"{field}.intensity must be in [0, 1); got {self.intensity}")
    return self


def augment(image: np.ndarray, mask: np.ndarray, config: AugmentConfig,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Random flips / rotation / scale / intensity of one example.

  Args:
    image: (H, W, 3) uint8.
    mask: (H, W) bool.
    config: the switches.
    rng: the element's generator (draws happen in a fixed order whatever is
      switched on, so one switch does not reseed the others).
  Returns:
    (image (H, W, 3) uint8, mask (H, W) bool), same size.
  """
  flips = rng.random(2)
  angle = rng.uniform(-1.0, 1.0) * config.rotate_degrees
  zoom = 1.0 + rng.uniform(-1.0, 1.0) * config.scale
  contrast = 1.0 + rng.uniform(-1.0, 1.0) * config.intensity
  brightness = 127.5 * rng.uniform(-1.0, 1.0) * config.intensity
  if config.hflip and flips[0] < 0.5:
    image, mask = image[:, ::-1], mask[:, ::-1]
  if config.vflip and flips[1] < 0.5:
    image, mask = image[::-1], mask[::-1]
  if angle != 0.0 or zoom != 1.0:
    h, w = mask.shape
    a = math.radians(angle)
    # Output pixel o maps to input  R(-a) (o - c) / zoom + c.
    inverse = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) / zoom
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - inverse @ centre
    warped = [ndimage.affine_transform(image[..., c].astype(np.float32), inverse, offset,
                                       order=1, mode="constant", cval=0.0)
              for c in range(image.shape[-1])]
    image = np.clip(np.rint(np.stack(warped, -1)), 0, 255).astype(np.uint8)
    moved = ndimage.affine_transform(mask.astype(np.uint8), inverse, offset, order=0,
                                     mode="constant", cval=0)
    if moved.any():  # a transform that pushes the lesion out keeps the original mask
      mask = moved.astype(bool)
  if config.intensity > 0:
    image = np.clip(np.rint((image.astype(np.float32) - 127.5) * contrast + 127.5 + brightness),
                    0, 255).astype(np.uint8)
  return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def jitter_box(box: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  """The authors' `get_bounding_box(add_perturbation=True)` on an (H, W) image.

  Each side moves outwards by `randint(0, 20)` pixels (0-19), clipped to
  [0, W] / [0, H] as the published code clips (to W, not W - 1).
  """
  h, w = size
  d = rng.integers(0, BOX_JITTER_MAX, size=4)
  x0, y0, x1, y1 = (float(v) for v in box)
  return np.asarray([max(0.0, x0 - d[0]), max(0.0, y0 - d[1]),
                     min(float(w), x1 + d[2]), min(float(h), y1 + d[3])], np.float32)


def low_res_frame(binary: np.ndarray, info: processing.ImageInfo) -> np.ndarray:
  """(H, W) bool -> (M, M) float32 0/1 in the padded low-res frame.

  The numpy twin of `simsam_jax.simsam.pipeline.binary_in_low_res_frame`
  (nearest neighbour, pixel centres: source index floor((i + 0.5) * H / h)),
  kept in numpy for the input pipeline's worker threads.
  """
  m = info.low_res_size
  s = info.image_size
  lh = math.ceil(info.resized_size[0] * m / s)
  lw = math.ceil(info.resized_size[1] * m / s)
  h, w = binary.shape
  rows = np.minimum(((np.arange(lh) + 0.5) * h / lh).astype(np.int64), h - 1)
  cols = np.minimum(((np.arange(lw) + 0.5) * w / lw).astype(np.int64), w - 1)
  out = np.zeros((m, m), np.float32)
  out[:lh, :lw] = binary[rows][:, cols]
  return out


def prepare_element(image: np.ndarray, mask: np.ndarray, image_size: int,
                    rng: np.random.Generator, augment_config: AugmentConfig,
                    box_jitter: bool, profile: str = "sam") -> dict[str, np.ndarray]:
  """One example (original frame) -> the model-frame element (module doc)."""
  image, mask = augment(image, mask, augment_config, rng)
  box = protocols.box_from_mask(mask)
  if box_jitter:
    box = jitter_box(box, mask.shape, rng)
  prof = profiles.get(profile)
  pixels, info = prof.preprocess(image, image_size)
  scale = np.array([info.resized_size[1] / info.original_size[1],
                    info.resized_size[0] / info.original_size[0]] * 2, np.float32)
  return {"pixels": pixels.astype(np.float32),
          "target": low_res_frame(mask, info),
          "valid": low_res_frame(np.ones(mask.shape, bool), info),
          "box": np.asarray(box, np.float32) * scale}


def phantom_stream(min_side: int = 160, max_side: int = 320,
                   seed_offset: int = PHANTOM_STREAM_SEED_OFFSET) -> grain.MapDataset:
  """Endless phantoms (decoded examples with "image" and "mask"), index = seed - offset."""
  def make(j: int):
    example = phantom_data.make_example(seed_offset + int(j), min_side, max_side)
    return {"image": example["image"], "mask": example["mask"], "mask_mode": "1"}
  return grain.MapDataset.range(0, 2 ** 40).map(make)


def source_from_tfds(dataset: str, split: str, data_dir: str,
                     builder_config: Optional[str] = None) -> grain.MapDataset:
  """`tfds.data_source` of a built dataset (`simsam_jax.data.loading` builds it)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  name = dataset if not builder_config else f"{dataset}/{builder_config}"
  return grain.MapDataset.source(tfds.data_source(name, split=split, data_dir=data_dir))


def global_stream(source: grain.MapDataset, *, seed: int, image_size: int, dataset: str,
                  protocol: str, augment_config: AugmentConfig, box_jitter: bool,
                  shuffle: bool = True, profile: str = "sam") -> grain.MapDataset:
  """Shuffled (per epoch, seeded), repeated, augmented model-frame elements."""
  ds = source.shuffle(seed=seed) if shuffle else source
  if len(ds) < 2 ** 39:  # finite sources repeat; the phantom stream is endless already
    ds = ds.repeat()

  def element(example, rng):
    prepared = protocols.prepare(example, protocol, dataset)
    return prepare_element(prepared.image, prepared.mask, image_size, rng,
                           augment_config, box_jitter, profile)

  return ds.random_map(element, seed=seed + 1)


def local_stream(ds: grain.MapDataset, global_batch: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
  """This process's rows of every global batch, batched (module doc)."""
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} "
                     "processes")
  local = global_batch // process_count

  def pick(k):
    return ds[(k // local) * global_batch + process_index * local + k % local]

  return grain.MapDataset.range(0, 2 ** 40).map(pick).batch(local, drop_remainder=True)


def make_iterator(local: grain.MapDataset, num_threads: int = 2, prefetch: int = 8):
  """Checkpointable iterator (`get_state` / `set_state`) with threaded prefetch."""
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(local.to_iter_dataset(options))


def process_slice() -> tuple[int, int]:
  """(process_index, process_count) of this JAX process."""
  return jax.process_index(), jax.process_count()

"""Batched evaluation: one compiled program per batch of images, all methods.

`BatchRunner(model, methods, batch_size, policy)` jits ONE program that, for
B images of one preprocessed size, encodes every image, runs the SAM baseline
(the box-only first stage, `pipeline.box_only`, computed once per image) and
every requested SimSAM variant on it (`pipeline.simsam_after_first`,
`jax.vmap` over images, each image with its own box and key), and computes
DSC and IoU against the ground truth on the device. Only masks and scalars
come back to the host (the K candidates never leave the device; the figure's
union of the K candidate masks is reduced there).

Images are sharded over the local devices along a `data` mesh axis
(`NamedSharding`, parameters replicated), so the batch size must be a
multiple of the number of local devices. A partial last batch is padded by
repeating its last image; the padding is discarded.

Compilations: one per (batch shape, image size, K, method set, precision).
In the `paper` protocol every image is 256 x 256, so an evaluation compiles
once. In the `native` protocol images keep their size and
`processing.ImageInfo` is static: `batches` groups images by size, so the
program compiles once per distinct size (and a size with fewer than B images
is padded to B).

`prefetch` prepares images (protocol resize, SAM pre-processing, per-image
key) in background threads with `grain`, in order, so that host work overlaps
the device.

Deviations from the one-image path (`SimSam.run_from_embedding`), each
deliberate:
  * The SAM mask is `pipeline.low_res_masks(first_low)` (the profile's
    decision) of the shared first stage; SimSAM's `sam_mask` is the same
    computation.
  * With several images per device, XLA runs the batched (vmapped) ops at
    other shapes than a one-image run and may sum in another order: logits
    can differ in their last bits, and a near-tie (a top-K click, the chosen
    candidate) can then go the other way. With one image per device (batch
    size = device count) the per-device program has the one-image shapes and
    rows equal a batch-1 run's (tested with 4 devices). On the CPU demo
    (24 images, 6 methods) batch 4 on one device changed 4 of 144 rows' masks.
  * DSC and IoU are computed on the device, in float32 from exact int32 pixel
    counts (within 1e-7 of `metrics.dice` / `metrics.iou`, which divide in
    float64), with the same empty-mask policy. NSD (`surface_distance`) stays
    on the host.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import zlib
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from simsam_jax import processing, profiles
from simsam_jax.evaluation.metrics import EmptyMaskPolicy
from simsam_jax.simsam import pipeline
from simsam_jax.simsam.engine import check_box

BATCH_SIZE_FLAG = "--config.batch_size"
FIGURE = "_figure"  # output key of the figure masks, when "simsam" runs


def resolve_batch_size(batch_size: Any, num_devices: Optional[int] = None,
                       platform: Optional[str] = None) -> int:
  """`config.batch_size` -> images per step; ValueError names the flag.

  Args:
    batch_size: a positive multiple of the number of local devices, or 0
      (auto: 8 per device on an accelerator, 1 per device on CPU).
    num_devices: local devices (default: `jax.local_device_count()`).
    platform: "cpu", "gpu", "tpu" (default: `jax.default_backend()`).
  """
  n = jax.local_device_count() if num_devices is None else int(num_devices)
  platform = jax.default_backend() if platform is None else platform
  if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
    raise ValueError(f"{BATCH_SIZE_FLAG} must be an integer, got {batch_size!r}")
  batch_size = int(batch_size)
  if batch_size < 0:
    raise ValueError(f"{BATCH_SIZE_FLAG}={batch_size} must be positive (or 0: automatic)")
  if batch_size == 0:
    return n * (1 if platform == "cpu" else 8)
  if batch_size % n:
    raise ValueError(f"{BATCH_SIZE_FLAG}={batch_size} is not a multiple of the "
                     f"{n} local devices the images are sharded over")
  return batch_size


def image_key(seed: int, example_id: str) -> jax.Array:
  """A per-image key that depends only on (seed, id): resume- and batch-safe."""
  return jax.random.fold_in(jax.random.key(seed), zlib.crc32(example_id.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass
class Item:
  """One image on its way to the device.

  Attributes:
    example: the stored example (dict from `loading.iter_split`).
    extra: whatever the caller attached (passed through untouched).
    prepared: `protocols.PreparedExample`, or None when preparing failed.
    error: why preparing failed ("" when it did not).
    pixels: (S, S, 3) float32 SAM input (`processing.preprocess`).
    info: `processing.ImageInfo` of the image.
    key_data: (2,) uint32 data of the per-image key (`image_key`).
  """
  example: dict
  extra: Any = None
  prepared: Any = None
  error: str = ""
  pixels: Optional[np.ndarray] = None
  info: Optional[processing.ImageInfo] = None
  key_data: Optional[np.ndarray] = None


def prefetch(entries: Sequence[tuple[dict, Any]], prepare: Callable[[dict], Any],
             image_size: int, seed: int, num_threads: Optional[int] = None,
             buffer_size: int = 16, profile: str = "sam") -> Iterator[Item]:
  """Prepares `entries` = [(example, extra)] in background threads, in order.

  `prepare(example) -> PreparedExample` may raise ValueError (or a
  `DatasetError`); the item then carries the message in `error`.
  """
  def load(entry) -> Item:
    example, extra = entry
    item = Item(example=example, extra=extra)
    try:
      item.prepared = prepare(example)
    except ValueError as e:  # DatasetError is a ValueError
      item.error = str(e)
      return item
    item.pixels, item.info = preprocess(item.prepared.image, image_size)
    item.key_data = np.asarray(jax.random.key_data(image_key(seed, item.prepared.id)))
    return item

  preprocess = profiles.get(profile).preprocess
  if num_threads is None:
    num_threads = max(1, min(4, (os.cpu_count() or 2) - 1))
  dataset = grain.MapDataset.source(list(entries)).map(load)
  return iter(dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=buffer_size)))


def batches(items: Iterable[Item], batch_size: int) -> Iterator[Union[Item, list[Item]]]:
  """Groups prepared items into lists of up to `batch_size` of one size.

  Failed items are yielded alone, as they come. A group is yielded when full;
  the unfilled ones at the end (one per size; in the `paper` protocol at most
  one in all), in the order their first image arrived.
  """
  groups: dict[processing.ImageInfo, list[Item]] = {}
  for item in items:
    if item.error:
      yield item
      continue
    group = groups.setdefault(item.info, [])
    group.append(item)
    if len(group) == batch_size:
      del groups[item.info]
      yield group
  yield from groups.values()


def _overlap(pred: jax.Array, gt: jax.Array, policy: EmptyMaskPolicy):
  """DSC and IoU of (H, W) bool masks, float32, with the empty-mask policy."""
  count = lambda x: jnp.sum(x, dtype=jnp.int32)
  inter, p, g = count(pred & gt), count(pred), count(gt)
  empty = jnp.where((p == 0) & (g == 0), jnp.float32(policy.both_empty_value),
                    jnp.float32(policy.one_empty))
  some_empty = (p == 0) | (g == 0)
  safe = lambda d: jnp.maximum(d, 1).astype(jnp.float32)
  dsc = (2 * inter).astype(jnp.float32) / safe(p + g)
  iou = inter.astype(jnp.float32) / safe(p + g - inter)
  return jnp.where(some_empty, empty, dsc), jnp.where(some_empty, empty, iou)


class BatchRunner:
  """SAM and SimSAM variants on batches of images, data-parallel.

  Args:
    model: the SAM model (`modeling.sam.Sam`).
    methods: {name: SimSamConfig, or None for SAM alone} (see
      `evaluation.methods.method_configs`).
    batch_size: images per step, a multiple of the number of `devices`.
    policy: empty-mask policy of DSC and IoU.
    devices: devices to shard images over (default: the local devices).
    profile: the preprocessing profile (`simsam_jax.profiles`) the images are
      prepared with (`prefetch(..., profile=...)`); masks come back through it.
  """

  def __init__(self, model, methods: dict[str, Optional[pipeline.SimSamConfig]],
               batch_size: int, policy: EmptyMaskPolicy, devices=None,
               profile: str = "sam"):
    self.methods = dict(methods)
    self.profile = profiles.get(profile)
    self.batch_size = int(batch_size)
    self.image_size = model.config.image_size
    devices = list(jax.local_devices() if devices is None else devices)
    if self.batch_size <= 0 or self.batch_size % len(devices):
      raise ValueError(f"{BATCH_SIZE_FLAG}={batch_size} is not a positive multiple of "
                       f"the {len(devices)} devices")
    mesh = Mesh(np.array(devices), ("data",))
    self._data = NamedSharding(mesh, PartitionSpec("data"))
    graphdef, state = nnx.split(model)
    self.state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    simsam = {n: c for n, c in self.methods.items() if c is not None}
    self._simsam = simsam
    m = model.config.mask_input_size

    def one(state, pixels, box, key_data, gt, info):
      model = nnx.merge(graphdef, state)
      embedding = model.encode_image(pixels[None])[0]
      key = jax.random.wrap_key_data(key_data)
      first_low, first_iou = pipeline.box_only(model, embedding, box, info)
      sam_mask = pipeline.low_res_masks(first_low, info, m)
      out = {}
      if "sam" in self.methods:
        dsc, iou = _overlap(sam_mask, gt, policy)
        out["sam"] = {"mask": sam_mask, "dsc": dsc, "iou": iou, "iou_prediction": first_iou}
      for name, config in simsam.items():
        o = pipeline.simsam_after_first(model, embedding, box, info, config, key,
                                        first_low, first_iou, gt)
        dsc, iou = _overlap(o.mask, gt, policy)
        valid, index = o.chosen >= 0, jnp.maximum(o.chosen, 0)  # -1: synthesised mask
        out[name] = {"mask": o.mask, "dsc": dsc, "iou": iou,
                     "confidence": o.confidence, "chosen": o.chosen,
                     "iou_prediction": jnp.where(valid, o.candidate_iou[index], jnp.nan),
                     "chosen_score": jnp.where(valid, o.scores[index], jnp.nan)}
        if name == "simsam":
          cand = o.candidate_logits
          union = pipeline.low_res_to_original(
              (cand > 0).any(0).astype(jnp.float32) - 0.5, info, cand.shape[-1]) > 0
          out[FIGURE] = {"sam": sam_mask, "union": union, "agreement": o.agreement}
      return out

    def step(state, pixels, boxes, key_data, gts, info):
      fn = lambda p, b, k, g: one(state, p, b, k, g, info)
      return jax.vmap(fn)(pixels, boxes, key_data, gts)

    self._step = jax.jit(step, static_argnames=("info",))

  def check(self, info: processing.ImageInfo, items: Sequence[Item]) -> None:
    """ValueError when an image cannot be run (size, K, box)."""
    h, w = info.original_size
    for config in self._simsam.values():
      config.validate(num_pixels=h * w)
    for item in items:
      check_box(item.prepared.box, info.original_size)

  def dispatch(self, items: Sequence[Item]):
    """Starts the program on up to `batch_size` items of one size (async).

    Returns a handle for `fetch`.
    """
    n = len(items)
    if not 0 < n <= self.batch_size:
      raise ValueError(f"a batch holds 1 to {self.batch_size} images, got {n}")
    info = items[0].info
    self.check(info, items)
    padded = list(items) + [items[-1]] * (self.batch_size - n)
    stack = lambda values, dtype: jax.device_put(
        np.stack([np.asarray(v, dtype) for v in values]), self._data)
    out = self._step(self.state, stack([i.pixels for i in padded], np.float32),
                     stack([i.prepared.box for i in padded], np.float32),
                     stack([i.key_data for i in padded], np.uint32),
                     stack([i.prepared.mask for i in padded], bool), info)
    return list(items), out

  def fetch(self, handle) -> list[dict[str, Any]]:
    """Waits for a dispatched batch -> one dict per real image:

    {method: {"mask": (H, W) bool, "dsc": float, "iou": float,
    "confidence": float (NaN for SAM), "chosen": int (-1 for SAM),
    "iou_prediction": float (SAM's IoU head for its mask; for SimSAM, of the
    chosen candidate), "chosen_score": float (the chosen candidate's
    aggregation score, its mean IoU to the K; NaN for SAM)}}, plus, when
    "simsam" ran, `FIGURE`: {"sam": SAM's mask, "union": union of the K
    candidate masks, each (H, W) bool; "agreement": (H, W) float32 in [0, 1]}.
    """
    items, out = handle
    out = jax.device_get(out)
    results = []
    for i in range(len(items)):
      r = {}
      for name in self.methods:
        o = out[name]
        r[name] = {"mask": np.asarray(o["mask"][i]), "dsc": float(o["dsc"][i]),
                   "iou": float(o["iou"][i]),
                   "confidence": float(o["confidence"][i]) if "confidence" in o
                   else math.nan,
                   "chosen": int(o["chosen"][i]) if "chosen" in o else -1,
                   "iou_prediction": float(o["iou_prediction"][i]),
                   "chosen_score": float(o["chosen_score"][i]) if "chosen_score" in o
                   else math.nan}
      if FIGURE in out:
        r[FIGURE] = {k: np.asarray(v[i]) for k, v in out[FIGURE].items()}
      results.append(r)
    return results

  def compilations(self) -> int:
    """How many programs the step has compiled (one per batch shape/size)."""
    return self._step._cache_size()  # pylint: disable=protected-access

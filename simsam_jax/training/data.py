"""Training data for SAM-FT: examples -> arrays, and the embedding cache.

The image encoder is frozen, so every image is encoded once and the
embeddings are cached on disk as one `.npy` per (checkpoint, dataset,
builder config, split, protocol) under `cache_dir`:

  <cache_dir>/<key>.npy    (N, G, G, C) float32 image embeddings
  <cache_dir>/<key>.json   the key's fields and the N example ids, in order

`key` is the sha256 of those fields; the checkpoint enters as its random
spec (`random:tiny`) or the sha256 of its image-encoder weights, so a
fine-tuned export (same encoder) shares its base checkpoint's cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from simsam_jax import fileio, processing, profiles
from simsam_jax.data import protocols
from simsam_jax.simsam import pipeline


@dataclasses.dataclass
class SplitArrays:
  """One split, ready for the decoder.

  Attributes:
    ids: N example ids.
    boxes: (N, 4) float32 GT boxes (x0, y0, x1, y1) in the model frame.
    targets: (N, M, M) float32 0/1 GT in the low-res logits frame.
    infos: N `processing.ImageInfo` (sizes for mapping logits back).
    masks: N (H, W) bool GT at the protocol resolution (for the metrics).
    images: N (H, W, 3) uint8 images (only until encoded; then None).
    embeddings: (N, G, G, C) float32 or None until encoded / loaded.
  """
  ids: list[str]
  boxes: np.ndarray
  targets: np.ndarray
  infos: list[processing.ImageInfo]
  masks: list[np.ndarray]
  images: list[np.ndarray] | None
  embeddings: np.ndarray | None = None


def prepare_split(examples: Sequence[dict[str, Any]], protocol: protocols.Protocol,
                  dataset: str, image_size: int, profile: str = "sam") -> SplitArrays:
  """Applies the protocol and maps boxes and masks into the model frames of
  the preprocessing `profile` (`simsam_jax.profiles`)."""
  m = image_size // processing.LOW_RES_DOWNSCALE
  ids, boxes, targets, infos, masks, images = [], [], [], [], [], []
  for example in sorted(examples, key=lambda e: e["id"]):
    prepared = protocols.prepare(example, protocol, dataset)
    height, width = prepared.image.shape[:2]
    info = profiles.get(profile).geometry((height, width), image_size)
    box = pipeline.to_model_frame(jnp.asarray(prepared.box, jnp.float32).reshape(2, 2), info)
    ids.append(prepared.id)
    boxes.append(np.asarray(box, np.float32).reshape(4))
    targets.append(np.asarray(pipeline.binary_in_low_res_frame(
        jnp.asarray(prepared.mask), info, m), np.float32))
    infos.append(info)
    masks.append(prepared.mask)
    images.append(prepared.image)
  return SplitArrays(ids=ids, boxes=np.stack(boxes), targets=np.stack(targets),
                     infos=infos, masks=masks, images=images)


def move_examples(source: SplitArrays, target: SplitArrays, ids: Sequence[str]
                  ) -> tuple[SplitArrays, SplitArrays]:
  """Moves the examples `ids` from `source` to `target` (both encoded).

  Rows of both results are sorted by id, as `prepare_split` sorts them. Ids
  absent from `source` (e.g. skipped at build time) are ignored.

  Returns:
    (source without `ids`, target with them); new objects, inputs unchanged.
  """
  if source.embeddings is None or target.embeddings is None:
    raise ValueError("move_examples needs encoded splits (embeddings set)")
  moving = set(ids)
  keep = [i for i, example_id in enumerate(source.ids) if example_id not in moving]
  move = [i for i, example_id in enumerate(source.ids) if example_id in moving]

  def take(split: SplitArrays, rows: Sequence[int]) -> SplitArrays:
    rows = list(rows)
    return SplitArrays(
        ids=[split.ids[i] for i in rows], boxes=split.boxes[rows],
        targets=split.targets[rows], infos=[split.infos[i] for i in rows],
        masks=[split.masks[i] for i in rows], images=None,
        embeddings=split.embeddings[rows])

  def concat(a: SplitArrays, b: SplitArrays) -> SplitArrays:
    joined = SplitArrays(
        ids=a.ids + b.ids, boxes=np.concatenate([a.boxes, b.boxes]),
        targets=np.concatenate([a.targets, b.targets]), infos=a.infos + b.infos,
        masks=a.masks + b.masks, images=None,
        embeddings=np.concatenate([a.embeddings, b.embeddings]))
    return take(joined, sorted(range(len(joined.ids)), key=joined.ids.__getitem__))

  return take(source, keep), concat(target, take(source, move))


def encode_images(encode: Callable, state, images: Sequence[np.ndarray],
                  image_size: int, profile: str = "sam") -> np.ndarray:
  """(N, G, G, C) float32 embeddings, one image at a time.

  Args:
    encode: `SamFunctions.encode` (state, (1, S, S, 3) pixels) -> embeddings.
    state: the model state.
    images: N (H, W, 3) uint8 RGB images.
    image_size: S.
    profile: the `simsam_jax.profiles` preprocessing.
  """
  out = []
  for image in images:
    pixels, _ = profiles.get(profile).preprocess(image, image_size)
    out.append(np.asarray(jax.device_get(encode(state, jnp.asarray(pixels)[None])))[0])
  return np.stack(out).astype(np.float32)


def checkpoint_fingerprint(spec: str, encoder_state) -> str:
  """The random spec, or sha256 of the image-encoder weights (sorted paths)."""
  if spec.startswith("random:"):
    return spec
  digest = hashlib.sha256()
  flat = jax.tree_util.tree_flatten_with_path(encoder_state)[0]
  for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return "sha256:" + digest.hexdigest()


def cache_key(fields: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def load_or_encode(split: SplitArrays, cache_dir: str, fields: dict[str, Any],
                   encode: Callable, state, image_size: int,
                   profile: str = "sam") -> bool:
  """Fills `split.embeddings` from the cache or by encoding (then caches).

  Returns True on a cache hit. A cache whose ids differ is recomputed.
  """
  key = cache_key(fields)
  array_path = os.path.join(cache_dir, key + ".npy")
  meta_path = os.path.join(cache_dir, key + ".json")
  if os.path.exists(array_path) and os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("ids") == split.ids:
      split.embeddings = np.load(array_path)
      split.images = None
      return True
  split.embeddings = encode_images(encode, state, split.images, image_size, profile)
  split.images = None
  buffer = io.BytesIO()
  np.save(buffer, split.embeddings)
  fileio.write_files_atomically({
      array_path: buffer.getvalue(),
      meta_path: json.dumps({**fields, "ids": split.ids}, indent=2).encode()})
  return False

"""Compiled SimSAM entry points over a SAM model: one image, a batch, staged.

`SimSam(model, config)` splits the model once and jits, per (image size, K):

* `run(pixels, box, key, ground_truth)`: encoder + the whole method in ONE
  `jax.jit` (no host round trip between stages).
* `run_from_embedding(embedding, box, key, ground_truth)`: the method on a
  precomputed embedding (evaluation encodes an image once and runs several
  methods on it).
* `run_batch(pixels, boxes, keys, ground_truths)`: `jax.vmap` over images of
  one size, sharded over all devices along a `data` mesh axis (parameters
  replicated); equal to per-image runs.
* `stages`: the same computation split into separately jitted stages
  (encode, first decode, simulate + decode, aggregate + maps at the
  original size) for per-stage timing.

The model state is a jit argument (never static), so new weights need no
recompilation.

Precision: `SimSam(model, config, dtype="bfloat16")` runs the SAM parts
(encoder, prompt encoder, decoder) in bfloat16 with the float32 weights cast
inside the jitted programs (`modeling.policy`); the decoder hands back
float32 logits, so first probabilities, the error map, top-K clicks, the
aggregation and the returned maps are float32 in every precision.
`attention_impl` ("xla" / "cudnn") selects the attention kernel.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from simsam_jax import processing, profiles
from simsam_jax.modeling.policy import DTypeLike
from simsam_jax.modeling.sam import Sam, with_policy
from simsam_jax.simsam import pipeline
from simsam_jax.simsam.mask_prompts import MASK_PROMPTS


class SimSam:
  """SimSAM bound to one SAM model and one `SimSamConfig`.

  Args:
    model: the SAM (its arrays are shared, not copied).
    config: what SimSAM does.
    dtype: compute precision of the SAM parts, "float32" / "bfloat16" (or the
      dtype); None keeps the model's (`model.policy`).
    attention_impl: "xla" / "cudnn"; None keeps the model's.
  Raises:
    ValueError naming a bad config field, an unknown precision or attention
    implementation.
  """

  def __init__(self, model: Sam, config: pipeline.SimSamConfig, *,
               dtype: Optional[DTypeLike] = None,
               attention_impl: Optional[str] = None):
    self.config = config.validate()
    model = with_policy(model, dtype, attention_impl)
    self.policy = model.policy
    self.graphdef, self.state = nnx.split(model)
    self.model_config = model.config
    graphdef = self.graphdef

    def from_embedding(state, embedding, box, key, ground_truth, info):
      model = nnx.merge(graphdef, state)
      return pipeline.simsam_from_embedding(model, embedding, box, info, self.config,
                                            key, ground_truth)

    def full(state, pixels, box, key, ground_truth, info):
      model = nnx.merge(graphdef, state)
      embedding = model.encode_image(pixels[None])[0]
      return pipeline.simsam_from_embedding(model, embedding, box, info, self.config,
                                            key, ground_truth)

    def batch(state, pixels, boxes, keys, ground_truths, info):
      fn = lambda p, b, k, g: full(state, p, b, k, g, info)
      return jax.vmap(fn)(pixels, boxes, keys, ground_truths)

    self._from_embedding = jax.jit(from_embedding, static_argnames=("info",))
    self._full = jax.jit(full, static_argnames=("info",))
    self._batch = jax.jit(batch, static_argnames=("info",))
    self.replicas = StateReplicas()  # `run_batch`'s replicated state
    self.stages = _Stages(graphdef, self.config)

  # -- helpers ---------------------------------------------------------------

  def default_key(self) -> jax.Array:
    return jax.random.key(self.config.seed)

  def check(self, info: processing.ImageInfo, box, ground_truth) -> None:
    """Validates sizes and prompts before compiling; ValueError names them."""
    h, w = info.original_size
    self.config.validate(num_pixels=h * w)
    if info.image_size != self.model_config.image_size:
      raise ValueError(f"image was preprocessed for {info.image_size}, the model "
                       f"takes {self.model_config.image_size}")
    check_box(box, info.original_size)
    if self.config.needs_ground_truth and ground_truth is None:
      raise ValueError(f"clicks={self.config.clicks!r}, aggregation="
                       f"{self.config.aggregation!r} needs the ground-truth mask")
    if ground_truth is not None and tuple(np.shape(ground_truth)[-2:]) != (h, w):
      raise ValueError(f"ground truth has shape {np.shape(ground_truth)}, "
                       f"the image is {h}x{w}")

  # -- entry points ----------------------------------------------------------

  def run(self, pixels, box, info: processing.ImageInfo, key=None,
          ground_truth=None) -> pipeline.SimSamOutput:
    """One image. pixels: (S, S, 3) float32 from `processing.preprocess`;
    box: (4,) (x0, y0, x1, y1) original pixels; ground_truth: (H, W) bool."""
    self.check(info, box, ground_truth)
    key = self.default_key() if key is None else key
    return self._full(self.state, jnp.asarray(pixels, jnp.float32),
                      jnp.asarray(box, jnp.float32), key, _gt(ground_truth), info)

  def run_from_embedding(self, embedding, box, info: processing.ImageInfo, key=None,
                         ground_truth=None) -> pipeline.SimSamOutput:
    """One image from its (G, G, C) embedding."""
    self.check(info, box, ground_truth)
    key = self.default_key() if key is None else key
    return self._from_embedding(self.state, embedding, jnp.asarray(box, jnp.float32),
                                key, _gt(ground_truth), info)

  def segment(self, image: np.ndarray, box, key=None, ground_truth=None,
              profile: str = "sam") -> pipeline.SimSamOutput:
    """uint8 (H, W, 3) image -> SimSamOutput (pre-processing on the host,
    by the `simsam_jax.profiles` profile named `profile`)."""
    pixels, info = profiles.get(profile).preprocess(image, self.model_config.image_size)
    return self.run(pixels, box, info, key, ground_truth)

  def run_batch(self, pixels, boxes, info: processing.ImageInfo, keys=None,
                ground_truths=None, devices=None) -> pipeline.SimSamOutput:
    """B images of one size, data-parallel over `devices` (default: all).

    Args:
      pixels: (B, S, S, 3) float32; boxes: (B, 4) original pixels.
      keys: (B,) keys (default: the config's key for every image, so that
        each image gets what `run` would give it).
      ground_truths: (B, H, W) bool or None.
    Returns:
      SimSamOutput with a leading B axis on every field.
    """
    pixels = np.asarray(pixels, np.float32)
    boxes = np.asarray(boxes, np.float32)
    b = pixels.shape[0]
    for i in range(b):
      self.check(info, boxes[i], None if ground_truths is None else ground_truths[i])
    if keys is None:
      keys = jnp.stack([self.default_key()] * b)
    gts = None if ground_truths is None else jnp.asarray(np.asarray(ground_truths, bool))
    return data_parallel(self._batch, self.state, (jnp.asarray(pixels), jnp.asarray(boxes),
                                                   keys, gts), devices,
                         replicas=self.replicas, info=info)


class StateReplicas:
  """A model state put replicated on a device mesh, kept for the next call.

  `data_parallel` needs the parameters on every device of its mesh; putting
  them there on every call copies all weights (ViT-H: 2.5 GB) to every
  device each time. An owner (`SimSam`, `InteractiveSam`, `Predictor`) keeps
  one `StateReplicas` and passes it to `data_parallel`: the copy is made once
  per (state object, devices) and reused. Assigning a new state object to
  the owner (e.g. new weights) makes the next call copy again; changing
  leaves of the same state object in place is not seen.
  """

  def __init__(self):
    self._state = None
    self._devices: tuple = ()
    self._replicated = None

  def get(self, state, mesh: Mesh):
    """`state` replicated over `mesh` (cached while `state` is the same object)."""
    devices = tuple(mesh.devices.flat)
    if state is not self._state or devices != self._devices:
      self._replicated = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
      self._state, self._devices = state, devices
    return self._replicated


def data_parallel(batched_fn, state, arrays, devices=None, *,
                  replicas: Optional[StateReplicas] = None, **static):
  """`batched_fn(state, *arrays, **static)` sharded over `devices` along B.

  The B images are split along a `data` mesh axis (parameters replicated);
  the last image is repeated so that every device gets as many, and the
  padding is dropped from the outputs.

  Args:
    batched_fn: a jitted function vmapped over the leading axis of `arrays`.
    state: the model state (replicated).
    arrays: arrays with a leading B axis, or None (passed through).
    devices: the devices (default: all).
    replicas: the caller's `StateReplicas` (the replicated state is reused
      across calls); None copies `state` to the devices on this call.
    static: static keyword arguments of `batched_fn` (e.g. `info`).
  Returns:
    `batched_fn`'s output with B on every leaf's leading axis.
  """
  b = next(x for x in arrays if x is not None).shape[0]
  devices = list(jax.devices() if devices is None else devices)
  pad = (-b) % len(devices)  # repeat the last image so every device gets as many
  take = lambda x: None if x is None else jnp.concatenate(
      [x, jnp.repeat(x[-1:], pad, axis=0)], 0) if pad else x
  mesh = Mesh(np.array(devices), ("data",))
  data = NamedSharding(mesh, PartitionSpec("data"))
  put = lambda x: None if x is None else jax.device_put(take(x), data)
  state = (replicas or StateReplicas()).get(state, mesh)
  out = batched_fn(state, *(put(x) for x in arrays), **static)
  return jax.tree.map(lambda x: x[:b], out) if pad else out


class _Stages:
  """The pipeline split into separately jitted stages, for timing only.

  Host synchronisation between stages is what makes per-stage timing
  possible; `SimSam.run` fuses the same functions into one program.
  """

  def __init__(self, graphdef, config: pipeline.SimSamConfig):
    self.config = config
    merge = functools.partial(nnx.merge, graphdef)

    def encode(state, pixels):
      return merge(state).encode_image(pixels[None])[0]

    def first(state, embedding, box, info):
      return pipeline.box_only(merge(state), embedding, box, info)

    def simulate_and_decode(state, embedding, box, first_low, key, ground_truth, info):
      model = merge(state)
      m = model.config.mask_input_size
      box_model = pipeline.to_model_frame(box.reshape(2, 2), info).reshape(4)
      probs = pipeline.first_probabilities(first_low, info)
      clicks, labels = pipeline.simulate_clicks(probs, config, key, ground_truth, box)
      mask_prompt = MASK_PROMPTS.get(config.mask_prompt)(
          first_low, pipeline.binary_in_low_res_frame(probs > 0.5, info, m))
      cand, iou = pipeline.decode_clicks(model, embedding, box_model, clicks, labels,
                                         mask_prompt, info)
      return clicks, labels, cand, iou

    def aggregate(cand, iou, first_low, first_iou, clicks, labels, info,
                  ground_truth=None):
      return pipeline.finalize(cand, iou, first_low, first_iou, clicks, labels, info,
                               config, ground_truth)

    self.encode = jax.jit(encode)
    self.first = jax.jit(first, static_argnames=("info",))
    self.simulate_and_decode = jax.jit(simulate_and_decode, static_argnames=("info",))
    self.aggregate = jax.jit(aggregate, static_argnames=("info",))


def _gt(ground_truth):
  return None if ground_truth is None else jnp.asarray(ground_truth, bool)


def check_box(box, original_size) -> None:
  """ValueError unless box = (x0, y0, x1, y1) lies in [0, W] x [0, H], x1 >= x0,
  y1 >= y0 and is not empty (zero width and height)."""
  h, w = original_size
  b = np.asarray(box, np.float64).reshape(-1)
  if b.shape != (4,) or not np.all(np.isfinite(b)):
    raise ValueError(f"box must be 4 finite numbers x0,y0,x1,y1; got {box!r}")
  x0, y0, x1, y1 = b
  if x1 < x0 or y1 < y0:
    raise ValueError(f"box {b.tolist()} has x1 < x0 or y1 < y0")
  if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
    raise ValueError(f"box {b.tolist()} lies outside the {w}x{h} (WxH) image")
  if x1 == x0 and y1 == y0:
    raise ValueError(f"box {b.tolist()} is empty (a single point)")

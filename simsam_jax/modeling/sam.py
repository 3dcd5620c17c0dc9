"""The Segment Anything Model: image encoder + prompt encoder + mask decoder.

Two entry points that jit separately:

* `Sam.encode_image(pixels)`: once per image batch.
* `Sam.decode(image_embeddings, ...)`: any number P of prompt sets per image
  against that embedding. The decoder is vmapped over prompts with the image
  embedding unbatched, so the caller never copies the embedding P times.

`make_sam_functions` returns `jax.jit` compiled versions that take the model's
split state as an argument (never as a static argument).

Precision and attention implementation are run options (`policy.Policy`),
not architecture: `Sam(config, rngs=..., dtype="bfloat16")`,
`build_sam(..., dtype=...)`, `make_sam_functions(model, dtype=...)` and
`with_policy(model, dtype=..., attention_impl=...)` choose them; parameters
are float32 in every precision and cast to the compute dtype where they are
used (inside the jitted programs, so weights stay float32 in memory). The
image embeddings, low-resolution logits and IoU predictions returned are
float32 in every precision. See `policy` for what runs in which dtype.

Deviations from the PyTorch reference (see also each part's module):
  * NHWC image embeddings (B, G, G, C) instead of NCHW.
  * `Sam` holds no pixel mean/std buffers; normalisation lives in
    `simsam_jax.processing`, which mirrors the official predictor and the
    Hugging Face processor.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import numpy as np
from flax import nnx

from simsam_jax.modeling.config import SamConfig
from simsam_jax.modeling.encoders import family_of
from simsam_jax.modeling.mask_decoder import MaskDecoder
from simsam_jax.modeling.policy import DTypeLike, Policy, make_policy
from simsam_jax.modeling.prompt_encoder import PromptEncoder


class Sam(nnx.Module):
  """SAM in Flax NNX. Build with `Sam(config, rngs=nnx.Rngs(seed))`.

  The image encoder is the module of `config.encoder`'s registered family
  (`simsam_jax.modeling.encoders`; SAM's ViT by default).

  `dtype` ("float32" default, "bfloat16") is the compute precision and
  `attention_impl` ("xla" default, "cudnn") the implementation of
  `jax.nn.dot_product_attention`; parameters are float32 either way.
  """

  def __init__(self, config: SamConfig, *, rngs: nnx.Rngs,
               dtype: DTypeLike = "float32", attention_impl: str = "xla"):
    self.config = config
    self.policy = Policy(dtype, attention_impl)
    self.image_encoder = family_of(config.encoder).module(config, rngs=rngs,
                                                          policy=self.policy)
    self.prompt_encoder = PromptEncoder(config, rngs=rngs, policy=self.policy)
    self.mask_decoder = MaskDecoder(config, rngs=rngs, policy=self.policy)

  def encode_image(self, pixels: jax.Array) -> jax.Array:
    """Image embeddings.

    Args:
      pixels: (B, S, S, 3) float32, S = config.image_size: resized, normalised
        with SAM's pixel mean/std and zero-padded (`processing.preprocess`).
    Returns:
      (B, G, G, C) float32 in every precision, G = S // encoder.stride,
      C = prompt_embed_dim.
    """
    s = self.config.image_size
    if pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
      raise ValueError(
          f"pixels must have shape (B, {s}, {s}, 3); got {pixels.shape}")
    return self.image_encoder(pixels)

  def decode(self, image_embeddings: jax.Array,
             points: Optional[jax.Array] = None,
             point_labels: Optional[jax.Array] = None,
             boxes: Optional[jax.Array] = None,
             mask_inputs: Optional[jax.Array] = None,
             multimask_output: bool = False) -> tuple[jax.Array, jax.Array]:
    """Decodes P prompt sets per image.

    Args:
      image_embeddings: (B, G, G, C) float32 from `encode_image`.
      points: (B, P, N, 2) float32 (x, y) pixels in the S x S model frame.
      point_labels: (B, P, N) int32: 1 positive, 0 negative, -1 not a point.
      boxes: (B, P, 4) float32 (x0, y0, x1, y1) in the model frame.
      mask_inputs: (B, P, M, M) float32 dense mask prompts, M = 4G (256), in
        logit units; (B, 1, M, M) shares one mask across the P prompt sets
        and embeds it once per image.
      multimask_output: static; True returns the `num_multimask_outputs`
        ambiguity masks, False the single-mask output (token 0).
    At least one of points, boxes, mask_inputs is required; all given ones
    share (B, P) (a shared mask may have P = 1).

    Returns:
      low_res_logits: (B, P, K, M, M) float32, K = 3 (multimask) or 1.
      iou_predictions: (B, P, K) float32.
    """
    prompts = {"points": points, "point_labels": point_labels,
               "box": boxes, "mask": mask_inputs}
    prompts = {k: v for k, v in prompts.items() if v is not None}
    if ("points" in prompts) != ("point_labels" in prompts):
      raise ValueError("points and point_labels must be given together")
    if not prompts:
      raise ValueError("decode needs points, boxes or mask_inputs")
    lead = {k: tuple(v.shape[:2]) for k, v in prompts.items()}
    num_prompts = max(p for _, p in lead.values())
    # One mask shared by all prompt sets of an image: embed it once.
    shared_mask = "mask" in prompts and lead["mask"][1] == 1 and num_prompts > 1
    if shared_mask:
      lead.pop("mask")
    if len(set(lead.values())) != 1:
      raise ValueError(f"prompt arrays disagree on (B, P): {lead}")
    b = image_embeddings.shape[0]
    if next(iter(lead.values()))[0] != b:
      raise ValueError(
          f"prompts have batch {next(iter(lead.values()))[0]} but "
          f"image_embeddings have batch {b}")

    encoder = self.prompt_encoder
    image_pe = encoder.dense_positional_encoding()

    def one(embedding, dense, prompt):
      sparse, own_dense = encoder(
          prompt.get("points"), prompt.get("point_labels"),
          prompt.get("box"), prompt.get("mask"))
      return self.mask_decoder(embedding, image_pe, sparse,
                               own_dense if dense is None else dense)

    if shared_mask:
      dense = jax.vmap(encoder.embed_mask)(prompts.pop("mask")[:, 0])
      per_image = jax.vmap(one, in_axes=(None, None, 0))  # over prompts
      masks, iou = jax.vmap(per_image)(image_embeddings, dense, prompts)
    else:
      per_image = jax.vmap(lambda e, p: one(e, None, p), in_axes=(None, 0))
      masks, iou = jax.vmap(per_image)(image_embeddings, prompts)
    if multimask_output:
      return masks[:, :, 1:], iou[:, :, 1:]
    return masks[:, :, :1], iou[:, :, :1]


@dataclasses.dataclass(frozen=True)
class SamFunctions:
  """Compiled SAM entry points over a split model.

  `encode(state, pixels)` and `decode(state, image_embeddings, points,
  point_labels, boxes, mask_inputs, multimask_output)`; `state` is the
  model's `nnx.State` (an argument, so new weights need no recompilation).
  """
  graphdef: nnx.GraphDef
  encode: Callable
  decode: Callable


def make_sam_functions(model: Sam, *, dtype: Optional[DTypeLike] = None,
                       attention_impl: Optional[str] = None
                       ) -> tuple[SamFunctions, nnx.State]:
  """Splits `model` once and returns jitted entry points and its state.

  Args:
    model: a SAM (its arrays are shared, not copied).
    dtype: compute precision of the functions ("float32" / "bfloat16" or the
      dtype); None keeps the model's.
    attention_impl: "xla" / "cudnn"; None keeps the model's.
  Raises:
    ValueError naming an unknown precision or attention implementation.
  """
  graphdef, state = nnx.split(with_policy(model, dtype, attention_impl))

  def encode(state, pixels):
    return nnx.merge(graphdef, state).encode_image(pixels)

  def decode(state, image_embeddings, points=None, point_labels=None,
             boxes=None, mask_inputs=None, multimask_output=False):
    return nnx.merge(graphdef, state).decode(
        image_embeddings, points, point_labels, boxes, mask_inputs,
        multimask_output)

  return SamFunctions(
      graphdef=graphdef,
      encode=jax.jit(encode),
      decode=jax.jit(decode, static_argnames=("multimask_output",)),
  ), state


def with_policy(model: Sam, dtype: Optional[DTypeLike] = None,
                attention_impl: Optional[str] = None) -> Sam:
  """`model` computing in `dtype` with `attention_impl`, same arrays.

  Returns `model` itself when nothing changes; otherwise a new `Sam` whose
  parameters are the same (float32) arrays, not copies. None keeps the
  model's setting.

  Raises:
    ValueError naming an unknown precision or attention implementation, or
    an unusable combination (`policy.make_policy`).
  """
  policy = make_policy(dtype, attention_impl, base=model.policy)
  if policy == model.policy:
    return model
  _, state = nnx.split(model)
  return nnx.merge(split_abstract_sam(model.config, policy)[0], state)


def split_abstract_sam(config: SamConfig, policy: Policy = Policy()
                       ) -> tuple[nnx.GraphDef, nnx.State]:
  """`nnx.split(abstract_sam(...))`, built once per (config, policy).

  Returns the graph definition and a fresh copy of the abstract state
  (`jax.ShapeDtypeStruct` leaves, float32), which the caller may fill with
  `nnx.replace_by_pure_dict`.
  """
  graphdef, state = _split_abstract_sam(config, policy)
  return graphdef, jax.tree.map(lambda leaf: leaf, state)


@functools.lru_cache(maxsize=None)
def _split_abstract_sam(config: SamConfig, policy: Policy):
  return nnx.split(abstract_sam(config, dtype=policy.precision,
                                attention_impl=policy.attention_impl))


def build_sam(config: SamConfig, seed: int = 0, *, dtype: DTypeLike = "float32",
              attention_impl: str = "xla") -> Sam:
  """A SAM with random weights (real weights come from a checkpoint).

  Fills the abstract model from one numpy generator, which is much faster
  than running each flax initialiser eagerly (one small compilation per
  tensor): kernels N(0, 1/fan_in), biases 0, LayerNorm scales 1, embeddings
  and the Fourier matrix N(0, 1), position tables N(0, 0.02^2). The same
  `(config, seed)` always gives the same weights, float32 whatever the
  compute `dtype` ("float32" / "bfloat16") and `attention_impl` ("xla" /
  "cudnn"; see `policy`).

  Raises:
    ValueError naming an unknown precision or attention implementation.
  """
  graphdef, state = split_abstract_sam(config, make_policy(dtype, attention_impl))
  rng = np.random.default_rng(seed)
  pure = nnx.to_pure_dict(state)

  def fill(path, leaf):
    name = str(path[-1].key)
    shape = leaf.shape
    if name == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      return rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(fan_in))
    if name == "bias":
      return np.zeros(shape, np.float32)
    if name == "scale":
      return np.ones(shape, np.float32)
    if name in ("embedding", "gaussian_matrix"):
      return rng.standard_normal(shape, np.float32)
    return np.float32(0.02) * rng.standard_normal(shape, np.float32)

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(fill, pure))
  return nnx.merge(graphdef, state)


def abstract_sam(config: SamConfig, *, dtype: DTypeLike = "float32",
                 attention_impl: str = "xla") -> Sam:
  """SAM with `jax.ShapeDtypeStruct` leaves, for shape checks and restoring.

  The leaves are float32 whatever the compute `dtype`.
  """
  return nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0), dtype=dtype,
                                    attention_impl=attention_impl))

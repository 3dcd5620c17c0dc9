r"""Serialises the whole SAM / SimSAM program with `jax.export`.

  python -m simsam_jax.export --checkpoint=checkpoints/sam_vit_b --method=simsam \
      --k=50 --image_size=480,640 --out=simsam.jaxexport

The exported program takes one uint8 RGB image of the fixed size H x W
given by `--image_size` and one box, and returns the mask, the scores and
the agreement map; pre-processing (resize of the longest side, normalisation,
padding), the encoder, the prompt decoder, SimSAM's clicks, re-decoding and
aggregation, and the maps at the image size all run inside it. It is lowered
for CPU, CUDA and TPU at once (`--platforms`), and loads without the model
code:

  from simsam_jax import export
  segment = export.load("simsam.jaxexport")
  out = segment(image, np.array([x0, y0, x1, y1], np.float32))
  out["mask"], out["scores"], out["agreement"]

or with nothing but JAX: `jax.export.deserialize(open(path, "rb").read())
.call(image, box)` (weights embedded).

Signature of the program (`Exported.in_avals` / `out_avals`):
  image: (H, W, 3) uint8 RGB, values 0-255.
  box: (4,) float32 (x0, y0, x1, y1) in image pixels.
  returns {"mask": (H, W) bool,
           "scores": (K,) float32 -- `simsam`: the aggregation's per-candidate
             scores (`SimSamOutput.scores`); `sam`: (1,) SAM's IoU prediction,
           "agreement": (H, W) float32 in [0, 1] -- `simsam`: the fraction of
             candidates covering each pixel; `sam`: the mask as 0 / 1 (one
             candidate)}.

The weights are embedded as constants (the default), or, with
`--embed_weights=false`, the program's first argument (a list of float32
arrays) and written beside it to `OUT.weights.npz`, which `load` reads; use
that for ViT-H, whose 2.5 GB of weights exceed the serialisation format's
2 GB limit.

Deviations from the library pipeline (`SimSam.segment`):
  * The longest-side resize runs inside the program (`resize_like_pil`), a
    transcription of Pillow's bilinear resampling (fixed-point, horizontal
    then vertical pass), equal bit for bit to `processing.resize_longest_side`
    (tested), so the program needs no host pre-processing.
  * The input size is static: one export per image size (`jax.export` with
    static shapes); a wrong shape is refused by `load`'s callable.
  * Only the "sam" pre-processing profile is supported (MedSAM's
    normalisation is refused with a clear error).
  * Stochastic click strategies use the key of `SimSamConfig.seed` (the
    engine's default key), fixed in the program.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("sam", "simsam")
PLATFORMS = ("cpu", "cuda", "tpu")
WEIGHTS_SUFFIX = ".weights.npz"
PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling (Resample.c)


class ExportError(ValueError):
  """Bad export flags or an unsupported checkpoint, before any work."""


# -- Pillow's bilinear resampling inside the program ------------------------------------


def pil_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pillow's fixed-point bilinear coefficients for one axis.

  Transcribes `precompute_coeffs` and `normalize_coeffs_8bpc` of Pillow's
  `libImaging/Resample.c` (triangle filter of support 1, widened by the
  scale when shrinking, i.e. antialiased; coefficients normalised to sum 1,
  then rounded to 22-bit fixed point).

  Returns:
    index: (out_size, T) int32 source positions in [0, in_size).
    weight: (out_size, T) int32 fixed-point weights (0 for unused taps).
  """
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 1.0 * filterscale
  taps = int(math.ceil(support)) * 2 + 1
  index = np.zeros((out_size, taps), np.int32)
  weight = np.zeros((out_size, taps), np.int32)
  for xx in range(out_size):
    center = (xx + 0.5) * scale
    ss = 1.0 / filterscale
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size) - xmin
    ks = []
    for x in range(xmax):
      t = abs((x + xmin - center + 0.5) * ss)
      ks.append(1.0 - t if t < 1.0 else 0.0)
    ww = 0.0
    for k in ks:
      ww += k
    if ww != 0.0:
      ks = [k / ww for k in ks]
    for x, k in enumerate(ks):
      index[xx, x] = xmin + x
      weight[xx, x] = (int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0
                       else int(0.5 + k * (1 << PRECISION_BITS)))
    index[xx, xmax:] = xmin
  return index, weight


def _resample_axis(image: jax.Array, axis: int, out_size: int) -> jax.Array:
  """One Pillow pass along `axis` of a (H, W, 3) uint8 image -> uint8."""
  index, weight = pil_bilinear_taps(image.shape[axis], out_size)
  acc = jnp.full(image.shape[:axis] + (out_size,) + image.shape[axis + 1:],
                 1 << (PRECISION_BITS - 1), jnp.int32)
  pixels = image.astype(jnp.int32)
  shape = [1, 1, 1]
  shape[axis] = out_size
  for t in range(index.shape[1]):
    gathered = jnp.take(pixels, jnp.asarray(index[:, t]), axis=axis)
    acc = acc + gathered * jnp.asarray(weight[:, t]).reshape(shape)
  clipped = jnp.where(acc >= (1 << PRECISION_BITS << 8), 255,
                      jnp.where(acc <= 0, 0, acc >> PRECISION_BITS))
  return clipped.astype(jnp.uint8)


def resize_like_pil(image: jax.Array, size: Sequence[int]) -> jax.Array:
  """(H, W, 3) uint8 -> (h, w, 3) uint8, as `PIL.Image.resize(BILINEAR)`.

  Horizontal pass first, then vertical, each rounded and clipped to uint8
  as Pillow does; int32 arithmetic (Pillow's accumulator never exceeds
  255 * 2^22 + 2^21 < 2^31).
  """
  h, w = size
  return _resample_axis(_resample_axis(image, 1, w), 0, h)


def preprocess_in_program(image: jax.Array, image_size: int,
                          resized_size: Sequence[int]) -> jax.Array:
  """SAM's pre-processing in JAX: (H, W, 3) uint8 -> (S, S, 3) float32.

  Equal bit for bit to `processing.preprocess` (float32 `(x - mean) / std`,
  zeros below and to the right).
  """
  from simsam_jax.processing import PIXEL_MEAN, PIXEL_STD
  resized = resize_like_pil(image, resized_size).astype(jnp.float32)
  normalised = ((resized - jnp.asarray(PIXEL_MEAN, jnp.float32))
                / jnp.asarray(PIXEL_STD, jnp.float32))
  h, w = resized_size
  return jnp.pad(normalised, ((0, image_size - h), (0, image_size - w), (0, 0)))


# -- building and exporting -------------------------------------------------------------


def parse_image_size(text: str) -> tuple[int, int]:
  """"H,W" -> (H, W); ExportError naming --image_size otherwise."""
  try:
    parts = [int(p) for p in str(text).split(",")]
  except ValueError:
    parts = []
  if len(parts) != 2 or min(parts) < 1:
    raise ExportError(f"--image_size={text!r}: expected H,W (two positive integers, "
                      "e.g. 480,640)")
  return parts[0], parts[1]


def load_checkpoint(spec: str, precision: str):
  """(Sam, description) of `--checkpoint`; the one place that reads weights."""
  from simsam_jax.checkpoint.resolve import resolve_checkpoint
  from simsam_jax.modeling.policy import policy_from_flags
  try:
    return resolve_checkpoint(spec, policy_from_flags(precision, None), flag="--checkpoint")
  except ValueError as e:
    raise ExportError(str(e)) from None


def build_program(model, method: str, image_size: Sequence[int], k: int = 50,
                  profile: str = "sam", embed_weights: bool = True
                  ) -> tuple[Callable, list]:
  """The whole program as a function of (image, box), or of (weights, image, box).

  Args:
    model: a `Sam` (its policy is the compute precision).
    method: "sam" or "simsam".
    image_size: (H, W) of the input images.
    k: SimSAM's number of clicks.
    profile: the checkpoint's pre-processing profile (only "sam").
    embed_weights: True: the weights are closed over (constants of the
      exported program); False: the function's first argument is the list
      of weight arrays returned here.
  Returns:
    (function, weights): `weights` is the flat list of float32 arrays (the
    model state's leaves) the function takes first when not embedded.
  Raises:
    ExportError naming the bad argument.
  """
  from flax import nnx

  from simsam_jax import profiles
  from simsam_jax.simsam import pipeline
  if method not in METHODS:
    raise ExportError(f"--method={method!r}: expected one of {', '.join(METHODS)}")
  if profile != "sam":
    raise ExportError(f"--checkpoint: pre-processing profile {profile!r} is not supported "
                      "by export (only 'sam')")
  h, w = image_size
  config = None
  if method == "simsam":
    try:
      config = pipeline.SimSamConfig(k=k).validate(num_pixels=h * w)
    except ValueError as e:
      raise ExportError(f"--k={k!r}: {e}") from None
  info = profiles.get(profile).geometry((h, w), model.config.image_size)
  graphdef, state = nnx.split(model)
  state = jax.tree.map(jnp.asarray, state)  # random weights are numpy arrays
  leaves, treedef = jax.tree.flatten(state)
  m = model.config.mask_input_size

  def run(state, image, box):
    sam = nnx.merge(graphdef, state)
    pixels = preprocess_in_program(image, info.image_size, info.resized_size)
    embedding = sam.encode_image(pixels[None])[0]
    if method == "sam":
      low, iou = pipeline.box_only(sam, embedding, box, info)
      mask = pipeline.low_res_masks(low, info, m)
      return {"mask": mask, "scores": iou[None], "agreement": mask.astype(jnp.float32)}
    out = pipeline.simsam_from_embedding(sam, embedding, box, info, config,
                                         jax.random.key(config.seed))
    return {"mask": out.mask, "scores": out.scores, "agreement": out.agreement}

  if embed_weights:
    return (lambda image, box: run(state, image, box)), leaves
  return (lambda weights, image, box: run(jax.tree.unflatten(treedef, weights), image, box)
          ), leaves


def input_specs(image_size: Sequence[int]) -> tuple[jax.ShapeDtypeStruct, ...]:
  h, w = image_size
  return (jax.ShapeDtypeStruct((h, w, 3), jnp.uint8), jax.ShapeDtypeStruct((4,), jnp.float32))


def export_program(function: Callable, image_size: Sequence[int], weights: Optional[list] = None,
                   platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
  """`jax.export.export` of `build_program`'s function for `platforms`."""
  specs = input_specs(image_size)
  if weights is not None:
    specs = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in weights],) + specs
  return jax.export.export(jax.jit(function), platforms=tuple(platforms))(*specs)


def export(checkpoint: str, method: str, image_size: Sequence[int], out: str, *, k: int = 50,
           precision: str = "float32", platforms: Sequence[str] = PLATFORMS,
           embed_weights: bool = True) -> dict[str, Any]:
  """Exports and writes `out` (and `out.weights.npz`); returns a summary.

  Every argument is checked before the checkpoint is read; nothing is
  written until the program is exported, then each file atomically (the
  weights file, when separate, before `out`).

  Raises:
    ExportError naming the bad flag; OSError when writing fails.
  """
  from simsam_jax.modeling.policy import policy_from_flags
  from simsam_jax.workdir import write_atomic
  if method not in METHODS:
    raise ExportError(f"--method={method!r}: expected one of {', '.join(METHODS)}")
  h, w = parse_image_size(",".join(str(s) for s in image_size))
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ExportError(f"--k={k!r}: expected a positive integer")
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad or not platforms:
    raise ExportError(f"--platforms={','.join(platforms)!r}: expected a subset of "
                      f"{','.join(PLATFORMS)}")
  try:
    policy_from_flags(precision, None)
  except ValueError as e:
    raise ExportError(str(e)) from None
  if not out:
    raise ExportError("--out is required (e.g. --out=simsam.jaxexport)")
  if os.path.isdir(out):
    raise ExportError(f"--out={out!r} is a folder; give a file path")
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise ExportError(f"--out={out!r}: folder {folder} does not exist")
  model, description = load_checkpoint(checkpoint, precision)
  function, weights = build_program(model, method, (h, w), k, description["profile"],
                                    embed_weights)
  exported = export_program(function, (h, w), None if embed_weights else weights, platforms)
  data = bytes(exported.serialize())
  if not embed_weights:
    import io
    buffer = io.BytesIO()
    np.savez(buffer, *[np.asarray(x) for x in weights])
    write_atomic(out + WEIGHTS_SUFFIX, buffer.getvalue())
  write_atomic(out, data)
  return {"out": out, "bytes": len(data), "method": method, "image_size": (h, w),
          "k": k if method == "simsam" else None, "precision": precision,
          "platforms": tuple(exported.platforms), "embed_weights": embed_weights,
          "checkpoint": description}


# -- loading ----------------------------------------------------------------------------


def load(path: str) -> Callable[[np.ndarray, np.ndarray], dict]:
  """A callable `(image, box) -> {"mask", "scores", "agreement"}` from `path`.

  Needs only JAX (no model code is imported). Reads `path +
  ".weights.npz"` when the weights were exported as an argument. The
  callable checks the image and box against the exported shapes and dtypes
  and raises ValueError naming the expected and the given ones.
  """
  with open(path, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  weights = ()
  if len(exported.in_avals) > 2:
    weights_path = path + WEIGHTS_SUFFIX
    if not os.path.isfile(weights_path):
      raise FileNotFoundError(f"{path} takes its weights as an argument; "
                              f"{weights_path} is missing")
    with np.load(weights_path) as data:
      weights = ([jnp.asarray(data[f"arr_{i}"]) for i in range(len(data.files))],)
  image_aval, box_aval = exported.in_avals[-2:]

  def call(image, box) -> dict:
    image, box = np.asarray(image), np.asarray(box)
    for name, value, aval in (("image", image, image_aval), ("box", box, box_aval)):
      if value.shape != tuple(aval.shape) or value.dtype != aval.dtype:
        raise ValueError(
            f"{name} must have shape {tuple(aval.shape)} and dtype {aval.dtype} (the "
            f"exported size); got shape {value.shape} and dtype {value.dtype}")
    return exported.call(*weights, image, box)

  call.exported = exported
  return call


# -- command line -----------------------------------------------------------------------


def main(argv: Sequence[str]) -> int:
  from absl import flags
  from absl import app
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    if FLAGS.checkpoint is None:
      raise ExportError("--checkpoint is required (a converted folder or random:PRESET[:SEED])")
    if FLAGS.image_size is None:
      raise ExportError("--image_size is required (H,W, e.g. 480,640)")
    summary = export(FLAGS.checkpoint, FLAGS.method, parse_image_size(FLAGS.image_size),
                     FLAGS.out, k=FLAGS.k, precision=FLAGS.precision,
                     platforms=[p for p in FLAGS.platforms.split(",") if p],
                     embed_weights=FLAGS.embed_weights)
  except ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  h, w = summary["image_size"]
  print(f"Exported {summary['method']} ({h}x{w} uint8 image + box -> mask, scores, agreement; "
        f"{summary['precision']}; {', '.join(summary['platforms'])}) from "
        f"{FLAGS.checkpoint} to {summary['out']} ({summary['bytes']:,} bytes"
        + ("" if summary["embed_weights"] else f", weights in {summary['out']}{WEIGHTS_SUFFIX}")
        + ")")
  return 0


def _define_flags() -> None:
  from absl import flags
  flags.DEFINE_string("checkpoint", None, "Converted checkpoint folder or random:PRESET[:SEED].")
  flags.DEFINE_enum("method", "simsam", list(METHODS), "Program to export.")
  flags.DEFINE_integer("k", 50, "SimSAM's number of simulated clicks.")
  flags.DEFINE_string("image_size", None, "H,W of the input images (static).")
  flags.DEFINE_string("precision", "float32", "Compute precision: float32 or bfloat16.")
  flags.DEFINE_string("platforms", ",".join(PLATFORMS),
                      "Comma-separated platforms to lower for (cpu, cuda, tpu).")
  flags.DEFINE_bool("embed_weights", True, "Embed the weights in the program; false: "
                    "the program takes them as an argument, written to OUT.weights.npz.")
  flags.DEFINE_string("out", None, "Output file, e.g. simsam.jaxexport.")


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))

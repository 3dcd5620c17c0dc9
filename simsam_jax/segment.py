"""Segments one image with SimSAM (default) or plain SAM.

  python -m simsam_jax.segment --checkpoint=DIR --image=PATH \\
      --box=x0,y0,x1,y1 --out=mask.png [--method=simsam] [--k=50] \\
      [--clicks=topk] [--aggregation=iou_medoid] [--mask_prompt=binary] \\
      [--seed=0] [--ground_truth=MASK] [--overlay=overlay.png] \\
      [--save_debug=debug.npz] [--save_logits=lowres.npy] \\
      [--precision=float32|bfloat16] [--attention_impl=xla|cudnn] \\
      [--agreement=agreement.png] \\
      [--profile=medsam] [--intensity=window:-160,240]

  python -m simsam_jax.segment --checkpoint=DIR --image=scan.nii.gz \\
      --slice=K [--axis=2] --box=x0,y0,x1,y1 --out=mask.nii.gz

  python -m simsam_jax.segment --method=sam --checkpoint=DIR --image=PATH \\
      [--box=x0,y0,x1,y1] [--point=x,y,label ...] --out=mask.png \\
      [--multimask] [--overlay=overlay.png] [--save_logits=lowres.npy] \\
      [--precision=float32|bfloat16] [--attention_impl=xla|cudnn]

`--method=simsam` (the default) runs `simsam_jax.simsam.SimSam`: the box-only
SAM mask, K simulated clicks (`--clicks`, a `CLICK_STRATEGIES` name), one
decode of the K {box, click, mask prompt} sets (`--mask_prompt`, a
`MASK_PROMPTS` name) and an aggregation of the K candidates
(`--aggregation`, an `AGGREGATIONS` name). It is box-prompted only: `--point`
and `--multimask` are SAM-only. `--clicks=oracle` needs a ground truth: the
phantom's mask for a synthetic image, or `--ground_truth=PATH` (any image
file; foreground = value > 0 after conversion to grayscale, see
`load_ground_truth`). The engine's separately jitted stages run one by one
(compiled ahead of time) so that each is timed; they compute exactly what the
fused `SimSam.run` computes (tests check the mask and the debug arrays).

`--precision=bfloat16` runs SAM's matmuls and convolutions in bfloat16 with
the float32 weights cast at use (softmax, LayerNorms, positional encodings,
the logits and everything SimSAM computes from them stay float32; see
`simsam_jax.modeling.policy`); `--attention_impl=cudnn` uses cuDNN flash
attention (a CUDA GPU and bfloat16 only). Both are recorded in the JSON.

Outputs, all written only once everything succeeded (temporary files in the
destination folders, renamed into place at the end):

* `--out` (.png; .nii.gz / .nii for a NIfTI input, see below): the binary
  mask at the input image's resolution, 8-bit, values 0 and 255 (SAM: logits > 0 after `processing.postprocess_logits`;
  SimSAM: `SimSamOutput.mask`).
* the same path with `.json`, keys: `method` ("sam" / "simsam");
  `checkpoint` (spec, random_weights, preset, architecture, seed, path,
  source_format, source_sha256, source_path, image_size); `image` (spec,
  path, synthetic, height, width); `box`, `box_source` ("flag" /
  "synthetic_ground_truth"), `points` ([x, y, label] lists), `multimask`;
  `iou_predictions` (SAM: one per returned mask; SimSAM: one per candidate),
  `chosen_index` (SimSAM: the aggregation's choice, -1 when it synthesises
  the mask), `mask_foreground_fraction`; `model_frame` (image_size,
  resized_size, box and points in the model frame, low_res_logits_shape);
  `outputs` (absolute paths: mask, metadata, logits, overlay, debug; SimSAM: agreement);
  `precision` ("float32" / "bfloat16") and `attention_impl` ("xla" /
  "cudnn"); `timings_ms` and `compile_ms` apart (SAM: preprocess, encode, decode,
  postprocess; SimSAM: preprocess, encode, first_decode,
  simulate_and_decode, aggregate (with the maps at the input size),
  compile_ms without preprocess); `jax` (backend, devices, jax_version). SimSAM adds `simsam`:
  k, clicks, aggregation, mask_prompt, seed, clicks_in_box,
  include_box_only_mask, num_candidates, chosen_index, confidence (mean
  pairwise IoU of the candidates), scores (min / mean / max of the
  aggregation's per-candidate scores), num_positive_clicks,
  num_negative_clicks, sam_iou_prediction (the box-only mask's predicted
  IoU), sam_mask_foreground_fraction, ground_truth (null, or source, path,
  mask_iou and sam_mask_iou against it).
* `--save_logits` (.npy, optional): low-resolution logits, float32
  (K, M, M): SAM's K = 1 or multimask outputs; SimSAM's final logits, K = 1.
* `--overlay` (.png, optional): `overlay.draw_overlay` of the input image,
  the box, the clicks (SimSAM's K simulated clicks, or SAM's points; green
  positive, red negative) and the mask's contour (yellow).
* `--save_debug` (.npz, SimSAM only): first_logits (M, M) float32 box-only
  low-res logits; clicks (K, 2) int32 (x, y) input-image pixels; labels (K,)
  int32 1 positive / 0 negative; candidate_logits (K, M, M) float32;
  scores (K,) float32; chosen () int32; agreement (H, W) float32 in [0, 1],
  the fraction of candidates covering each pixel.
* `--agreement` (.png, SimSAM only): that agreement map colour-mapped
  (viridis: dark purple 0 = every candidate says background, yellow 1 =
  every candidate says foreground, green-blue near 0.5 = the candidates
  disagree: where SimSAM is unsure), with a colour bar legend on the right
  (`simsam_jax.evaluation.plots.agreement_image`). The raw float map is
  `agreement` in the `--save_debug` npz.

`--checkpoint` is a folder written by `simsam_jax.checkpoint`, or
`random:PRESET[:SEED]` for randomly initialised weights (smoke tests and
benchmarks only: the masks mean nothing). `--image` is a PNG/JPEG/TIFF path,
a NIfTI volume (`.nii`, `.nii.gz`: one slice, `--slice=K` along voxel
`--axis`, default 2), a single-frame DICOM file (`.dcm`), or
`synthetic[:SEED[:HxW]]` (`simsam_jax.synthetic`); for a synthetic image
without `--box` (and, for SAM, without `--point`), the phantom's
ground-truth box is the prompt. NIfTI/DICOM need the `medical` extra.

Medical inputs:

* `--profile`: the preprocessing profile (`simsam_jax.profiles`: `sam`,
  `medsam`, or a registered one). By default the checkpoint's (recorded by
  `convert --profile`; `random:` specs use `sam`); a different value
  overrides it with a logged warning.
* `--intensity`: `minmax`, `window:LO,HI` (in the file's units, e.g.
  Hounsfield) or `percentile:P_LO,P_HI`, how pixels deeper than 8 bits,
  signed or float become 0-255 (`processing.apply_intensity`; default
  `minmax` for them, 8-bit images untouched unless given).
* `--out=mask.nii.gz` (or `.nii`), for a NIfTI `--image` only: a uint8 0/1
  volume of the input's shape and affine with the segmented slice filled
  (`medical.nifti_mask_bytes`); the JSON goes beside it as `mask.json`.
* The JSON adds `checkpoint.profile` and `checkpoint.profile_source`
  ("checkpoint", "flag" or "default"), `image.intensity`, `image.dtype`,
  `image.spacing` ((row, column) mm or null) and `image.volume` (shape,
  axis, slice, spacing, affine; null for 2-D files).

The module is a thin absl `main` over importable steps, so that other
code can reuse them: `parse_box`, `parse_point`, `parse_simsam_config`,
`load_sam`, `load_input_image`, `load_ground_truth`, `check_prompts`,
`run_sam`, `run_simsam`, `simsam_engine`, `write_outputs`, and `segment`,
which chains them.

Expected errors (bad flags, missing files, unreadable checkpoints) raise
`SegmentError`; `main` prints them as one line on stderr and exits with 1.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
from absl import app, flags, logging
from PIL import Image

import jax
import jax.numpy as jnp

from flax import nnx

from simsam_jax import overlay as overlay_lib
from simsam_jax import processing, profiles, synthetic
from simsam_jax.checkpoint import CheckpointError, load_model, read_sidecar
from simsam_jax.modeling import (ATTENTION_IMPLS, PRECISIONS, Policy, SamConfig,
                                 SamFunctions, build_sam, get_preset,
                                 make_sam_functions)
from simsam_jax.modeling.policy import policy_from_flags
from simsam_jax.simsam import (AGGREGATIONS, CLICK_STRATEGIES, MASK_PROMPTS,
                               SimSam, SimSamConfig, SimSamOutput)

RANDOM_PREFIX = "random"
MASK_SUFFIX = ".png"
NIFTI_MASK_SUFFIXES = (".nii.gz", ".nii")
LOGITS_SUFFIX = ".npy"
METADATA_SUFFIX = ".json"
OVERLAY_SUFFIX = ".png"
DEBUG_SUFFIX = ".npz"
MASK_THRESHOLD = 0.0

METHOD_SAM = "sam"
METHOD_SIMSAM = "simsam"
METHODS = (METHOD_SAM, METHOD_SIMSAM)
DEFAULT_METHOD = METHOD_SIMSAM
# The `random` click strategy's key is `jax.random.key(seed)`, which keeps
# only 32 bits (and wraps larger values) without x64: seeds stay in int32.
MAX_SEED = 2**31 - 1
# Flags that only SimSAM reads (`segment` rejects them with --method=sam).
SIMSAM_ONLY_FLAGS = ("k", "clicks", "aggregation", "mask_prompt", "seed",
                     "ground_truth", "save_debug", "agreement")
DEBUG_KEYS = ("first_logits", "clicks", "labels", "candidate_logits",
              "scores", "chosen", "agreement")

Box = Tuple[float, float, float, float]
Point = Tuple[float, float, int]  # (x, y, label)


class SegmentError(ValueError):
  """An expected user error; the message names the flag or file at fault."""


# ----------------------------------------------------------------------------
# Parsing and validating the prompts and paths.
# ----------------------------------------------------------------------------


def _parse_floats(text: str, count: int, flag: str, form: str) -> list[float]:
  """`count` comma-separated finite floats, or SegmentError naming `flag`."""
  parts = [part.strip() for part in text.split(",")]
  if len(parts) != count:
    raise SegmentError(f"--{flag}={text!r}: expected {form} "
                       f"({count} comma-separated numbers)")
  try:
    values = [float(part) for part in parts]
  except ValueError:
    raise SegmentError(f"--{flag}={text!r}: expected {form} with numeric "
                       "values") from None
  if not all(math.isfinite(value) for value in values):
    raise SegmentError(f"--{flag}={text!r}: values must be finite")
  return values


def parse_box(text: str) -> Box:
  """Parses `--box=x0,y0,x1,y1` (input-image pixels).

  Args:
    text: four comma-separated numbers.

  Returns:
    (x0, y0, x1, y1) floats with x0 <= x1 and y0 <= y1.

  Raises:
    SegmentError: on a malformed string or an inverted box.
  """
  x0, y0, x1, y1 = _parse_floats(text, 4, "box", "x0,y0,x1,y1")
  if x1 < x0 or y1 < y0:
    raise SegmentError(f"--box={text!r}: needs x0 <= x1 and y0 <= y1")
  return x0, y0, x1, y1


def parse_point(text: str) -> Point:
  """Parses `--point=x,y,label` (input-image pixels; label 1 or 0).

  Args:
    text: `x,y,label`; label 1 marks foreground, 0 background.

  Returns:
    (x, y, label) with float x, y and int label in {0, 1}.

  Raises:
    SegmentError: on a malformed string or another label.
  """
  parts = text.split(",")
  if len(parts) != 3:
    raise SegmentError(f"--point={text!r}: expected x,y,label "
                       "(label 1 positive, 0 negative)")
  x, y = _parse_floats(",".join(parts[:2]), 2, "point", "x,y,label")
  label = parts[2].strip()
  if label not in ("0", "1"):
    raise SegmentError(f"--point={text!r}: label must be 1 (positive) or 0 "
                       f"(negative), got {label!r}")
  return x, y, int(label)


def check_prompts(box: Optional[Box], points: Sequence[Point],
                  image_size: Tuple[int, int]) -> None:
  """Checks that there is a prompt and that it lies on the image.

  Coordinates may touch the far edges: x in [0, W], y in [0, H].

  Args:
    box: (x0, y0, x1, y1) input-image pixels, or None.
    points: (x, y, label) tuples in input-image pixels.
    image_size: (H, W) of the input image.

  Raises:
    SegmentError: without any prompt, or for one outside the image.
  """
  height, width = image_size
  if box is None and not points:
    raise SegmentError("give a prompt: --box=x0,y0,x1,y1 and/or "
                       "--point=x,y,label")

  def inside(x, y):
    return 0 <= x <= width and 0 <= y <= height

  if box is not None and not (inside(box[0], box[1]) and
                              inside(box[2], box[3])):
    raise SegmentError(
        f"--box={_format_numbers(box)} lies outside the {width}x{height} "
        f"(WxH) image; coordinates must be in [0, {width}] x [0, {height}]")
  for point in points:
    if not inside(point[0], point[1]):
      raise SegmentError(
          f"--point={_format_numbers(point)} lies outside the {width}x{height} "
          f"(WxH) image; coordinates must be in [0, {width}] x [0, {height}]")


def _format_numbers(values: Sequence[float]) -> str:
  return ",".join(f"{value:g}" for value in values)


def parse_simsam_config(k: Optional[int] = None, clicks: Optional[str] = None,
                        aggregation: Optional[str] = None,
                        mask_prompt: Optional[str] = None,
                        seed: Optional[int] = None) -> SimSamConfig:
  """Builds the SimSAM configuration from flag values.

  Args:
    k: `--k`, the number of simulated clicks (>= 1); None for the default.
    clicks: `--clicks`, a `CLICK_STRATEGIES` name; None for the default.
    aggregation: `--aggregation`, an `AGGREGATIONS` name; None: default.
    mask_prompt: `--mask_prompt`, a `MASK_PROMPTS` name; None: default.
    seed: `--seed` in [0, 2^31 - 1], the `random` strategy's key; None:
      default.

  Returns:
    A validated `SimSamConfig` (the paper's defaults where None).

  Raises:
    SegmentError: naming the flag of a bad value or unknown name.
  """
  defaults = SimSamConfig()
  k = defaults.k if k is None else k
  seed = defaults.seed if seed is None else seed
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
    raise SegmentError(f"--k={k!r}: the number of clicks must be a positive "
                       "integer")
  if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
      or not 0 <= seed <= MAX_SEED):
    raise SegmentError(f"--seed={seed!r}: must be an integer in "
                       f"[0, {MAX_SEED}]")
  names = {}
  for flag, value, registry in (("clicks", clicks, CLICK_STRATEGIES),
                                ("aggregation", aggregation, AGGREGATIONS),
                                ("mask_prompt", mask_prompt, MASK_PROMPTS)):
    value = getattr(defaults, flag) if value is None else value
    if value not in registry:
      raise SegmentError(f"--{flag}={value!r}: unknown {registry.kind}; "
                         f"known: {', '.join(registry.names())}")
    names[flag] = value
  return SimSamConfig(k=int(k), seed=int(seed), **names).validate()


def check_simsam_box(box: Box) -> None:
  """SimSAM's prompt is the box: it must have an area.

  Args:
    box: (x0, y0, x1, y1) input-image pixels with x0 <= x1, y0 <= y1.

  Raises:
    SegmentError: when x1 == x0 or y1 == y0.
  """
  if box[2] == box[0] or box[3] == box[1]:
    raise SegmentError(f"--box={_format_numbers(box)} is empty (zero width "
                       "or height); SimSAM needs a box with an area")


def check_output_paths(out: str, save_logits: Optional[str],
                       overlay: Optional[str] = None,
                       save_debug: Optional[str] = None,
                       agreement: Optional[str] = None) -> None:
  """Checks the output names before any work is done.

  Args:
    out: `--out` mask path; the JSON goes beside it (`metadata_path`).
    save_logits: `--save_logits` path or None.
    overlay: `--overlay` path or None.
    save_debug: `--save_debug` path or None.
    agreement: `--agreement` path or None.

  Raises:
    SegmentError: when `out`, `overlay` or `agreement` does not end in .png,
      `save_logits` in .npy or `save_debug` in .npz, when a path is a
      folder, or when two outputs would collide.
  """
  if not out or not out.lower().endswith((MASK_SUFFIX,) + NIFTI_MASK_SUFFIXES):
    raise SegmentError(f"--out={out!r} must name a {MASK_SUFFIX} file (or "
                       ".nii.gz / .nii for a NIfTI --image)")
  for path, flag, suffix in ((save_logits, "save_logits", LOGITS_SUFFIX),
                             (overlay, "overlay", OVERLAY_SUFFIX),
                             (save_debug, "save_debug", DEBUG_SUFFIX),
                             (agreement, "agreement", OVERLAY_SUFFIX)):
    if path is not None and not path.lower().endswith(suffix):
      raise SegmentError(f"--{flag}={path!r} must name a {suffix} file")
  taken = {os.path.abspath(out): "--out",
           os.path.abspath(metadata_path(out)): "the metadata written beside "
                                                "--out"}
  for path, flag in ((save_logits, "save_logits"), (overlay, "overlay"),
                     (save_debug, "save_debug"), (agreement, "agreement")):
    if path is None:
      continue
    other = taken.get(os.path.abspath(path))
    if other is not None:
      raise SegmentError(f"--{flag}={path!r} would overwrite {other}")
    taken[os.path.abspath(path)] = f"--{flag}"
  for path, flag in ((out, "out"), (save_logits, "save_logits"),
                     (overlay, "overlay"), (save_debug, "save_debug"),
                     (agreement, "agreement")):
    if path is not None and os.path.isdir(path):
      raise SegmentError(f"--{flag}={path!r} is a folder")


def metadata_path(out: str) -> str:
  """The JSON written beside the mask: same folder and stem, `.json`
  (`mask.nii.gz` -> `mask.json`)."""
  for suffix in NIFTI_MASK_SUFFIXES:
    if out.lower().endswith(suffix):
      return out[:-len(suffix)] + METADATA_SUFFIX
  return os.path.splitext(out)[0] + METADATA_SUFFIX


def is_nifti_path(path: str) -> bool:
  return path.lower().endswith(NIFTI_MASK_SUFFIXES)


# ----------------------------------------------------------------------------
# Model and image loading.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoadedSam:
  """A ready SAM: compiled entry points, weights and provenance.

  Attributes:
    fns: `make_sam_functions` output (jitted `encode` / `decode`).
    state: the model's `nnx.State`, passed to `fns`.
    config: the architecture.
    description: JSON-ready provenance (spec, path, preset, random weights,
      seed, source format and sha256).
    simsam_engines: `simsam_engine`'s cache, {SimSamConfig: SimSam}, so
      that repeated runs with one configuration compile once.
    policy: compute precision and attention implementation of `fns`.
  """
  fns: SamFunctions
  state: Any
  config: SamConfig
  description: dict
  policy: Policy = Policy()
  simsam_engines: dict = dataclasses.field(default_factory=dict,
                                           compare=False, repr=False)


def parse_random_spec(spec: str) -> Optional[Tuple[str, int]]:
  """`random:PRESET[:SEED]` -> (preset, seed); None for anything else.

  Raises:
    SegmentError: for a malformed `random:...` string or an unknown preset.
  """
  if spec != RANDOM_PREFIX and not spec.startswith(RANDOM_PREFIX + ":"):
    return None
  parts = spec.split(":")
  if len(parts) not in (2, 3) or not parts[1]:
    raise SegmentError(f"--checkpoint={spec!r}: expected random:PRESET or "
                       "random:PRESET:SEED")
  preset = parts[1]
  try:
    get_preset(preset)
  except ValueError as error:
    raise SegmentError(f"--checkpoint={spec!r}: {error}") from None
  seed = 0
  if len(parts) == 3:
    if not parts[2].isdigit():
      raise SegmentError(f"--checkpoint={spec!r}: the seed must be a "
                         f"non-negative integer, got {parts[2]!r}")
    seed = int(parts[2])
  return preset, seed


def describe_checkpoint(spec: str) -> dict:
  """Checks `--checkpoint` cheaply (no weights read) and describes it.

  Args:
    spec: a converted checkpoint folder or `random:PRESET[:SEED]`.

  Returns:
    JSON-ready dict: spec, random_weights, preset, seed, path,
    source_format, source_sha256, source_path, image_size (the model's
    input side S), profile (the sidecar's preprocessing profile; "sam" for
    random weights).

  Raises:
    SegmentError: for a missing folder, an unreadable sidecar, a malformed
      random spec or an unknown preset.
  """
  random_spec = parse_random_spec(spec)
  if random_spec is not None:
    preset, seed = random_spec
    return {"spec": spec, "random_weights": True, "preset": preset,
            "seed": seed, "path": None, "source_format": None,
            "source_sha256": None, "source_path": None,
            "image_size": get_preset(preset).image_size,
            "profile": profiles.DEFAULT_PROFILE}
  if not os.path.exists(spec):
    raise SegmentError(f"--checkpoint={spec!r}: checkpoint folder not found")
  if not os.path.isdir(spec):
    raise SegmentError(f"--checkpoint={spec!r}: not a folder (expected a "
                       "converted checkpoint folder or random:PRESET[:SEED])")
  try:
    sidecar = read_sidecar(spec)
  except CheckpointError as error:
    raise SegmentError(f"--checkpoint={spec!r}: "
                       + "; ".join(error.problems)) from None
  source = sidecar.get("source") or {}
  return {"spec": spec, "random_weights": False,
          "preset": sidecar.get("preset"), "seed": None,
          "path": os.path.abspath(spec),
          "source_format": source.get("format"),
          "source_sha256": source.get("sha256"),
          "source_path": source.get("path"),
          "image_size": sidecar["config"].image_size,
          "profile": sidecar["profile"]}


def parse_policy(precision: Optional[str] = None,
                 attention_impl: Optional[str] = None) -> Policy:
  """`--precision` and `--attention_impl` (None: the defaults) -> Policy.

  Raises:
    SegmentError: naming the flag for an unknown value or an unusable
      combination (cudnn without bfloat16 or without a GPU).
  """
  try:
    return policy_from_flags(precision, attention_impl)
  except ValueError as error:
    raise SegmentError(str(error)) from None


def load_sam(spec: str, policy: Policy = Policy()) -> LoadedSam:
  """Loads (or randomly builds) SAM from a `--checkpoint` value.

  Args:
    spec: a converted checkpoint folder or `random:PRESET[:SEED]`
      (weights from `build_sam(get_preset(PRESET), SEED)`, SEED 0 by
      default).
    policy: compute precision and attention implementation
      (`parse_policy`); the weights are float32 either way.

  Raises:
    SegmentError: as `describe_checkpoint`, or when the weights cannot be
      restored.
  """
  description = describe_checkpoint(spec)
  if description["random_weights"]:
    model = build_sam(get_preset(description["preset"]), description["seed"])
  else:
    try:
      model = load_model(spec)
    except CheckpointError as error:
      raise SegmentError(f"--checkpoint={spec!r}: "
                         + "; ".join(error.problems)) from None
  fns, state = make_sam_functions(model, dtype=policy.precision,
                                  attention_impl=policy.attention_impl)
  description["architecture"] = description["preset"] or "custom"
  return LoadedSam(fns=fns, state=state, config=model.config,
                   description=description, policy=policy)


def sam_profile(sam: LoadedSam) -> profiles.Profile:
  """The preprocessing profile `sam` runs under (`description["profile"]`)."""
  return profiles.get(sam.description.get("profile", profiles.DEFAULT_PROFILE))


def with_profile(sam: LoadedSam, override: Optional[str]) -> LoadedSam:
  """`sam` under its checkpoint's profile, or under `--profile=override`.

  The description records `profile` and `profile_source` ("checkpoint",
  "flag", or "default" for random weights); an override that differs from
  the checkpoint's profile is logged as a warning. The compiled engines are
  shared.

  Raises:
    SegmentError: naming --profile for an unregistered name.
  """
  recorded = sam.description.get("recorded_profile",
                                 sam.description.get("profile",
                                                     profiles.DEFAULT_PROFILE))
  try:
    name, source = profiles.resolve(recorded, override)
  except ValueError as error:
    raise SegmentError(f"--checkpoint={sam.description['spec']!r}: {error}"
                       if override is None else str(error)) from None
  if source == "checkpoint" and sam.description.get("random_weights"):
    source = "default"
  description = {**sam.description, "profile": name, "profile_source": source,
                 "recorded_profile": recorded}
  return dataclasses.replace(sam, description=description)


def simsam_engine(sam: LoadedSam, config: SimSamConfig) -> SimSam:
  """The `SimSam` engine over `sam`'s weights for `config`, cached in `sam`.

  Args:
    sam: the model (`load_sam`); its arrays are shared, not copied.
    config: a validated `SimSamConfig`.

  Returns:
    The same engine object for equal configurations, so that its jitted
    functions (fused `run` and `stages`) compile once per image size.
  """
  engine = sam.simsam_engines.get(config)
  if engine is None:
    engine = SimSam(nnx.merge(sam.fns.graphdef, sam.state), config)
    sam.simsam_engines[config] = engine
  return engine


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
    SegmentError: for a missing or unreadable file, a malformed synthetic
      spec or intensity policy, non-finite or constant pixels, or a bad
      slice; the message names the flag and the file.
  """
  try:
    policy = processing.parse_intensity(intensity)
  except ValueError as error:
    raise SegmentError(str(error)) from None
  try:
    generated = synthetic.parse_image_spec(spec)
    if generated is not None:
      if slice_index is not None:
        raise SegmentError("--slice only applies to a NIfTI --image")
      image, mask, box = generated
      if policy is not None:
        image = processing.apply_intensity(image, policy, spec)[0]
      return InputImage(pixels=image, spec=spec, synthetic_box=box,
                        synthetic_mask=mask)
    loaded = processing.read_image(spec, policy, slice_index, axis)
    return InputImage(pixels=loaded.pixels, spec=spec, loaded=loaded)
  except SegmentError:
    raise
  except (OSError, ValueError) as error:
    raise SegmentError(f"--image={spec!r}: {error}") from None


# PIL modes whose values are read as they are (one channel of any depth);
# every other mode goes through `convert("L")`.
_GROUND_TRUTH_RAW_MODES = ("1", "L", "I", "F", "I;16", "I;16B", "I;16L",
                           "I;16N")
# ITU-R 601-2 luma, the weights of PIL's `convert("L")`.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _grayscale(array: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, C) decoded pixels -> (H, W) float64 grayscale."""
  if array.ndim == 3 and array.shape[-1] in (2, 4):  # Drop the alpha channel.
    array = array[..., :-1]
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 3 and array.shape[-1] == 3:
    return array.astype(np.float64) @ _LUMA_WEIGHTS
  if array.ndim != 2:
    raise ValueError(f"expected a single 2-D mask image, got an array of "
                     f"shape {array.shape}")
  return array.astype(np.float64)


def load_ground_truth(path: str, image_size: Tuple[int, int]) -> np.ndarray:
  """Reads `--ground_truth`, a mask image of the input image's size.

  Any image Pillow reads, or a TIFF (read with tifffile, any bit depth).
  Foreground is value > 0 after conversion to grayscale: colour images that
  Pillow reads through its `convert("L")` (ITU-R 601-2 luma, rounded), colour
  TIFFs through the same luma weights unrounded; alpha is ignored.

  Args:
    path: the mask file.
    image_size: (H, W) of the input image.

  Returns:
    (H, W) bool, True on the foreground.

  Raises:
    SegmentError: naming --ground_truth and the file when it is missing,
      unreadable, not a single 2-D image, or not of size (H, W).
  """
  flag = f"--ground_truth={path!r}"
  if not os.path.exists(path):
    raise SegmentError(f"{flag}: mask file not found")
  if not os.path.isfile(path):
    raise SegmentError(f"{flag}: not a file")
  try:
    if path.lower().endswith((".tif", ".tiff")):
      # pylint: disable-next=protected-access
      gray = _grayscale(processing._read_tiff(path))
    else:
      with Image.open(path) as picture:
        picture.load()  # Decodes now, so truncated files fail here.
        if picture.mode not in _GROUND_TRUTH_RAW_MODES:
          picture = picture.convert("L")
        gray = _grayscale(np.asarray(picture))
  # Decoders raise many unrelated types; all mean "cannot read this file".
  except Exception as error:  # pylint: disable=broad-exception-caught
    raise SegmentError(f"{flag}: cannot read the mask: {error}") from None
  height, width = image_size
  if gray.shape != (height, width):
    raise SegmentError(
        f"{flag}: the mask is {gray.shape[1]}x{gray.shape[0]} (WxH) but the "
        f"image is {width}x{height}; the ground truth must have the image's "
        "size")
  return gray > 0


# ----------------------------------------------------------------------------
# Running SAM.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamResult:
  """What one SAM prediction produced.

  Attributes:
    mask: (H, W) bool at the input image's resolution, the chosen mask's
      logits > 0.
    low_res_logits: (K, M, M) float32 logits of all K returned masks, M the
      decoder's output side (4 x the embedding grid).
    iou_predictions: (K,) float32 predicted IoUs.
    chosen_index: index in [0, K) of the written mask (highest predicted IoU;
      0 when K = 1).
    info: the `processing.ImageInfo` of the image.
    model_box: (4,) float32 box in the model frame, or None.
    model_points: (N, 2) float32 points in the model frame, or None.
    timings_ms: wall milliseconds of preprocess, encode, decode, postprocess
      (compiled code only).
    compile_ms: wall milliseconds spent compiling encode, decode and
      postprocess (postprocess: one warm-up call on zeros).
  """
  mask: np.ndarray
  low_res_logits: np.ndarray
  iou_predictions: np.ndarray
  chosen_index: int
  info: processing.ImageInfo
  model_box: Optional[np.ndarray]
  model_points: Optional[np.ndarray]
  timings_ms: dict
  compile_ms: dict


def _timed(function: Callable, *args) -> Tuple[Any, float]:
  """Runs `function(*args)`, waits for its arrays; returns (result, ms)."""
  start = time.perf_counter()
  result = jax.block_until_ready(function(*args))
  return result, (time.perf_counter() - start) * 1e3


def model_prompts(box: Optional[Box], points: Sequence[Point],
                  info: processing.ImageInfo
                  ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray],
                             Optional[np.ndarray]]:
  """Maps input-image prompts to the decoder's (B=1, P=1) model-frame arrays.

  Args:
    box: (x0, y0, x1, y1) input-image pixels, or None.
    points: (x, y, label) tuples in input-image pixels, possibly empty.
    info: sizes from `processing.preprocess`.

  Returns:
    boxes: (1, 1, 4) float32 model-frame box, or None.
    point_coords: (1, 1, N, 2) float32 model-frame (x, y), or None.
    point_labels: (1, 1, N) int32 in {0, 1}, or None.
  """
  boxes = None
  if box is not None:
    boxes = processing.apply_boxes(np.asarray(box, np.float64)[None, None],
                                   info.original_size, info.resized_size)
  point_coords = point_labels = None
  if points:
    xy = np.asarray([point[:2] for point in points], np.float64)
    point_coords = processing.apply_coords(
        xy[None, None], info.original_size, info.resized_size)
    point_labels = np.asarray([point[2] for point in points],
                              np.int32)[None, None]
  return boxes, point_coords, point_labels


def run_sam(sam: LoadedSam, image: np.ndarray, box: Optional[Box],
            points: Sequence[Point], multimask: bool) -> SamResult:
  """Predicts one mask for one prompt set: preprocess, encode, decode.

  Compiles `encode`, `decode` (ahead of time, `.lower(...).compile()`) and
  the post-processing (a warm-up call) first, and times compilation apart
  from the runs.

  Args:
    sam: the model (`load_sam`).
    image: (H, W, 3) uint8 RGB, values 0-255.
    box: (x0, y0, x1, y1) input-image pixels in [0, W] x [0, H], or None.
    points: (x, y, label) input-image pixels, label 1 positive / 0
      negative; may be empty when `box` is given. Points without a box are
      padded with a not-a-point token by the prompt encoder, as in SAM.
    multimask: False returns SAM's single mask; True its K ambiguity masks,
      of which the one with the highest predicted IoU becomes `mask`.

  Returns:
    A `SamResult`.
  """
  if box is None and not points:
    raise SegmentError("give a prompt: --box=x0,y0,x1,y1 and/or "
                       "--point=x,y,label")
  fns, state = sam.fns, sam.state
  timings, compile_ms = {}, {}

  profile = sam_profile(sam)
  (pixels, info), timings["preprocess"] = _timed(
      profile.preprocess, image, sam.config.image_size)
  pixels = pixels[None]
  boxes, point_coords, point_labels = model_prompts(box, points, info)

  start = time.perf_counter()
  encode = fns.encode.lower(state, pixels).compile()
  compile_ms["encode"] = (time.perf_counter() - start) * 1e3
  embedding_shape = jax.eval_shape(fns.encode, state, pixels)
  start = time.perf_counter()
  decode = fns.decode.lower(state, embedding_shape, point_coords, point_labels,
                            boxes, None, multimask_output=multimask).compile()
  compile_ms["decode"] = (time.perf_counter() - start) * 1e3

  embedding, timings["encode"] = _timed(encode, state, pixels)
  (logits, iou), timings["decode"] = _timed(
      decode, state, embedding, point_coords, point_labels, boxes, None)
  low_res_logits = np.asarray(logits[0, 0], np.float32)
  iou_predictions = np.asarray(iou[0, 0], np.float32)
  chosen_index = int(np.argmax(iou_predictions)) if multimask else 0

  chosen = jnp.asarray(low_res_logits[chosen_index])
  # "sam": `processing.postprocess_logits(chosen, info) > MASK_THRESHOLD`.
  _, compile_ms["postprocess"] = _timed(profile.masks,
                                        jnp.zeros_like(chosen), info)
  upscaled, timings["postprocess"] = _timed(profile.masks, chosen, info)
  mask = np.asarray(upscaled)

  return SamResult(
      mask=mask, low_res_logits=low_res_logits,
      iou_predictions=iou_predictions, chosen_index=chosen_index, info=info,
      model_box=None if boxes is None else boxes[0, 0],
      model_points=None if point_coords is None else point_coords[0, 0],
      timings_ms=timings, compile_ms=compile_ms)


# ----------------------------------------------------------------------------
# Running SimSAM.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimSamResult:
  """What one SimSAM prediction produced, from the engine's stages.

  Attributes:
    output: a `SimSamOutput` of host numpy arrays, field by field what the
      fused `SimSam.run` returns for the same inputs (H x W the input image,
      M x M the low-res grid, K the clicks, K' the candidates).
    info: the `processing.ImageInfo` of the image.
    model_box: (4,) float32 box in the model frame.
    timings_ms: wall milliseconds of preprocess, encode, first_decode,
      simulate_and_decode, aggregate (with the maps at the input size;
      compiled code only).
    compile_ms: wall milliseconds spent compiling encode, first_decode,
      simulate_and_decode, aggregate (ahead of time).
  """
  output: SimSamOutput
  info: processing.ImageInfo
  model_box: np.ndarray
  timings_ms: dict
  compile_ms: dict

  @property
  def mask(self) -> np.ndarray:
    """(H, W) bool, the written mask (`SimSamOutput.mask`)."""
    return self.output.mask

  @property
  def low_res_logits(self) -> np.ndarray:
    """(1, M, M) float32 final low-res logits (as `--save_logits` saves)."""
    return self.output.low_res_logits[None]


def _compiled(function: Callable, *args, **static) -> Tuple[Any, float]:
  """Compiles a jitted `function` ahead of time; returns (executable, ms).

  The executable takes the dynamic `args` only (not the `static` ones).
  """
  start = time.perf_counter()
  executable = function.lower(*args, **static).compile()
  return executable, (time.perf_counter() - start) * 1e3


def run_simsam(sam: LoadedSam, config: SimSamConfig, image: np.ndarray,
               box: Box, ground_truth: Optional[np.ndarray] = None
               ) -> SimSamResult:
  """SimSAM on one image, stage by stage for per-stage timings.

  Runs `SimSam.stages` (encode, first decode, click simulation + decode,
  aggregation with the maps at the input resolution), each compiled ahead
  of time and timed apart from its compilation. The result
  equals the fused `simsam_engine(sam, config).run(...)` for the same inputs
  (`tests/test_segment_simsam.py` checks it field by field).

  Args:
    sam: the model (`load_sam`).
    config: a validated `SimSamConfig` (`parse_simsam_config`).
    image: (H, W, 3) uint8 RGB, values 0-255.
    box: (x0, y0, x1, y1) input-image pixels in [0, W] x [0, H], with an
      area.
    ground_truth: (H, W) bool or None; given to the click strategy (the
      `oracle` strategy needs it).

  Returns:
    A `SimSamResult`.

  Raises:
    SegmentError: when the engine rejects the inputs (sizes, box, K).
  """
  engine = simsam_engine(sam, config)
  stages, state = engine.stages, engine.state
  timings, compile_ms = {}, {}

  (pixels, info), timings["preprocess"] = _timed(
      sam_profile(sam).preprocess, image, sam.config.image_size)
  box_array = np.asarray(box, np.float32)
  try:
    engine.check(info, box_array, ground_truth)
  except ValueError as error:
    raise SegmentError(f"--method=simsam: {error}") from None
  pixels = jnp.asarray(pixels, jnp.float32)
  box_device = jnp.asarray(box_array)
  truth = None if ground_truth is None else jnp.asarray(ground_truth, bool)
  key = engine.default_key()

  encode, compile_ms["encode"] = _compiled(stages.encode, state, pixels)
  embedding, timings["encode"] = _timed(encode, state, pixels)

  first, compile_ms["first_decode"] = _compiled(
      stages.first, state, embedding, box_device, info=info)
  (first_low, first_iou), timings["first_decode"] = _timed(
      first, state, embedding, box_device)

  simulate, compile_ms["simulate_and_decode"] = _compiled(
      stages.simulate_and_decode, state, embedding, box_device, first_low, key,
      truth, info=info)
  decoded, timings["simulate_and_decode"] = _timed(
      simulate, state, embedding, box_device, first_low, key, truth)
  clicks, labels, candidates, candidate_iou = decoded

  aggregate, compile_ms["aggregate"] = _compiled(
      stages.aggregate, candidates, candidate_iou, first_low, first_iou,
      clicks, labels, info=info)
  output, timings["aggregate"] = _timed(
      aggregate, candidates, candidate_iou, first_low, first_iou, clicks, labels)
  output = jax.device_get(output)
  output = jax.tree.map(np.asarray, output)
  model_box = processing.apply_boxes(box_array.astype(np.float64),
                                     info.original_size, info.resized_size)
  return SimSamResult(output=output, info=info, model_box=model_box,
                      timings_ms=timings, compile_ms=compile_ms)


# ----------------------------------------------------------------------------
# Outputs.
# ----------------------------------------------------------------------------


def _encode_png(mask: np.ndarray) -> bytes:
  """(H, W) bool -> 8-bit grayscale PNG bytes with values 0 / 255."""
  buffer = io.BytesIO()
  Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer,
                                                             format="PNG")
  return buffer.getvalue()


def _encode_mask(mask: np.ndarray, out: str, volume: Optional[Any]) -> bytes:
  """The `--out` file's bytes: a 0/255 PNG, or a NIfTI mask volume."""
  if not is_nifti_path(out):
    return _encode_png(mask)
  if volume is None:
    raise SegmentError(f"--out={out!r}: a NIfTI mask needs a NIfTI --image")
  from simsam_jax import medical  # pylint: disable=import-outside-toplevel
  return medical.nifti_mask_bytes(volume, mask,
                                  compressed=out.lower().endswith(".gz"))


def _encode_npy(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  return buffer.getvalue()


def _encode_rgb_png(image: np.ndarray) -> bytes:
  """(H, W, 3) uint8 -> RGB PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def debug_arrays(output: SimSamOutput) -> dict:
  """The `--save_debug` arrays of one SimSAM output.

  Args:
    output: a `SimSamOutput` (host or device arrays).

  Returns:
    {name: numpy array}, names `DEBUG_KEYS`: first_logits (M, M) float32,
    clicks (K, 2) int32 (x, y) input-image pixels, labels (K,) int32 in
    {0, 1}, candidate_logits (K', M, M) float32, scores (K',) float32,
    chosen () int32 (-1 when the aggregation synthesises the mask),
    agreement (H, W) float32 in [0, 1].
  """
  return {
      "first_logits": np.asarray(output.first_low_res_logits, np.float32),
      "clicks": np.asarray(output.clicks, np.int32),
      "labels": np.asarray(output.labels, np.int32),
      "candidate_logits": np.asarray(output.candidate_logits, np.float32),
      "scores": np.asarray(output.scores, np.float32),
      "chosen": np.asarray(output.chosen, np.int32).reshape(()),
      "agreement": np.asarray(output.agreement, np.float32),
  }


def _encode_npz(arrays: dict) -> bytes:
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  return buffer.getvalue()


def _default_file_mode() -> int:
  """Permissions of a newly created file under the current umask."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


def write_files_atomically(contents: dict) -> None:
  """Writes several files so that either all appear or none does.

  Every file is first written to a temporary file in its destination folder
  (created if missing), then all are renamed into place. On any failure the
  temporary files, and destinations already renamed, are removed.

  Args:
    contents: {destination path: bytes}.

  Raises:
    OSError: when a write or rename fails (nothing is left behind).
  """
  temporaries = {}
  renamed = []
  try:
    for path, data in contents.items():
      folder = os.path.dirname(os.path.abspath(path))
      os.makedirs(folder, exist_ok=True)
      handle, temporary = tempfile.mkstemp(
          prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
      temporaries[path] = temporary
      with os.fdopen(handle, "wb") as stream:
        stream.write(data)
      os.chmod(temporary, _FILE_MODE)  # mkstemp makes owner-only files.
    for path, temporary in temporaries.items():
      os.replace(temporary, path)
      renamed.append(path)
  except BaseException:
    for path, temporary in temporaries.items():
      if path in renamed:
        temporary = path
      try:
        os.remove(temporary)
      except OSError:
        pass
    raise


def jax_environment() -> dict:
  """JSON-ready JAX backend, devices and version."""
  return {"backend": jax.default_backend(),
          "devices": [str(device) for device in jax.devices()],
          "jax_version": jax.__version__}


def _image_metadata(image: InputImage) -> dict:
  height, width = image.pixels.shape[:2]
  loaded = image.loaded
  volume = None if loaded is None else loaded.volume
  return {"spec": image.spec,
          "path": None if image.synthetic_box is not None
                  else os.path.abspath(image.spec),
          "synthetic": image.synthetic_box is not None,
          "height": height, "width": width,
          "intensity": processing.INTENSITY_NONE if loaded is None
                       else loaded.intensity,
          "dtype": "uint8" if loaded is None else loaded.dtype,
          "spacing": None if loaded is None or loaded.spacing is None
                     else list(loaded.spacing),
          "volume": None if volume is None else volume.describe()}


def _input_volume(image: InputImage) -> Optional[Any]:
  return None if image.loaded is None else image.loaded.volume


def _outputs_metadata(out: str, save_logits: Optional[str],
                      overlay: Optional[str],
                      save_debug: Optional[str]) -> dict:
  absolute = lambda path: None if path is None else os.path.abspath(path)
  return {"mask": absolute(out), "metadata": absolute(metadata_path(out)),
          "logits": absolute(save_logits), "overlay": absolute(overlay),
          "debug": absolute(save_debug)}


def _rounded(timings: dict) -> dict:
  return {name: round(value, 3) for name, value in timings.items()}


def build_metadata(result: SamResult, sam: LoadedSam, image: InputImage,
                   box: Optional[Box], box_source: Optional[str],
                   points: Sequence[Point], multimask: bool, out: str,
                   save_logits: Optional[str],
                   overlay: Optional[str] = None) -> dict:
  """The JSON written beside a SAM mask.

  Args:
    result: `run_sam`'s result.
    sam: the model that produced it (its `description` is copied).
    image: the input image.
    box: the box prompt used, (x0, y0, x1, y1) input-image pixels, or None.
    box_source: "flag", "synthetic_ground_truth" or None (no box).
    points: the (x, y, label) point prompts used.
    multimask: whether the multimask output was requested.
    out: the mask path; save_logits: the logits path or None; overlay: the
      overlay path or None.

  Returns:
    A dict of JSON-serialisable values (see the module docstring).
  """
  as_list = lambda array: None if array is None else np.asarray(
      array, np.float64).tolist()
  return {
      "method": METHOD_SAM,
      "checkpoint": dict(sam.description),
      "image": _image_metadata(image),
      "box": None if box is None else list(box),
      "box_source": box_source,
      "points": [[x, y, label] for x, y, label in points],
      "multimask": bool(multimask),
      "iou_predictions": result.iou_predictions.astype(np.float64).tolist(),
      "chosen_index": result.chosen_index,
      "mask_foreground_fraction": float(result.mask.mean()),
      "model_frame": {"image_size": result.info.image_size,
                      "resized_size": list(result.info.resized_size),
                      "box": as_list(result.model_box),
                      "points": as_list(result.model_points),
                      "low_res_logits_shape":
                          list(result.low_res_logits.shape)},
      "outputs": _outputs_metadata(out, save_logits, overlay, None),
      "precision": sam.policy.precision,
      "attention_impl": sam.policy.attention_impl,
      "timings_ms": _rounded(result.timings_ms),
      "compile_ms": _rounded(result.compile_ms),
      "jax": jax_environment(),
  }


def _iou(first: np.ndarray, second: np.ndarray) -> float:
  """IoU of two (H, W) bool masks; 1.0 when both are empty."""
  union = np.logical_or(first, second).sum()
  if union == 0:
    return 1.0
  return float(np.logical_and(first, second).sum() / union)


def build_simsam_metadata(result: SimSamResult, config: SimSamConfig,
                          sam: LoadedSam, image: InputImage, box: Box,
                          box_source: str, ground_truth: Optional[np.ndarray],
                          ground_truth_source: Optional[str],
                          ground_truth_path: Optional[str], out: str,
                          save_logits: Optional[str] = None,
                          overlay: Optional[str] = None,
                          save_debug: Optional[str] = None) -> dict:
  """The JSON written beside a SimSAM mask.

  The keys of `build_metadata` (points empty, multimask false,
  iou_predictions one per candidate) plus the `simsam` block.

  Args:
    result: `run_simsam`'s result.
    config: the configuration that produced it.
    sam: the model (its `description` is copied).
    image: the input image.
    box: the box prompt, (x0, y0, x1, y1) input-image pixels.
    box_source: "flag" or "synthetic_ground_truth".
    ground_truth: (H, W) bool or None; its IoUs with the SimSAM and the SAM
      mask are reported.
    ground_truth_source: "flag" (`--ground_truth`), "synthetic" (the
      phantom's mask) or None.
    ground_truth_path: the `--ground_truth` file, or None.
    out, save_logits, overlay, save_debug: the output paths (or None).

  Returns:
    A dict of JSON-serialisable values (see the module docstring).
  """
  output = result.output
  scores = np.asarray(output.scores, np.float64)
  labels = np.asarray(output.labels)
  truth = None
  if ground_truth is not None:
    truth = {"source": ground_truth_source,
             "path": None if ground_truth_path is None
                     else os.path.abspath(ground_truth_path),
             "mask_iou": _iou(output.mask, ground_truth),
             "sam_mask_iou": _iou(output.sam_mask, ground_truth)}
  return {
      "method": METHOD_SIMSAM,
      "checkpoint": dict(sam.description),
      "image": _image_metadata(image),
      "box": list(box),
      "box_source": box_source,
      "points": [],
      "multimask": False,
      "iou_predictions": np.asarray(output.candidate_iou,
                                    np.float64).tolist(),
      "chosen_index": int(output.chosen),
      "mask_foreground_fraction": float(output.mask.mean()),
      "model_frame": {"image_size": result.info.image_size,
                      "resized_size": list(result.info.resized_size),
                      "box": np.asarray(result.model_box,
                                        np.float64).tolist(),
                      "points": None,
                      "low_res_logits_shape":
                          list(result.low_res_logits.shape)},
      "outputs": _outputs_metadata(out, save_logits, overlay, save_debug),
      "precision": sam.policy.precision,
      "attention_impl": sam.policy.attention_impl,
      "timings_ms": _rounded(result.timings_ms),
      "compile_ms": _rounded(result.compile_ms),
      "jax": jax_environment(),
      "simsam": {
          "k": config.k,
          "clicks": config.clicks,
          "aggregation": config.aggregation,
          "mask_prompt": config.mask_prompt,
          "seed": config.seed,
          "clicks_in_box": config.clicks_in_box,
          "include_box_only_mask": config.include_box_only_mask,
          "num_candidates": int(scores.shape[0]),
          "chosen_index": int(output.chosen),
          "confidence": float(output.confidence),
          "scores": {"min": float(scores.min()), "mean": float(scores.mean()),
                     "max": float(scores.max())},
          "num_positive_clicks": int((labels == 1).sum()),
          "num_negative_clicks": int((labels == 0).sum()),
          "sam_iou_prediction": float(output.first_iou),
          "sam_mask_foreground_fraction": float(output.sam_mask.mean()),
          "ground_truth": truth,
      },
  }


def write_outputs(result: Any, metadata: dict, out: str,
                  save_logits: Optional[str] = None,
                  overlay: Optional[Tuple[str, np.ndarray]] = None,
                  debug: Optional[Tuple[str, dict]] = None,
                  volume: Optional[Any] = None,
                  agreement: Optional[Tuple[str, np.ndarray]] = None) -> None:
  """Writes the mask (PNG or NIfTI), the JSON beside it and the optional files.

  All or nothing (`write_files_atomically`).

  Args:
    result: `run_sam`'s or `run_simsam`'s result; `result.mask` (H, W) bool
      becomes a 0/255 PNG and `result.low_res_logits` (K, M, M) float32 the
      .npy.
    metadata: JSON-serialisable dict (`build_metadata`,
      `build_simsam_metadata`).
    out: mask path ending in .png; the JSON goes to `metadata_path(out)`.
    save_logits: .npy path or None.
    overlay: (.png path, (H, W, 3) uint8 image) or None.
    debug: (.npz path, {name: array}) or None.
    volume: the `medical.VolumeSlice` of a NIfTI input, needed when `out`
      ends in .nii.gz / .nii (a mask volume of the input's shape and
      affine with this slice filled).
    agreement: (.png path, (H', W', 3) uint8 image) or None.

  Raises:
    SegmentError: when a file cannot be written (nothing is left behind).
  """
  contents = {out: _encode_mask(result.mask, out, volume),
              metadata_path(out): (json.dumps(metadata, indent=2) +
                                   "\n").encode("utf-8")}
  if save_logits is not None:
    contents[save_logits] = _encode_npy(
        np.asarray(result.low_res_logits, np.float32))
  if overlay is not None:
    contents[overlay[0]] = _encode_rgb_png(overlay[1])
  if debug is not None:
    contents[debug[0]] = _encode_npz(debug[1])
  if agreement is not None:
    contents[agreement[0]] = _encode_rgb_png(agreement[1])
  try:
    write_files_atomically(contents)
  except OSError as error:
    raise SegmentError(f"--out={out!r}: cannot write the outputs: "
                       f"{error}") from None


# ----------------------------------------------------------------------------
# The whole command.
# ----------------------------------------------------------------------------


def _check_method_flags(method: str, points: Sequence[str], multimask: bool,
                        simsam_values: dict) -> None:
  """Rejects flags that the chosen `--method` does not read.

  Args:
    method: "sam" or "simsam".
    points: `--point` strings.
    multimask: `--multimask`.
    simsam_values: {flag name: value or None} of `SIMSAM_ONLY_FLAGS`.

  Raises:
    SegmentError: naming the flag.
  """
  if method not in METHODS:
    raise SegmentError(f"--method={method!r}: expected one of "
                       f"{', '.join(METHODS)}")
  if method == METHOD_SAM:
    for flag in SIMSAM_ONLY_FLAGS:
      if simsam_values.get(flag) is not None:
        raise SegmentError(f"--{flag} is only read by --method=simsam")
    return
  if points:
    raise SegmentError(
        f"--point={points[0]}: SimSAM is box-prompted and takes no point "
        "prompts; use --box (or --method=sam for points)")
  if multimask:
    raise SegmentError("--multimask is SAM-only (SimSAM decodes single "
                       "masks); drop it or use --method=sam")


def segment(*, checkpoint: str, image: str, out: str,
            box: Optional[str] = None, points: Sequence[str] = (),
            save_logits: Optional[str] = None, multimask: bool = False,
            sam: Optional[LoadedSam] = None, method: str = DEFAULT_METHOD,
            k: Optional[int] = None, clicks: Optional[str] = None,
            aggregation: Optional[str] = None,
            mask_prompt: Optional[str] = None, seed: Optional[int] = None,
            ground_truth: Optional[str] = None, overlay: Optional[str] = None,
            save_debug: Optional[str] = None, precision: Optional[str] = None,
            attention_impl: Optional[str] = None,
            profile: Optional[str] = None,
            intensity: Optional[str] = None,
            slice_index: Optional[int] = None, axis: int = 2,
            agreement: Optional[str] = None) -> dict:
  """Runs the command on flag values; returns the metadata it wrote.

  Every input is checked before the model is built, so bad flags fail fast
  and nothing is written unless everything succeeded.

  Args:
    checkpoint: `--checkpoint` value.
    image: `--image` value.
    out: `--out` mask path (.png).
    box: `--box` string `x0,y0,x1,y1`, or None.
    points: `--point` strings `x,y,label` (SAM only).
    save_logits: `--save_logits` path (.npy), or None.
    multimask: `--multimask` (SAM only).
    sam: an already loaded model for `checkpoint` (reused to skip loading;
      its description goes to the JSON).
    method: `--method`, "simsam" (default) or "sam".
    k, clicks, aggregation, mask_prompt, seed: SimSAM's `--k`, `--clicks`,
      `--aggregation`, `--mask_prompt`, `--seed`; None for the defaults
      (`SimSamConfig`), and must be None with method="sam".
    ground_truth: `--ground_truth` mask path (SimSAM only), or None.
    overlay: `--overlay` path (.png), or None.
    save_debug: `--save_debug` path (.npz, SimSAM only), or None.
    precision: `--precision`, "float32" or "bfloat16"; attention_impl:
      `--attention_impl`, "xla" or "cudnn". None: the defaults (float32,
      xla), or `sam`'s when `sam` is given (a different value is an error).
    profile: `--profile`, overriding the checkpoint's preprocessing
      profile (logged as a warning when it differs), or None.
    intensity: `--intensity` policy string, or None (module docstring).
    slice_index, axis: `--slice` and `--axis` for a NIfTI `--image`.
    agreement: `--agreement` path (.png, SimSAM only), or None.

  Raises:
    SegmentError: on any expected error (the message names the flag/file).
  """
  simsam_values = {"k": k, "clicks": clicks, "aggregation": aggregation,
                   "mask_prompt": mask_prompt, "seed": seed,
                   "ground_truth": ground_truth, "save_debug": save_debug,
                   "agreement": agreement}
  _check_method_flags(method, points, multimask, simsam_values)
  if sam is None:
    policy = parse_policy(precision, attention_impl)
  else:
    policy = sam.policy
    for flag, value in (("precision", precision),
                        ("attention_impl", attention_impl)):
      if value is not None and value != getattr(policy, flag):
        raise SegmentError(f"--{flag}={value!r} differs from the given model's "
                           f"{getattr(policy, flag)!r}")
  check_output_paths(out, save_logits, overlay, save_debug, agreement)
  config = None
  if method == METHOD_SIMSAM:
    config = parse_simsam_config(k, clicks, aggregation, mask_prompt, seed)
  parsed_box = None if box is None else parse_box(box)
  parsed_points = [parse_point(text) for text in points]
  # Fails fast, before the image is read or the model built.
  description = sam.description if sam else describe_checkpoint(checkpoint)
  if profile is not None and profile not in profiles.PROFILES:
    raise SegmentError(f"--profile={profile!r}: unknown preprocessing "
                       f"profile; known: {', '.join(profiles.names())}")
  if axis not in (0, 1, 2):
    raise SegmentError(f"--axis={axis!r}: must be 0, 1 or 2")
  input_image = load_input_image(image, intensity, slice_index, axis)
  if is_nifti_path(out) and (input_image.loaded is None
                             or input_image.loaded.volume is None):
    raise SegmentError(f"--out={out!r}: a NIfTI mask needs a NIfTI --image "
                       "(its shape and affine); write a .png instead")
  image_size = input_image.pixels.shape[:2]
  profile_name = profile or description.get("profile",
                                            profiles.DEFAULT_PROFILE)
  try:
    profiles.get(profile_name).geometry(image_size, description["image_size"])
  except ValueError as error:
    raise SegmentError(f"--image={image!r}: {error}") from None
  box_source = None if parsed_box is None else "flag"
  if (parsed_box is None and not parsed_points
      and input_image.synthetic_box is not None):
    parsed_box = tuple(float(v) for v in input_image.synthetic_box)
    box_source = "synthetic_ground_truth"

  truth = truth_source = None
  if method == METHOD_SIMSAM:
    if parsed_box is None:
      raise SegmentError("--box=x0,y0,x1,y1 is required with --method=simsam "
                         "(SimSAM is box-prompted; only a synthetic --image "
                         "supplies its ground-truth box)")
    check_prompts(parsed_box, [], image_size)
    check_simsam_box(parsed_box)
    num_pixels = image_size[0] * image_size[1]
    if config.k > num_pixels:
      raise SegmentError(f"--k={config.k} exceeds the number of pixels of "
                         f"the {image_size[1]}x{image_size[0]} (WxH) image "
                         f"({num_pixels})")
    if ground_truth is not None:
      truth, truth_source = load_ground_truth(ground_truth, image_size), "flag"
    elif input_image.synthetic_mask is not None:
      truth, truth_source = input_image.synthetic_mask, "synthetic"
    if config.needs_ground_truth and truth is None:
      raise SegmentError(f"--clicks={config.clicks} --aggregation={config.aggregation} "
                         "needs a ground truth: give --ground_truth=MASK or a "
                         "synthetic --image")
  else:
    check_prompts(parsed_box, parsed_points, image_size)

  if sam is None:
    sam = load_sam(checkpoint, policy)
  sam = with_profile(sam, profile)
  if sam.description["random_weights"]:
    logging.warning("RANDOM WEIGHTS (%s): the mask is meaningless; use a "
                    "converted checkpoint folder for real segmentations.",
                    sam.description["spec"])
  if method == METHOD_SAM:
    return _segment_sam(sam, input_image, parsed_box, box_source,
                        parsed_points, multimask, out, save_logits, overlay)
  return _segment_simsam(sam, config, input_image, parsed_box, box_source,
                         truth, truth_source, ground_truth, out, save_logits,
                         overlay, save_debug, agreement)


def _segment_sam(sam: LoadedSam, input_image: InputImage, box: Optional[Box],
                 box_source: Optional[str], points: Sequence[Point],
                 multimask: bool, out: str, save_logits: Optional[str],
                 overlay: Optional[str]) -> dict:
  """`segment` for --method=sam, after validation; returns the metadata."""
  result = run_sam(sam, input_image.pixels, box, points, multimask)
  metadata = build_metadata(result, sam, input_image, box, box_source,
                            points, multimask, out, save_logits, overlay)
  overlay_file = None
  if overlay is not None:
    xy = np.asarray([point[:2] for point in points],
                    np.float64).reshape(-1, 2)
    point_labels = np.asarray([point[2] for point in points], np.int32)
    overlay_file = (overlay, overlay_lib.draw_overlay(
        input_image.pixels, result.mask, box, xy, point_labels))
  write_outputs(result, metadata, out, save_logits, overlay_file,
                volume=_input_volume(input_image))
  logging.info(
      "%s: %dx%d mask, foreground %.2f%%, IoU %.3f (mask %d of %d)%s; "
      "encode %.1f ms, decode %.1f ms, compile %.0f ms [%s] -> %s",
      input_image.spec, input_image.pixels.shape[1],
      input_image.pixels.shape[0],
      100 * metadata["mask_foreground_fraction"],
      metadata["iou_predictions"][result.chosen_index], result.chosen_index,
      len(metadata["iou_predictions"]),
      ", RANDOM WEIGHTS" if sam.description["random_weights"] else "",
      result.timings_ms["encode"], result.timings_ms["decode"],
      sum(result.compile_ms.values()), jax.default_backend(), out)
  return metadata


def _segment_simsam(sam: LoadedSam, config: SimSamConfig,
                    input_image: InputImage, box: Box, box_source: str,
                    truth: Optional[np.ndarray], truth_source: Optional[str],
                    truth_path: Optional[str], out: str,
                    save_logits: Optional[str], overlay: Optional[str],
                    save_debug: Optional[str], agreement: Optional[str] = None) -> dict:
  """`segment` for --method=simsam, after validation; returns the metadata."""
  result = run_simsam(sam, config, input_image.pixels, box, truth)
  output = result.output
  metadata = build_simsam_metadata(
      result, config, sam, input_image, box, box_source, truth, truth_source,
      truth_path, out, save_logits, overlay, save_debug)
  overlay_file = None
  if overlay is not None:
    overlay_file = (overlay, overlay_lib.draw_overlay(
        input_image.pixels, output.mask, box, output.clicks, output.labels))
  debug_file = None
  if save_debug is not None:
    debug_file = (save_debug, debug_arrays(output))
  agreement_file = None
  metadata["outputs"]["agreement"] = None if agreement is None else os.path.abspath(agreement)
  if agreement is not None:
    from simsam_jax.evaluation.plots import agreement_image
    agreement_file = (agreement, np.asarray(agreement_image(np.asarray(output.agreement))))
  write_outputs(result, metadata, out, save_logits, overlay_file, debug_file,
                volume=_input_volume(input_image), agreement=agreement_file)
  summary = metadata["simsam"]
  logging.info(
      "%s: %dx%d SimSAM mask (K=%d %s/%s/%s), foreground %.2f%% (SAM "
      "%.2f%%), chosen %d, confidence %.3f%s; stages %s ms, compile %.0f ms "
      "[%s] -> %s",
      input_image.spec, input_image.pixels.shape[1],
      input_image.pixels.shape[0], config.k, config.clicks,
      config.aggregation, config.mask_prompt,
      100 * metadata["mask_foreground_fraction"],
      100 * summary["sam_mask_foreground_fraction"], summary["chosen_index"],
      summary["confidence"],
      ", RANDOM WEIGHTS" if sam.description["random_weights"] else "",
      ", ".join(f"{name} {value:.1f}"
                for name, value in result.timings_ms.items()),
      sum(result.compile_ms.values()), jax.default_backend(), out)
  return metadata


FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint", None,
    "Converted checkpoint folder, or random:PRESET[:SEED] for random weights "
    "(smoke tests only).")
flags.DEFINE_string(
    "image", None,
    "Image file (PNG/JPEG/TIFF) or synthetic[:SEED[:HxW]] for a phantom.")
flags.DEFINE_enum("method", DEFAULT_METHOD, list(METHODS),
                  "simsam: SimSAM over the box prompt (default); sam: plain "
                  "SAM over box and/or points.")
flags.DEFINE_string("box", None,
                    "Box prompt x0,y0,x1,y1 in input-image pixels (required "
                    "for simsam unless --image is synthetic).")
flags.DEFINE_multi_string(
    "point", [], "Point prompt x,y,label (label 1 positive, 0 negative); "
    "repeatable; --method=sam only.")
flags.DEFINE_string("out", None, "Output mask (.png, values 0/255); the "
                    "metadata JSON is written beside it.")
flags.DEFINE_string("save_logits", None,
                    "Optional .npy for the low-res logits, float32 (K, M, M) "
                    "(simsam: the final logits, K = 1).")
flags.DEFINE_bool("multimask", False,
                  "Predict SAM's ambiguity masks and keep the one with the "
                  "highest predicted IoU (--method=sam only).")
flags.DEFINE_integer("k", SimSamConfig.k,
                     "SimSAM: number of simulated clicks / candidates.")
flags.DEFINE_string(
    "clicks", SimSamConfig.clicks,
    f"SimSAM click strategy, one of: {', '.join(CLICK_STRATEGIES.names())}. "
    "oracle needs a ground truth (synthetic --image or --ground_truth).")
flags.DEFINE_string(
    "aggregation", SimSamConfig.aggregation,
    f"SimSAM aggregation, one of: {', '.join(AGGREGATIONS.names())}.")
flags.DEFINE_string(
    "mask_prompt", SimSamConfig.mask_prompt,
    f"SimSAM dense mask prompt, one of: {', '.join(MASK_PROMPTS.names())}.")
flags.DEFINE_integer("seed", SimSamConfig.seed,
                     "SimSAM: seed of the random click strategy's key.")
flags.DEFINE_string(
    "ground_truth", None,
    "SimSAM: ground-truth mask image of the input's size (foreground = "
    "value > 0 in grayscale), for --clicks=oracle; IoUs go to the JSON.")
flags.DEFINE_string("overlay", None,
                    "Optional .png: the image with the box, the clicks "
                    "(green positive, red negative) and the mask contour.")
flags.DEFINE_string("save_debug", None,
                    "SimSAM: optional .npz with first_logits, clicks, labels, "
                    "candidate_logits, scores, chosen and agreement.")
flags.DEFINE_string(
    "precision", Policy.precision,
    f"Compute precision, one of: {', '.join(PRECISIONS)}. bfloat16: matmuls "
    "and convolutions in bfloat16, float32 weights, softmax / LayerNorm / "
    "logits / SimSAM in float32.")
flags.DEFINE_string(
    "attention_impl", Policy.attention_impl,
    f"Attention implementation, one of: {', '.join(ATTENTION_IMPLS)} (cudnn: "
    "CUDA GPU and --precision=bfloat16 only).")
flags.DEFINE_string(
    "profile", None,
    f"Preprocessing profile, one of: {', '.join(profiles.names())}; default: "
    "the checkpoint's (random: specs use sam). Overriding it logs a warning.")
flags.DEFINE_string(
    "intensity", None,
    "How pixels deeper than 8 bits, signed or float become 0-255: minmax "
    "(their default), window:LO,HI (e.g. CT window in Hounsfield units) or "
    "percentile:P_LO,P_HI. 8-bit images are untouched unless given.")
flags.DEFINE_integer("slice", None, "NIfTI --image: the slice index along "
                     "--axis.")
flags.DEFINE_integer("axis", 2, "NIfTI --image: the voxel axis (0, 1, 2) "
                     "--slice runs along.")
flags.DEFINE_string("agreement", None,
                    "SimSAM: optional .png of the agreement map (fraction of the K "
                    "candidates covering each pixel), colour-mapped, with a legend.")


def _given(name: str) -> Any:
  """A flag's value when it was given on the command line, else None."""
  return FLAGS[name].value if FLAGS[name].present else None


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  missing = [name for name in ("checkpoint", "image", "out")
             if not FLAGS[name].value]
  try:
    if missing:
      raise SegmentError("missing required flag(s): "
                         + ", ".join(f"--{name}" for name in missing))
    segment(checkpoint=FLAGS.checkpoint, image=FLAGS.image, out=FLAGS.out,
            box=FLAGS.box, points=FLAGS.point, save_logits=FLAGS.save_logits,
            multimask=FLAGS.multimask, method=FLAGS.method,
            overlay=FLAGS.overlay, precision=FLAGS.precision,
            attention_impl=FLAGS.attention_impl,
            profile=FLAGS.profile,
            intensity=FLAGS.intensity, slice_index=FLAGS.slice,
            axis=FLAGS.axis,
            **{name: _given(name) for name in SIMSAM_ONLY_FLAGS})
  except SegmentError as error:
    message = " ".join(str(error).split())  # Always a single line.
    print(f"simsam_jax.segment: error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)

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
`inputs.load_ground_truth`). The engine's separately jitted stages run one by one
(compiled ahead of time) so that each is timed; they compute exactly what the
fused `SimSam.run` computes (tests check the mask and the debug arrays).

`--precision=bfloat16` runs SAM's matmuls and convolutions in bfloat16 with
the float32 weights cast at use (softmax, LayerNorms, positional encodings,
the logits and everything SimSAM computes from them stay float32; see
`simsam_jax.modeling.policy`); `--attention_impl=cudnn` uses cuDNN flash
attention (a CUDA GPU and bfloat16 only). Both are recorded in the JSON.

Outputs (`simsam_jax.outputs` documents every file and JSON key), all
written only once everything succeeded: `--out` (the 0/255 mask PNG, or a
NIfTI mask volume), the JSON beside it, and optionally `--save_logits`,
`--overlay`, `--save_debug` and `--agreement`.

`--checkpoint` is anything `simsam_jax.checkpoint.resolve` takes: a folder
written by `python -m simsam_jax.convert`, an official `.pth`, a
`model.safetensors` or a Hugging Face folder (converted in memory), or
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

This module only parses flags and chains the libraries: `prompts` (flag
values), `inputs` (image, ground truth), `Predictor` (the model;
`predict_timed` / `simsam_timed`, the computations of `predict` / `simsam`
stage by stage with per-stage timings) and `outputs` (files, JSON).
`Predictor` refuses the same inputs with the same messages. Expected errors raise `SegmentError` (=
`prompts.PredictorError`); `main` prints them as one line on stderr and
exits with 1.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from absl import app, flags, logging

from simsam_jax import inputs, outputs, profiles, prompts
from simsam_jax.checkpoint.resolve import CheckpointSpecError, describe_checkpoint
from simsam_jax.modeling import ATTENTION_IMPLS, PRECISIONS, Policy
from simsam_jax.predictor import Predictor, load_sam, parse_policy
from simsam_jax.simsam import AGGREGATIONS, CLICK_STRATEGIES, MASK_PROMPTS, SimSamConfig

METHODS = (outputs.METHOD_SAM, outputs.METHOD_SIMSAM)
DEFAULT_METHOD = outputs.METHOD_SIMSAM
# Flags that only SimSAM reads (`segment` rejects them with --method=sam).
SIMSAM_ONLY_FLAGS = ("k", "clicks", "aggregation", "mask_prompt", "seed",
                     "ground_truth", "save_debug", "agreement")
SegmentError = prompts.PredictorError


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
  if method == outputs.METHOD_SAM:
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
            sam: Optional[Any] = None, method: str = DEFAULT_METHOD,
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
    sam: an already loaded model for `checkpoint`, a `LoadedSam` or a
      `Predictor` (reused to skip loading; its description goes to the JSON).
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
  sam = sam.sam if isinstance(sam, Predictor) else sam
  if sam is None:
    policy = parse_policy(precision, attention_impl)
  else:
    policy = sam.policy
    for flag, value in (("precision", precision),
                        ("attention_impl", attention_impl)):
      if value is not None and value != getattr(policy, flag):
        raise SegmentError(f"--{flag}={value!r} differs from the given model's "
                           f"{getattr(policy, flag)!r}")
  outputs.check_output_paths(out, save_logits, overlay, save_debug, agreement)
  config = None
  if method == outputs.METHOD_SIMSAM:
    config = prompts.parse_simsam_config(k, clicks, aggregation, mask_prompt, seed)
  parsed_box = None if box is None else prompts.parse_box(box)
  parsed_points = [prompts.parse_point(text) for text in points]
  # Fails fast, before the image is read or the model built.
  try:
    description = sam.description if sam else describe_checkpoint(checkpoint)
  except CheckpointSpecError as error:
    raise SegmentError(str(error)) from None
  if profile is not None and profile not in profiles.PROFILES:
    raise SegmentError(f"--profile={profile!r}: unknown preprocessing "
                       f"profile; known: {', '.join(profiles.names())}")
  if axis not in (0, 1, 2):
    raise SegmentError(f"--axis={axis!r}: must be 0, 1 or 2")
  input_image = inputs.load_input_image(image, intensity, slice_index, axis)
  if outputs.is_nifti_path(out) and (input_image.loaded is None
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
  if method == outputs.METHOD_SIMSAM:
    if parsed_box is None:
      raise SegmentError("--box=x0,y0,x1,y1 is required with --method=simsam "
                         "(SimSAM is box-prompted; only a synthetic --image "
                         "supplies its ground-truth box)")
    prompts.check_simsam_prompt(config, parsed_box, image_size)
    if ground_truth is not None:
      truth, truth_source = inputs.load_ground_truth(ground_truth, image_size), "flag"
    elif input_image.synthetic_mask is not None:
      truth, truth_source = input_image.synthetic_mask, "synthetic"
    prompts.check_ground_truth_need(config, truth)
  else:
    prompts.check_prompts(parsed_box, parsed_points, image_size)

  predictor = Predictor(load_sam(checkpoint, policy) if sam is None else sam, profile)
  if predictor.description["random_weights"]:
    logging.warning("RANDOM WEIGHTS (%s): the mask is meaningless; use a "
                    "converted checkpoint folder for real segmentations.",
                    predictor.description["spec"])
  if method == outputs.METHOD_SAM:
    result = predictor.predict_timed(input_image.pixels, parsed_box, parsed_points,
                                     multimask)
    return outputs.write_sam(result, predictor.sam, input_image, parsed_box, box_source,
                             parsed_points, multimask, out, save_logits, overlay)
  result = predictor.simsam_timed(input_image.pixels, parsed_box, config, truth)
  return outputs.write_simsam(result, config, predictor.sam, input_image, parsed_box,
                              box_source, truth, truth_source, ground_truth, out,
                              save_logits, overlay, save_debug, agreement)


FLAGS = flags.FLAGS
flags.DEFINE_string(
    "checkpoint", None,
    "Converted checkpoint folder, official .pth, model.safetensors, Hugging Face "
    "folder, or random:PRESET[:SEED] for random weights "
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

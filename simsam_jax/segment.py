"""Segments one image with SAM from a box and/or point prompts.

  python -m simsam_jax.segment --checkpoint=DIR --image=PATH \\
      --box=x0,y0,x1,y1 [--point=x,y,label ...] --out=mask.png \\
      [--save_logits=lowres.npy] [--multimask]

Outputs, all written only once everything succeeded (temporary files in the
destination folders, renamed into place at the end):

* `--out` (.png): the binary mask at the input image's resolution, 8-bit,
  values 0 and 255 (logits > 0 after `processing.postprocess_logits`).
* the same path with `.json`, keys: `method` ("sam"); `checkpoint` (spec,
  random_weights, preset, architecture, seed, path, source_format,
  source_sha256, source_path, image_size); `image` (spec, path, synthetic,
  height, width); `box`, `box_source` ("flag" / "synthetic_ground_truth"),
  `points` ([x, y, label] lists), `multimask`; `iou_predictions` (K floats),
  `chosen_index`, `mask_foreground_fraction`; `model_frame` (image_size,
  resized_size, box and points in the model frame, low_res_logits_shape);
  `outputs` (absolute paths); `timings_ms` (preprocess, encode, decode,
  postprocess) and `compile_ms` (encode, decode, postprocess) apart; `jax`
  (backend, devices, jax_version).
* `--save_logits` (.npy, optional): the low-resolution logits, float32
  (K, M, M), K = 1 or the number of multimask outputs.

`--checkpoint` is a folder written by `simsam_jax.checkpoint`, or
`random:PRESET[:SEED]` for randomly initialised weights (smoke tests and
benchmarks only: the masks mean nothing). `--image` is a PNG/JPEG/TIFF path or
`synthetic[:SEED[:HxW]]` (`simsam_jax.synthetic`); for a synthetic image
without `--box` and `--point`, the phantom's ground-truth box is the prompt.

The module is a thin absl `main` over importable steps, so that other
methods (SimSAM) can reuse them: `parse_box`, `parse_point`,
`load_sam`, `load_input_image`, `check_prompts`, `run_sam`, `write_outputs`,
and `segment`, which chains them.

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

from simsam_jax import processing, synthetic
from simsam_jax.checkpoint import CheckpointError, load_model, read_sidecar
from simsam_jax.modeling import (SamConfig, SamFunctions, build_sam, get_preset,
                                 make_sam_functions)

RANDOM_PREFIX = "random"
MASK_SUFFIX = ".png"
LOGITS_SUFFIX = ".npy"
METADATA_SUFFIX = ".json"
MASK_THRESHOLD = 0.0

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


def check_output_paths(out: str, save_logits: Optional[str]) -> None:
  """Checks the output names before any work is done.

  Raises:
    SegmentError: when `out` does not end in .png, `save_logits` does not end
      in .npy, or two outputs would collide.
  """
  if not out or not out.lower().endswith(MASK_SUFFIX):
    raise SegmentError(f"--out={out!r} must name a {MASK_SUFFIX} file")
  if save_logits is not None:
    if not save_logits.lower().endswith(LOGITS_SUFFIX):
      raise SegmentError(
          f"--save_logits={save_logits!r} must name a {LOGITS_SUFFIX} file")
    if os.path.abspath(save_logits) == os.path.abspath(metadata_path(out)):
      raise SegmentError(f"--save_logits={save_logits!r} would overwrite the "
                         "metadata written beside --out")
  for path, flag in ((out, "out"), (save_logits, "save_logits")):
    if path is not None and os.path.isdir(path):
      raise SegmentError(f"--{flag}={path!r} is a folder")


def metadata_path(out: str) -> str:
  """The JSON written beside the mask: same folder and stem, `.json`."""
  return os.path.splitext(out)[0] + METADATA_SUFFIX


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
  """
  fns: SamFunctions
  state: Any
  config: SamConfig
  description: dict


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
    input side S).

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
            "image_size": get_preset(preset).image_size}
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
          "image_size": sidecar["config"].image_size}


def load_sam(spec: str) -> LoadedSam:
  """Loads (or randomly builds) SAM from a `--checkpoint` value.

  Args:
    spec: a converted checkpoint folder or `random:PRESET[:SEED]`
      (weights from `build_sam(get_preset(PRESET), SEED)`, SEED 0 by
      default).

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
  fns, state = make_sam_functions(model)
  description["architecture"] = description["preset"] or "custom"
  return LoadedSam(fns=fns, state=state, config=model.config,
                   description=description)


@dataclasses.dataclass(frozen=True)
class InputImage:
  """The image to segment.

  Attributes:
    pixels: (H, W, 3) uint8 RGB, values 0-255.
    spec: the `--image` value (path or synthetic spec).
    synthetic_box: for a synthetic image, the ground-truth box (x0, y0, x1,
      y1) inclusive ints; None for a file.
  """
  pixels: np.ndarray
  spec: str
  synthetic_box: Optional[Tuple[int, int, int, int]] = None


def load_input_image(spec: str) -> InputImage:
  """Loads `--image`: a file (`processing.load_image`) or a phantom.

  Raises:
    SegmentError: for a missing or unreadable file or a malformed synthetic
      spec; the message names the flag and the file.
  """
  try:
    generated = synthetic.parse_image_spec(spec)
    if generated is not None:
      image, _, box = generated
      return InputImage(pixels=image, spec=spec, synthetic_box=box)
    return InputImage(pixels=processing.load_image(spec), spec=spec)
  except (OSError, ValueError) as error:
    raise SegmentError(f"--image={spec!r}: {error}") from None


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

  (pixels, info), timings["preprocess"] = _timed(
      processing.preprocess, image, sam.config.image_size)
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
  _, compile_ms["postprocess"] = _timed(processing.postprocess_logits,
                                        jnp.zeros_like(chosen), info)
  upscaled, timings["postprocess"] = _timed(processing.postprocess_logits,
                                            chosen, info)
  mask = np.asarray(upscaled) > MASK_THRESHOLD

  return SamResult(
      mask=mask, low_res_logits=low_res_logits,
      iou_predictions=iou_predictions, chosen_index=chosen_index, info=info,
      model_box=None if boxes is None else boxes[0, 0],
      model_points=None if point_coords is None else point_coords[0, 0],
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


def _encode_npy(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
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


def build_metadata(result: SamResult, sam: LoadedSam, image: InputImage,
                   box: Optional[Box], box_source: Optional[str],
                   points: Sequence[Point], multimask: bool, out: str,
                   save_logits: Optional[str]) -> dict:
  """The JSON written beside the mask.

  Args:
    result: `run_sam`'s result.
    sam: the model that produced it (its `description` is copied).
    image: the input image.
    box: the box prompt used, (x0, y0, x1, y1) input-image pixels, or None.
    box_source: "flag", "synthetic_ground_truth" or None (no box).
    points: the (x, y, label) point prompts used.
    multimask: whether the multimask output was requested.
    out: the mask path; save_logits: the logits path or None.

  Returns:
    A dict of JSON-serialisable values (see the module docstring).
  """
  height, width = image.pixels.shape[:2]
  as_list = lambda array: None if array is None else np.asarray(
      array, np.float64).tolist()
  return {
      "method": "sam",
      "checkpoint": dict(sam.description),
      "image": {"spec": image.spec,
                "path": None if image.synthetic_box is not None
                        else os.path.abspath(image.spec),
                "synthetic": image.synthetic_box is not None,
                "height": height, "width": width},
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
      "outputs": {"mask": os.path.abspath(out),
                  "metadata": os.path.abspath(metadata_path(out)),
                  "logits": None if save_logits is None
                            else os.path.abspath(save_logits)},
      "timings_ms": {name: round(value, 3)
                     for name, value in result.timings_ms.items()},
      "compile_ms": {name: round(value, 3)
                     for name, value in result.compile_ms.items()},
      "jax": jax_environment(),
  }


def write_outputs(result: SamResult, metadata: dict, out: str,
                  save_logits: Optional[str] = None) -> None:
  """Writes the mask PNG, the JSON beside it and optionally the logits.

  All or nothing (`write_files_atomically`).

  Args:
    result: `run_sam`'s result; `result.mask` (H, W) bool becomes a 0/255
      PNG and `result.low_res_logits` (K, M, M) float32 the .npy.
    metadata: JSON-serialisable dict (`build_metadata`).
    out: mask path ending in .png; the JSON goes to `metadata_path(out)`.
    save_logits: .npy path or None.

  Raises:
    SegmentError: when a file cannot be written (nothing is left behind).
  """
  contents = {out: _encode_png(result.mask),
              metadata_path(out): (json.dumps(metadata, indent=2) +
                                   "\n").encode("utf-8")}
  if save_logits is not None:
    contents[save_logits] = _encode_npy(
        result.low_res_logits.astype(np.float32))
  try:
    write_files_atomically(contents)
  except OSError as error:
    raise SegmentError(f"--out={out!r}: cannot write the outputs: "
                       f"{error}") from None


# ----------------------------------------------------------------------------
# The whole command.
# ----------------------------------------------------------------------------


def segment(*, checkpoint: str, image: str, out: str,
            box: Optional[str] = None, points: Sequence[str] = (),
            save_logits: Optional[str] = None, multimask: bool = False,
            sam: Optional[LoadedSam] = None) -> dict:
  """Runs the command on flag strings; returns the metadata it wrote.

  Every input is checked before the model is built, so bad flags fail fast
  and nothing is written unless everything succeeded.

  Args:
    checkpoint: `--checkpoint` value.
    image: `--image` value.
    out: `--out` mask path (.png).
    box: `--box` string `x0,y0,x1,y1`, or None.
    points: `--point` strings `x,y,label`.
    save_logits: `--save_logits` path (.npy), or None.
    multimask: `--multimask`.
    sam: an already loaded model for `checkpoint` (reused to skip loading;
      its description goes to the JSON).

  Raises:
    SegmentError: on any expected error (the message names the flag/file).
  """
  check_output_paths(out, save_logits)
  parsed_box = None if box is None else parse_box(box)
  parsed_points = [parse_point(text) for text in points]
  # Fails fast, before the image is read or the model built.
  description = sam.description if sam else describe_checkpoint(checkpoint)
  input_image = load_input_image(image)
  try:
    processing.preprocess_shape(*input_image.pixels.shape[:2],
                                description["image_size"])
  except ValueError as error:
    raise SegmentError(f"--image={image!r}: {error}") from None
  box_source = None if parsed_box is None else "flag"
  if (parsed_box is None and not parsed_points
      and input_image.synthetic_box is not None):
    parsed_box = tuple(float(v) for v in input_image.synthetic_box)
    box_source = "synthetic_ground_truth"
  check_prompts(parsed_box, parsed_points, input_image.pixels.shape[:2])

  if sam is None:
    sam = load_sam(checkpoint)
  if sam.description["random_weights"]:
    logging.warning("RANDOM WEIGHTS (%s): the mask is meaningless; use a "
                    "converted checkpoint folder for real segmentations.",
                    sam.description["spec"])
  result = run_sam(sam, input_image.pixels, parsed_box, parsed_points,
                   multimask)
  metadata = build_metadata(result, sam, input_image, parsed_box, box_source,
                            parsed_points, multimask, out, save_logits)
  write_outputs(result, metadata, out, save_logits)
  logging.info(
      "%s: %dx%d mask, foreground %.2f%%, IoU %.3f (mask %d of %d)%s; "
      "encode %.1f ms, decode %.1f ms, compile %.0f ms [%s] -> %s",
      image, input_image.pixels.shape[1], input_image.pixels.shape[0],
      100 * metadata["mask_foreground_fraction"],
      metadata["iou_predictions"][result.chosen_index], result.chosen_index,
      len(metadata["iou_predictions"]),
      ", RANDOM WEIGHTS" if sam.description["random_weights"] else "",
      result.timings_ms["encode"], result.timings_ms["decode"],
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
flags.DEFINE_string("box", None,
                    "Box prompt x0,y0,x1,y1 in input-image pixels.")
flags.DEFINE_multi_string(
    "point", [], "Point prompt x,y,label (label 1 positive, 0 negative); "
    "repeatable.")
flags.DEFINE_string("out", None, "Output mask (.png, values 0/255); the "
                    "metadata JSON is written beside it.")
flags.DEFINE_string("save_logits", None,
                    "Optional .npy for the low-res logits, float32 (K, M, M).")
flags.DEFINE_bool("multimask", False,
                  "Predict SAM's ambiguity masks and keep the one with the "
                  "highest predicted IoU.")


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
            multimask=FLAGS.multimask)
  except SegmentError as error:
    message = " ".join(str(error).split())  # Always a single line.
    print(f"simsam_jax.segment: error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)

"""What `segment` writes: file names, encodings, the metadata JSON.

Outputs, all written only once everything succeeded (temporary files in the
destination folders, renamed into place at the end):

* `--out` (.png; .nii.gz / .nii for a NIfTI input, see below): the binary
  mask at the input image's resolution, 8-bit, values 0 and 255 (SAM: logits > 0 after `processing.postprocess_logits`;
  SimSAM: `SimSamOutput.mask`).
* the same path with `.json`, keys: `method` ("sam" / "simsam");
  `checkpoint` (the resolver's provenance, `checkpoint.resolve`: spec,
  random_weights, preset, architecture, seed, path, source_format,
  source_sha256, source_path, source, image_size, profile); `image` (spec,
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

All files of one run are written by `fileio.write_files_atomically` (all or
nothing, modes from the umask).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Optional, Sequence, Tuple

import jax
import numpy as np
from PIL import Image

from absl import logging

from simsam_jax import fileio, processing
from simsam_jax import overlay as overlay_lib
from simsam_jax.inputs import InputImage
from simsam_jax.predictor import LoadedSam, SamResult, SimSamResult
from simsam_jax.prompts import Box, Point, PredictorError
from simsam_jax.simsam import SimSamConfig, SimSamOutput

MASK_SUFFIX = ".png"
NIFTI_MASK_SUFFIXES = (".nii.gz", ".nii")
LOGITS_SUFFIX = ".npy"
METADATA_SUFFIX = ".json"
OVERLAY_SUFFIX = ".png"
DEBUG_SUFFIX = ".npz"
METHOD_SAM = "sam"
METHOD_SIMSAM = "simsam"
DEBUG_KEYS = ("first_logits", "clicks", "labels", "candidate_logits",
              "scores", "chosen", "agreement")


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
    PredictorError: when `out`, `overlay` or `agreement` does not end in .png,
      `save_logits` in .npy or `save_debug` in .npz, when a path is a
      folder, or when two outputs would collide.
  """
  if not out or not out.lower().endswith((MASK_SUFFIX,) + NIFTI_MASK_SUFFIXES):
    raise PredictorError(f"--out={out!r} must name a {MASK_SUFFIX} file (or "
                         ".nii.gz / .nii for a NIfTI --image)")
  for path, flag, suffix in ((save_logits, "save_logits", LOGITS_SUFFIX),
                             (overlay, "overlay", OVERLAY_SUFFIX),
                             (save_debug, "save_debug", DEBUG_SUFFIX),
                             (agreement, "agreement", OVERLAY_SUFFIX)):
    if path is not None and not path.lower().endswith(suffix):
      raise PredictorError(f"--{flag}={path!r} must name a {suffix} file")
  taken = {os.path.abspath(out): "--out",
           os.path.abspath(metadata_path(out)): "the metadata written beside "
                                                "--out"}
  for path, flag in ((save_logits, "save_logits"), (overlay, "overlay"),
                     (save_debug, "save_debug"), (agreement, "agreement")):
    if path is None:
      continue
    other = taken.get(os.path.abspath(path))
    if other is not None:
      raise PredictorError(f"--{flag}={path!r} would overwrite {other}")
    taken[os.path.abspath(path)] = f"--{flag}"
  for path, flag in ((out, "out"), (save_logits, "save_logits"),
                     (overlay, "overlay"), (save_debug, "save_debug"),
                     (agreement, "agreement")):
    if path is not None and os.path.isdir(path):
      raise PredictorError(f"--{flag}={path!r} is a folder")


def metadata_path(out: str) -> str:
  """The JSON written beside the mask: same folder and stem, `.json`
  (`mask.nii.gz` -> `mask.json`)."""
  for suffix in NIFTI_MASK_SUFFIXES:
    if out.lower().endswith(suffix):
      return out[:-len(suffix)] + METADATA_SUFFIX
  return os.path.splitext(out)[0] + METADATA_SUFFIX


def is_nifti_path(path: str) -> bool:
  return path.lower().endswith(NIFTI_MASK_SUFFIXES)

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
    raise PredictorError(f"--out={out!r}: a NIfTI mask needs a NIfTI --image")
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


def input_volume(image: InputImage) -> Optional[Any]:
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
    result: `Predictor.predict_timed`'s result.
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
    result: `Predictor.simsam_timed`'s result.
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
    result: `predict_timed`'s or `simsam_timed`'s result; `result.mask` (H, W) bool
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
    PredictorError: when a file cannot be written (nothing is left behind).
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
    fileio.write_files_atomically(contents)
  except OSError as error:
    raise PredictorError(f"--out={out!r}: cannot write the outputs: "
                         f"{error}") from None


def write_sam(result: SamResult, sam: LoadedSam, input_image: InputImage,
              box: Optional[Box], box_source: Optional[str],
              points: Sequence[Point], multimask: bool, out: str,
              save_logits: Optional[str], overlay: Optional[str]) -> dict:
  """Writes (and logs) one SAM run's files; returns the metadata."""
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
                volume=input_volume(input_image))
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


def write_simsam(result: SimSamResult, config: SimSamConfig, sam: LoadedSam,
                 input_image: InputImage, box: Box, box_source: str,
                 truth: Optional[np.ndarray], truth_source: Optional[str],
                 truth_path: Optional[str], out: str,
                 save_logits: Optional[str], overlay: Optional[str],
                 save_debug: Optional[str], agreement: Optional[str] = None) -> dict:
  """Writes (and logs) one SimSAM run's files; returns the metadata."""
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
    from simsam_jax.evaluation.plots import agreement_image  # pylint: disable=import-outside-toplevel
    agreement_file = (agreement, np.asarray(agreement_image(np.asarray(output.agreement))))
  write_outputs(result, metadata, out, save_logits, overlay_file, debug_file,
                volume=input_volume(input_image), agreement=agreement_file)
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

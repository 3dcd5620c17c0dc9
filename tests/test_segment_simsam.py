"""Tests of `python -m simsam_jax.segment --method=simsam` and the overlay.

Everything uses the `tiny` preset (S = 160, low-res M = 40) with K = 6 clicks;
sizes are read from the config. One model (`random:tiny:7`) is loaded per
module and reused in-process, so each SimSAM configuration compiles once.
The CLI runs the engine's stages one by one (for timings); the tests check
that it writes exactly what the fused `SimSam.run` computes. Bad-input cases
run `segment.main` in-process with absl-parsed flags and fail before any
compilation; one runs through a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from simsam_jax import inputs, overlay, predictor, processing, segment, synthetic
from simsam_jax.modeling import build_sam, get_preset
from simsam_jax.simsam import SimSam, SimSamConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = 7
RANDOM_SPEC = f"random:tiny:{SEED}"
TINY = get_preset("tiny")
LOW_RES = TINY.mask_input_size  # M = 40.
K = 6
PHANTOM_SPEC = "synthetic:3:120x200"
HEIGHT, WIDTH = 120, 200

SAM_METADATA_KEYS = {
    "method", "checkpoint", "image", "box", "box_source", "points",
    "multimask", "iou_predictions", "chosen_index",
    "mask_foreground_fraction", "model_frame", "outputs", "timings_ms",
    "compile_ms", "jax", "precision", "attention_impl"}
SIMSAM_BLOCK_KEYS = {
    "k", "clicks", "aggregation", "mask_prompt", "seed", "clicks_in_box",
    "include_box_only_mask", "num_candidates", "chosen_index", "confidence",
    "scores", "num_positive_clicks", "num_negative_clicks",
    "sam_iou_prediction", "sam_mask_foreground_fraction", "ground_truth"}
STAGES = ("encode", "first_decode", "simulate_and_decode", "aggregate")


@pytest.fixture(scope="module")
def tiny_sam() -> predictor.LoadedSam:
  return predictor.load_sam(RANDOM_SPEC)


@pytest.fixture(scope="module")
def phantom():
  """(image (H, W, 3) uint8, mask (H, W) bool, box) of PHANTOM_SPEC."""
  return synthetic.parse_image_spec(PHANTOM_SPEC)


def _read_png(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image)


def _run_main_in_process(argv):
  """Parses `argv` with absl and runs `segment.main`, restoring the flags."""
  flag_values = segment.FLAGS
  try:
    flag_values.unparse_flags()
    remaining = flag_values(["segment", *argv])
    segment.main(remaining)
  finally:
    flag_values.unparse_flags()


# ----------------------------------------------------------------------------
# End to end with the paper's configuration, checked against the fused run.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_run(tiny_sam, tmp_path_factory):
  """One run of `main` (absl flags) with every output; K = 6, defaults.

  `load_sam` returns the module's model, so that later runs with the same
  configuration reuse its compiled stages.

  Returns:
    (metadata read back from the JSON, {output name: path}, output folder).
  """
  out_dir = tmp_path_factory.mktemp("simsam_default")
  paths = {"mask": out_dir / "mask.png", "json": out_dir / "mask.json",
           "overlay": out_dir / "overlay.png", "debug": out_dir / "debug.npz",
           "logits": out_dir / "lowres.npy", "agreement": out_dir / "agreement.png"}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(segment, "load_sam", lambda spec, policy=None: tiny_sam)
    _run_main_in_process([
        f"--checkpoint={RANDOM_SPEC}", f"--image={PHANTOM_SPEC}",
        f"--out={paths['mask']}", f"--k={K}", f"--overlay={paths['overlay']}",
        f"--save_debug={paths['debug']}", f"--agreement={paths['agreement']}",
        f"--save_logits={paths['logits']}"])
  metadata = json.loads(paths["json"].read_text())
  return metadata, paths, out_dir


@pytest.fixture(scope="module")
def fused_output(phantom):
  """`SimSam(...).run` (one fused jit) on the same inputs, own model."""
  image, truth, box = phantom
  engine = SimSam(build_sam(TINY, SEED), SimSamConfig(k=K))
  pixels, info = processing.preprocess(image, TINY.image_size)
  output = engine.run(pixels, np.asarray(box, np.float32), info,
                      ground_truth=truth)
  return {field.name: np.asarray(getattr(output, field.name))
          for field in dataclasses.fields(output)}


def test_default_run_writes_every_output(default_run, phantom):
  metadata, paths, out_dir = default_run
  assert sorted(os.listdir(out_dir)) == ["agreement.png", "debug.npz", "lowres.npy",
                                         "mask.json", "mask.png",
                                         "overlay.png"]
  mask = _read_png(paths["mask"])
  assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8
  assert set(np.unique(mask)) <= {0, 255}

  written = metadata
  assert set(written) == SAM_METADATA_KEYS | {"simsam"}
  assert written["method"] == "simsam"
  _, truth, box = phantom
  assert written["box"] == list(box)
  assert written["box_source"] == "synthetic_ground_truth"
  assert written["points"] == [] and written["multimask"] is False
  assert len(written["iou_predictions"]) == K
  assert written["mask_foreground_fraction"] == pytest.approx(
      (mask > 0).mean())
  assert written["model_frame"]["low_res_logits_shape"] == [1, LOW_RES,
                                                            LOW_RES]
  assert written["outputs"] == {name: os.path.abspath(paths[key])
                                for name, key in (
                                    ("mask", "mask"), ("metadata", "json"),
                                    ("logits", "logits"),
                                    ("overlay", "overlay"),
                                    ("debug", "debug"),
                                    ("agreement", "agreement"))}
  assert set(written["timings_ms"]) == {"preprocess", *STAGES}
  assert set(written["compile_ms"]) == set(STAGES)
  assert all(value >= 0 for value in written["timings_ms"].values())

  block = written["simsam"]
  assert set(block) == SIMSAM_BLOCK_KEYS
  assert (block["k"], block["clicks"], block["aggregation"],
          block["mask_prompt"], block["seed"]) == (K, "topk", "iou_medoid",
                                                   "binary", 0)
  assert block["num_candidates"] == K
  assert 0 <= block["chosen_index"] < K
  assert block["chosen_index"] == written["chosen_index"]
  assert 0.0 <= block["confidence"] <= 1.0
  scores = block["scores"]
  assert set(scores) == {"min", "mean", "max"}
  assert scores["min"] <= scores["mean"] <= scores["max"]
  assert block["num_positive_clicks"] + block["num_negative_clicks"] == K
  assert isinstance(block["sam_iou_prediction"], float)
  assert 0.0 <= block["sam_mask_foreground_fraction"] <= 1.0
  assert block["ground_truth"]["source"] == "synthetic"
  binary = mask > 0
  expected_iou = (binary & truth).sum() / (binary | truth).sum()
  assert block["ground_truth"]["mask_iou"] == pytest.approx(expected_iou)


def test_debug_file_has_exact_keys_and_shapes(default_run):
  metadata, paths, _ = default_run
  with np.load(paths["debug"]) as debug:
    arrays = dict(debug)
  assert set(arrays) == {"first_logits", "clicks", "labels",
                         "candidate_logits", "scores", "chosen", "agreement"}
  assert arrays["first_logits"].shape == (LOW_RES, LOW_RES)
  assert arrays["first_logits"].dtype == np.float32
  clicks = arrays["clicks"]
  assert clicks.shape == (K, 2) and clicks.dtype == np.int32
  assert ((clicks[:, 0] >= 0) & (clicks[:, 0] < WIDTH)).all()
  assert ((clicks[:, 1] >= 0) & (clicks[:, 1] < HEIGHT)).all()
  assert arrays["labels"].shape == (K,)
  assert set(np.unique(arrays["labels"])) <= {0, 1}
  assert arrays["candidate_logits"].shape == (K, LOW_RES, LOW_RES)
  assert arrays["candidate_logits"].dtype == np.float32
  assert arrays["scores"].shape == (K,)
  assert arrays["chosen"].shape == () and 0 <= arrays["chosen"] < K
  assert arrays["agreement"].shape == (HEIGHT, WIDTH)
  assert (arrays["agreement"] >= 0).all() and (arrays["agreement"] <= 1).all()
  block = metadata["simsam"]
  assert int(arrays["chosen"]) == block["chosen_index"]
  assert int(arrays["labels"].sum()) == block["num_positive_clicks"]
  np.testing.assert_allclose(
      [arrays["scores"].min(), arrays["scores"].mean(),
       arrays["scores"].max()],
      [block["scores"][name] for name in ("min", "mean", "max")], rtol=1e-6)


def test_staged_cli_equals_fused_run(default_run, fused_output):
  metadata, paths, _ = default_run
  # The written mask is the fused run's mask, pixel for pixel.
  np.testing.assert_array_equal(_read_png(paths["mask"]) > 0,
                                fused_output["mask"])
  with np.load(paths["debug"]) as debug:
    arrays = dict(debug)
  np.testing.assert_array_equal(arrays["clicks"], fused_output["clicks"])
  np.testing.assert_array_equal(arrays["labels"], fused_output["labels"])
  assert int(arrays["chosen"]) == int(fused_output["chosen"])
  for name, field in (("first_logits", "first_low_res_logits"),
                      ("candidate_logits", "candidate_logits"),
                      ("scores", "scores"), ("agreement", "agreement")):
    np.testing.assert_allclose(arrays[name], fused_output[field], rtol=0,
                               atol=1e-5, err_msg=name)
  np.testing.assert_allclose(np.load(paths["logits"])[0],
                             fused_output["low_res_logits"], rtol=0,
                             atol=1e-5)
  block = metadata["simsam"]
  assert block["confidence"] == pytest.approx(
      float(fused_output["confidence"]), abs=1e-6)
  assert block["sam_iou_prediction"] == pytest.approx(
      float(fused_output["first_iou"]), abs=1e-5)
  assert block["sam_mask_foreground_fraction"] == pytest.approx(
      fused_output["sam_mask"].mean())
  np.testing.assert_allclose(metadata["iou_predictions"],
                             fused_output["candidate_iou"], atol=1e-5)


def test_agreement_png_is_the_colour_mapped_debug_map(default_run):
  from simsam_jax.evaluation import plots
  metadata, paths, _ = default_run
  with np.load(paths["debug"]) as debug:
    agreement = debug["agreement"]
  image = np.asarray(Image.open(paths["agreement"]).convert("RGB"))
  assert image.shape == (max(HEIGHT, 120), WIDTH + 70, 3)  # map + colour bar
  np.testing.assert_array_equal(image[:HEIGHT, :WIDTH], plots.colormap(agreement))
  # The legend's bar runs from colormap(1) at the top to colormap(0) below.
  bar = image[17:max(HEIGHT, 120) - 9, WIDTH + 14]
  assert abs(bar[0].astype(int) - plots.colormap(1.0)).max() <= 8
  assert abs(bar[-1].astype(int) - plots.colormap(0.0)).max() <= 8
  assert metadata["outputs"]["agreement"] == os.path.abspath(paths["agreement"])


def test_overlay_is_the_drawn_image(default_run, phantom):
  _, paths, _ = default_run
  image, _, box = phantom
  written = _read_png(paths["overlay"])
  assert written.shape == (HEIGHT, WIDTH, 3) and written.dtype == np.uint8
  assert not np.array_equal(written, image)
  mask = _read_png(paths["mask"]) > 0
  with np.load(paths["debug"]) as debug:
    expected = overlay.draw_overlay(image, mask, box, debug["clicks"],
                                    debug["labels"])
  np.testing.assert_array_equal(written, expected)


def test_second_run_reuses_the_compiled_stages(default_run, tiny_sam,
                                               tmp_path):
  metadata, paths, _ = default_run
  again = segment.segment(checkpoint=RANDOM_SPEC, image=PHANTOM_SPEC,
                          out=str(tmp_path / "again.png"), k=K, sam=tiny_sam)
  np.testing.assert_array_equal(_read_png(tmp_path / "again.png"),
                                _read_png(paths["mask"]))
  assert again["simsam"] == metadata["simsam"]
  # The engine is cached in the model; the executables in JAX's cache.
  assert sum(again["compile_ms"].values()) < sum(
      metadata["compile_ms"].values())


# ----------------------------------------------------------------------------
# Every strategy name, end to end.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_inputs(tmp_path_factory, phantom):
  """The phantom as a PNG image and its mask as a 0/1 grayscale PNG."""
  folder = tmp_path_factory.mktemp("inputs")
  image, truth, _ = phantom
  Image.fromarray(image).save(folder / "scan.png")
  Image.fromarray(truth.astype(np.uint8)).save(folder / "truth.png")
  return folder


@pytest.mark.parametrize("options", [
    {"clicks": "random", "aggregation": "pixel_mean", "mask_prompt": "logits",
     "seed": 3},
    {"clicks": "oracle", "aggregation": "majority_vote",
     "mask_prompt": "none"},
    {"clicks": "oracle", "aggregation": "iou_head", "ground_truth": True},
], ids=["random_pixel_mean_logits", "oracle_synthetic_majority_none",
        "oracle_file_iou_head"])
def test_strategies_end_to_end(options, tiny_sam, phantom, file_inputs,
                               tmp_path):
  image, truth, box = phantom
  options = dict(options)
  if options.pop("ground_truth", False):
    # A file image needs an explicit box; the ground truth is a file.
    inputs = {"image": str(file_inputs / "scan.png"),
              "box": ",".join(map(str, box)),
              "ground_truth": str(file_inputs / "truth.png")}
  else:
    inputs = {"image": PHANTOM_SPEC}
  out = tmp_path / "mask.png"
  metadata = segment.segment(checkpoint=RANDOM_SPEC, out=str(out), k=K,
                             overlay=str(tmp_path / "overlay.png"),
                             save_debug=str(tmp_path / "debug.npz"),
                             sam=tiny_sam, **inputs, **options)
  assert sorted(os.listdir(tmp_path)) == ["debug.npz", "mask.json",
                                          "mask.png", "overlay.png"]
  block = metadata["simsam"]
  for name in ("clicks", "aggregation", "mask_prompt", "seed"):
    if name in options:
      assert block[name] == options[name]
  mask = _read_png(out) > 0
  assert mask.shape == (HEIGHT, WIDTH)
  with np.load(tmp_path / "debug.npz") as debug:
    labels, chosen = debug["labels"], int(debug["chosen"])
    assert debug["candidate_logits"].shape == (K, LOW_RES, LOW_RES)
  if options["aggregation"] in ("pixel_mean", "majority_vote"):
    assert chosen == -1  # Synthesised, not picked.
  else:
    assert 0 <= chosen < K
  truth_block = block["ground_truth"]
  if "ground_truth" in inputs:
    assert truth_block["source"] == "flag"
    assert truth_block["path"] == os.path.abspath(inputs["ground_truth"])
    assert metadata["box_source"] == "flag"
  else:
    assert truth_block["source"] == "synthetic"
  expected_iou = (mask & truth).sum() / max((mask | truth).sum(), 1)
  assert truth_block["mask_iou"] == pytest.approx(expected_iou)
  if options["clicks"] == "oracle":
    assert len(set(labels.tolist())) == 1  # One error type is clicked.


# ----------------------------------------------------------------------------
# --method=sam with an overlay.
# ----------------------------------------------------------------------------


def test_sam_method_overlay_draws_points(tiny_sam, phantom, tmp_path):
  image = phantom[0]
  out = tmp_path / "mask.png"
  metadata = segment.segment(
      checkpoint=RANDOM_SPEC, image=PHANTOM_SPEC, out=str(out),
      box="30,20,150,95", points=["90,55,1", "10,10,0"], method="sam",
      overlay=str(tmp_path / "overlay.png"), sam=tiny_sam)
  assert set(metadata) == SAM_METADATA_KEYS
  assert metadata["method"] == "sam"
  assert metadata["outputs"]["overlay"] == str(tmp_path / "overlay.png")
  assert metadata["outputs"]["debug"] is None
  expected = overlay.draw_overlay(image, _read_png(out) > 0,
                                  (30, 20, 150, 95),
                                  np.array([[90, 55], [10, 10]]),
                                  np.array([1, 0]))
  np.testing.assert_array_equal(_read_png(tmp_path / "overlay.png"),
                                expected)


# ----------------------------------------------------------------------------
# The overlay and the ground-truth reader, without a model.
# ----------------------------------------------------------------------------


def test_draw_overlay_colours_and_determinism():
  image = np.full((40, 50, 3), 90, np.uint8)
  mask = np.zeros((40, 50), bool)
  mask[10:30, 15:35] = True
  original = image.copy()
  clicks = np.array([[5, 5], [45, 35]])
  labels = np.array([1, 0])
  drawn = overlay.draw_overlay(image, mask, (2, 3, 47, 38), clicks, labels)
  np.testing.assert_array_equal(image, original)  # Input untouched.
  np.testing.assert_array_equal(
      drawn, overlay.draw_overlay(image, mask, (2, 3, 47, 38), clicks,
                                  labels))
  assert drawn.shape == image.shape and drawn.dtype == np.uint8
  assert tuple(drawn[10, 20]) == overlay.CONTOUR_COLOR  # Top edge.
  assert tuple(drawn[20, 25]) == (90, 90, 90)  # Interior untouched.
  assert tuple(drawn[5, 5]) == overlay.POSITIVE_COLOR
  assert tuple(drawn[35, 45]) == overlay.NEGATIVE_COLOR
  assert tuple(drawn[20, 2]) == overlay.BOX_COLOR  # Left side of the box.
  contour = overlay.mask_contour(mask)
  assert contour.sum() == 2 * (20 + 20) - 4
  # No mask, no prompts: the image itself.
  np.testing.assert_array_equal(
      overlay.draw_overlay(image, np.zeros((40, 50), bool)), image)
  with pytest.raises(ValueError, match="mask"):
    overlay.draw_overlay(image, mask[:-1])


def test_load_ground_truth_formats(tmp_path):
  truth = np.zeros((6, 8), bool)
  truth[1:4, 2:7] = True
  binary_l = tmp_path / "l.png"
  Image.fromarray(truth.astype(np.uint8)).save(binary_l)  # Values 0 / 1.
  rgb = tmp_path / "rgb.png"
  colour = np.zeros((6, 8, 3), np.uint8)
  colour[truth] = (0, 0, 200)  # Luma 23 > 0.
  Image.fromarray(colour).save(rgb)
  deep = tmp_path / "deep.png"
  Image.fromarray(truth.astype(np.uint16) * 1000).save(deep)
  tiff = tmp_path / "mask.tif"
  tifffile.imwrite(tiff, truth.astype(np.uint16) * 700)
  for path in (binary_l, rgb, deep, tiff):
    np.testing.assert_array_equal(
        inputs.load_ground_truth(str(path), (6, 8)), truth, err_msg=path.name)
  with pytest.raises(segment.SegmentError, match="--ground_truth.*image"):
    inputs.load_ground_truth(str(binary_l), (8, 6))


# ----------------------------------------------------------------------------
# Bad input: a one-line error naming the flag/file, nothing written.
# ----------------------------------------------------------------------------


@pytest.fixture
def plain_png(tmp_path) -> pathlib.Path:
  """A 40 x 60 grey PNG outside the output folder, with masks beside it."""
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  path = inputs / "plain.png"
  Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(path)
  Image.fromarray(np.zeros((30, 60), np.uint8)).save(inputs / "small.png")
  (inputs / "garbage.png").write_bytes(b"not an image at all")
  return path


@pytest.mark.parametrize("flags_, expected", [
    (["--image={inputs}/garbage.png"], "garbage.png"),
    (["--image={inputs}/missing.png"], "missing.png"),
    (["--image={plain}", "--box=0,0,61,40"], "--box"),
    (["--image={plain}", "--box=-1,0,6,4"], "--box"),
    (["--image={plain}", "--box=5,1,5,9"], "--box"),
    (["--image={plain}", "--box=1,5,9,5"], "--box"),
    (["--image={plain}", "--box=9,1,5,9"], "--box"),
    (["--image={plain}", "--box=DROP"], "--box"),
    (["--image=synthetic", "--box=0,0,0,0"], "--box"),
    (["--image={plain}", "--k=0"], "--k"),
    (["--image={plain}", "--k=-4"], "--k"),
    (["--image={plain}", "--k=2401"], "--k"),
    (["--image={plain}", "--clicks=bogus"], "--clicks"),
    (["--image={plain}", "--aggregation=bogus"], "--aggregation"),
    (["--image={plain}", "--mask_prompt=bogus"], "--mask_prompt"),
    (["--image={plain}", "--seed=-1"], "--seed"),
    (["--image={plain}", "--clicks=oracle"], "--clicks"),
    (["--image={plain}", "--clicks=oracle",
      "--ground_truth={inputs}/small.png"], "--ground_truth"),
    (["--image={plain}", "--ground_truth={inputs}/none.png"], "none.png"),
    (["--image={plain}", "--ground_truth={inputs}/garbage.png"],
     "--ground_truth"),
    (["--image={plain}", "--overlay={out}/overlay.jpg"], "--overlay"),
    (["--image={plain}", "--overlay={out}/mask.png"], "--overlay"),
    (["--image={plain}", "--save_debug={out}/debug.npy"], "--save_debug"),
    (["--image={plain}", "--point=5,5,1"], "--point"),
    (["--image={plain}", "--multimask"], "--multimask"),
    (["--image={plain}", "--method=sam", "--save_debug={out}/d.npz"],
     "--save_debug"),
    (["--image={plain}", "--method=sam",
      "--ground_truth={inputs}/small.png"], "--ground_truth"),
    (["--image={plain}", "--method=sam", "--k=5"], "--k"),
    (["--image={plain}", "--agreement={out}/agreement.jpg"], "--agreement"),
    (["--image={plain}", "--method=sam", "--agreement={out}/a.png"], "--agreement"),
], ids=["unreadable_image", "missing_image", "box_outside", "box_negative",
        "box_zero_width", "box_zero_height", "box_inverted", "no_box",
        "box_empty_synthetic", "k_zero", "k_negative", "k_above_pixels",
        "unknown_clicks", "unknown_aggregation", "unknown_mask_prompt",
        "seed_negative", "oracle_without_truth", "truth_size_mismatch",
        "truth_missing", "truth_unreadable", "overlay_not_png",
        "overlay_collides_with_out", "debug_not_npz", "point_with_simsam",
        "multimask_with_simsam", "debug_with_sam", "truth_with_sam",
        "k_with_sam", "agreement_not_png", "agreement_with_sam"])
def test_bad_input_fails_cleanly(flags_, expected, plain_png, tmp_path,
                                 capsys):
  inputs = plain_png.parent
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  names = {"inputs": inputs, "plain": plain_png, "out": out_dir}
  # "--box=DROP" leaves the default box out (no --box at all).
  argv = [flag.format(**names) for flag in flags_ if flag != "--box=DROP"]
  defaults = {"--checkpoint": RANDOM_SPEC, "--out": f"{out_dir}/mask.png",
              "--box": "1,1,30,20", "--k": str(K),
              "--overlay": f"{out_dir}/overlay.png",
              "--save_debug": f"{out_dir}/debug.npz",
              "--save_logits": f"{out_dir}/l.npy"}
  given = {flag.split("=", 1)[0] for flag in flags_}
  if "--method=sam" in flags_:
    given |= {"--k", "--save_debug"}  # SimSAM-only defaults left out.
  argv += [f"{name}={value}" for name, value in defaults.items()
           if name not in given]

  with pytest.raises(SystemExit) as exit_info:
    _run_main_in_process(argv)
  assert exit_info.value.code == 1
  stderr = capsys.readouterr().err.strip().splitlines()
  assert stderr and expected in stderr[-1], stderr
  assert stderr[-1].startswith("simsam_jax.segment: error:")
  assert os.listdir(out_dir) == []


def test_failed_write_leaves_nothing(default_run, tiny_sam, tmp_path):
  """The overlay cannot be written: no mask, JSON or debug file either."""
  del default_run  # Compiled already: this run only fails at the write.
  blocker = tmp_path / "blocker"
  blocker.write_text("a file where a folder is needed")
  out_dir = tmp_path / "out"
  with pytest.raises(segment.SegmentError, match="--out.*blocker"):
    segment.segment(checkpoint=RANDOM_SPEC, image=PHANTOM_SPEC,
                    out=str(out_dir / "mask.png"), k=K,
                    save_debug=str(out_dir / "debug.npz"),
                    overlay=str(blocker / "overlay.png"), sam=tiny_sam)
  assert not out_dir.exists() or os.listdir(out_dir) == []


def test_subprocess_usage_error_is_one_line(tmp_path):
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  completed = subprocess.run(
      [sys.executable, "-m", "simsam_jax.segment",
       f"--checkpoint={RANDOM_SPEC}", "--image=synthetic", "--point=10,10,1",
       f"--out={out_dir}/m.png"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert completed.returncode == 1
  assert "Traceback" not in completed.stderr
  last_line = completed.stderr.strip().splitlines()[-1]
  assert last_line.startswith("simsam_jax.segment: error: --point=")
  assert os.listdir(out_dir) == []

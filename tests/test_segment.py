"""Tests of the SAM command line (`simsam_jax.segment`) and the phantom.

Everything uses the `tiny` preset; sizes (model side S, low-res logits side
M) are read from its config, never hard-coded. The command's default method
is SimSAM (`tests/test_segment_simsam.py`); these tests pin `--method=sam`.
One model (`random:tiny:7`) is built per module and reused in-process; two
runs go through a subprocess (`python -m simsam_jax.segment`): a converted
checkpoint folder and an error case. Bad-input cases run `segment.main`
in-process with absl-parsed flags.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from simsam_jax import fileio, predictor, processing, segment, synthetic
from simsam_jax.checkpoint import save_checkpoint
from simsam_jax.modeling import build_sam, get_preset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SEED = 7
RANDOM_SPEC = f"random:tiny:{SEED}"
TINY = get_preset("tiny")
LOW_RES = TINY.mask_input_size  # M: 4 x the embedding grid side.
PHANTOM_SPEC = "synthetic:3:120x200"  # Small, so postprocessing stays cheap.

METADATA_KEYS = {
    "method", "checkpoint", "image", "box", "box_source", "points",
    "multimask", "iou_predictions", "chosen_index",
    "mask_foreground_fraction", "model_frame", "outputs", "timings_ms",
    "compile_ms", "jax", "precision", "attention_impl"}


@pytest.fixture(scope="module")
def tiny_sam() -> predictor.LoadedSam:
  return predictor.load_sam(RANDOM_SPEC)


@pytest.fixture(scope="module")
def converted_checkpoint(tmp_path_factory) -> pathlib.Path:
  """A converted-checkpoint folder holding `build_sam(tiny, SEED)`."""
  destination = tmp_path_factory.mktemp("checkpoint") / "tiny_seed7"
  save_checkpoint(str(destination), nnx.state(build_sam(TINY, SEED)), TINY,
                  source={"format": "test"})
  return destination


def _read_mask(path) -> np.ndarray:
  """(H, W) uint8 of the written PNG (checked to be 8-bit grayscale)."""
  with Image.open(path) as image:
    assert image.mode == "L"
    return np.asarray(image)


def _run_cli(*args, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "simsam_jax.segment", *args],
                        cwd=cwd, capture_output=True, text=True, timeout=120)


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
# The phantom.
# ----------------------------------------------------------------------------


def test_phantom_is_deterministic_and_box_bounds_the_mask():
  image, mask, box = synthetic.phantom(60, 90, seed=4)
  again = synthetic.phantom(60, 90, seed=4)
  np.testing.assert_array_equal(image, again[0])
  np.testing.assert_array_equal(mask, again[1])
  assert image.shape == (60, 90, 3) and image.dtype == np.uint8
  assert mask.shape == (60, 90) and mask.dtype == np.bool_ and mask.any()
  assert (image[..., 0] == image[..., 2]).all()
  ys, xs = np.nonzero(mask)
  assert box == (xs.min(), ys.min(), xs.max(), ys.max())
  assert all(isinstance(value, int) for value in box)
  # The lesion is darker than the background.
  assert image[mask].mean() < image[~mask].mean() - 20
  assert not np.array_equal(synthetic.phantom(60, 90, seed=5)[1], mask)


def test_parse_image_spec():
  assert synthetic.parse_image_spec("scan.png") is None
  assert synthetic.parse_image_spec("synthetic_scan.png") is None
  assert synthetic.parse_image_spec("synthetic")[0].shape == (300, 400, 3)
  np.testing.assert_array_equal(synthetic.parse_image_spec("synthetic:2")[1],
                                synthetic.phantom(seed=2)[1])
  assert synthetic.parse_image_spec("synthetic:2:50x70")[0].shape == (50, 70, 3)
  for bad in ("synthetic:x", "synthetic:1:50", "synthetic:1:8x8"):
    with pytest.raises(ValueError, match="synthetic|phantom"):
      synthetic.parse_image_spec(bad)


# ----------------------------------------------------------------------------
# End to end, in-process.
# ----------------------------------------------------------------------------


def test_synthetic_single_mask_writes_every_output(tiny_sam, tmp_path):
  out = tmp_path / "mask.png"
  logits_path = tmp_path / "lowres.npy"
  metadata = segment.segment(checkpoint=RANDOM_SPEC, image="synthetic",
                             out=str(out), save_logits=str(logits_path),
                             sam=tiny_sam, method="sam")
  assert sorted(os.listdir(tmp_path)) == ["lowres.npy", "mask.json",
                                          "mask.png"]
  mask = _read_mask(out)
  assert mask.shape == (300, 400)
  assert set(np.unique(mask)) <= {0, 255}

  written = json.loads((tmp_path / "mask.json").read_text())
  assert written == metadata
  assert set(written) == METADATA_KEYS
  _, _, truth_box = synthetic.phantom()
  assert written["box"] == list(truth_box)
  assert written["box_source"] == "synthetic_ground_truth"
  assert written["points"] == [] and written["multimask"] is False
  assert written["image"] == {"spec": "synthetic", "path": None,
                              "synthetic": True, "height": 300, "width": 400,
                              "intensity": "none", "dtype": "uint8",
                              "spacing": None, "volume": None}
  checkpoint = written["checkpoint"]
  assert checkpoint["random_weights"] is True
  assert (checkpoint["preset"], checkpoint["seed"]) == ("tiny", SEED)
  assert checkpoint["architecture"] == "tiny"
  assert len(written["iou_predictions"]) == 1 and written["chosen_index"] == 0
  assert written["mask_foreground_fraction"] == pytest.approx(
      (mask > 0).mean())
  assert set(written["timings_ms"]) == {"preprocess", "encode", "decode",
                                        "postprocess"}
  assert set(written["compile_ms"]) == {"encode", "decode", "postprocess"}
  assert all(value >= 0 for value in written["timings_ms"].values())
  assert written["jax"]["backend"] == jax.default_backend()

  logits = np.load(logits_path)
  assert logits.shape == (1, LOW_RES, LOW_RES) and logits.dtype == np.float32
  # The mask is the upscaled saved logits > 0.
  info = processing.ImageInfo(
      (300, 400), processing.preprocess_shape(300, 400, TINY.image_size),
      TINY.image_size)
  expected = np.asarray(processing.postprocess_logits(logits[0], info)) > 0
  np.testing.assert_array_equal(mask > 0, expected)


def _expected_mask(sam, image, box, points, multimask):
  """The CLI's mask computed independently from the raw jitted functions."""
  height, width = image.shape[:2]
  pixels, info = processing.preprocess(image, TINY.image_size)
  resized_height, resized_width = info.resized_size
  scale = np.array([resized_width / width, resized_height / height])
  boxes = coords = labels = None
  if box is not None:
    boxes = np.array([[[box[0] * scale[0], box[1] * scale[1],
                        box[2] * scale[0], box[3] * scale[1]]]], np.float32)
  if points:
    coords = np.array([[[(x * scale[0], y * scale[1])
                         for x, y, _ in points]]], np.float32)
    labels = np.array([[[label for _, _, label in points]]], np.int32)
  embedding = sam.fns.encode(sam.state, pixels[None])
  logits, iou = sam.fns.decode(sam.state, embedding, coords, labels, boxes,
                               None, multimask_output=multimask)
  chosen = int(np.argmax(iou[0, 0]))
  mask = np.asarray(processing.postprocess_logits(logits[0, 0, chosen],
                                                  info)) > 0
  return mask, np.asarray(iou[0, 0]), chosen


@pytest.mark.parametrize("box, points, multimask", [
    ((30.5, 20, 150, 95), [], False),
    (None, [(80, 60, 1), (20, 10, 0)], False),
    ((30, 20, 150, 95), [(90, 55, 1)], True),
], ids=["box", "points", "box_point_multimask"])
def test_mask_equals_independent_computation(tiny_sam, tmp_path, box, points,
                                             multimask):
  image = synthetic.parse_image_spec(PHANTOM_SPEC)[0]
  out = tmp_path / "mask.png"
  logits_path = tmp_path / "lowres.npy"
  metadata = segment.segment(
      checkpoint=RANDOM_SPEC, image=PHANTOM_SPEC, out=str(out),
      box=None if box is None else ",".join(map(str, box)),
      points=[",".join(map(str, point)) for point in points],
      save_logits=str(logits_path), multimask=multimask, sam=tiny_sam,
      method="sam")

  expected_mask, expected_iou, expected_index = _expected_mask(
      tiny_sam, image, box, points, multimask)
  mask = _read_mask(out)
  assert mask.shape == image.shape[:2]
  np.testing.assert_array_equal(mask > 0, expected_mask)
  np.testing.assert_allclose(metadata["iou_predictions"], expected_iou,
                             rtol=1e-6)
  num_masks = TINY.num_multimask_outputs if multimask else 1
  assert len(metadata["iou_predictions"]) == num_masks
  assert metadata["chosen_index"] == expected_index
  assert np.load(logits_path).shape == (num_masks, LOW_RES, LOW_RES)
  assert metadata["points"] == [list(point) for point in points]
  if box is not None:
    # Both axes scale by S / 200 (the long side), by hand.
    np.testing.assert_allclose(metadata["model_frame"]["box"],
                               np.array(box) * TINY.image_size / 200,
                               rtol=1e-6)


def test_real_tiff_mask_has_the_image_size(tiny_sam, tmp_path, shared_data):
  path = shared_data / "cvc_clinicdb" / "Original" / "12.tif"
  if not path.is_file():
    pytest.skip(f"{path} is absent")
  out = tmp_path / "polyp.png"
  metadata = segment.segment(checkpoint=RANDOM_SPEC, image=str(path),
                             out=str(out), box="100,80,250,200",
                             sam=tiny_sam, method="sam")
  mask = _read_mask(out)
  assert mask.shape == (288, 384)
  assert set(np.unique(mask)) <= {0, 255}
  assert (metadata["image"]["height"], metadata["image"]["width"]) == (288, 384)
  assert metadata["image"]["path"] == os.path.abspath(path)


# ----------------------------------------------------------------------------
# Converted checkpoint folder, through a subprocess.
# ----------------------------------------------------------------------------


def test_build_sam_is_deterministic():
  first = jax.tree.leaves(nnx.state(build_sam(TINY, SEED)))
  second = jax.tree.leaves(nnx.state(build_sam(TINY, SEED)))
  assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_converted_checkpoint_subprocess_equals_random_seed(
    tiny_sam, converted_checkpoint, tmp_path):
  prompt = ["--method=sam", "--box=30,20,150,95", "--point=90,55,1",
            "--point=10,10,0", "--multimask"]
  cli_dir, reference_dir = tmp_path / "cli", tmp_path / "reference"
  completed = _run_cli(f"--checkpoint={converted_checkpoint}",
                       f"--image={PHANTOM_SPEC}", f"--out={cli_dir}/m.png",
                       f"--save_logits={cli_dir}/l.npy", *prompt)
  assert completed.returncode == 0, completed.stderr
  assert "RANDOM WEIGHTS" not in completed.stderr

  reference = segment.segment(
      checkpoint=RANDOM_SPEC, image=PHANTOM_SPEC,
      out=str(reference_dir / "m.png"),
      save_logits=str(reference_dir / "l.npy"), box="30,20,150,95",
      points=["90,55,1", "10,10,0"], multimask=True, sam=tiny_sam,
      method="sam")
  written = json.loads((cli_dir / "m.json").read_text())
  assert written["checkpoint"]["random_weights"] is False
  assert written["checkpoint"]["source_format"] == "test"
  assert written["checkpoint"]["source_sha256"] is None
  assert written["checkpoint"]["preset"] == "tiny"
  assert written["checkpoint"]["path"] == str(converted_checkpoint.resolve())
  assert written["points"] == [[90, 55, 1], [10, 10, 0]]
  assert written["multimask"] is True
  assert written["chosen_index"] == reference["chosen_index"]
  np.testing.assert_allclose(written["iou_predictions"],
                             reference["iou_predictions"], atol=1e-5)
  np.testing.assert_allclose(np.load(cli_dir / "l.npy"),
                             np.load(reference_dir / "l.npy"), atol=1e-4)
  cli_mask = _read_mask(cli_dir / "m.png")
  reference_mask = _read_mask(reference_dir / "m.png")
  # Separate processes may round differently; allow a few border pixels.
  assert (cli_mask != reference_mask).mean() < 1e-3


# ----------------------------------------------------------------------------
# Bad input: a one-line error naming the flag/file, nothing written.
# ----------------------------------------------------------------------------


@pytest.fixture
def plain_png(tmp_path) -> pathlib.Path:
  """A 40 x 60 grey PNG outside the output folder."""
  path = tmp_path / "inputs" / "plain.png"
  path.parent.mkdir()
  Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(path)
  return path


@pytest.mark.parametrize("flags_, expected", [
    (["--image={inputs}/missing.png", "--box=1,1,5,5"], "missing.png"),
    (["--image={inputs}/garbage.png", "--box=1,1,5,5"], "garbage.png"),
    (["--image=synthetic:oops"], "--image"),
    (["--image={plain}", "--box=10,1,5,5"], "--box"),
    (["--image={plain}", "--box=1,10,5,5"], "--box"),
    (["--image={plain}", "--box=0,0,61,40"], "--box"),
    (["--image={plain}", "--box=-1,0,6,4"], "--box"),
    (["--image={plain}", "--box=1,2,3"], "--box"),
    (["--image={plain}", "--box=a,b,c,d"], "--box"),
    (["--image={plain}", "--box=nan,1,5,5"], "--box"),
    (["--image={plain}", "--point=10,41,1"], "--point"),
    (["--image={plain}", "--point=10,5"], "--point"),
    (["--image={plain}", "--point=x,5,1"], "--point"),
    (["--image={plain}", "--point=10,5,2"], "--point"),
    (["--image={plain}"], "--box"),
    (["--image={plain}", "--box=1,1,5,5", "--checkpoint={inputs}/nockpt"],
     "nockpt"),
    (["--image={plain}", "--box=1,1,5,5", "--checkpoint={inputs}"],
     "--checkpoint"),
    (["--image={plain}", "--box=1,1,5,5", "--checkpoint=random:vit_z"],
     "vit_z"),
    (["--image={plain}", "--box=1,1,5,5", "--checkpoint=random:tiny:x"],
     "--checkpoint"),
    (["--image={plain}", "--box=1,1,5,5", "--out={out}/mask.jpg"], "--out"),
    (["--image={plain}", "--box=1,1,5,5", "--save_logits={out}/l.txt"],
     "--save_logits"),
], ids=["missing_image", "unreadable_image", "bad_synthetic", "box_x1_lt_x0",
        "box_y1_lt_y0", "box_outside", "box_negative", "box_3_values",
        "box_not_numbers", "box_nan", "point_outside", "point_no_label",
        "point_not_number", "point_label_2", "no_prompt",
        "missing_checkpoint", "not_a_checkpoint", "unknown_preset",
        "bad_seed", "out_not_png", "logits_not_npy"])
def test_bad_input_fails_cleanly(flags_, expected, plain_png, tmp_path,
                                 capsys):
  inputs = plain_png.parent
  (inputs / "garbage.png").write_bytes(b"not an image at all")
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  names = {"inputs": inputs, "plain": plain_png, "out": out_dir}
  argv = [flag.format(**names) for flag in flags_]
  defaults = {"--method": "sam", "--checkpoint": RANDOM_SPEC,
              "--out": f"{out_dir}/mask.png",
              "--save_logits": f"{out_dir}/l.npy"}
  given = {flag.split("=", 1)[0] for flag in argv}
  argv += [f"{name}={value}" for name, value in defaults.items()
           if name not in given]

  with pytest.raises(SystemExit) as exit_info:
    _run_main_in_process(argv)
  assert exit_info.value.code == 1
  stderr = capsys.readouterr().err.strip().splitlines()
  assert stderr and expected in stderr[-1], stderr
  assert stderr[-1].startswith("simsam_jax.segment: error:")
  assert os.listdir(out_dir) == []


def test_missing_required_flag_fails_cleanly(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _run_main_in_process(["--image=synthetic"])
  assert exit_info.value.code == 1
  error = capsys.readouterr().err
  assert "--checkpoint" in error and "--out" in error


def test_subprocess_error_is_one_line_without_traceback(tmp_path):
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  completed = _run_cli(f"--checkpoint={RANDOM_SPEC}", "--image=synthetic",
                       "--method=sam", "--box=50,50,10,10",
                       f"--out={out_dir}/m.png")
  assert completed.returncode == 1
  assert "Traceback" not in completed.stderr
  last_line = completed.stderr.strip().splitlines()[-1]
  assert last_line.startswith("simsam_jax.segment: error: --box=")
  assert os.listdir(out_dir) == []


def test_failed_write_leaves_nothing(tmp_path):
  good_dir = tmp_path / "good"
  blocker = tmp_path / "blocker"
  blocker.write_text("a file where a folder is needed")
  with pytest.raises(OSError):
    fileio.write_files_atomically({
        str(good_dir / "mask.png"): b"png",
        str(blocker / "lowres.npy"): b"npy",
    })
  assert os.listdir(good_dir) == []
  assert blocker.read_text() == "a file where a folder is needed"


def test_write_outputs_error_names_out(tiny_sam, tmp_path):
  blocker = tmp_path / "blocker"
  blocker.write_text("")
  with pytest.raises(segment.SegmentError, match="--out"):
    segment.segment(checkpoint=RANDOM_SPEC, image=PHANTOM_SPEC,
                    out=str(blocker / "mask.png"), sam=tiny_sam, method="sam")

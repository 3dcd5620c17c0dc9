"""Intensity policies, NIfTI / DICOM reading and NIfTI mask writing.

Every file is built here with the libraries that define the formats
(Pillow, tifffile, nibabel, pydicom); nothing is downloaded. Expected values
are transcriptions in numpy of each policy's definition, and nibabel's own
reading of what we wrote.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import data_fixtures

from simsam_jax import medical, predictor, processing, segment

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")
tifffile = pytest.importorskip("tifffile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scaled(values, low, high):
  """The policies' definition: clip to [low, high], map to 0-255, truncate."""
  values = np.clip(values.astype(np.float64), low, high)
  return ((values - low) / (high - low) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------
# Intensity policies.
# ----------------------------------------------------------------------------


def test_parse_intensity():
  P = processing.IntensityPolicy
  assert processing.parse_intensity(None) is None
  assert processing.parse_intensity("minmax") == P("minmax")
  assert processing.parse_intensity("window:-160,240") == P("window", -160, 240)
  assert processing.parse_intensity("percentile:0.5,99.5") == P("percentile", 0.5, 99.5)
  assert str(P("window", -160, 240)) == "window:-160,240"
  for bad in ("gamma", "window", "window:1", "window:5,1", "window:a,b",
              "percentile:-1,50", "percentile:10,101", "minmax:1,2", "window:nan,1"):
    with pytest.raises(ValueError, match="--intensity"):
      processing.parse_intensity(bad)


def test_sixteen_bit_png_uses_minmax_by_default(tmp_path):
  rng = np.random.default_rng(0)
  deep = rng.integers(300, 40000, (24, 31), dtype=np.uint16)
  Image.fromarray(deep).save(tmp_path / "deep.png")
  loaded = processing.read_image(tmp_path / "deep.png")
  assert (loaded.intensity, loaded.dtype) == ("minmax", "uint16")
  expected = _scaled(deep, deep.min(), deep.max())
  np.testing.assert_array_equal(loaded.pixels, np.repeat(expected[..., None], 3, -1))
  percentile = processing.read_image(tmp_path / "deep.png",
                                     processing.parse_intensity("percentile:2,98"))
  low, high = np.percentile(deep.astype(np.float64), [2, 98])
  np.testing.assert_array_equal(percentile.pixels[..., 0], _scaled(deep, low, high))
  assert percentile.intensity == "percentile:2,98"


def test_float_tiff_window_and_eight_bit_untouched(tmp_path):
  rng = np.random.default_rng(1)
  hounsfield = rng.uniform(-1000, 1500, (20, 17)).astype(np.float32)
  tifffile.imwrite(tmp_path / "ct.tif", hounsfield)
  loaded = processing.read_image(tmp_path / "ct.tif",
                                 processing.parse_intensity("window:-160,240"))
  np.testing.assert_array_equal(loaded.pixels[..., 1], _scaled(hounsfield, -160, 240))
  assert loaded.intensity == "window:-160,240" and loaded.dtype == "float32"
  rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "rgb.png")
  plain = processing.read_image(tmp_path / "rgb.png")
  np.testing.assert_array_equal(plain.pixels, rgb)
  assert plain.intensity == "none"
  windowed = processing.read_image(tmp_path / "rgb.png",
                                   processing.parse_intensity("window:50,200"))
  np.testing.assert_array_equal(windowed.pixels, _scaled(rgb, 50, 200))


def test_non_finite_and_constant_images_are_refused(tmp_path):
  image = np.ones((8, 8), np.float32)
  tifffile.imwrite(tmp_path / "constant.tif", image)
  image[3, 4] = np.nan
  tifffile.imwrite(tmp_path / "nan.tif", image)
  with pytest.raises(ValueError, match="non-finite") as raised:
    processing.read_image(tmp_path / "nan.tif")
  assert "nan.tif" in str(raised.value)
  with pytest.raises(ValueError, match="constant") as raised:
    processing.read_image(tmp_path / "constant.tif")
  assert "constant.tif" in str(raised.value)
  # A window is defined on a constant image.
  assert processing.read_image(tmp_path / "constant.tif",
                               processing.parse_intensity("window:0,2")).pixels.max() == 127


# ----------------------------------------------------------------------------
# NIfTI.
# ----------------------------------------------------------------------------

# Rotated, flipped, anisotropic and translated: voxel axes are not world axes.
AFFINE = np.array([[0.0, -0.8, 0.0, 31.5],
                   [0.7, 0.0, 0.1, -12.0],
                   [0.0, 0.0, -2.5, 40.0],
                   [0.0, 0.0, 0.0, 1.0]])


def _volume(seed=0, shape=(23, 19, 7)):
  rng = np.random.default_rng(seed)
  volume = rng.normal(0, 50, shape).astype(np.int16)
  volume[4:15, 6:12, 3] += 900  # a bright blob on slice 3 (axis 2)
  return volume


def test_nifti_slice_convention_spacing_and_scaling(tmp_path):
  volume = _volume()
  image = nib.Nifti1Image(volume, AFFINE)
  image.header.set_slope_inter(2.0, -1024.0)
  nib.save(image, tmp_path / "scan.nii.gz")
  zooms = nib.load(tmp_path / "scan.nii.gz").header.get_zooms()
  for axis in (0, 1, 2):
    index = volume.shape[axis] // 2
    got = medical.read_nifti_slice(str(tmp_path / "scan.nii.gz"), index, axis)
    expected = np.take(volume.astype(np.float64) * 2.0 - 1024.0, index, axis=axis).T
    np.testing.assert_allclose(got.pixels, expected)
    a, b = [d for d in range(3) if d != axis]
    assert got.spacing == pytest.approx((zooms[b], zooms[a]))
    assert got.shape == volume.shape
  # Pixel (x, y) of slice k along axis 2 is voxel (x, y, k).
  got = medical.read_nifti_slice(str(tmp_path / "scan.nii.gz"), 3, 2)
  assert got.pixels[7, 5] == volume[5, 7, 3] * 2.0 - 1024.0


@pytest.mark.parametrize("axis,suffix", [(2, ".nii.gz"), (0, ".nii"), (1, ".nii.gz")])
def test_nifti_mask_round_trip_voxel_for_voxel(tmp_path, axis, suffix):
  volume = _volume(seed=axis)
  path = str(tmp_path / ("scan" + suffix))
  nib.save(nib.Nifti1Image(volume, AFFINE), path)
  index = 3 if axis == 2 else volume.shape[axis] // 2
  loaded = processing.read_image(path, slice_index=index, axis=axis)
  prediction = loaded.pixels[..., 0] > 128  # a mask on the slice image
  assert 0.02 < prediction.mean() < 0.98
  data = medical.nifti_mask_bytes(loaded.volume, prediction,
                                  compressed=suffix.endswith(".gz"))
  out = tmp_path / ("mask" + suffix)
  out.write_bytes(data)
  back = nib.load(out)
  assert back.shape == volume.shape
  np.testing.assert_allclose(back.affine, nib.load(path).affine)
  assert int(back.header["sform_code"]) == int(nib.load(path).header["sform_code"])
  mask = np.asarray(back.dataobj)
  assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
  # Independent: the voxels of the chosen slice that the image thresholding
  # marks, computed directly on the volume with the same min-max.
  plane = np.take(volume, index, axis=axis).astype(np.float64)
  scaled = ((plane - plane.min()) / (plane.max() - plane.min()) * 255).astype(np.uint8)
  expected = np.zeros(volume.shape, np.uint8)
  slicer = [slice(None)] * 3
  slicer[axis] = index
  expected[tuple(slicer)] = scaled > 128
  np.testing.assert_array_equal(mask, expected)
  # Same world position: the blob's voxel maps to the same world point.
  if axis == 2:
    voxel = np.array([8, 9, 3, 1.0])
    assert mask[8, 9, 3] == 1
    np.testing.assert_allclose(back.affine @ voxel, nib.load(path).affine @ voxel)


def test_nifti_errors_name_the_file(tmp_path):
  volume = _volume()
  nib.save(nib.Nifti1Image(volume, AFFINE), tmp_path / "scan.nii.gz")
  data = (tmp_path / "scan.nii.gz").read_bytes()
  (tmp_path / "truncated.nii.gz").write_bytes(data[:len(data) // 2])
  (tmp_path / "text.nii").write_text("not a volume")
  for name in ("truncated.nii.gz", "text.nii"):
    with pytest.raises(ValueError) as raised:
      processing.read_image(tmp_path / name, slice_index=1)
    assert name in str(raised.value)
  with pytest.raises(ValueError, match="--slice"):
    processing.read_image(tmp_path / "scan.nii.gz")
  with pytest.raises(ValueError, match="outside"):
    processing.read_image(tmp_path / "scan.nii.gz", slice_index=7)
  with pytest.raises(ValueError, match="--axis"):
    processing.read_image(tmp_path / "scan.nii.gz", slice_index=1, axis=3)


# ----------------------------------------------------------------------------
# DICOM.
# ----------------------------------------------------------------------------


_write_dicom = data_fixtures.write_dicom


def test_dicom_modality_units_window_and_spacing(tmp_path):
  rng = np.random.default_rng(2)
  stored = rng.integers(0, 2000, (21, 26)).astype(np.int16)
  _write_dicom(tmp_path / "slice.dcm", stored)
  loaded = processing.read_image(tmp_path / "slice.dcm",
                                 processing.parse_intensity("window:-160,240"))
  hounsfield = stored * 2.0 - 1024.0
  np.testing.assert_array_equal(loaded.pixels[..., 2], _scaled(hounsfield, -160, 240))
  assert loaded.spacing == (0.5, 0.7) and loaded.volume is None
  (tmp_path / "bad.dcm").write_bytes(b"\0" * 50)
  with pytest.raises(ValueError) as raised:
    processing.read_image(tmp_path / "bad.dcm")
  assert "bad.dcm" in str(raised.value)


# ----------------------------------------------------------------------------
# The segment command.
# ----------------------------------------------------------------------------


def test_segment_writes_a_nifti_mask_of_the_input_geometry(tmp_path):
  volume = _volume()
  nib.save(nib.Nifti1Image(volume, AFFINE), tmp_path / "scan.nii.gz")
  sam = predictor.load_sam("random:tiny")
  common = dict(checkpoint="random:tiny", image=str(tmp_path / "scan.nii.gz"),
                box="4,6,15,12", method="sam", sam=sam, slice_index=3,
                intensity="window:-100,900")
  meta = segment.segment(out=str(tmp_path / "vol" / "mask.nii.gz"), **common)
  segment.segment(out=str(tmp_path / "png" / "mask.png"), **common)
  back = nib.load(tmp_path / "vol" / "mask.nii.gz")
  assert back.shape == volume.shape
  np.testing.assert_allclose(back.affine, AFFINE, atol=1e-6)
  png = np.asarray(Image.open(tmp_path / "png" / "mask.png")) > 0
  data = np.asarray(back.dataobj)
  np.testing.assert_array_equal(data[:, :, 3].T, png)
  assert data.sum() == png.sum() > 0
  written = json.loads((tmp_path / "vol" / "mask.json").read_text())
  assert written == json.loads(json.dumps(meta))
  image = written["image"]
  assert image["intensity"] == "window:-100,900" and image["dtype"] == "int16"
  assert image["volume"]["slice"] == 3 and image["volume"]["shape"] == [23, 19, 7]
  zooms = back.header.get_zooms()
  assert image["spacing"] == pytest.approx([zooms[1], zooms[0]])
  assert written["checkpoint"]["profile"] == "sam"
  assert written["checkpoint"]["profile_source"] == "default"


def test_corrupt_inputs_and_bad_flags_fail_before_any_work(tmp_path):
  volume = _volume()
  nib.save(nib.Nifti1Image(volume, AFFINE), tmp_path / "scan.nii.gz")
  data = (tmp_path / "scan.nii.gz").read_bytes()
  (tmp_path / "broken.nii.gz").write_bytes(data[:len(data) // 3])
  (tmp_path / "broken.dcm").write_bytes(b"DICM" * 10)
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "plain.png")
  out = tmp_path / "out"
  cases = [
      (dict(image="broken.nii.gz", slice_index=3), "broken.nii.gz"),
      (dict(image="broken.dcm"), "broken.dcm"),
      (dict(image="scan.nii.gz", slice_index=3, intensity="gamma"), "--intensity"),
      (dict(image="scan.nii.gz", slice_index=3, profile="nope"), "--profile"),
      (dict(image="scan.nii.gz"), "--slice"),
      (dict(image="plain.png", intensity="minmax"), "constant"),
      (dict(image="plain.png"), "NIfTI --image"),
  ]
  for flags, named in cases:
    flags["image"] = str(tmp_path / flags["image"])
    with pytest.raises(segment.SegmentError) as raised:
      segment.segment(checkpoint="random:tiny", method="sam", box="1,1,5,5",
                      out=str(out / "mask.nii.gz"), **flags)
    assert named in str(raised.value), (flags, str(raised.value))
  # The command line: one line on stderr, exit status 1, nothing written.
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run(
      [sys.executable, "-m", "simsam_jax.segment", "--checkpoint=random:tiny",
       "--method=sam", "--box=1,1,5,5", "--image=broken.nii.gz", "--slice=3",
       f"--out={out}/mask.nii.gz"], cwd=tmp_path, env=env, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 1 and "broken.nii.gz" in result.stderr, result.stderr
  assert not out.exists()

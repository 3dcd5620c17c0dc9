"""One image/mask reader (`processing.read_file`) behind both former call
paths: the command line and `Predictor` (`processing.read_image`,
`read_mask_gray`, `inputs.load_ground_truth`) and the dataset builders
(`data.common.read_image`, `read_mask`).

The expected digests were recorded from the two separate readers that
`read_file` replaced (one per call path), on real sample files and on
generated ones (a planar TIFF, a 16-bit PNG and TIFF, an RGBA PNG, a palette mask);
the arrays must not change by a single bit.
"""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from simsam_jax import inputs, processing
from simsam_jax.data import common

REAL = {
    "busi": ("busi/Dataset_BUSI_with_GT/benign/benign (15).png",
             "busi/Dataset_BUSI_with_GT/benign/benign (15)_mask.png"),
    "cvc": ("cvc_clinicdb/Original/12.tif", "cvc_clinicdb/Ground Truth/12.tif"),
    "isic": ("isic2016/ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg",
             "isic2016/ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png"),
}


def _digest(array: np.ndarray) -> str:
  array = np.ascontiguousarray(array)
  text = f"{array.dtype}{array.shape}".encode() + array.tobytes()
  return hashlib.sha256(text).hexdigest()[:16]


def _generated(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """Files with fixed, seeded content."""
  rng = np.random.default_rng(7)
  files = {}
  planar = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8)
  files["planar"] = folder / "planar.tif"
  tifffile.imwrite(files["planar"], planar, photometric="rgb", planarconfig="separate")
  deep = (rng.integers(0, 4096, (18, 22)) * 16).astype(np.uint16)
  files["png16"] = folder / "deep.png"
  Image.fromarray(deep).save(files["png16"])
  files["tif16"] = folder / "deep.tif"
  tifffile.imwrite(files["tif16"], deep[::-1])
  rgba = rng.integers(0, 256, (16, 14, 4), dtype=np.uint8)
  files["rgba"] = folder / "rgba.png"
  Image.fromarray(rgba, "RGBA").save(files["rgba"])
  palette = Image.fromarray(rng.integers(0, 3, (16, 14), dtype=np.uint8), "P")
  palette.putpalette([0, 0, 0, 255, 0, 0, 90, 200, 40] + [0] * 759)
  files["palette"] = folder / "palette.png"
  palette.save(files["palette"])
  return files


def _ref(path: pathlib.Path) -> common.FileRef:
  return common.file_ref(path.parent, path)


def _cli_image(path):
  loaded = processing.read_image(path)
  return f"{_digest(loaded.pixels)} {loaded.intensity} {loaded.dtype}"


def _data_image(path):
  try:
    return _digest(common.read_image(_ref(path)))
  except common.DatasetError as error:
    return "DatasetError: " + str(error).replace(str(path), "PATH")


def _cli_mask(path):
  return _digest(processing.read_mask_gray(path))


def _data_mask(path):
  try:
    raw, mode = common.read_mask(_ref(path))
  except common.DatasetError as error:
    return "DatasetError: " + str(error).replace(str(path), "PATH")
  return f"{_digest(raw)} {mode}"


# (file, path) -> digest (and the intensity policy and source dtype for the
# command line, the PIL mode for a dataset mask), or the dataset's error.
EXPECTED = {
    ('busi', 'cli_image'): '8cffa287976c0094 none uint8',
    ('busi', 'data_image'): '8cffa287976c0094',
    ('busi_mask', 'cli_mask'): '29f9c8b207cb577c',
    ('busi_mask', 'data_mask'): '3cbee2917b466150 1',
    ('cvc', 'cli_image'): '7a679054d8d3c9aa none uint8',
    ('cvc', 'data_image'): '7a679054d8d3c9aa',
    ('cvc_mask', 'cli_mask'): 'ad9fc02468b0c76f',
    ('cvc_mask', 'data_mask'): '5b715933607bd756 L',
    ('isic', 'cli_image'): '3419db7c5f47a5d4 none uint8',
    ('isic', 'data_image'): '3419db7c5f47a5d4',
    ('isic_mask', 'cli_mask'): '28eba72eba4aa399',
    ('isic_mask', 'data_mask'): 'fcbe2543a5620c3c L',
    ('palette', 'cli_mask'): '3eba417cac5d7b9e',
    ('palette', 'data_mask'): '3d405040c1ed148a P',
    ('planar', 'cli_image'): '7db110ae69100bf5 none uint8',
    ('planar', 'cli_mask'): '20e3a9f9299a37c2',
    ('planar', 'data_image'): '7db110ae69100bf5',
    ('planar', 'data_mask'): 'c57948020f9ddf9b RGB',
    ('png16', 'cli_image'): 'a2f412677cb2d3dd minmax uint16',
    ('png16', 'cli_mask'): 'fcb10cf08dd8ec62',
    ('png16', 'data_image'): 'DatasetError: image PATH has PIL mode I;16; only 8-bit images are supported',
    ('png16', 'data_mask'): 'DatasetError: mask PATH has PIL mode I;16; only 8-bit masks are supported',
    ('rgba', 'cli_image'): 'f5128e79d40ea7d8 none uint8',
    ('rgba', 'cli_mask'): 'bf6777f1edffbc99',
    ('rgba', 'data_image'): 'f5128e79d40ea7d8',
    ('rgba', 'data_mask'): 'e871e7359fe5823e RGBA',
    ('tif16', 'cli_image'): '4dfbbe8b5910f95b minmax uint16',
    ('tif16', 'cli_mask'): '19f64124ad7be5ec',
    ('tif16', 'data_image'): 'DatasetError: image PATH has uint16 samples; only 8-bit images are supported (no silent rescaling)',
    ('tif16', 'data_mask'): 'DatasetError: mask PATH has uint16 samples; only 8-bit images are supported (no silent rescaling)',
}


def _observed(shared_data, tmp_path):
  files = dict(_generated(tmp_path))
  for name, (image, mask) in REAL.items():
    files[name] = shared_data / image
    files[name + "_mask"] = shared_data / mask
  out = {}
  for name, path in sorted(files.items()):
    if not name.endswith("_mask") and name != "palette":
      out[(name, "cli_image")] = _cli_image(path)
      out[(name, "data_image")] = _data_image(path)
    if name.endswith("_mask") or name in ("palette", "rgba", "png16", "tif16", "planar"):
      out[(name, "cli_mask")] = _cli_mask(path)
      out[(name, "data_mask")] = _data_mask(path)
  return out


def test_both_call_paths_give_the_arrays_they_gave_before(shared_data, tmp_path):
  observed = _observed(shared_data, tmp_path)
  assert observed == EXPECTED


def test_eight_bit_images_read_alike_on_both_paths(shared_data, tmp_path):
  """What the dataset reads is what `segment --image` reads, for 8-bit files."""
  files = _generated(tmp_path)
  paths = [shared_data / image for image, _ in REAL.values()] + [files["planar"],
                                                                 files["rgba"]]
  for path in paths:
    np.testing.assert_array_equal(common.read_image(_ref(path)),
                                  processing.read_image(path).pixels)
  planar = tifffile.imread(files["planar"])  # (3, H, W) as stored
  np.testing.assert_array_equal(processing.read_image(files["planar"]).pixels,
                                np.moveaxis(planar, 0, -1))
  # The ground truth of `segment` is the dataset's raw mask thresholded at 0.
  for _, mask in REAL.values():
    raw, _ = common.read_mask(_ref(shared_data / mask))
    truth = inputs.load_ground_truth(str(shared_data / mask), raw.shape)
    np.testing.assert_array_equal(truth, raw > 0)
    assert 0.005 < truth.mean() < 0.9  # decisive: some foreground, mostly background


def test_a_sixteen_bit_png_is_scaled_by_the_cli_and_refused_by_datasets(tmp_path):
  path = _generated(tmp_path)["png16"]
  stored = np.asarray(Image.open(path))
  loaded = processing.read_image(path)
  assert (loaded.intensity, loaded.dtype) == ("minmax", "uint16")
  expected = ((stored - stored.min()) / (stored.max() - stored.min()) * 255.0).astype(np.uint8)
  np.testing.assert_array_equal(loaded.pixels, np.repeat(expected[..., None], 3, -1))
  with pytest.raises(common.DatasetError, match="only 8-bit images are supported"):
    common.read_image(_ref(path))

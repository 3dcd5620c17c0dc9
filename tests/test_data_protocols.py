"""The `paper` and `native` protocols against the published code's own steps.

The references re-do the published code's operations (`src/corpora.py`)
directly on the files: `DefaultFileReader`, PIL
`Image.open(p).resize((256, 256))` (default filter), for BUSI and ISIC;
`TIFFileReader`, `tifffile.imread` + `cv2.resize(x, (256, 256))` (bilinear),
for CVC-ClinicDB frames and masks; then `PathDataset.preprocess`'s
`(mask > 0).max(-1)` for 3-channel masks and `> 0` otherwise.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from data_fixtures import make_busi_tree
from simsam_jax.data import common
from simsam_jax.data import load_split
from simsam_jax.data import protocols
from simsam_jax.data.protocols import NATIVE, PAPER, PROTOCOLS, prepare


def _example(image_path, mask_paths, example_id="x"):
  """An example as the builders store it, read with the builders' readers."""
  image_ref = common.FileRef(rel=image_path.name, path=image_path)
  masks = [common.read_mask(common.FileRef(rel=p.name, path=p))
           for p in mask_paths]
  raw, mode = common.merge_masks(masks)
  return {"id": example_id, "image": common.read_image(image_ref),
          "mask": raw, "mask_mode": mode, "image_file": image_path.name,
          "source_format": image_ref.suffix.lstrip(".").replace("tif", "tiff"),
          "mask_files": np.asarray([p.name for p in mask_paths])}


def _paper_mask(path):
  """The published code: PIL open, resize(256) default filter, > 0."""
  mask = np.asarray(Image.open(path).resize((256, 256)))
  return (mask > 0).max(-1) if mask.ndim == 3 else mask > 0


def _reference_box(mask):
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return [0, 0, mask.shape[1], mask.shape[0]]
  return [xs.min(), ys.min(), xs.max(), ys.max()]


def test_protocol_registry_and_switches():
  assert set(PROTOCOLS) == {"paper", "native"}
  assert PAPER.resize_to == 256 and PAPER.mask_threshold == 0
  assert PAPER.cvc_mask_threshold == 0 and PAPER.cvc_resize == "cv2_bilinear"
  assert PAPER.empty_box == "full_image"
  assert NATIVE.resize_to is None and NATIVE.cvc_mask_threshold == 127
  assert NATIVE.threshold("busi") == 0 and NATIVE.threshold("cvc") == 127
  with pytest.raises(dataclasses.FrozenInstanceError):
    PAPER.resize_to = 512  # type: ignore[misc]
  with pytest.raises(ValueError, match="cvc_resize"):
    protocols.Protocol("bad", cvc_resize="cubic")
  with pytest.raises(ValueError, match="unknown protocol"):
    prepare({}, "clean", "busi")
  with pytest.raises(ValueError, match="unknown dataset"):
    prepare({"image": np.zeros((2, 2, 3), np.uint8),
             "mask": np.zeros((2, 2), np.uint8)}, "paper", "kvasir")


def test_box_extremities_are_inclusive():
  mask = np.zeros((12, 15), bool)
  mask[2, 3] = mask[7, 9] = mask[5, 14] = True
  np.testing.assert_array_equal(protocols.box_from_mask(mask),
                                np.float32([3, 2, 14, 7]))
  assert protocols.box_from_mask(mask).dtype == np.float32
  mask[:] = False
  mask[11, 0] = True
  np.testing.assert_array_equal(protocols.box_from_mask(mask), [0, 11, 0, 11])


def test_empty_mask_box_is_the_full_image():
  empty = np.zeros((12, 15), bool)
  np.testing.assert_array_equal(protocols.box_from_mask(empty), [0, 0, 15, 12])
  np.testing.assert_array_equal(
      protocols.box_from_mask(empty, "full_image_inclusive"), [0, 0, 14, 11])
  example = {"id": "e", "image": np.zeros((30, 40, 3), np.uint8),
             "mask": np.zeros((30, 40), np.uint8), "mask_mode": "RGB"}
  np.testing.assert_array_equal(prepare(example, "paper", "busi").box,
                                [0, 0, 256, 256])
  np.testing.assert_array_equal(prepare(example, "native", "busi").box,
                                [0, 0, 40, 30])


def test_paper_busi_one_bit_mask_uses_nearest(shared_data):
  folder = shared_data / "busi" / "Dataset_BUSI_with_GT" / "malignant"
  image_path = folder / "malignant (3).png"
  mask_path = folder / "malignant (3)_mask.png"
  assert Image.open(mask_path).mode == "1"
  example = _example(image_path, [mask_path])
  prepared = prepare(example, "paper", "busi")
  reference = _paper_mask(mask_path)
  np.testing.assert_array_equal(prepared.mask, reference)
  nearest = np.asarray(Image.open(mask_path).convert("L").resize(
      (256, 256), Image.NEAREST)) > 0
  bicubic = np.asarray(Image.open(mask_path).convert("L").resize(
      (256, 256), Image.BICUBIC)) > 0
  np.testing.assert_array_equal(prepared.mask, nearest)
  assert (prepared.mask != bicubic).any()
  np.testing.assert_array_equal(
      prepared.image,
      np.asarray(Image.open(image_path).convert("RGB").resize((256, 256))))
  np.testing.assert_array_equal(prepared.box, _reference_box(reference))
  assert prepared.mask.dtype == np.bool_ and prepared.mask.shape == (256, 256)
  assert prepared.image.shape == (256, 256, 3)
  assert prepared.spacing == (1.0, 1.0)
  assert prepared.original_size == np.asarray(Image.open(image_path)).shape[:2]
  assert prepared.file_names == (image_path.name, mask_path.name)


def test_paper_rgb_mask_is_bicubic_then_positive(shared_data, tmp_path):
  # An RGB PNG mask (the CVC PNG repack's) through the PIL path of the paper.
  mask_path = shared_data / "cvc_clinicdb" / "PNG" / "Ground Truth" / "12.png"
  image_path = shared_data / "cvc_clinicdb" / "PNG" / "Original" / "12.png"
  assert Image.open(mask_path).mode == "RGB"
  example = _example(image_path, [mask_path])
  prepared = prepare(example, "paper", "isic2016")  # PIL path
  reference = _paper_mask(mask_path)
  np.testing.assert_array_equal(prepared.mask, reference)
  nearest = np.asarray(Image.open(mask_path).resize(
      (256, 256), Image.NEAREST)).max(-1) > 0
  assert (prepared.mask != nearest).any()
  # A BUSI-style RGB mask with a lesion, and an RGBA one (alpha ignored).
  lesion = np.zeros((50, 70, 3), np.uint8)
  lesion[10:31, 20:45] = 255
  for mode in ("RGB", "RGBA"):
    path = tmp_path / f"m_{mode}.png"
    Image.fromarray(lesion).convert(mode).save(path)
    image = tmp_path / "i.png"
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(image)
    prepared = prepare(_example(image, [path]), "paper", "busi")
    rgb = np.asarray(Image.open(path).convert("RGB").resize((256, 256)))
    np.testing.assert_array_equal(prepared.mask, (rgb > 0).max(-1))
    np.testing.assert_array_equal(prepared.box,
                                  _reference_box((rgb > 0).max(-1)))


def _published_tiff_reader(path):
  """`src/corpora.py` `TIFFileReader.__call__`, transcribed."""
  image = tifffile.imread(path)
  image = cv2.resize(image, (256, 256))
  return image


def _published_label(ground_truth_mask):
  """`PathDataset.preprocess`: 3 channels -> `(m > 0).max(-1)`; labels bool."""
  if ground_truth_mask.ndim == 3:
    ground_truth_mask = (ground_truth_mask > 0).max(axis=-1)
  return np.array(ground_truth_mask).astype(bool)


def _published_box(ground_truth_map):
  """`src/corpora.py` `get_bounding_box` without perturbation."""
  y_indices, x_indices = np.where(ground_truth_map > 0)
  if len(x_indices) == 0:
    return [0, 0, ground_truth_map.shape[1], ground_truth_map.shape[0]]
  return [np.min(x_indices), np.min(y_indices), np.max(x_indices),
          np.max(y_indices)]


@pytest.fixture(scope="module")
def real_cvc(shared_data, tmp_path_factory):
  """Every real CVC frame as the builder stores it (TIFF pairs)."""
  examples = load_split("cvc_clinicdb", "all", tmp_path_factory.mktemp("tfds"),
                        shared_data / "cvc_clinicdb")
  assert len(examples) == 12
  return {e["id"]: e for e in examples}


def test_paper_cvc_is_the_published_tiff_reader(real_cvc, shared_data):
  folder = shared_data / "cvc_clinicdb"
  for example_id, example in sorted(real_cvc.items()):
    assert example["source_format"] == "tiff"
    prepared = prepare(example, "paper", "cvc_clinicdb")
    image = _published_tiff_reader(folder / example["image_file"])
    label = _published_label(_published_tiff_reader(
        folder / example["mask_files"][0]))
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(prepared.image, image, err_msg=example_id)
    np.testing.assert_array_equal(prepared.mask, label, err_msg=example_id)
    np.testing.assert_array_equal(prepared.box, _published_box(label),
                                  err_msg=example_id)
    # Colour frames: a grey copy of one channel would differ almost
    # everywhere (the checked premise of an earlier version).
    grey = np.repeat(image[..., :1], 3, axis=-1)
    assert np.mean(np.all(prepared.image == grey, axis=-1)) < 0.5, example_id


def test_paper_cvc_counts_the_grey_noise(real_cvc, shared_data):
  folder = shared_data / "cvc_clinicdb"
  example = real_cvc["cvc_12"]
  raw = example["mask"]
  assert ((raw > 0) & (raw < 128)).any()  # grey noise
  prepared = prepare(example, "paper", "cvc_clinicdb")
  clean = prepare(example, dataclasses.replace(PAPER, cvc_mask_threshold=127),
                  "cvc_clinicdb")
  assert clean.mask.sum() < prepared.mask.sum()
  native = prepare(example, "native", "cvc_clinicdb")
  np.testing.assert_array_equal(native.image, example["image"])  # colour
  np.testing.assert_array_equal(native.image,
                                tifffile.imread(folder / "Original" / "12.tif"))
  np.testing.assert_array_equal(native.mask, raw > 127)
  assert (native.mask != (raw > 0)).any()
  pil = prepare(example, dataclasses.replace(PAPER, cvc_resize="pil_default"),
                "cvc_clinicdb")
  assert (pil.image != prepared.image).any()
  # The PNG repack of the same frame gives the same prepared example.
  png = _example(folder / "PNG" / "Original" / "12.png",
                 [folder / "PNG" / "Ground Truth" / "12.png"], "cvc_12")
  np.testing.assert_array_equal(png["image"], example["image"])
  np.testing.assert_array_equal(prepare(png, "paper", "cvc_clinicdb").image,
                                prepared.image)
  np.testing.assert_array_equal(prepare(png, "paper", "cvc_clinicdb").mask,
                                prepared.mask)


def test_cvc_threshold_on_generated_noise():
  raw = np.zeros((20, 30), np.uint8)
  raw[5:10, 5:12] = 255
  raw[15:18, 1:4] = 11
  raw[0, 29] = 112
  example = {"id": "cvc_1", "image": np.zeros((20, 30, 3), np.uint8),
             "mask": raw, "mask_mode": "L"}
  native = prepare(example, "native", "cvc_clinicdb")
  np.testing.assert_array_equal(native.box, [5, 5, 11, 9])
  loose = prepare(example, dataclasses.replace(NATIVE, cvc_mask_threshold=0),
                  "cvc_clinicdb")
  np.testing.assert_array_equal(loose.box, [1, 0, 29, 17])
  # BUSI / ISIC use mask_threshold, not the CVC one.
  np.testing.assert_array_equal(prepare(example, "native", "busi").box,
                                [1, 0, 29, 17])


def test_native_keeps_the_original_size(shared_data):
  folder = shared_data / "isic2016"
  image_path = folder / "ISBI2016_ISIC_Part1_Training_Data" / "ISIC_0000001.jpg"
  mask_path = (folder / "ISBI2016_ISIC_Part1_Training_GroundTruth" /
               "ISIC_0000001_Segmentation.png")
  example = _example(image_path, [mask_path], "ISIC_0000001")
  prepared = prepare(example, "native", "isic2016")
  assert prepared.image.shape == (767, 1022, 3)
  assert prepared.mask.shape == (767, 1022)
  assert prepared.original_size == (767, 1022)
  np.testing.assert_array_equal(prepared.image, example["image"])
  full = np.asarray(Image.open(mask_path)) > 0
  np.testing.assert_array_equal(prepared.mask, full)
  np.testing.assert_array_equal(prepared.box, _reference_box(full))
  paper = prepare(example, "paper", "isic2016")
  np.testing.assert_array_equal(paper.mask, _paper_mask(mask_path))
  assert paper.original_size == (767, 1022)


def test_prepare_accepts_loaded_examples(tmp_path):
  manual = make_busi_tree(tmp_path / "busi", {("benign", 300): 1,
                                              ("malignant", 2): 0,
                                              ("normal", 1): 0})
  for example in load_split("busi", "all", tmp_path / "tfds", manual,
                            "full_with_normal"):
    for name in ("paper", "native"):
      prepared = prepare(example, name, "busi")
      assert prepared.id == example["id"]
      assert prepared.file_names == (example["image_file"],) + tuple(
          example["mask_files"])
      assert prepared.mask.dtype == np.bool_
      assert prepared.box.shape == (4,) and prepared.box.dtype == np.float32
      if example["label"] == "normal":
        assert not prepared.mask.any()

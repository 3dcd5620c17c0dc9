"""Generated dataset trees that mimic the distributed layouts (tiny images).

Used by tests/test_data_*.py. Every tree is written under a pytest tmp_path;
nothing is copied from the shared sample folder.
"""

from __future__ import annotations

import io
import pathlib
import zipfile
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import tifffile
from PIL import Image

H, W = 20, 28


def rng_image(seed: int, height: int = H, width: int = W) -> np.ndarray:
  """A deterministic (H, W, 3) uint8 RGB image."""
  return np.random.default_rng(seed).integers(
      0, 256, (height, width, 3), dtype=np.uint8)


def box_mask(height: int, width: int, box: Tuple[int, int, int, int]
             ) -> np.ndarray:
  """(H, W) bool with `box` = (x0, y0, x1, y1) inclusive set."""
  mask = np.zeros((height, width), dtype=bool)
  x0, y0, x1, y1 = box
  mask[y0:y1 + 1, x0:x1 + 1] = True
  return mask


def save_png(path: pathlib.Path, array: np.ndarray, mode: Optional[str] = None
             ) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(array)
  if mode is not None and image.mode != mode:
    image = image.convert(mode)
  image.save(path)


# ----------------------------------------------------------------------------
# BUSI.
# ----------------------------------------------------------------------------

# (class, number) -> number of extra `_mask_K` files. Chosen so that each
# config selects something different:
#   paper437: malignant_5, malignant_7, benign_211, benign_300 (benign_5 is
#     overwritten by malignant_5, benign_8 is not among the 437, normal out).
#   full: benign_5, benign_8, benign_211, benign_300, malignant_5, malignant_7.
#   full_with_normal: + normal_3.
BUSI_CASES = {
    ("benign", 5): 0, ("benign", 8): 0, ("benign", 211): 1,
    ("benign", 300): 2, ("malignant", 5): 0, ("malignant", 7): 0,
    ("normal", 3): 0,
}


def busi_boxes(cls: str, number: int, k: int) -> Tuple[int, int, int, int]:
  """The box drawn in mask k (0 = main) of a generated BUSI case."""
  return (2 + k * 6 + number % 3, 3 + k, 8 + k * 6 + number % 3, 9 + k)


def make_busi_tree(root: pathlib.Path,
                   cases: Optional[Dict[Tuple[str, int], int]] = None,
                   nested: bool = True) -> pathlib.Path:
  """Writes a Kaggle-style BUSI tree; returns the manual_dir.

  Images are RGB PNGs with identical channels; benign/malignant masks are
  1-bit PNGs (mode `1`), normal masks all-zero RGB PNGs. Extra lesions are
  `_mask_1.png`, `_mask_2.png`, ...

  Args:
    root: where to write.
    cases: {(class, number): number of extra masks}; default `BUSI_CASES`.
    nested: write into `root/Dataset_BUSI_with_GT/` (the Kaggle folder) and
      return `root`; else write the class folders directly into `root`.
  """
  cases = BUSI_CASES if cases is None else cases
  base = root / "Dataset_BUSI_with_GT" if nested else root
  for (cls, number), extras in cases.items():
    folder = base / cls
    gray = rng_image(number)[..., 0]
    save_png(folder / f"{cls} ({number}).png", np.stack([gray] * 3, -1))
    if cls == "normal":
      save_png(folder / f"{cls} ({number})_mask.png",
               np.zeros((H, W, 3), np.uint8))
      continue
    for k in range(extras + 1):
      mask = box_mask(H, W, busi_boxes(cls, number, k))
      suffix = "_mask" if k == 0 else f"_mask_{k}"
      save_png(folder / f"{cls} ({number}){suffix}.png", mask, mode="1")
  return root


# ----------------------------------------------------------------------------
# CVC-ClinicDB.
# ----------------------------------------------------------------------------

CVC_H, CVC_W = 18, 24


def cvc_mask(frame: int) -> np.ndarray:
  """Raw (H, W) uint8 mask with grey noise: 255 polyp, a plateau of 11 and
  sparse values in 5-112 (as 138 of the real masks)."""
  mask = np.zeros((CVC_H, CVC_W), np.uint8)
  mask[4:10, 6 + frame % 4:14 + frame % 4] = 255
  mask[12:16, 1:5] = 11
  mask[0, 20] = 5
  mask[17, 0] = 112
  return mask


def make_cvc_tree(root: pathlib.Path, frames: Sequence[int] = (1, 12, 600),
                  tiff: bool = True, png: bool = True,
                  png_frames: Optional[Sequence[int]] = None) -> pathlib.Path:
  """Writes CVC-ClinicDB: `Original/N.tif` + `Ground Truth/N.tif` and/or the
  PNG repack `PNG/Original/N.png` + `PNG/Ground Truth/N.png` (3-channel
  masks); returns the manual_dir."""
  for frame in frames:
    image = rng_image(1000 + frame, CVC_H, CVC_W)
    mask = cvc_mask(frame)
    if tiff:
      for folder in ("Original", "Ground Truth"):
        (root / folder).mkdir(parents=True, exist_ok=True)
      # 3-sample MinIsBlack, like the release (Pillow cannot open these).
      tifffile.imwrite(root / "Original" / f"{frame}.tif", image,
                       photometric="minisblack", planarconfig="contig")
      tifffile.imwrite(root / "Ground Truth" / f"{frame}.tif", mask,
                       photometric="minisblack")
  for frame in (frames if png_frames is None else png_frames):
    if not png:
      break
    image = rng_image(1000 + frame, CVC_H, CVC_W)
    save_png(root / "PNG" / "Original" / f"{frame}.png", image)
    save_png(root / "PNG" / "Ground Truth" / f"{frame}.png",
             np.stack([cvc_mask(frame)] * 3, -1))
  return root


# ----------------------------------------------------------------------------
# ISIC 2016 Part 1.
# ----------------------------------------------------------------------------

ISIC_TRAIN = ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000004",
              "ISIC_0000006", "ISIC_0000007", "ISIC_0000008", "ISIC_0000009",
              "ISIC_0000010", "ISIC_0000011", "ISIC_0000012")
ISIC_TEST = ("ISIC_0000003", "ISIC_0000005")


def _isic_files(ids: Iterable[str], lower_suffix: Iterable[str] = ()
                ) -> Tuple[Dict[str, bytes], Dict[str, bytes]]:
  images, masks = {}, {}
  for i, example_id in enumerate(ids):
    height, width = 15 + i % 3, 21
    buffer = io.BytesIO()
    Image.fromarray(rng_image(i, height, width)).save(buffer, format="JPEG")
    images[f"{example_id}.jpg"] = buffer.getvalue()
    mask = box_mask(height, width, (3 + i % 4, 2, 12, 9)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(mask * 255).save(buffer, format="PNG")
    suffix = "_segmentation" if example_id in lower_suffix else "_Segmentation"
    masks[f"{example_id}{suffix}.png"] = buffer.getvalue()
  return images, masks


def make_isic_tree(root: pathlib.Path, train: Sequence[str] = ISIC_TRAIN,
                   test: Sequence[str] = ISIC_TEST, as_zip: bool = False,
                   lower_suffix: Iterable[str] = ("ISIC_0000001",)
                   ) -> pathlib.Path:
  """Writes the four ISIC 2016 Part 1 parts as folders or zip files (with a
  `__MACOSX/` entry and a licence text to be ignored); returns the
  manual_dir. An empty `test` writes no Test parts."""
  root.mkdir(parents=True, exist_ok=True)
  parts = [("Training", train)] + ([("Test", test)] if test else [])
  for official, ids in parts:
    images, masks = _isic_files(ids, lower_suffix)
    for kind, files in (("Data", images), ("GroundTruth", masks)):
      name = f"ISBI2016_ISIC_Part1_{official}_{kind}"
      if as_zip:
        with zipfile.ZipFile(root / f"{name}.zip", "w") as archive:
          archive.writestr(f"{name}/", b"")
          for file_name, data in files.items():
            archive.writestr(f"{name}/{file_name}", data)
          archive.writestr(f"__MACOSX/{name}/._x.jpg", b"junk")
          archive.writestr(f"{name}/LICENSE.txt", b"CC BY-NC")
      else:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, data in files.items():
          (folder / file_name).write_bytes(data)
        (folder / "LICENSE.txt").write_text("CC BY-NC")
  return root


def all_busi_names(extra: Iterable[str] = ()) -> list:
  """The 780 BUSI image names and their main masks (+ `extra` names)."""
  names = []
  for cls, count in (("benign", 437), ("malignant", 210), ("normal", 133)):
    for n in range(1, count + 1):
      names += [f"{cls}/{cls} ({n}).png", f"{cls}/{cls} ({n})_mask.png"]
  return names + list(extra)


def shared_sample_files(root: pathlib.Path) -> list:
  """(name, dataset, image path, [mask paths]) of every real sample image in
  the shared sample folder `root` (read in place, never copied): BUSI (all
  three classes, multi-mask cases), CVC-ClinicDB as TIFF and as PNG copy,
  ISIC 2016."""
  pairs = []
  for cls in ("benign", "malignant", "normal"):
    for img in sorted((root / "busi" / "Dataset_BUSI_with_GT" / cls).glob("*).png")):
      masks = sorted(img.parent.glob(img.stem + "_mask*.png"))
      pairs.append((f"busi/{img.name}", "busi", img, masks))
  cvc = root / "cvc_clinicdb"
  for img in sorted((cvc / "Original").glob("*.tif")):
    pairs.append((f"cvc/{img.name}", "cvc_clinicdb", img, [cvc / "Ground Truth" / img.name]))
  for img in sorted((cvc / "PNG" / "Original").glob("*.png")):
    pairs.append((f"cvc_png/{img.name}", "cvc_clinicdb", img,
                  [cvc / "PNG" / "Ground Truth" / img.name]))
  isic = root / "isic2016"
  for img in sorted((isic / "ISBI2016_ISIC_Part1_Training_Data").glob("*.jpg")):
    gt = isic / "ISBI2016_ISIC_Part1_Training_GroundTruth" / (img.stem + "_Segmentation.png")
    pairs.append((f"isic/{img.name}", "isic2016", img, [gt]))
  return pairs


# ----------------------------------------------------------------------------
# nifti_folder.
# ----------------------------------------------------------------------------

NIFTI_SHAPE = (28, 24, 6)
NIFTI_ZOOMS = (0.8, 1.3, 3.0)
NIFTI_NAMES = ("case_1", "case_2", "case_3", "case_10")


def make_nifti_tree(root: pathlib.Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """A nifti_folder manual_dir: imagesTr/ + labelsTr/ with 4 tiny volumes
  (anisotropic voxels, rotated affine; labels on slices 1, 2 and 4, two
  classes); returns {name: (image, label)} as written."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  (root / "imagesTr").mkdir(parents=True, exist_ok=True)
  (root / "labelsTr").mkdir(exist_ok=True)
  volumes = {}
  for n, name in enumerate(NIFTI_NAMES):
    rng = np.random.default_rng(n)
    image = rng.normal(0, 30, NIFTI_SHAPE).astype(np.float32)
    label = np.zeros(NIFTI_SHAPE, np.uint8)
    for k, (x0, y0, size) in {1: (3, 4, 6), 2: (5, 6, 9 + n), 4: (8, 2, 4)}.items():
      label[x0:x0 + size, y0:y0 + size + 2, k] = 1 + (k == 4)  # two classes
    image[label > 0] += 400
    affine = np.diag(NIFTI_ZOOMS + (1.0,))
    affine[:3, 3] = (-10, 5, 2 * n)
    affine[:2, :2] = [[0, -NIFTI_ZOOMS[1]], [NIFTI_ZOOMS[0], 0]]  # rotated in-plane
    suffix = "_0000.nii.gz" if n % 2 else ".nii.gz"
    nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / (name + suffix))
    nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / (name + ".nii.gz"))
    volumes[name] = (image, label)
  (root / "imagesTr" / "README.txt").write_text("ignored")
  return volumes


def write_dicom(path: pathlib.Path, pixels: np.ndarray, slope: float = 2.0,
                intercept: float = -1024.0,
                spacing: Tuple[float, float] = (0.5, 0.7)) -> None:
  """A single-frame CT DICOM file of signed 16-bit `pixels` (H, W), with
  RescaleSlope / RescaleIntercept and PixelSpacing, written by pydicom."""
  import pydicom  # pylint: disable=import-outside-toplevel
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=import-outside-toplevel
  from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian,  # pylint: disable=import-outside-toplevel
                           generate_uid)
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = CTImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.PhotometricInterpretation = "CT", "MONOCHROME2"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
  ds.PixelRepresentation = 1
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  ds.PixelSpacing = list(spacing)
  ds.PixelData = pixels.astype(np.int16).tobytes()
  pydicom.dcmwrite(path, ds, enforce_file_format=True)
